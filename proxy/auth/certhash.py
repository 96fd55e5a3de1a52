"""The hash a certificate's tls-server-end-point channel binding uses (RFC 5929 §4.1).

Only the certificate's ``signatureAlgorithm`` is needed, so this reads just enough DER to
find it, instead of loading an X.509 library into every pgwake process (cryptography's
bindings alone cost ~8 MB of resident memory). Pure functions over bytes.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm
                               AlgorithmIdentifier, signatureValue BIT STRING }
    AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY }
"""

from __future__ import annotations

from typing import Final

__all__ = ["binding_hash_name"]

_SEQUENCE: Final = 0x30
_OID: Final = 0x06
_EXPLICIT_0: Final = 0xA0

_RSASSA_PSS: Final = "1.2.840.113549.1.1.10"
#: Signature algorithm -> hashlib name, with MD5 and SHA-1 already raised to SHA-256 as
#: RFC 5929 asks, and SHA-256 for algorithms that hash nothing themselves (Ed25519, Ed448),
#: which RFC 5929 does not cover.
_SIGNATURE_HASHES: Final = {
    "1.2.840.113549.1.1.4": "sha256",  # md5WithRSAEncryption
    "1.2.840.113549.1.1.5": "sha256",  # sha1WithRSAEncryption
    "1.2.840.113549.1.1.11": "sha256",  # sha256WithRSAEncryption
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
    "1.2.840.113549.1.1.14": "sha224",
    "1.2.840.10045.4.1": "sha256",  # ecdsa-with-SHA1
    "1.2.840.10045.4.3.1": "sha224",
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
    "1.2.840.10040.4.3": "sha256",  # dsa-with-sha1
    "2.16.840.1.101.3.4.3.1": "sha224",  # dsa-with-sha224
    "2.16.840.1.101.3.4.3.2": "sha256",  # dsa-with-sha256
    "1.3.101.112": "sha256",  # Ed25519
    "1.3.101.113": "sha256",  # Ed448
}
#: Hash algorithm identifiers inside RSASSA-PSS parameters.
_DIGESTS: Final = {
    "1.3.14.3.2.26": "sha256",  # SHA-1, raised
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.4": "sha224",
}


def _read(data: bytes, offset: int, tag: int) -> tuple[int, int]:
    """The (start, end) of the value of the DER element at ``offset``, which must have
    ``tag``; ``ValueError`` otherwise."""
    if offset + 2 > len(data) or data[offset] != tag:
        raise ValueError("not a DER certificate")
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or start + count > len(data):
            raise ValueError("not a DER certificate")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("not a DER certificate")
    return start, end


def _oid(data: bytes, offset: int) -> tuple[str, int]:
    """The dotted OID at ``offset`` and the offset after it."""
    start, end = _read(data, offset, _OID)
    if start == end:
        raise ValueError("not a DER certificate")
    first = data[start]
    arcs = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in data[start + 1 : end]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(map(str, arcs)), end


def binding_hash_name(certificate_der: bytes) -> str:
    """The ``hashlib`` name for ``certificate_der``'s tls-server-end-point binding.

    Raises ``ValueError`` for bytes that are no DER certificate or an unknown signature
    algorithm."""
    body, _ = _read(certificate_der, 0, _SEQUENCE)
    _, tbs_end = _read(certificate_der, body, _SEQUENCE)
    algorithm_start, algorithm_end = _read(certificate_der, tbs_end, _SEQUENCE)
    algorithm, after = _oid(certificate_der, algorithm_start)
    if algorithm != _RSASSA_PSS:
        try:
            return _SIGNATURE_HASHES[algorithm]
        except KeyError:
            raise ValueError(f"unknown certificate signature algorithm {algorithm}") from None
    # RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1, ...}
    if after >= algorithm_end:
        return "sha256"  # all defaults: SHA-1, raised
    params, params_end = _read(certificate_der, after, _SEQUENCE)
    if params == params_end or certificate_der[params] != _EXPLICIT_0:
        return "sha256"
    inner, _ = _read(certificate_der, params, _EXPLICIT_0)
    digest_start, _ = _read(certificate_der, inner, _SEQUENCE)
    digest, _ = _oid(certificate_der, digest_start)
    try:
        return _DIGESTS[digest]
    except KeyError:
        raise ValueError(f"unknown RSASSA-PSS hash algorithm {digest}") from None
