"""A lost password is not a lost database: ``pgwake endpoint password``, the API route and
the Python client give any login role a new one, on a running or a suspended compute."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import IO

import psycopg
import pytest

from pgwake.api.client import ApiError, PgwakeClient
from tests.integration.pgwake_fixture import ADMIN_TOKEN, PASSWORD, Pgwake, wait_for

BOB_OLD = "bob-old-password"


def _user(uri: str) -> str:
    with psycopg.connect(uri, sslmode="disable", connect_timeout=60) as conn:
        row = conn.execute("select current_user").fetchone()
    assert row is not None
    return str(row[0])


def _refused(uri: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(uri, sslmode="disable", connect_timeout=60).close()


def test_a_suspended_endpoint_takes_its_new_password_at_the_next_start(pgwake: Pgwake) -> None:
    """Set while suspended (CLI through the API): pgwake accepts only the new password at
    once, the next start writes it to the compute (which the edge logs in to with the
    new ClientKey), and the compute's old one never comes back through a sync."""
    old_uri = pgwake.create("lost", idle_timeout=600)
    pgwake.start()
    assert _user(old_uri) == "app"
    pgwake.cli("endpoint", "suspend", "lost")

    out = pgwake.cli("endpoint", "password", "lost").stdout.strip().splitlines()
    assert out[0] == "new password of role app on endpoint lost (shown only now); connect with:"
    new_uri = out[-1]
    assert new_uri.startswith("postgresql://app.lost:")
    assert new_uri != old_uri
    assert pgwake.state("lost") == "suspended"

    _refused(old_uri)  # refused at the edge: nothing woken
    assert pgwake.state("lost") == "suspended"
    assert _user(new_uri) == "app"  # wakes it: the start wrote the new verifier
    assert "event=pending_passwords_applied endpoint=lost roles=1" in pgwake.log_text()
    pgwake.cli("endpoint", "suspend", "lost")  # syncs the compute's verifiers back
    assert _user(new_uri) == "app"
    _refused(old_uri)


def test_a_running_compute_takes_a_new_password_for_any_role_at_once(pgwake: Pgwake) -> None:
    """A role made with SQL, given a new password through the Python client while a
    session runs; then the app role's through the CLI on the local catalog (no server),
    applied when the server next starts the compute."""
    uri = pgwake.create("roles", idle_timeout=600)
    pgwake.start()
    client = PgwakeClient(pgwake.api_url, ADMIN_TOKEN)
    with psycopg.connect(uri, sslmode="disable", autocommit=True, connect_timeout=60) as conn:
        conn.execute(f"create role bob login password '{BOB_OLD}'")
        bob_old = uri.replace(f"app.roles:{PASSWORD}@", f"bob.roles:{BOB_OLD}@")
        assert _user(bob_old) == "bob"

        changed = client.set_password("roles", role="bob", password="bob-new-password")
        assert "bob-new-password" not in repr(changed)
        assert changed.connection_uri.startswith("postgresql://bob.roles:bob-new-password@")
        assert _user(changed.connection_uri) == "bob"
        _refused(bob_old)
        assert conn.execute("select 1").fetchone() == (1,)  # open sessions carry on

    with pytest.raises(ApiError) as info:
        client.set_password("roles", role="nobody")
    assert (info.value.status, info.value.code) == (404, "role_not_found")
    with pytest.raises(ApiError) as info:
        client.set_password("roles", role="pgwake_admin")
    assert info.value.code == "role_not_found"

    pgwake.stop()  # the compute is suspended with the server
    local = pgwake.cli("endpoint", "password", "roles", "--password", "app-new-password")
    new_uri = local.stdout.strip().splitlines()[-1]
    assert new_uri.startswith("postgresql://app.roles:app-new-password@")
    pgwake.start()
    assert _user(new_uri) == "app"
    _refused(uri)


def test_serve_demo_again_says_how_to_set_a_new_password(pgwake: Pgwake) -> None:
    """The second ``serve --demo`` cannot show the password; it names the command that
    sets a new one, and that command's URI works."""

    pipes: list[IO[str]] = []

    def demo_lines() -> list[str]:
        offset = len(pgwake.log_text())
        with pgwake.log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pgwake.cli", "serve", "--demo"],
                env=pgwake.env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        pgwake.process = process  # the fixture stops it if the test fails
        assert process.stdout is not None
        pipes.append(process.stdout)
        lines = [process.stdout.readline().strip() for _ in range(2)]
        wait_for(lambda: "event=listening" in pgwake.log_text()[offset:], timeout=60)
        return lines

    try:
        first = demo_lines()
        assert first[1].startswith("postgresql://app.demo:")
        pgwake.stop(signal.SIGTERM)
        again = demo_lines()
        assert "`pgwake endpoint password demo` sets a new one" in again[0]
        assert again[1] == f"postgresql://app.demo@127.0.0.1:{pgwake.port}/app"
        new_uri = pgwake.cli("endpoint", "password", "demo").stdout.strip().splitlines()[-1]
        assert _user(new_uri) == "app"
    finally:
        pgwake.stop(signal.SIGTERM)
        for pipe in pipes:
            pipe.close()
