"""A compute that cannot start: 57P03 with the reason, others unaffected, no retry storm.
A compute that dies under a session: the client is told (57P01), the next connect wakes it."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import time

import asyncpg
import psycopg
import pytest
import uvloop

from tests.integration.pgwake_fixture import Pgwake, wait_for


async def _connect_error(pgwake: Pgwake, endpoint: str) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(**pgwake.asyncpg_kwargs(endpoint), timeout=60)
    return info.value


def test_broken_compute_gives_57P03_with_reason_and_backs_off(pgwake: Pgwake) -> None:
    pgwake.create("broken")
    pgwake.create("healthy")
    conf = pgwake.compute_dir("broken") / "data" / "postgresql.conf"
    conf.write_text(conf.read_text() + "\nthis is not a setting\n")
    pgwake.start()

    async def scenario() -> None:
        first = await _connect_error(pgwake, "broken")
        assert first.sqlstate == "57P03"
        assert "could not start" in str(first)
        assert "configuration file" in (first.detail or "")
        assert str(pgwake.state_dir) not in (first.detail or "")  # no host paths leak
        # A burst of 30 connects within the back-off window: no new start attempts.
        errors = await asyncio.gather(*(_connect_error(pgwake, "broken") for _ in range(30)))
        assert {e.sqlstate for e in errors} == {"57P03"}
        assert all("try to start it again" in (e.hint or "") for e in errors)
        # The healthy endpoint keeps working meanwhile.
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs("healthy"), timeout=60)
        assert await conn.fetchval("select 1") == 1
        await conn.close()

    uvloop.run(scenario())
    assert pgwake.metric("pgwake_wakes_total", endpoint="broken", outcome="failure") == 1
    assert pgwake.state("broken") == "failed"

    # After the back-off (1 s for the first failure) one connect retries, and fails again;
    # the next back-off doubles.
    time.sleep(1.2)
    uvloop.run(_connect_error(pgwake, "broken"))
    assert pgwake.metric("pgwake_wakes_total", endpoint="broken", outcome="failure") == 2

    # Fix the config: after the back-off the endpoint wakes normally.
    conf.write_text(conf.read_text().replace("this is not a setting", ""))
    time.sleep(2.2)

    async def works() -> int:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs("broken"), timeout=60)
        try:
            return int(await conn.fetchval("select 5"))
        finally:
            await conn.close()

    assert uvloop.run(works()) == 5
    assert pgwake.state("broken") == "running"


def test_compute_killed_under_a_session_wakes_again(pgwake: Pgwake) -> None:
    """SIGKILL of the postmaster: the session errors, the next connect gets a new compute."""
    pgwake.create("fragile")
    pgwake.start()

    async def scenario() -> None:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs("fragile"), timeout=60)
        await conn.execute("create table kept (i int)")
        await conn.execute("insert into kept values (1)")
        postmaster = int(
            (pgwake.compute_dir("fragile") / "data" / "postmaster.pid").read_text().split()[0]
        )
        os.kill(postmaster, signal.SIGKILL)
        # Orphaned backends notice the postmaster's death and exit on their own.
        deadline = time.monotonic() + 20
        while pgwake.postgres_pids() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not pgwake.postgres_pids()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("select 1")
        await conn.close()
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs("fragile"), timeout=60)
        assert await conn.fetchval("select count(*) from kept") == 1
        await conn.close()

    uvloop.run(scenario())
    assert pgwake.metric("pgwake_suspends_total", endpoint="fragile", reason="crashed") == 1


def test_a_compute_killed_at_rest_tells_the_relayed_client_57P01(pgwake: Pgwake) -> None:
    """kill -9 of the whole compute (the OOM killer, a container stop): its backend dies
    without a word, so pgwake says why before it closes the client's connection."""
    pgwake.create("crashy")
    pgwake.start()
    with psycopg.connect(pgwake.dsn("crashy"), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = int(row[0])
        postmaster = int(
            (pgwake.compute_dir("crashy") / "data" / "postmaster.pid").read_text().split()[0]
        )
        # The backend first: killed after the postmaster, it could notice the postmaster's
        # death and send its own FATAL 57P01 ("unexpected postmaster exit").
        os.kill(backend, signal.SIGKILL)
        os.kill(postmaster, signal.SIGKILL)
        wait_for(lambda: not pgwake.postgres_pids(), timeout=20)
        # pgwake writes the error as soon as the compute's side closes.
        readable, _, _ = select.select([conn.fileno()], [], [], 20)
        assert readable, "pgwake said nothing to the client"
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("SELECT 1")
        assert info.value.sqlstate == "57P01"
        assert info.value.diag.severity_nonlocalized == "FATAL"
        assert "compute stopped unexpectedly" in (info.value.diag.message_primary or "")
        assert "Reconnect" in (info.value.diag.message_hint or "")
    assert pgwake.metric("pgwake_client_errors_total", sqlstate="57P01", kind="compute") == 1
    # A new connection works: the endpoint starts again.
    with psycopg.connect(pgwake.dsn("crashy"), autocommit=True) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert pgwake.compute_starts("crashy") == 2
