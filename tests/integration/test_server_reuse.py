"""server_reuse_seconds: a backend whose client ended at rest serves the next client of the
same kind, reset; anything else is closed as before."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.pgwake_fixture import Pgwake, serve, wait_for

ENDPOINT = "reuse"


@pytest.fixture(scope="module")
def server() -> Iterator[Pgwake]:
    with serve([ENDPOINT]) as pgwake:  # on by default (30 s)
        yield pgwake


def _backend_pid(server: Pgwake, endpoint: str = ENDPOINT, **params: str) -> int:
    with psycopg.connect(server.dsn(endpoint, **params), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _alive(pid: int) -> bool:
    """Whether the process ``pid`` (a compute backend) still runs."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _kept(server: Pgwake, endpoint: str = ENDPOINT) -> float:
    return server.metric("pgwake_server_reuse_total", endpoint=endpoint, event="kept")


def _next_pid_after_keep(server: Pgwake, previous_kept: float, **params: str) -> int:
    # The reset runs after the client has gone: wait until the backend is kept.
    wait_for(lambda: _kept(server) > previous_kept)
    return _backend_pid(server, **params)


def test_a_session_that_ends_at_rest_leaves_its_backend_to_the_next_client(
    server: Pgwake,
) -> None:
    kept = _kept(server)
    first = _backend_pid(server)
    assert _next_pid_after_keep(server, kept) == first
    assert server.metric("pgwake_server_reuse_total", endpoint=ENDPOINT, event="reused") >= 1
    assert "event=reused" in server.log_text()


def test_the_next_client_finds_a_reset_session(server: Pgwake) -> None:
    kept = _kept(server)
    with psycopg.connect(server.dsn(ENDPOINT), autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS ledger; CREATE TABLE ledger (n int)")
        admin.execute("DROP ROLE IF EXISTS helper; CREATE ROLE helper; GRANT helper TO app")
        admin.execute("GRANT ALL ON ledger TO helper")
    # The admin's backend is kept first, so that the keep awaited below is the one of the
    # session under test (its reset still runs while an earlier keep may be counted).
    wait_for(lambda: _kept(server) > kept)
    kept = _kept(server)
    # No ``with``: psycopg would commit on the way out, and the transaction must stay open.
    conn = psycopg.connect(server.dsn(ENDPOINT), autocommit=True)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    used = row[0]
    conn.execute("CREATE TEMP TABLE scratch (x int)")
    conn.execute("SET work_mem = '77MB'")
    conn.execute("SET application_name = 'changed'")
    conn.execute("PREPARE stale AS SELECT 1")
    conn.execute("SELECT pg_advisory_lock(4242)")
    conn.execute("LISTEN somewhere")
    conn.execute("SET ROLE helper")
    # Left open: the insert must not survive, as if the backend had exited.
    conn.execute("BEGIN")
    conn.execute("INSERT INTO ledger VALUES (1)")
    conn.close()
    wait_for(lambda: _kept(server) > kept)
    with psycopg.connect(server.dsn(ENDPOINT, application_name="tidy"), autocommit=True) as conn:
        pass  # another application_name is another kind of session: not this backend
    with psycopg.connect(server.dsn(ENDPOINT), autocommit=True) as conn:
        checks = conn.execute(
            """SELECT pg_backend_pid(),
                      (SELECT count(*) FROM pg_class WHERE relname = 'scratch'),
                      current_setting('work_mem'),
                      current_setting('application_name'),
                      (SELECT count(*) FROM pg_prepared_statements),
                      (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'),
                      (SELECT count(*) FROM pg_listening_channels()),
                      current_user,
                      (SELECT count(*) FROM ledger)"""
        ).fetchone()
        # What the client was told at login: the startup's application_name, not 'changed'.
        reported = conn.info.parameter_status("application_name")
    assert checks == (used, 0, "4MB", "", 0, 0, 0, "app", 0)
    assert reported == ""


def test_different_startup_parameters_get_their_own_backend(server: Pgwake) -> None:
    kept = _kept(server)
    plain = _backend_pid(server)
    named = _next_pid_after_keep(server, kept, application_name="other")
    assert named != plain
    # Its backend is kept too, under its own startup (and the next test starts settled).
    wait_for(lambda: _kept(server) >= kept + 2)


def test_a_client_that_drops_its_connection_does_not_leave_its_backend(
    server: Pgwake,
) -> None:
    kept = _kept(server)
    conn = psycopg.connect(server.dsn(ENDPOINT), autocommit=True)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    dropped = row[0]
    # The connection goes away without a Terminate message (a killed client, a cut
    # network): at rest, but not ended by the client, so not kept.
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)
    wait_for(lambda: not _alive(dropped))
    conn.close()
    assert _kept(server) == kept
    assert _backend_pid(server) != dropped


def test_a_client_that_leaves_mid_query_does_not_leave_its_backend(server: Pgwake) -> None:
    conn = psycopg.connect(server.dsn(ENDPOINT), autocommit=True)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    busy = row[0]
    conn.pgconn.send_query(b"SELECT pg_sleep(1)")
    conn.close()  # Terminate while the backend still works for it
    wait_for(lambda: not _alive(busy))  # not kept: it ends once its query does
    assert _backend_pid(server) != busy


def test_cancel_reaches_a_reused_backend(server: Pgwake) -> None:
    kept = _kept(server)
    first = _backend_pid(server)
    wait_for(lambda: _kept(server) > kept)
    with psycopg.connect(server.dsn(ENDPOINT), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        assert row[0] == first
        threading.Timer(0.5, conn.cancel).start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10


def test_kept_backends_do_not_keep_an_idle_endpoint_awake() -> None:
    with serve({"sleepy": {"idle_timeout": 1}}, server_reuse_seconds="300") as pgwake:
        assert _backend_pid(pgwake, "sleepy") > 0
        wait_for(lambda: _kept(pgwake, "sleepy") >= 1)
        pgwake.wait_state("sleepy", "suspended", timeout=15)
        assert pgwake.metric("pgwake_server_reuse_total", endpoint="sleepy", event="idle") == 1
        assert pgwake.postgres_pids() == []


def test_kept_backends_expire_and_zero_turns_reuse_off() -> None:
    with serve(["brief"], server_reuse_seconds="0.5") as pgwake:
        first = _backend_pid(pgwake, "brief")
        wait_for(lambda: _kept(pgwake, "brief") >= 1)
        wait_for(
            lambda: (
                pgwake.metric("pgwake_server_reuse_total", endpoint="brief", event="expired") >= 1
            )
        )
        assert _backend_pid(pgwake, "brief") != first
    with serve(["plain"], server_reuse_seconds="0") as pgwake:
        first = _backend_pid(pgwake, "plain")
        wait_for(lambda: not _alive(first))
        assert _backend_pid(pgwake, "plain") != first
        assert _kept(pgwake, "plain") == 0
