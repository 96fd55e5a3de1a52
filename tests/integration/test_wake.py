"""Wake on connect: psql and asyncpg reach a suspended endpoint; one start however many."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import uvloop

from pgwake.compute.postgresql_conf import COMMON_SETTINGS
from tests.integration.pgwake_fixture import Pgwake


def test_psql_and_asyncpg_wake_a_suspended_endpoint_once(pgwake: Pgwake) -> None:
    uri = pgwake.create("alpha")
    pgwake.start()
    assert pgwake.state("alpha") in (None, "suspended")
    assert pgwake.compute_starts("alpha") == 0  # creating an endpoint starts nothing

    # psql with libpq defaults (sslmode=prefer: TLS with the self-signed certificate).
    psql_uri = uri.replace("6432", str(pgwake.port))
    out = subprocess.run(
        ["psql", psql_uri, "-XAtc", "select current_user, 40 + 2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "app|42"

    async def with_asyncpg() -> str:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs("alpha"))
        try:
            return str(await conn.fetchval("select current_database()"))
        finally:
            await conn.close()

    assert uvloop.run(with_asyncpg()) == "app"
    assert pgwake.metric("pgwake_wakes_total", endpoint="alpha", outcome="success") == 1
    assert pgwake.compute_starts("alpha") == 1  # exactly one wake
    # The compute runs with what pgwake's postgresql.conf block says.
    assert pgwake.compute_settings("alpha", COMMON_SETTINGS) == COMMON_SETTINGS
    assert pgwake.state("alpha") == "running"


def test_200_concurrent_connects_to_a_suspended_endpoint_start_it_once(pgwake: Pgwake) -> None:
    pgwake.create("crowd")
    pgwake.start()

    async def one(index: int) -> int:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs("crowd"), timeout=60)
        try:
            return int(await conn.fetchval("select $1::int", index))
        finally:
            await conn.close()

    async def crowd() -> list[int | BaseException]:
        return await asyncio.gather(*(one(i) for i in range(200)), return_exceptions=True)

    results = uvloop.run(crowd())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert sorted(results) == list(range(200))  # type: ignore[type-var]
    assert pgwake.metric("pgwake_wakes_total", endpoint="crowd", outcome="success") == 1
    assert pgwake.compute_starts("crowd") == 1  # one wake


def test_a_big_server_log_is_set_aside_at_the_next_start(pgwake: Pgwake) -> None:
    pgwake.create("chatty")
    pgwake.start()
    log = pgwake.compute_dir("chatty") / "postgres.log"
    big = 17 * 1024 * 1024  # over the 16 MiB bound
    with open(log, "ab") as file:
        file.truncate(big)  # sparse: no real disk use

    async def wake() -> int:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs("chatty"))
        try:
            return int(await conn.fetchval("select 1"))
        finally:
            await conn.close()

    assert uvloop.run(wake()) == 1
    assert (log.parent / "postgres.log.1").stat().st_size == big
    assert log.stat().st_size < 1024 * 1024
    assert pgwake.compute_starts("chatty") == 1  # the fresh log has this start's lines
