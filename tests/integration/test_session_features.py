"""What runs inside a relayed session: cancel, COPY both ways, LISTEN/NOTIFY, big results."""

from __future__ import annotations

import asyncio
import io
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest
import uvloop

from tests.integration.pgwake_fixture import Pgwake


@pytest.fixture(scope="module")
def feature_endpoint(shared_pgwake: Pgwake) -> tuple[Pgwake, str]:
    shared_pgwake.create("features")
    return shared_pgwake, "features"


def test_asyncpg_cancel_reaches_the_backend(feature_endpoint: tuple[Pgwake, str]) -> None:
    pgwake, endpoint = feature_endpoint

    async def scenario() -> float:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs(endpoint), timeout=60)
        try:
            started = time.monotonic()
            # On timeout asyncpg sends a CancelRequest on a new connection through pgwake.
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("select pg_sleep(30)", timeout=0.5)
            assert await conn.fetchval("select 1") == 1  # the session is usable again
            return time.monotonic() - started
        finally:
            await conn.close()

    assert uvloop.run(scenario()) < 5
    assert pgwake.metric("pgwake_cancel_requests_total", outcome="forwarded") >= 1


def test_libpq_cancel_with_the_real_pid_and_pgwakes_secret(
    feature_endpoint: tuple[Pgwake, str],
) -> None:
    pgwake, endpoint = feature_endpoint
    with psycopg.connect(pgwake.dsn(endpoint), connect_timeout=60) as conn:
        backend_pid = conn.execute("select pg_backend_pid()").fetchone()
        assert backend_pid is not None
        # The pid the client holds is the backend's; the secret beside it is pgwake's.
        assert conn.info.backend_pid == backend_pid[0]
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        timer.join()
        assert time.monotonic() - started < 5


def test_psql_copy_in_and_out(feature_endpoint: tuple[Pgwake, str]) -> None:
    pgwake, endpoint = feature_endpoint
    rows = "".join(f"{i}\tline {i}\n" for i in range(10_000))
    dsn = pgwake.dsn(endpoint)
    subprocess.run(
        ["psql", dsn, "-Xqc", "drop table if exists c; create table c (i int, t text)"],
        check=True,
        timeout=60,
    )
    copy_in = subprocess.run(
        ["psql", dsn, "-Xqc", r"\copy c from stdin"],
        input=rows,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert copy_in.returncode == 0, copy_in.stderr
    copy_out = subprocess.run(
        ["psql", dsn, "-Xqc", r"\copy (select * from c order by i) to stdout"],
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert copy_out.returncode == 0, copy_out.stderr
    assert copy_out.stdout == rows


def test_asyncpg_copy_records(feature_endpoint: tuple[Pgwake, str]) -> None:
    pgwake, endpoint = feature_endpoint

    async def scenario() -> bytes:
        conn = await asyncpg.connect(**pgwake.asyncpg_kwargs(endpoint), timeout=60)
        try:
            await conn.execute("create temp table r (i int, t text)")
            await conn.copy_records_to_table("r", records=[(i, f"r{i}") for i in range(5000)])
            out = io.BytesIO()
            await conn.copy_from_query("select sum(i) from r", output=out)
            return out.getvalue()
        finally:
            await conn.close()

    assert uvloop.run(scenario()) == f"{sum(range(5000))}\n".encode()


def test_listen_notify(feature_endpoint: tuple[Pgwake, str]) -> None:
    pgwake, endpoint = feature_endpoint

    async def scenario() -> list[str]:
        listener = await asyncpg.connect(**pgwake.asyncpg_kwargs(endpoint), timeout=60)
        sender = await asyncpg.connect(**pgwake.asyncpg_kwargs(endpoint), timeout=60)
        received: asyncio.Queue[str] = asyncio.Queue()
        try:
            await listener.add_listener("news", lambda *args: received.put_nowait(args[3]))
            for word in ("one", "two", "three"):
                await sender.execute("select pg_notify('news', $1)", word)
            return [await asyncio.wait_for(received.get(), 10) for _ in range(3)]
        finally:
            await listener.close()
            await sender.close()

    assert uvloop.run(scenario()) == ["one", "two", "three"]


def test_a_100_mb_result(feature_endpoint: tuple[Pgwake, str]) -> None:
    pgwake, endpoint = feature_endpoint
    with psycopg.connect(pgwake.dsn(endpoint), connect_timeout=60) as conn:
        total = 0
        rows = 0
        with conn.cursor(name="big") as cursor:  # server-side cursor: streamed in batches
            cursor.itersize = 5000
            cursor.execute("select i, repeat('x', 1000) from generate_series(1, 100000) i")
            for _, text in cursor:
                total += len(text)
                rows += 1
    assert rows == 100_000
    assert total == 100_000_000
    # And one unbatched 100 MB result set through psql.
    out = subprocess.run(
        [
            "psql",
            pgwake.dsn(endpoint),
            "-XAtc",
            "select repeat(chr(97 + i % 26), 1000) from generate_series(0, 99999) i",
        ],
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert len(lines) == 100_000
    assert sum(map(len, lines)) == 100_000_000
    assert lines[27] == b"b" * 1000
