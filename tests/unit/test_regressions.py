"""Tests left out of tests/unit because they fail on the current proxy/ (bugs reported)."""

from __future__ import annotations

import ast
import dataclasses
import re
import stringprep
import unicodedata
from pathlib import Path

import pytest

import pgwake
from pgwake.auth.scram import make_verifier
from pgwake.edge.routing import resolve, split_options
from pgwake.endpoint.states import RETRY_MAX_SECONDS, retry_delay
from pgwake.protocol.messages import AuthenticationRequest

PROXY_DIR = Path(pgwake.__file__).parent
# SQLSTATE classes start with a digit, or are one of the lettered classes (F0, HV, P0, XX).
_SQLSTATE = re.compile(r"^(?:[0-9][0-9A-Z]|F0|HV|P0|XX)[0-9A-Z]{3}$")


def test_no_sqlstate_literal_outside_errors_module() -> None:
    offenders = []
    for path in sorted(PROXY_DIR.rglob("*.py")):
        if path == PROXY_DIR / "protocol" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                value = (
                    node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
                )
                if _SQLSTATE.match(value):
                    offenders.append(
                        f"{path.relative_to(PROXY_DIR.parent)}:{node.lineno}: {value!r}"
                    )
    assert offenders == []


def test_authentication_ok_constant() -> None:
    assert AuthenticationRequest.OK == 0
    assert [f.name for f in dataclasses.fields(AuthenticationRequest)] == ["code", "data"]


@pytest.mark.parametrize("space", ["\u00a0", "\u2003", "\u3000", "\x1c", "\x1f", "\x85", "\u2028"])
def test_split_options_splits_on_c_locale_spaces_only(space: str) -> None:
    options = f"-c application_name=a{space}b"
    assert split_options(options) == ["-c", f"application_name=a{space}b"]
    route = resolve(
        user="u",
        options=options + " endpoint=demo",
        server_name=None,
        base_domain=None,
        exists=lambda n: True,
    )
    assert route.options == options


def test_retry_delay_never_overflows() -> None:
    assert retry_delay(1025) == RETRY_MAX_SECONDS
    assert retry_delay(10**6) == RETRY_MAX_SECONDS


def pg_saslprep(password: str) -> str:
    """RFC 4013 as Postgres's src/common/saslprep.c applies it; the raw password on failure."""
    if password.isascii():
        return password
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c)
    )
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if not normalized or any(check(c) for c in normalized for check in prohibited):
        return password
    if any(stringprep.in_table_d1(c) for c in normalized):
        if any(stringprep.in_table_d2(c) for c in normalized):
            return password
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return password
    return normalized


@pytest.mark.parametrize(
    "password",
    ["pass\u00adword", "pass\u200bword", "\ufb01\u0080", "a\u0308\U0001f600", "p\u00e4ss"],
    ids=["soft-hyphen", "zero-width-space", "prohibited", "unassigned", "plain-non-ascii"],
)
def test_verifier_uses_postgres_saslprep(password: str) -> None:
    import base64
    import hashlib
    import hmac

    salt = b"0123456789abcdef"
    salted = hashlib.pbkdf2_hmac("sha256", pg_saslprep(password).encode(), salt, 4096)
    stored = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    assert (
        make_verifier(password, salt=salt).split("$")[2].split(":")[0]
        == base64.b64encode(stored).decode()
    )
