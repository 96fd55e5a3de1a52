"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it. Pure functions, no I/O.

Today this module makes verifiers: the ``rolpassword`` string Postgres stores,
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (all base64). A verifier lets
a role log in without pgwake ever storing the plaintext password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata
from typing import Final

__all__ = ["DEFAULT_ITERATIONS", "make_verifier"]

#: PostgreSQL's default ``scram_iterations`` (src/include/common/scram-common.h).
DEFAULT_ITERATIONS: Final = 4096
_SALT_BYTES: Final = 16


def _normalize_password(password: str) -> bytes:
    # Postgres applies SASLprep and, where that fails, uses the raw bytes. NFKC is the
    # heart of SASLprep; ASCII passwords (the common case) are unchanged by both.
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def make_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """Return the SCRAM-SHA-256 verifier of ``password`` in Postgres's text format."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", _normalize_password(password), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
