"""The channel-binding hash read from a certificate's DER, against cryptography's view."""

from __future__ import annotations

import contextlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from pgwake.auth.certhash import binding_hash_name
from tests.certs import self_signed


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    "algorithm", [hashes.SHA224(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]
)
def test_rsa_pkcs1(rsa_key: rsa.RSAPrivateKey, algorithm: hashes.HashAlgorithm) -> None:
    assert binding_hash_name(self_signed(rsa_key, algorithm)) == algorithm.name


@pytest.mark.parametrize("algorithm", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_rsa_pss_takes_the_hash_from_its_parameters(
    rsa_key: rsa.RSAPrivateKey, algorithm: hashes.HashAlgorithm
) -> None:
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
    der = self_signed(rsa_key, algorithm, rsa_padding=pss)
    assert x509.load_der_x509_certificate(der).signature_hash_algorithm.name == algorithm.name  # type: ignore[union-attr]
    assert binding_hash_name(der) == algorithm.name


@pytest.mark.parametrize(
    ("curve", "algorithm"),
    [
        (ec.SECP256R1(), hashes.SHA256()),
        (ec.SECP384R1(), hashes.SHA384()),
        (ec.SECP521R1(), hashes.SHA512()),
    ],
)
def test_ecdsa(curve: ec.EllipticCurve, algorithm: hashes.HashAlgorithm) -> None:
    der = self_signed(ec.generate_private_key(curve), algorithm)
    assert binding_hash_name(der) == algorithm.name


@pytest.mark.parametrize(
    "key", [ed25519.Ed25519PrivateKey.generate(), ed448.Ed448PrivateKey.generate()]
)
def test_eddsa_has_no_hash_of_its_own_and_gets_sha256(key: object) -> None:
    assert binding_hash_name(self_signed(key, None)) == "sha256"


def test_an_unknown_algorithm_is_a_value_error(rsa_key: rsa.RSAPrivateKey) -> None:
    sha256_with_rsa = bytes.fromhex("06092a864886f70d01010b")
    der = self_signed(rsa_key, hashes.SHA256()).replace(
        sha256_with_rsa, sha256_with_rsa[:-1] + b"\x7f"
    )
    with pytest.raises(ValueError, match="unknown certificate signature algorithm"):
        binding_hash_name(der)


@given(st.binary(max_size=300))
def test_garbage_is_only_ever_a_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        assert binding_hash_name(data) in {"sha224", "sha256", "sha384", "sha512"}


@given(st.integers(min_value=0, max_value=400))
def test_every_truncation_is_a_value_error(cut: int) -> None:
    der = self_signed(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    if cut >= len(der):
        assert binding_hash_name(der[:cut]) == "sha256"
    else:
        with pytest.raises(ValueError, match="not a DER certificate"):
            binding_hash_name(der[:cut])
