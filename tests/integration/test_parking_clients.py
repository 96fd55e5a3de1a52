"""Parking with every client: idle connections stay open while their endpoint suspends.

Each client holds its idle connection(s) with some session state (settings set with
``SET``, prepared statements of its own: psycopg's ``_pg3_*``, asyncpg's
``__asyncpg_stmt_*__``, pgjdbc's ``S_*``, node-postgres' named query, a SQL ``PREPARE``),
then waits, sockets open, until the endpoint is suspended and its compute's processes are
gone. Then it uses every connection again: the query works, the settings are as it left
them, its prepared statements still exist (listed in ``pg_prepared_statements``, and
executed again through the client's own cache), and ``pg_backend_pid()`` is new. Every
session was parked and re-attached, no re-attach failed and pgwake sent no error.

The scenarios take the server, the endpoint and a "compute gone" check, so
``tests/docker/test_parking_docker.py`` runs them against docker computes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import asyncpg
import psycopg
import sqlalchemy
from sqlalchemy.pool import QueuePool

from pgwake.api.client import PgwakeClient
from pgwake.metrics import REATTACH_OUTCOMES
from tests.integration.pgwake_fixture import (
    ADMIN_TOKEN,
    PASSWORD,
    Pgwake,
    postgres_pids_under,
    wait_for,
)
from tests.integration.test_client_matrix import NODE_DIR, need_file, need_program

#: Short enough to keep the module fast, long enough for a client to finish its setup.
IDLE_TIMEOUT = 1.0
#: Seconds a client's answer may take (a wake included).
ANSWER_TIMEOUT = 60.0
#: The settings every scenario sets, in the order ``STATE_QUERY`` reports them.
SETTINGS = ("search_path", "statement_timeout", "TimeZone", "application_name")
STATE_QUERY = (
    "SELECT pg_backend_pid(), current_setting('search_path'), "
    "current_setting('statement_timeout'), current_setting('TimeZone'), "
    "current_setting('application_name'), "
    "(SELECT string_agg(name, ',' ORDER BY name) FROM pg_prepared_statements), "
    "(SELECT extract(epoch FROM backend_start)::float8 FROM pg_stat_activity "
    "WHERE pid = pg_backend_pid())"
)


def set_statements(application_name: str) -> list[str]:
    """The ``SET``s every scenario gives its sessions."""
    return [
        "SET search_path = parked, public",
        "SET statement_timeout = '7s'",
        "SET TimeZone = 'Asia/Tokyo'",
        f"SET application_name = '{application_name}'",
    ]


def expected_settings(application_name: str) -> tuple[str, ...]:
    return ("parked, public", "7s", "Asia/Tokyo", application_name)


@dataclass(frozen=True)
class SessionView:
    """What ``STATE_QUERY`` saw of one session."""

    pid: int
    settings: tuple[str, ...]
    statements: tuple[str, ...]
    #: When the backend started (epoch seconds).
    started: float

    @classmethod
    def of(cls, row: tuple[object, ...] | None) -> SessionView:
        assert row is not None
        pid, *settings, statements, started = row
        names = tuple(str(statements).split(",")) if statements else ()
        return cls(
            int(str(pid)), tuple(str(value) for value in settings), names, float(str(started))
        )


def local_compute_gone(server: Pgwake, endpoint: str) -> Callable[[], bool]:
    """Whether ``endpoint``'s postgres processes have all exited."""
    return lambda: not postgres_pids_under(server.compute_dir(endpoint))


@dataclass
class Parking:
    """One endpoint whose sessions are to be parked, and the checks around it."""

    server: Pgwake
    endpoint: str
    compute_gone: Callable[[], bool]

    def wait_parked(self, sessions: int) -> None:
        """Return once the endpoint is suspended, its compute is gone and ``sessions``
        sessions are parked (none left on a backend)."""
        self.server.wait_state(self.endpoint, "suspended", timeout=60)
        wait_for(self.compute_gone, timeout=60)
        api = PgwakeClient(self.server.api_url, ADMIN_TOKEN)
        states = api.get_endpoint(self.endpoint).session_states
        assert states == {"active": 0, "idle": 0, "parked": sessions, "pinned": 0}, states

    def reattaches(self, outcome: str) -> float:
        return self.server.metric(
            "pgwake_reattaches_total", endpoint=self.endpoint, outcome=outcome
        )

    def client_errors(self) -> float:
        return sum(
            value
            for (name, _), value in self.server.metrics().items()
            if name == "pgwake_client_errors_total"
        )


@contextlib.contextmanager
def parking(
    server: Pgwake, endpoint: str, sessions: int, compute_gone: Callable[[], bool]
) -> Iterator[Parking]:
    """Around a scenario on ``endpoint`` (new, so its counters start at zero): each of
    its ``sessions`` was parked and re-attached, none failed, and pgwake sent no client
    an error."""
    watch = Parking(server, endpoint, compute_gone)
    errors = watch.client_errors()
    yield watch
    assert watch.reattaches("ok") >= sessions
    failed = {outcome: watch.reattaches(outcome) for outcome in REATTACH_OUTCOMES[1:]}
    assert not any(failed.values()), failed
    parks = server.metric("pgwake_parks_total", endpoint=endpoint, outcome="parked")
    assert parks >= sessions
    assert server.metric("pgwake_parks_total", endpoint=endpoint, outcome="failed") == 0
    assert watch.client_errors() == errors
    reattached = re.findall(rf"event=reattached conn=\w+ endpoint={endpoint} ", server.log_text())
    assert len(reattached) >= sessions


def assert_restored(before: SessionView, after: SessionView, *, same_pid_possible: bool) -> None:
    """The settings and prepared statements as before, on a backend started later (and,
    unless process ids restart with the compute, with another pid)."""
    assert after.settings == before.settings
    assert after.statements == before.statements
    assert after.started > before.started
    if not same_pid_possible:
        assert after.pid != before.pid


# -- the scenarios (shared with the docker tests) ----------------------------------------------


def psycopg_scenario(
    server: Pgwake,
    endpoint: str,
    compute_gone: Callable[[], bool],
    *,
    same_pid_possible: bool = False,
) -> None:
    """psycopg 3 with ``prepare_threshold=0``: every query is a named server-side
    statement (``_pg3_N``) from its first execution; plus a SQL ``PREPARE``."""
    with (
        parking(server, endpoint, 1, compute_gone) as watch,
        psycopg.connect(server.dsn(endpoint), autocommit=True, prepare_threshold=0) as conn,
    ):
        for statement in set_statements("psycopg-parked"):
            conn.execute(statement)
        conn.execute("PREPARE twice(int) AS SELECT $1 * 2")
        assert conn.execute("SELECT %s::int + 1", [41]).fetchone() == (42,)
        before = SessionView.of(conn.execute(STATE_QUERY).fetchone())
        assert before.settings == expected_settings("psycopg-parked")
        assert "twice" in before.statements
        assert any(name.startswith("_pg3_") for name in before.statements), before
        told_pid = conn.info.backend_pid

        watch.wait_parked(1)

        after = SessionView.of(conn.execute(STATE_QUERY).fetchone())
        assert_restored(before, after, same_pid_possible=same_pid_possible)
        assert conn.execute("SELECT %s::int + 1", [1]).fetchone() == (2,)  # Bind, no Parse
        assert conn.execute("EXECUTE twice(21)").fetchone() == (42,)
        assert conn.info.backend_pid == told_pid  # what the client was told stays
        assert conn.info.parameter_status("application_name") == "psycopg-parked"
        assert conn.info.timezone.key == "Asia/Tokyo"  # type: ignore[attr-defined]


def asyncpg_scenario(
    server: Pgwake,
    endpoint: str,
    compute_gone: Callable[[], bool],
    *,
    same_pid_possible: bool = False,
) -> None:
    """asyncpg's statement cache: a parameterised query is prepared once under
    ``__asyncpg_stmt_N__`` and bound by that name afterwards; plus ``Connection.prepare``."""

    async def run() -> None:
        with parking(server, endpoint, 1, compute_gone) as watch:
            conn = await asyncpg.connect(**server.asyncpg_kwargs(endpoint))
            try:
                for statement in set_statements("asyncpg-parked"):
                    await conn.execute(statement)
                assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
                twice = await conn.prepare("SELECT $1::int * 2")
                before = SessionView.of(tuple(await conn.fetchrow(STATE_QUERY) or ()))
                assert before.settings == expected_settings("asyncpg-parked")
                cached = [name for name in before.statements if name.startswith("__asyncpg_stmt_")]
                assert len(cached) == 3, before  # the two queries, and the state's own

                await asyncio.to_thread(watch.wait_parked, 1)

                after = SessionView.of(tuple(await conn.fetchrow(STATE_QUERY) or ()))
                assert_restored(before, after, same_pid_possible=same_pid_possible)
                assert await conn.fetchval("SELECT $1::int + 1", 1) == 2
                assert await twice.fetchval(21) == 42
                assert conn.get_settings().application_name == "asyncpg-parked"
            finally:
                await conn.close()

    asyncio.run(run())


#: The SQLAlchemy pool's size; all of it is checked out at once, then returned.
POOL_SIZE = 5


def sqlalchemy_pool_scenario(
    server: Pgwake,
    endpoint: str,
    compute_gone: Callable[[], bool],
    *,
    same_pid_possible: bool = False,
) -> None:
    """SQLAlchemy's ``QueuePool`` of 5 psycopg connections (server-prepared from the first
    execution), each with settings of its own, idle in the pool while the endpoint
    suspends; the pool hands the same 5 out again."""
    dsn = server.dsn(endpoint)
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn, prepare_threshold=0),
        poolclass=QueuePool,
        pool_size=POOL_SIZE,
        max_overflow=0,
    )
    try:
        with parking(server, endpoint, POOL_SIZE, compute_gone) as watch:
            before: dict[str, SessionView] = {}
            with contextlib.ExitStack() as checked_out:
                for i in range(POOL_SIZE):
                    conn = checked_out.enter_context(engine.connect())
                    for statement in set_statements(f"pool-{i}"):
                        conn.exec_driver_sql(statement)
                    query = sqlalchemy.text("SELECT CAST(:n AS int) + 1")
                    assert conn.execute(query, {"n": i}).scalar() == i + 1
                    view = SessionView.of(tuple(conn.exec_driver_sql(STATE_QUERY).one()))
                    conn.commit()  # the SETs outlive the transaction
                    assert view.settings == expected_settings(f"pool-{i}")
                    before[view.settings[-1]] = view
            assert engine.pool.checkedin() == POOL_SIZE  # type: ignore[attr-defined]

            watch.wait_parked(POOL_SIZE)

            after: dict[str, SessionView] = {}
            with contextlib.ExitStack() as checked_out:
                conns = [checked_out.enter_context(engine.connect()) for _ in range(POOL_SIZE)]
                for conn in conns:
                    view = SessionView.of(tuple(conn.exec_driver_sql(STATE_QUERY).one()))
                    n = conn.execute(sqlalchemy.text("SELECT CAST(:n AS int) + 1"), {"n": 41})
                    assert n.scalar() == 42
                    conn.commit()
                    after[view.settings[-1]] = view
            assert after.keys() == before.keys()
            for name, view in after.items():
                assert_restored(before[name], view, same_pid_possible=same_pid_possible)
    finally:
        engine.dispose()


# -- driving a client program ---------------------------------------------------------------


class ChildOutput:
    """A child process's stdout, read line by line on a thread; each wait is bounded."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stream = stream
        self._reader = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Once the child has exited: stop reading, close the pipe."""
        self._reader.join(ANSWER_TIMEOUT)
        self._stream.close()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = ANSWER_TIMEOUT) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s") from None
        assert line is not None, "the client exited"
        return line


@contextlib.contextmanager
def child(
    args: list[str], stderr: Path, cwd: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], ChildOutput]]:
    """Run a client program with pipes for stdin and stdout (stderr to a file); kill it
    if it is still running at the end."""
    with open(stderr, "w") as errors:
        process = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            bufsize=1,
        )
    assert process.stdout is not None
    output = ChildOutput(process.stdout)
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        output.close()
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()


def send(process: subprocess.Popen[str], text: str) -> None:
    assert process.stdin is not None
    process.stdin.write(text)
    process.stdin.flush()


def finish(process: subprocess.Popen[str], stderr: Path, last: str = "") -> None:
    """Close the child's stdin (after ``last``), wait for a clean exit, no stderr."""
    assert process.stdin is not None
    if last:
        process.stdin.write(last)
    process.stdin.close()
    assert process.wait(ANSWER_TIMEOUT) == 0, stderr.read_text()
    assert stderr.read_text() == ""


# -- the local tests ---------------------------------------------------------------------------


def _endpoint(server: Pgwake, name: str) -> tuple[str, Callable[[], bool]]:
    server.create(name, idle_timeout=IDLE_TIMEOUT)
    return name, local_compute_gone(server, name)


def test_psycopg_prepared_statements_outlive_a_suspend(shared_pgwake: Pgwake) -> None:
    psycopg_scenario(shared_pgwake, *_endpoint(shared_pgwake, "parked-psycopg"))


def test_asyncpg_statement_cache_outlives_a_suspend(shared_pgwake: Pgwake) -> None:
    asyncpg_scenario(shared_pgwake, *_endpoint(shared_pgwake, "parked-asyncpg"))


def test_sqlalchemy_pool_of_5_outlives_a_suspend(shared_pgwake: Pgwake) -> None:
    sqlalchemy_pool_scenario(shared_pgwake, *_endpoint(shared_pgwake, "parked-sqlalchemy"))


def test_pgjdbc_server_prepared_statement_outlives_a_suspend(
    shared_pgwake: Pgwake, pgjdbc_classes: str, tmp_path: Path
) -> None:
    """pgjdbc (``tests/clients/java/Parking.java``) past its prepareThreshold: its
    PreparedStatement is bound by name (``S_N``) without a new Parse. pgjdbc would quietly
    prepare a missing statement again, so the name is checked on the server first."""
    server = shared_pgwake
    name, gone = _endpoint(server, "parked-pgjdbc")
    url = f"jdbc:postgresql://127.0.0.1:{server.port}/app?sslmode=disable&connectTimeout=60"
    args = [need_program("java"), "-cp", pgjdbc_classes, "Parking", url, f"app.{name}", PASSWORD]
    stderr = tmp_path / "stderr"
    with parking(server, name, 1, gone) as watch, child(args, stderr) as (java, out):
        send(java, "setup\n")
        before = dict(field.split("=", 1) for field in out.line().split("\t"))
        assert before["server_prepared"] == "true"
        assert before["result"] == "42"
        assert before["statements"].startswith("S_"), before
        settings = [before[key] for key in SETTINGS]
        assert settings == ["jdbc, public", "8s", "Asia/Tokyo", "jdbc-parked"]

        watch.wait_parked(1)

        send(java, "check\n")
        after = dict(field.split("=", 1) for field in out.line().split("\t"))
        assert {key: after[key] for key in SETTINGS} == {key: before[key] for key in SETTINGS}
        assert after["statements"] == before["statements"]
        assert after["pid"] != before["pid"]
        assert after["backend_pid"] == before["backend_pid"]  # what pgjdbc was told
        assert after["result"] == "42"
        finish(java, stderr, "quit\n")


#: node-postgres' pool size: every client is idle in the pool while the endpoint suspends.
NODE_POOL_SIZE = 3


def test_node_postgres_pool_outlives_a_suspend(shared_pgwake: Pgwake, tmp_path: Path) -> None:
    """A node-postgres ``Pool`` (``tests/clients/node/parking.js``) of 3 idle clients, each
    with its settings and the named query ``plus_one``, which node-postgres parses once per
    client and binds by name afterwards."""
    node = need_program("node")
    need_file(NODE_DIR / "node_modules" / "pg", "node-postgres (npm ci in tests/clients/node)")
    server = shared_pgwake
    name, gone = _endpoint(server, "parked-node")
    config = {
        "host": "127.0.0.1",
        "port": server.port,
        "user": "app",
        "password": PASSWORD,
        "database": "app",
        "options": f"endpoint={name}",
        "size": NODE_POOL_SIZE,
    }
    stderr = tmp_path / "stderr"
    args = [node, "parking.js", json.dumps(config)]
    with (
        parking(server, name, NODE_POOL_SIZE, gone) as watch,
        child(args, stderr, cwd=NODE_DIR) as (process, out),
    ):
        before = {row["application_name"]: row for row in json.loads(out.line())["before"]}
        assert sorted(before) == [f"node-{i}" for i in range(NODE_POOL_SIZE)]
        for i, row in enumerate(before[f"node-{i}"] for i in range(NODE_POOL_SIZE)):
            assert row["n"] == i + 1
            assert row["statements"] == ["plus_one"]
            assert (row["timezone"], row["search_path"]) == ("America/Sao_Paulo", "node, public")

        watch.wait_parked(NODE_POOL_SIZE)

        send(process, "go\n")
        after = {row["application_name"]: row for row in json.loads(out.line())["after"]}
        assert after.keys() == before.keys()
        for app, row in after.items():
            assert row["n"] == 42
            assert row["pid"] != before[app]["pid"]
            for key in ("timezone", "search_path", "statements"):
                assert row[key] == before[app][key]
        finish(process, stderr)


def test_psql_kept_open_outlives_a_suspend(shared_pgwake: Pgwake, tmp_path: Path) -> None:
    """psql reading from a pipe, its session's settings, a SQL ``PREPARE`` and a psql
    variable, idle while the endpoint suspends."""
    psql = need_program("psql")
    server = shared_pgwake
    name, gone = _endpoint(server, "parked-psql")
    args = [psql, server.dsn(name), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    stderr = tmp_path / "stderr"
    with parking(server, name, 1, gone) as watch, child(args, stderr) as (process, out):
        script = [
            "\\set answer 21",
            *(f"{statement};" for statement in set_statements("psql-parked")),
            "PREPARE twice(int) AS SELECT $1 * 2;",
            "EXECUTE twice(:answer);",
            f"{STATE_QUERY};",
        ]
        send(process, "\n".join(script) + "\n")
        assert out.line() == "42"
        before = SessionView.of(tuple(out.line().split("|")))
        assert before.settings == expected_settings("psql-parked")
        assert before.statements == ("twice",)

        watch.wait_parked(1)

        send(process, f"{STATE_QUERY};\nEXECUTE twice(:answer);\n")
        after = SessionView.of(tuple(out.line().split("|")))
        assert_restored(before, after, same_pid_possible=False)
        assert out.line() == "42"
        finish(process, stderr, "\\q\n")
