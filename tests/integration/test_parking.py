"""Idle sessions outlive their backend: the endpoint suspends under an open connection,
and the connection's next query re-attaches it, its settings and prepared statements as
the client left them."""

from __future__ import annotations

import psycopg

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
