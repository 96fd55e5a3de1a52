"""Idle sessions outlive their backend: the endpoint suspends under an open connection,
and the connection's next query re-attaches it, its settings and prepared statements as
the client left them."""

from __future__ import annotations

import threading

import psycopg
import pytest

from tests.integration.pgwake_fixture import Pgwake, wait_for


def test_an_idle_psycopg_connection_lets_the_compute_suspend_and_still_works(
    pgwake: Pgwake,
) -> None:
    pgwake.create("pool", idle_timeout=0.5)
    pgwake.start()
    with psycopg.connect(pgwake.dsn("pool"), autocommit=True) as conn:
        conn.execute("SET search_path = custom, public")
        conn.execute("SET statement_timeout = '7s'")
        conn.execute("SET application_name = 'parked-app'")
        conn.execute("PREPARE twice(int) AS SELECT $1 * 2")
        pid = conn.info.backend_pid
        first_backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert first_backend is not None
        pgwake.wait_state("pool", "suspended", timeout=15)
        wait_for(lambda: not pgwake.postgres_pids(), timeout=10)
        row = conn.execute(
            "SELECT current_setting('search_path'), current_setting('statement_timeout'), "
            "current_setting('application_name'), pg_backend_pid()"
        ).fetchone()
        assert row is not None
        assert row[:3] == ("custom, public", "7s", "parked-app")
        assert row[3] != first_backend[0]
        assert conn.execute("EXECUTE twice(21)").fetchone() == (42,)
        assert conn.info.backend_pid == pid  # what the client was told stays
    assert pgwake.metric("pgwake_reattaches_total", endpoint="pool", outcome="ok") == 1
    assert "event=parked" in pgwake.log_text()


def test_a_reattach_takes_a_backend_server_reuse_kept_for_the_same_startup(
    pgwake: Pgwake,
) -> None:
    pgwake.create("kept", idle_timeout=0.5)
    pgwake.start()
    dsn = pgwake.dsn("kept")
    with (
        psycopg.connect(dsn, autocommit=True) as first,
        psycopg.connect(dsn, autocommit=True) as second,
    ):
        second.execute("SET TimeZone = 'Asia/Tokyo'")
        pgwake.wait_state("kept", "suspended", timeout=15)
        first.execute("SELECT 1")  # wakes the compute, re-attached on a new login
        with psycopg.connect(dsn) as passer_by:  # ends cleanly: its backend is kept
            passer_by.execute("SELECT 1")
        wait_for(lambda: pgwake.metric("pgwake_server_reuse_total", endpoint="kept", event="kept"))
        row = second.execute("SELECT current_setting('TimeZone')").fetchone()
        assert row == ("Asia/Tokyo",)
        assert pgwake.metric("pgwake_server_reuse_total", endpoint="kept", event="reused") == 1
        assert pgwake.metric("pgwake_reattaches_total", endpoint="kept", outcome="ok") == 2


def test_a_backend_kept_after_a_reattach_goes_to_the_next_client_with_its_own_pid(
    pgwake: Pgwake,
) -> None:
    pgwake.create("rekept", idle_timeout=0.5)
    pgwake.start()
    dsn = pgwake.dsn("rekept")
    with psycopg.connect(dsn, autocommit=True) as parked:
        pgwake.wait_state("rekept", "suspended", timeout=15)
        # Awake, once woken, until the next client has come: its backend must be the one
        # kept (set while parked: a CLI run may take longer than the 0.5 s timeout).
        pgwake.cli("endpoint", "update", "rekept", "--idle-timeout", "60")
        row = parked.execute("SELECT pg_backend_pid()").fetchone()  # re-attached
        assert row is not None
        backend = row[0]
        assert backend != parked.info.backend_pid
    wait_for(lambda: pgwake.metric("pgwake_server_reuse_total", endpoint="rekept", event="kept"))
    with psycopg.connect(dsn, autocommit=True) as next_client:
        assert next_client.execute("SELECT pg_backend_pid()").fetchone() == (backend,)
        assert next_client.info.backend_pid == backend
        threading.Timer(0.3, next_client.cancel_safe).start()  # reaches that backend
        with pytest.raises(psycopg.errors.QueryCanceled):
            next_client.execute("SELECT pg_sleep(30)")
    assert pgwake.metric("pgwake_server_reuse_total", endpoint="rekept", event="reused") == 1
