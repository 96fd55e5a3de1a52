"""Suspend when idle; never while a session is open or a query runs; no data lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import uvloop

from tests.integration.pgwake_fixture import Pgwake, wait_for, wait_for_async


async def _connect(pgwake: Pgwake, endpoint: str) -> asyncpg.Connection:
    return await asyncpg.connect(**pgwake.asyncpg_kwargs(endpoint), timeout=60)


def test_idle_endpoint_is_suspended_and_its_process_ends(pgwake: Pgwake) -> None:
    pgwake.create("sleepy", idle_timeout=1)
    pgwake.start()

    async def touch() -> None:
        conn = await _connect(pgwake, "sleepy")
        await conn.fetchval("select 1")
        await conn.close()

    uvloop.run(touch())
    assert pgwake.state("sleepy") == "running"
    assert pgwake.postgres_pids()
    closed_at = time.monotonic()
    pgwake.wait_state("sleepy", "suspended", timeout=15)
    assert time.monotonic() - closed_at >= 0.9  # not before the idle timeout
    wait_for(lambda: not pgwake.postgres_pids(), timeout=10)
    assert pgwake.metric("pgwake_suspends_total", endpoint="sleepy", reason="idle") == 1
    assert "event=transition endpoint=sleepy from=suspending to=suspended" in pgwake.log_text()
    # The compute logged a clean (fast) shutdown, not a crash.
    log = (pgwake.compute_dir("sleepy") / "postgres.log").read_text()
    assert "received fast shutdown request" in log
    assert "database system is shut down" in log


def test_never_suspended_while_a_query_runs_or_a_transaction_is_open(pgwake: Pgwake) -> None:
    pgwake.create("busy", idle_timeout=0.5)
    pgwake.start()

    async def scenario() -> None:
        conn = await _connect(pgwake, "busy")
        # A long query, 4x the idle timeout.
        assert await conn.fetchval("select pg_sleep(2)") is None
        assert pgwake.state("busy") == "running"
        # An open transaction, idle for 6x the idle timeout.
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("create temporary table t (x int) on commit drop")
        await asyncio.sleep(3)
        assert pgwake.state("busy") == "running"
        await conn.execute("insert into t values (7)")
        assert await conn.fetchval("select x from t") == 7
        await transaction.commit()
        # Idle outside a transaction: the endpoint suspends under the open connection.
        pgwake.wait_state("busy", "suspended", timeout=15)
        assert await conn.fetchval("select 7") == 7
        await conn.close()

    uvloop.run(scenario())
    pgwake.wait_state("busy", "suspended", timeout=15)
    # The first connect, and the query on the parked connection.
    assert pgwake.metric("pgwake_wakes_total", endpoint="busy", outcome="success") == 2


def test_a_direct_session_on_the_compute_keeps_it_awake(pgwake: Pgwake) -> None:
    """Idleness is the compute's own view: a session that bypasses pgwake counts too."""
    pgwake.create("direct", idle_timeout=0.5)
    pgwake.start()

    async def scenario() -> None:
        via_proxy = await _connect(pgwake, "direct")
        await via_proxy.close()
        socket_dir = pgwake.compute_dir("direct") / "run"
        admin_password = (pgwake.state_dir / "admin-password").read_text().strip()
        direct = await asyncpg.connect(
            host=str(socket_dir), user="pgwake_admin", password=admin_password, database="postgres"
        )
        await asyncio.sleep(2.5)
        assert pgwake.state("direct") == "running"
        await direct.close()

    uvloop.run(scenario())
    pgwake.wait_state("direct", "suspended", timeout=15)


def test_fifty_suspend_wake_cycles_keep_every_committed_row(pgwake: Pgwake) -> None:
    pgwake.create("cycles", idle_timeout=0.2)
    pgwake.start()

    async def cycle(index: int) -> None:
        conn = await _connect(pgwake, "cycles")
        try:
            if index == 0:
                await conn.execute("create table t (i int primary key, payload text)")
            await conn.execute("insert into t values ($1, repeat('x', 1000))", index)
        finally:
            await conn.close()

    for index in range(50):
        suspends = pgwake.metric("pgwake_suspends_total", endpoint="cycles", reason="idle")
        uvloop.run(cycle(index))
        wait_for(
            lambda s=suspends: (
                pgwake.metric("pgwake_suspends_total", endpoint="cycles", reason="idle") > s
            ),
            timeout=15,
        )

    async def check() -> list[int]:
        conn = await _connect(pgwake, "cycles")
        try:
            return [r["i"] for r in await conn.fetch("select i from t order by i")]
        finally:
            await conn.close()

    assert uvloop.run(check()) == list(range(50))
    assert pgwake.metric("pgwake_wakes_total", endpoint="cycles", outcome="success") == 51
    log = (pgwake.compute_dir("cycles") / "postgres.log").read_text()
    # Every stop was a clean shutdown: the server never had to recover from a crash.
    assert "was interrupted" not in log
    assert "database system was not properly shut down" not in log


def _sessions(pgwake: Pgwake, endpoint: str) -> float:
    return pgwake.metric("pgwake_client_connections_active", endpoint=endpoint)


def _child_named(parent: int, name: bytes) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == parent and name in cmdline:
            return int(entry.name)
    raise AssertionError(f"no child {name!r} of {parent}")


def test_a_connect_while_suspending_waits_for_the_stop_then_wakes(pgwake: Pgwake) -> None:
    """Found by bench/soak.py: a session that arrived during a suspend logged in to the
    dying compute and got 57P03 "shutting down" (or a session killed a moment later)."""
    pgwake.create("racy", idle_timeout=1)
    pgwake.start()

    async def scenario() -> int:
        conn = await _connect(pgwake, "racy")
        await conn.close()
        pid_file = pgwake.compute_dir("racy") / "data" / "postmaster.pid"
        checkpointer = _child_named(int(pid_file.read_text().split()[0]), b"checkpointer")
        os.kill(checkpointer, signal.SIGSTOP)  # the shutdown checkpoint waits: suspending lasts
        compute_log = pgwake.compute_dir("racy") / "postgres.log"
        try:
            await wait_for_async(lambda: pgwake.state("racy") == "suspending")
            await wait_for_async(
                lambda: "received fast shutdown request" in compute_log.read_text()
            )
            arriving = asyncio.create_task(_connect(pgwake, "racy"))
            # Authenticated, holding its slot: now it waits for the stop...
            await wait_for_async(lambda: _sessions(pgwake, "racy") == 1)
            await asyncio.sleep(0.5)
            # ...instead of failing, while the stop cannot finish.
            assert not arriving.done()
            assert pgwake.state("racy") == "suspending"
        finally:
            os.kill(checkpointer, signal.SIGCONT)
        conn = await arriving
        try:
            return int(await conn.fetchval("SELECT 7"))
        finally:
            await conn.close()

    assert uvloop.run(scenario()) == 7
    assert pgwake.compute_starts("racy") == 2
    assert pgwake.metric("pgwake_suspends_total", endpoint="racy", reason="idle") == 1
