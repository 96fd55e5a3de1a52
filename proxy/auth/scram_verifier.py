"""SCRAM-SHA-256 verifiers: the ``rolpassword`` string Postgres stores, made and read.

``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (all base64). A verifier
lets a role log in without pgwake ever storing the password. Pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Final

from pgwake.auth.saslprep import saslprep

__all__ = [
    "DEFAULT_ITERATIONS",
    "KEY_BYTES",
    "MAX_ITERATIONS",
    "SALT_BYTES",
    "ScramVerifier",
    "b64decode",
    "make_verifier",
    "parse_verifier",
]

#: PostgreSQL's default ``scram_iterations`` (src/include/common/scram-common.h).
DEFAULT_ITERATIONS: Final = 4096
#: ``SCRAM_DEFAULT_SALT_LEN`` (scram-common.h): the salt length of the verifiers Postgres
#: makes, and so of our mock salts.
SALT_BYTES: Final = 16
#: ``SCRAM_SHA_256_KEY_LEN``: the length of every key, proof and signature.
KEY_BYTES: Final = 32
#: Iteration counts are C ``int``s in Postgres (``scram_iterations`` tops out at INT_MAX).
MAX_ITERATIONS: Final = 2**31 - 1


def make_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """Return the SCRAM-SHA-256 verifier of ``password`` in Postgres's text format."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


# --- Verifiers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """A role's SCRAM-SHA-256 verifier, decoded. The keys are left out of ``repr``."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise ValueError("SCRAM verifier iteration count out of range")
        if not self.salt:
            raise ValueError("SCRAM verifier has an empty salt")
        if len(self.stored_key) != KEY_BYTES or len(self.server_key) != KEY_BYTES:
            raise ValueError(f"SCRAM verifier keys must be {KEY_BYTES} bytes")


_BASE64: Final = r"[A-Za-z0-9+/]*={0,2}"
_VERIFIER: Final = re.compile(
    rf"SCRAM-SHA-256\$(?P<iterations>[0-9]{{1,10}}):(?P<salt>{_BASE64})"
    rf"\$(?P<stored_key>{_BASE64}):(?P<server_key>{_BASE64})"
)


def parse_verifier(text: str) -> ScramVerifier:
    """Decode a verifier in Postgres's text format (``parse_scram_secret`` in
    ``auth-scram.c``), as ``make_verifier`` writes it and ``pg_authid.rolpassword`` holds it.

    Returns the ``ScramVerifier``. Raises ``ValueError`` for anything else: another
    scheme (``md5…``, plaintext), bad base64, keys that are not 32 bytes, an empty salt or
    an iteration count outside 1..2**31-1. The message never quotes ``text``."""
    match = _VERIFIER.fullmatch(text)
    if match is None:
        raise ValueError("not a SCRAM-SHA-256 verifier")
    salt, stored_key, server_key = (
        b64decode(match[name]) for name in ("salt", "stored_key", "server_key")
    )
    if salt is None or stored_key is None or server_key is None:
        raise ValueError("SCRAM verifier has invalid base64")
    return ScramVerifier(int(match["iterations"]), salt, stored_key, server_key)


def b64decode(text: str) -> bytes | None:
    """Strict base64 (alphabet and padding), or ``None``."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:  # binascii.Error and UnicodeEncodeError both are
        return None
