"""The password rule, the printed URI, how times are shown, and pending verifiers."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from pgwake.catalog import Catalog
from pgwake.edge.routing import resolve
from pgwake.endpoint.connection_uri import connection_uri, format_age, format_time
from pgwake.endpoint.passwords import generate_password, password_problem
from pgwake.settings import load_settings


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("s3cret", "at least 8 characters long (this one has 6)"),
        ("", "at least 8 characters long (this one has 0)"),
        ("x" * 1025, "at most 1024 characters long (this one has 1025)"),
        ("eight\x00ch", "must not contain NUL characters"),
        ("bad-\udcff-bytes", "must be valid Unicode text"),
    ],
)
def test_a_refused_password_gets_one_sentence_saying_why(password: str, problem: str) -> None:
    message = password_problem(password)
    assert message is not None
    assert problem in message


@pytest.mark.parametrize("password", ["s3cret-pw", "pass word", "ünïcødé!", "x" * 1024])
def test_acceptable_passwords(password: str) -> None:
    assert password_problem(password) is None


def test_generated_passwords_pass_the_rule_and_need_no_quoting() -> None:
    password = generate_password()
    assert password_problem(password) is None
    assert len(password) == 24
    assert password.replace("-", "").replace("_", "").isalnum()


def test_the_uri_names_the_endpoint_in_the_user_name_and_routes_there(tmp_path: Path) -> None:
    settings = load_settings(state_dir=str(tmp_path), listen="0.0.0.0:6432")
    uri = connection_uri(settings, "demo", "first.last", "pass word", "app")
    assert uri == "postgresql://first.last.demo:pass%20word@127.0.0.1:6432/app"
    route = resolve(
        user="first.last.demo",
        options=None,
        server_name=None,
        base_domain=None,
        exists=lambda name: name == "demo",
    )
    assert (route.endpoint, route.role, route.source) == ("demo", "first.last", "user")
    assert connection_uri(settings, "demo", "app", None, "app") == (
        "postgresql://app.demo@127.0.0.1:6432/app"
    )


def test_times_are_iso_with_their_age() -> None:
    now = 1_800_000_000.0
    assert format_age(None) == "-"
    assert format_age(now - 12, now) == "12s ago"
    assert format_age(now - 7200, now) == "2h ago"
    assert format_age(now + 300, now) == "in 5m"
    shown = format_time(now - 90, now)
    moment, age = shown.split(" ", 1)
    assert datetime.datetime.fromisoformat(moment).timestamp() == now - 90
    assert age == "(1m ago)"
    assert format_time(None) == "-"


def test_a_pending_verifier_survives_a_sync_until_the_compute_has_it(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    try:
        catalog.add_endpoint("demo", "local", None, "app", "SCRAM-old", roles={"bob": "SCRAM-b"})
        catalog.set_verifier("demo", "app", "SCRAM-new", pending=True)
        assert catalog.verifier("demo", "app") == "SCRAM-new"  # clients are checked by it
        assert catalog.pending_verifiers("demo") == {"app": "SCRAM-new"}
        # A sync from a compute that still has the old one does not bring it back.
        catalog.replace_verifiers("demo", {"app": "SCRAM-old", "bob": "SCRAM-b2"})
        assert catalog.verifiers("demo") == {"app": "SCRAM-new", "bob": "SCRAM-b2"}
        # Set again while the first was being applied: the newer one stays pending.
        catalog.set_verifier("demo", "app", "SCRAM-newer", pending=True)
        catalog.clear_pending("demo", {"app": "SCRAM-new"})
        assert catalog.pending_verifiers("demo") == {"app": "SCRAM-newer"}
        catalog.clear_pending("demo", {"app": "SCRAM-newer"})
        assert catalog.pending_verifiers("demo") == {}
        catalog.replace_verifiers("demo", {"app": "SCRAM-newer"})
        assert catalog.verifiers("demo") == {"app": "SCRAM-newer"}
    finally:
        catalog.close()


def test_the_last_session_end_is_kept_apart_from_state_changes(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    try:
        catalog.add_endpoint("demo", "local", None, "app", "SCRAM-v")
        catalog.touch("demo", 100.0)
        catalog.set_state("demo", "suspended", last_active=200.0)
        record = catalog.get("demo")
        assert record is not None
        assert (record.last_session_end, record.last_active) == (100.0, 200.0)
    finally:
        catalog.close()
