"""Certificates for tests, made with ``cryptography``: a self-signed one (DER) for the
channel-binding hash, and a CA with a server certificate it signed, written where
pgwake's ``tls_cert`` and ``tls_key`` settings point."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["self_signed", "write_server_certificate"]

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _builder(subject: str, issuer: str, public_key: Any) -> x509.CertificateBuilder:
    """A certificate valid from five minutes ago for a day."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def self_signed(
    key: Any, algorithm: hashes.HashAlgorithm | None, *, rsa_padding: Any = None
) -> bytes:
    """The DER of a certificate ``key`` signed itself with ``algorithm`` (``None`` for
    Ed25519/Ed448; ``rsa_padding`` for RSA-PSS)."""
    builder = _builder("pgwake test", "pgwake test", key.public_key())
    extra = {} if rsa_padding is None else {"rsa_padding": rsa_padding}
    certificate = builder.sign(key, algorithm, **extra)  # type: ignore[arg-type]
    return certificate.public_bytes(serialization.Encoding.DER)


def write_server_certificate(
    directory: Path, dns_names: Sequence[str], *, ca_name: str = "ca"
) -> Path:
    """Make a new CA and a server certificate it signed for ``dns_names`` (the first is
    also its subject); write them as ``directory``'s server.crt and server.key (0600),
    each replaced atomically, so a running pgwake can reload them. Return the CA's PEM
    file, ``<ca_name>.pem``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(dns_names[0], ca_name, key.public_key())
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / f"{ca_name}.pem"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for name, data in (("server.key", key_pem), ("server.crt", cert.public_bytes(pem))):
        staged = directory / f".{name}.new"
        staged.write_bytes(data)
        staged.chmod(0o600)
        os.replace(staged, directory / name)
    return ca_path
