"""TLS for the client side: the server context, SNI capture, a self-signed fallback.

With no certificate configured, pgwake makes a self-signed pair in ``<state_dir>/tls`` on
first start (both files 0600), so ``sslmode=require`` works out of the box
(``verify-full`` needs a real one).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pgwake.auth.scram import tls_server_end_point
from pgwake.state_dir import private_dir, write_private

if TYPE_CHECKING:
    from pgwake.state_dir import StateDir

__all__ = [
    "TlsMaterial",
    "build_server_context",
    "ensure_self_signed",
    "load_tls",
    "server_name_of",
]

logger = logging.getLogger(__name__)
_SNI_ATTRIBUTE: Final = "_pgwake_server_name"


def ensure_self_signed(state: StateDir) -> tuple[Path, Path]:
    """Return the (cert, key) paths of the state dir's self-signed pair, made once."""
    cert_path, key_path = state.tls_cert, state.tls_key
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    # Imported here: only the first start needs it, and it costs every process ~8 MB.
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    private_dir(state.tls_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgwake self-signed")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.DNSName("*.localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    logger.info("event=tls_self_signed_created cert=%s", cert_path)
    return cert_path, key_path


def _remember_server_name(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
) -> None:
    # Called during the handshake; the session reads it back with server_name_of().
    setattr(ssl_object, _SNI_ATTRIBUTE, server_name)


def server_name_of(ssl_object: object) -> str | None:
    """The SNI host name the client sent in this TLS connection, if any."""
    name = getattr(ssl_object, _SNI_ATTRIBUTE, None)
    return name if isinstance(name, str) else None


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """A loaded certificate: the server context, and its tls-server-end-point hash for
    SCRAM-SHA-256-PLUS channel binding (RFC 5929). Replaced whole on SIGHUP; sessions keep
    the one they started with."""

    context: ssl.SSLContext
    end_point_hash: bytes
    cert_path: Path


def load_tls(cert: Path, key: Path) -> TlsMaterial:
    """Load ``cert``/``key``; raise ``OSError``/``ValueError``/``ssl.SSLError`` if unusable."""
    context = build_server_context(cert, key)
    return TlsMaterial(context, tls_server_end_point(_leaf_der(cert.read_text())), cert)


_PEM_END: Final = "-----END CERTIFICATE-----"


def _leaf_der(pem_chain: str) -> bytes:
    """The DER of the first certificate in a PEM chain (the leaf, as TLS sends it)."""
    begin = pem_chain.find("-----BEGIN CERTIFICATE-----")
    end = pem_chain.find(_PEM_END, begin)
    if begin < 0 or end < 0:
        raise ValueError("no PEM certificate in the certificate file")
    return ssl.PEM_cert_to_DER_cert(pem_chain[begin : end + len(_PEM_END)])


def build_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context: TLS 1.2+, SNI captured, ALPN ``postgresql`` offered."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.sni_callback = _remember_server_name
    context.set_alpn_protocols(["postgresql"])
    return context
