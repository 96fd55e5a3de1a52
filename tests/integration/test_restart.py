"""pgwake restarts: computes are adopted after kill -9; SIGTERM drains and suspends."""

from __future__ import annotations

import signal

import asyncpg
import psycopg
import pytest
import uvloop

from tests.integration.pgwake_fixture import Pgwake, wait_for, wait_for_async


def _postmaster_pid(pgwake: Pgwake, endpoint: str) -> int:
    return int((pgwake.compute_dir(endpoint) / "data" / "postmaster.pid").read_text().split()[0])


def test_kill_9_then_restart_adopts_the_running_compute(pgwake: Pgwake) -> None:
    pgwake.create("survivor", idle_timeout=2)
    pgwake.start()

    async def write(value: int) -> None:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs("survivor"), timeout=60)
        try:
            await conn.execute("create table if not exists s (i int)")
            await conn.execute("insert into s values ($1)", value)
        finally:
            await conn.close()

    uvloop.run(write(1))
    postmaster = _postmaster_pid(pgwake, "survivor")
    pgwake.kill9()
    assert postmaster in pgwake.postgres_pids()  # the compute outlived pgwake

    pgwake.start()
    assert "adopted=1" in pgwake.log_text()
    assert pgwake.state("survivor") == "running"
    uvloop.run(write(2))
    assert _postmaster_pid(pgwake, "survivor") == postmaster  # same process, no new start
    assert pgwake.metric("pgwake_wakes_total", endpoint="survivor", outcome="success") == 0
    # The idle timer was re-armed: the adopted compute is suspended in time.
    pgwake.wait_state("survivor", "suspended", timeout=20)
    wait_for(lambda: not pgwake.postgres_pids(), timeout=10)

    async def count() -> int:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs("survivor"), timeout=60)
        try:
            return int(await conn.fetchval("select count(*) from s"))
        finally:
            await conn.close()

    assert uvloop.run(count()) == 2


def test_sigterm_drains_sessions_then_suspends_every_compute(pgwake: Pgwake) -> None:
    pgwake.settings["drain_timeout"] = "5"
    pgwake.create("drain-a")
    pgwake.create("drain-b")
    pgwake.start()

    async def scenario() -> None:
        a = await asyncpg.connect(**pgwake.asyncpg_kwargs("drain-a"), timeout=60)
        b = await asyncpg.connect(**pgwake.asyncpg_kwargs("drain-b"), timeout=60)
        await b.close()
        assert pgwake.process is not None
        pgwake.process.send_signal(signal.SIGTERM)
        await wait_for_async(lambda: "event=shutdown_requested" in pgwake.log_text())
        # Draining: no new sessions, but the open one keeps working.
        assert await a.fetchval("select 11") == 11
        try:
            late = await asyncpg.connect(**pgwake.asyncpg_kwargs("drain-a"), timeout=5)
        except (OSError, asyncpg.PostgresError):
            pass
        else:
            await late.close()
            raise AssertionError("a new session was accepted while draining")
        await a.close()

    uvloop.run(scenario())
    assert pgwake.process is not None
    assert pgwake.process.wait(30) == 0
    assert not pgwake.postgres_pids()
    for endpoint in ("drain-a", "drain-b"):
        log = (pgwake.compute_dir(endpoint) / "data" / ".." / "postgres.log").read_text()
        assert log.rstrip().endswith("database system is shut down")


def test_drain_timeout_closes_lingering_sessions_with_57P01(pgwake: Pgwake) -> None:
    pgwake.settings["drain_timeout"] = "1"
    pgwake.create("linger")
    pgwake.start()
    with psycopg.connect(pgwake.dsn("linger"), connect_timeout=60) as conn:
        assert pgwake.process is not None
        pgwake.process.send_signal(signal.SIGTERM)
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select pg_sleep(10)")
    # The compute's own fast shutdown told the client, in a well-formed ErrorResponse.
    assert info.value.sqlstate == "57P01"
    assert "terminating connection due to administrator command" in str(info.value)
    assert pgwake.process.wait(30) == 0
    assert not pgwake.postgres_pids()
