"""SASLprep (RFC 4013) as PostgreSQL applies it to passwords before SCRAM. Pure."""

from __future__ import annotations

import stringprep
import unicodedata
from typing import Final

__all__ = ["saslprep"]

_PROHIBITED: Final = (
    stringprep.in_table_c12,  # non-ASCII space
    stringprep.in_table_c21_c22,  # control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogates
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties, deprecated
    stringprep.in_table_c9,  # tagging characters
    stringprep.in_table_a1,  # unassigned in Unicode 3.2
)


def saslprep(password: str) -> str:
    """SASLprep (RFC 4013) as PostgreSQL applies it to passwords (``saslprep.c``).

    Where SASLprep rejects the string, Postgres uses the password unchanged, and so do
    we; otherwise a verifier made here would not match what the server computes."""
    if password.isascii():
        return password
    # Map: non-ASCII spaces (C.1.2) become spaces, then "commonly mapped to nothing" (B.1)
    # goes. U+200B is in both tables; Postgres checks C.1.2 first, so it becomes a space.
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char
        for char in password
        if stringprep.in_table_c12(char) or not stringprep.in_table_b1(char)
    )
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not normalized or any(check(char) for char in normalized for check in _PROHIBITED):
        return password
    # Bidirectional rule (RFC 3454 section 6).
    if any(stringprep.in_table_d1(char) for char in normalized):
        if any(stringprep.in_table_d2(char) for char in normalized):
            return password
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return password
    return normalized
