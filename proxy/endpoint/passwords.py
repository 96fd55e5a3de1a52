"""Role passwords: the one rule a chosen password must meet, and generated ones.

Rule: this module is the only place the rule lives. The control plane applies it to every
password it is given (``endpoint create``, ``endpoint password``, from the CLI or the HTTP
API), so a refused password gets the same message everywhere.

Postgres itself accepts any password. pgwake asks for at least 8 characters because the
endpoints it serves may face the internet: a password a person typed is the one thing
between a stranger and the data (the failed-login throttle only slows guessing down).
A generated password (``secrets``, 144 bits) is always used when none is given.
"""

from __future__ import annotations

import secrets
from typing import Final

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "generate_password",
    "password_problem",
]

#: Shortest password pgwake accepts, in characters: the usual floor for passwords people
#: choose (generated ones have 24).
MIN_PASSWORD_LENGTH: Final = 8
#: Longest, in characters: Postgres truncates nothing, but more is a mistake, not a secret.
MAX_PASSWORD_LENGTH: Final = 1024
#: Random bytes in a generated password (24 URL-safe characters).
_GENERATED_BYTES: Final = 18


def password_problem(password: str) -> str | None:
    """What is wrong with ``password`` as one sentence for people, or ``None`` if it is
    acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return (
            f"the password must be at least {MIN_PASSWORD_LENGTH} characters long "
            f"(this one has {len(password)}); leave it out and pgwake generates one"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        return (
            f"the password must be at most {MAX_PASSWORD_LENGTH} characters long "
            f"(this one has {len(password)})"
        )
    if "\x00" in password:
        return "the password must not contain NUL characters"
    try:
        password.encode()
    except UnicodeEncodeError:  # e.g. undecodable bytes on a command line
        return "the password must be valid Unicode text"
    return None


def generate_password() -> str:
    """A new random password (URL-safe, so it needs no quoting in a URI)."""
    return secrets.token_urlsafe(_GENERATED_BYTES)
