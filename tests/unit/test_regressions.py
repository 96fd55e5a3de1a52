"""Regression tests: each pins a bug that was found and fixed."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

import pgwake
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


def test_authentication_codes_are_class_constants_not_fields() -> None:
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
