"""The client matrix: each real client against a cold endpoint through pgwake.

One pgwake for the module, with a CA-signed ``*.db.localhost`` certificate, base domain
``db.localhost`` and ``require_tls`` on, so a client that quietly fell back to plaintext
would be refused. Every case creates its own endpoint (suspended until its first connect),
checks that the client's first connect started the compute exactly once, then runs a
query, a prepared statement, a committed and a rolled-back transaction and, where the
client has one, a cancel of ``pg_sleep``. The log's ``event=routed`` line tells how each
client named its endpoint (``via=sni|options|user``) and that it came over TLS.

A client that is not installed is skipped locally and fails under CI (``CI`` set):
``tests/clients/install.sh`` installs the ones pip does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import asyncpg
import psycopg
import pytest
import uvloop

from pgwake.api.client import PgwakeClient
from tests.certs import write_server_certificate
from tests.integration.pgwake_fixture import (
    ADMIN_TOKEN,
    PASSWORD,
    Pgwake,
    serve,
    wait_for,
)

CLIENTS_DIR = Path(__file__).resolve().parent.parent / "clients"
NODE_DIR = CLIENTS_DIR / "node"
PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")
INSTALL_HINT = "run `bash tests/clients/install.sh` (as root)"
#: Seconds a client waits before cancelling its ``pg_sleep(30)``.
CANCEL_AFTER = 0.5
#: A cancel that worked ends the statement well before pg_sleep(30) would.
CANCEL_BOUND_MS = 10_000
CANCELED_BY_USER = "canceling statement due to user request"
#: SNI names are ``<endpoint>.db.localhost``. Not ``*.localhost``: node's TLS refuses a
#: wildcard directly under a single-label domain (``*.localhost``, ``*.example``).
BASE_DOMAIN = "db.localhost"


# -- a missing client never passes silently -------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _missing(what: str, hint: str = INSTALL_HINT) -> None:
    message = f"{what} is not installed; {hint}"
    if _in_ci():
        pytest.fail(f"CI needs every client of the matrix: {message}")
    pytest.skip(message)


def need_program(name: str) -> str:
    """The path of program ``name``; skip (locally) or fail (under CI) without it."""
    path = shutil.which(name)
    if path is None:
        _missing(f"the program {name!r}")
    assert path is not None
    return path


def need_file(path: Path, what: str) -> Path:
    if not path.exists():
        _missing(f"{what} ({path})")
    return path


def need_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"the Python package {name!r}", "run `pip install -e '.[test]'`")
        raise


# -- the server and the cold endpoints ------------------------------------------------------


@dataclass(frozen=True)
class Matrix:
    server: Pgwake
    ca: Path
    api: PgwakeClient

    def cold(self, name: str) -> str:
        """Create endpoint ``name``; it stays suspended until a client connects."""
        self.api.create_endpoint(name, password=PASSWORD)
        assert self.server.state(name) == "suspended"
        assert self.server.compute_starts(name) == 0
        return name

    def cancels_forwarded(self) -> float:
        return self.server.metric("pgwake_cancel_requests_total", outcome="forwarded")

    def routes(self, name: str) -> set[tuple[str, str]]:
        """The (via, tls) pairs of this endpoint's ``event=routed`` log lines."""
        pattern = rf" endpoint={re.escape(name)} via=(\w+) tls=(\w+) "
        return set(re.findall(pattern, self.server.log_text()))

    def compute_log(self, name: str) -> str:
        return (self.server.compute_dir(name) / "postgres.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    directory = tmp_path_factory.mktemp("matrix-tls")
    ca = write_server_certificate(directory, [f"*.{BASE_DOMAIN}", "localhost"])
    with serve(
        base_domain=BASE_DOMAIN,
        tls_cert=str(directory / "server.crt"),
        tls_key=str(directory / "server.key"),
        require_tls="true",
    ) as server:
        yield Matrix(server, ca, PgwakeClient(server.api_url, ADMIN_TOKEN))


@contextlib.contextmanager
def cold_start(matrix: Matrix, name: str, *, via: str, cancels: int = 1) -> Iterator[None]:
    """Around one client's whole run on the cold endpoint ``name``: exactly one compute
    start, every session routed ``via`` its source over TLS, ``cancels`` cancels forwarded
    and the compute saw them as cancels (not a timeout of its own)."""
    forwarded = matrix.cancels_forwarded()
    matrix.cold(name)
    yield
    assert matrix.server.compute_starts(name) == 1
    assert matrix.server.state(name) == "running"
    assert matrix.routes(name) == {(via, "True")}
    assert matrix.cancels_forwarded() == forwarded + cancels
    assert matrix.compute_log(name).count(CANCELED_BY_USER) == cancels


def _libpq_sni(matrix: Matrix, name: str, **params: str) -> str:
    """libpq conninfo that names the endpoint by SNI: the host name is
    ``<endpoint>.db.localhost`` (sent as SNI and checked against the certificate) while
    ``hostaddr`` says where to connect, so nothing needs to resolve it."""
    extra = "".join(f" {key}={value}" for key, value in params.items())
    return (
        f"host={name}.{BASE_DOMAIN} hostaddr=127.0.0.1 port={matrix.server.port} user=app "
        f"password={PASSWORD} dbname=app sslmode=verify-full sslrootcert={matrix.ca}{extra}"
    )


def _libpq_localhost(matrix: Matrix, **params: str) -> str:
    """libpq conninfo with verify-full against ``localhost`` (the certificate covers it;
    its SNI ``localhost`` names no endpoint under the base domain); the caller routes."""
    extra = "".join(f" {key}={value}" for key, value in params.items())
    return (
        f"host=localhost hostaddr=127.0.0.1 port={matrix.server.port} password={PASSWORD} "
        f"dbname=app sslmode=verify-full sslrootcert={matrix.ca}{extra}"
    )


# -- libpq: psql, psycopg 3, pgbench --------------------------------------------------------


def _psql(conninfo: str, *args: str, script: str | None = None) -> str:
    result = subprocess.run(
        [need_program("psql"), conninfo, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *args],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_psql_verify_full_with_sni(matrix: Matrix) -> None:
    """psql on the system's libpq; libpq's verify-full + SNI (``host`` + ``hostaddr``).
    The cancel is psql's own: SIGINT makes it send a CancelRequest (libpq's PQcancel)."""
    need_program("psql")
    name = "psql"
    conninfo = _libpq_sni(matrix, name)
    with cold_start(matrix, name, via="sni"):
        assert _psql(conninfo, "-c", "select current_user").split() == ["app"]
        out = _psql(
            conninfo,
            "-f",
            "-",
            script="""
                prepare plus_one(int) as select $1 + 1;
                execute plus_one(41);
                select name from pg_prepared_statements;
                create table t (x int);
                begin; insert into t values (1); commit;
                begin; insert into t values (2); select count(*) from t; rollback;
                select string_agg(x::text, ',') from t;
                select ssl from pg_stat_ssl where pid = pg_backend_pid();
            """,
        )
        # The compute's own session is a unix socket (ssl f); TLS ends at pgwake.
        assert out.split() == ["42", "plus_one", "2", "1", "f"]

        sleeper = subprocess.Popen(
            [need_program("psql"), conninfo, "-X", "-c", "select pg_sleep(30)"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with psycopg.connect(_libpq_sni(matrix, name), autocommit=True) as watcher:

                def sleeping() -> bool:
                    row = watcher.execute(
                        "select count(*) from pg_stat_activity"
                        " where query = 'select pg_sleep(30)' and state = 'active'"
                    ).fetchone()
                    return row == (1,)

                wait_for(sleeping, timeout=20)
            started = time.monotonic()
            sleeper.send_signal(signal.SIGINT)
            _, stderr = sleeper.communicate(timeout=20)
        finally:
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()
        assert (time.monotonic() - started) * 1000 < CANCEL_BOUND_MS
        assert sleeper.returncode == 1
        assert CANCELED_BY_USER in stderr


def _cancel_later(cancel: object) -> threading.Timer:
    assert callable(cancel)
    timer = threading.Timer(CANCEL_AFTER, cancel)
    timer.start()
    return timer


def test_psycopg_sync_verify_full_with_sni(matrix: Matrix) -> None:
    """psycopg 3 (its binary wheel's libpq 17+): verify-full + SNI. ``cancel_safe()`` uses
    libpq's PQcancelCreate, whose cancel connection negotiates TLS like the session did
    (verify-full admits no plaintext fallback), so pgwake takes a CancelRequest over TLS."""
    name = "psycopg-sync"
    with (
        cold_start(matrix, name, via="sni"),
        psycopg.connect(_libpq_sni(matrix, name), autocommit=True, connect_timeout=60) as conn,
    ):
        assert conn.pgconn.ssl_in_use
        assert conn.info.parameter_status("server_version")
        assert conn.execute("select current_user").fetchone() == ("app",)

        assert conn.execute("select %s::int + 1", [41], prepare=True).fetchone() == (42,)
        assert conn.execute("select %s::int + 1", [1], prepare=True).fetchone() == (2,)
        assert conn.execute(
            "select count(*) from pg_prepared_statements where not from_sql"
        ).fetchone() == (1,)

        conn.execute("create table t (x int)")
        with conn.transaction():
            conn.execute("insert into t values (1)")
        with conn.transaction(force_rollback=True):
            conn.execute("insert into t values (2)")
            assert conn.execute("select count(*) from t").fetchone() == (2,)
        assert conn.execute("select array_agg(x) from t").fetchone() == ([1],)

        timer = _cancel_later(conn.cancel_safe)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        timer.join()
        assert (time.monotonic() - started) * 1000 < CANCEL_BOUND_MS
        assert conn.execute("select 1").fetchone() == (1,)


def test_psycopg_async_routes_by_options(matrix: Matrix) -> None:
    """psycopg 3's AsyncConnection (under uvloop): verify-full against ``localhost``,
    routed by ``options=endpoint=...``; ``await cancel_safe()``."""
    name = "psycopg-async"

    async def run() -> None:
        conninfo = _libpq_localhost(matrix, user="app", options=f"endpoint={name}")
        async with await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=60
        ) as conn:
            assert conn.pgconn.ssl_in_use
            cur = await conn.execute("select current_user")
            assert await cur.fetchone() == ("app",)

            cur = await conn.execute("select %s::int + 1", [41], prepare=True)
            assert await cur.fetchone() == (42,)
            cur = await conn.execute(
                "select count(*) from pg_prepared_statements where not from_sql"
            )
            assert await cur.fetchone() == (1,)

            await conn.execute("create table t (x int)")
            async with conn.transaction():
                await conn.execute("insert into t values (1)")
            async with conn.transaction():
                await conn.execute("insert into t values (2)")
                raise psycopg.Rollback
            cur = await conn.execute("select array_agg(x) from t")
            assert await cur.fetchone() == ([1],)

            sleeping = asyncio.create_task(conn.execute("select pg_sleep(30)"))
            await asyncio.sleep(CANCEL_AFTER)
            started = time.monotonic()
            await conn.cancel_safe()
            with pytest.raises(psycopg.errors.QueryCanceled):
                await sleeping
            assert (time.monotonic() - started) * 1000 < CANCEL_BOUND_MS
            cur = await conn.execute("select 1")
            assert await cur.fetchone() == (1,)

    with cold_start(matrix, name, via="options"):
        uvloop.run(run())


def test_psycopg_pipeline_routes_by_user_name(matrix: Matrix) -> None:
    """psycopg 3 in pipeline mode, routed by the user name ``app.<endpoint>``; the
    statements of one pipeline go out together and the errors come back in order."""
    name = "psycopg-pipeline"
    conninfo = _libpq_localhost(matrix, user=f"app.{name}")
    with (
        cold_start(matrix, name, via="user"),
        psycopg.connect(conninfo, autocommit=True, connect_timeout=60) as conn,
    ):
        with conn.pipeline() as pipeline:
            user = conn.execute("select current_user")
            prepared = [conn.execute("select %s::int + 1", [n], prepare=True) for n in (41, 1, 2)]
            pipeline.sync()
            named = conn.execute("select count(*) from pg_prepared_statements where not from_sql")
            # (psycopg deallocates its statements after a ROLLBACK: they come first.)
            conn.execute("create table t (x int)")
            with conn.transaction():
                conn.execute("insert into t values (1)")
            with conn.transaction(force_rollback=True):
                conn.execute("insert into t values (2)")
                inside = conn.execute("select count(*) from t")
            rows = conn.execute("select array_agg(x) from t")
        assert user.fetchone() == ("app",)
        assert [cur.fetchone() for cur in prepared] == [(42,), (2,), (3,)]
        assert named.fetchone() == (1,)
        assert inside.fetchone() == (2,)
        assert rows.fetchone() == ([1],)

        timer = _cancel_later(conn.cancel_safe)
        started = time.monotonic()

        def sleep_in_a_pipeline() -> None:
            with conn.pipeline():
                conn.execute("select pg_sleep(30)")
                conn.execute("select 1")

        with pytest.raises(psycopg.errors.QueryCanceled):
            sleep_in_a_pipeline()
        timer.join()
        assert (time.monotonic() - started) * 1000 < CANCEL_BOUND_MS
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.slow
def test_pgbench_sslmode_require(matrix: Matrix) -> None:
    """pgbench (system libpq), ``sslmode=require``, routed by ``options``: initialise at
    scale 1, run the TPC-B-like transactions, then 2 s of prepared select-only."""
    pgbench = need_program("pgbench")
    name = "pgbench"
    conninfo = (
        f"host=127.0.0.1 port={matrix.server.port} user=app password={PASSWORD} dbname=app "
        f"sslmode=require options=endpoint={name}"
    )

    def run(*args: str) -> str:
        result = subprocess.run(
            [pgbench, *args, conninfo], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def processed(out: str) -> int:
        match = re.search(r"number of transactions actually processed: (\d+)", out)
        assert match, out
        return int(match.group(1))

    with cold_start(matrix, name, via="options", cancels=0):
        run("-i", "-s", "1", "-q")
        out = run("-n", "-t", "20", "-c", "2", "-M", "extended")
        assert processed(out) == 40
        assert re.search(r"number of failed transactions: 0\b", out), out
        out = run("-S", "-M", "prepared", "-T", "2", "-c", "2", "-j", "2")
        assert processed(out) > 100
        assert re.search(r"number of failed transactions: 0\b", out), out


# -- asyncpg --------------------------------------------------------------------------------


def _verifying_context(matrix: Matrix) -> ssl.SSLContext:
    """Python's verify-full: the chain against our CA, the name against the host."""
    return ssl.create_default_context(cafile=str(matrix.ca))


def test_asyncpg(matrix: Matrix) -> None:
    """asyncpg (under uvloop), TLS verified against ``localhost``, routed by ``options``
    (asyncpg connects to the host it verifies, so ``<endpoint>.db.localhost`` would have to
    resolve). asyncpg's cancel is a timeout: it sends a CancelRequest, then raises
    ``TimeoutError`` (the ``QueryCanceledError`` the server answers is asyncpg's to eat);
    the compute's log shows the statement was cancelled."""
    name = "asyncpg"

    async def run() -> None:
        conn = await asyncpg.connect(
            host="localhost",
            port=matrix.server.port,
            user="app",
            password=PASSWORD,
            database="app",
            ssl=_verifying_context(matrix),
            server_settings={"options": f"endpoint={name}"},
            timeout=60,
        )
        try:
            assert conn.get_server_version() is not None
            assert await conn.fetchval("select current_user") == "app"

            statement = await conn.prepare("select $1::int + 1")
            assert await statement.fetchval(41) == 42
            assert await statement.fetchval(1) == 2
            assert statement.get_name() in {
                row["name"] for row in await conn.fetch("select name from pg_prepared_statements")
            }

            await conn.execute("create table t (x int)")
            async with conn.transaction():
                await conn.execute("insert into t values (1)")

            async def failing_transaction() -> None:
                async with conn.transaction():
                    await conn.execute("insert into t values (2)")
                    await conn.execute("select 1 / 0")

            with pytest.raises(asyncpg.DivisionByZeroError):
                await failing_transaction()
            assert await conn.fetchval("select array_agg(x) from t") == [1]

            # COPY both ways through the relay.
            await conn.execute("create table c (n int, s text)")
            records = [(n, f"row {n}") for n in range(5000)]
            assert await conn.copy_records_to_table("c", records=records) == "COPY 5000"
            sink = io.BytesIO()
            assert await conn.copy_from_table("c", output=sink, format="csv") == "COPY 5000"
            assert sink.getvalue().count(b"\n") == 5000
            assert await conn.fetchval("select sum(n) from c") == sum(range(5000))

            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.execute("select pg_sleep(30)", timeout=CANCEL_AFTER)
            assert await conn.fetchval("select 1") == 1
            assert (time.monotonic() - started) * 1000 < CANCEL_BOUND_MS
        finally:
            await conn.close()

    with cold_start(matrix, name, via="options"):
        uvloop.run(run())


# -- SQLAlchemy 2 ---------------------------------------------------------------------------


def test_sqlalchemy_psycopg(matrix: Matrix) -> None:
    """SQLAlchemy 2 on psycopg 3: the URL's query passes libpq's SNI + verify-full
    parameters through. SQLAlchemy has no cancel of its own: psycopg's ``cancel_safe()``
    on the DBAPI connection, and SQLAlchemy reports the error and recovers."""
    sqlalchemy = need_module("sqlalchemy")
    name = "sqla-psycopg"
    url = sqlalchemy.URL.create(
        "postgresql+psycopg",
        username="app",
        password=PASSWORD,
        host=f"{name}.{BASE_DOMAIN}",
        port=matrix.server.port,
        database="app",
        query={"hostaddr": "127.0.0.1", "sslmode": "verify-full", "sslrootcert": str(matrix.ca)},
    )
    text = sqlalchemy.text
    # prepare_threshold=0: psycopg prepares every statement on its first execution.
    engine = sqlalchemy.create_engine(
        url, connect_args={"connect_timeout": 60, "prepare_threshold": 0}
    )
    try:
        with cold_start(matrix, name, via="sni"), engine.connect() as conn:
            assert conn.execute(text("select current_user")).scalar() == "app"
            plus_one = text("select cast(:n as int) + 1")
            assert conn.execute(plus_one, {"n": 41}).scalar() == 42
            assert conn.execute(plus_one, {"n": 1}).scalar() == 2
            assert (
                conn.execute(
                    text("select count(*) from pg_prepared_statements where not from_sql")
                ).scalar()
                >= 1
            )

            conn.execute(text("create table t (x int)"))
            conn.commit()
            conn.execute(text("insert into t values (1)"))
            conn.commit()
            conn.execute(text("insert into t values (2)"))
            assert conn.execute(text("select count(*) from t")).scalar() == 2
            conn.rollback()
            assert conn.execute(text("select array_agg(x) from t")).scalar() == [1]
            conn.rollback()

            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            timer = _cancel_later(driver.cancel_safe)
            started = time.monotonic()
            with pytest.raises(sqlalchemy.exc.OperationalError) as info:
                conn.execute(text("select pg_sleep(30)"))
            timer.join()
            assert isinstance(info.value.orig, psycopg.errors.QueryCanceled)
            assert (time.monotonic() - started) * 1000 < CANCEL_BOUND_MS
            conn.rollback()
            assert conn.execute(text("select 1")).scalar() == 1
    finally:
        engine.dispose()


def test_sqlalchemy_asyncpg(matrix: Matrix) -> None:
    """SQLAlchemy 2's asyncio engine on asyncpg: TLS verified against ``localhost``,
    routed by ``options`` (asyncpg's ``server_settings``). The adapter prepares every
    statement. The cancel is asyncio's: a statement whose task is cancelled
    (``asyncio.wait_for``) makes asyncpg send a CancelRequest."""
    sqlalchemy = need_module("sqlalchemy")
    asyncio_ext = need_module("sqlalchemy.ext.asyncio")
    name = "sqla-asyncpg"
    text = sqlalchemy.text
    url = sqlalchemy.URL.create(
        "postgresql+asyncpg",
        username="app",
        password=PASSWORD,
        host="localhost",
        port=matrix.server.port,
        database="app",
    )

    async def run() -> None:
        engine = asyncio_ext.create_async_engine(
            url,
            connect_args={
                "ssl": _verifying_context(matrix),
                "server_settings": {"options": f"endpoint={name}"},
                "timeout": 60,
            },
        )
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(text("select current_user"))).scalar() == "app"
                plus_one = text("select cast(:n as int) + 1")
                assert (await conn.execute(plus_one, {"n": 41})).scalar() == 42
                assert (await conn.execute(plus_one, {"n": 1})).scalar() == 2
                prepared = await conn.execute(
                    text("select count(*) from pg_prepared_statements where not from_sql")
                )
                assert prepared.scalar() >= 1

                await conn.execute(text("create table t (x int)"))
                await conn.commit()
                await conn.execute(text("insert into t values (1)"))
                await conn.commit()
                await conn.execute(text("insert into t values (2)"))
                assert (await conn.execute(text("select count(*) from t"))).scalar() == 2
                await conn.rollback()
                rows = await conn.execute(text("select array_agg(x) from t"))
                assert rows.scalar() == [1]
                await conn.rollback()

                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(
                        conn.execute(text("select pg_sleep(30)")), timeout=CANCEL_AFTER
                    )
                await conn.rollback()
                assert (await conn.execute(text("select 1"))).scalar() == 1
                assert (time.monotonic() - started) * 1000 < CANCEL_BOUND_MS
        finally:
            await engine.dispose()

    with cold_start(matrix, name, via="options"):
        uvloop.run(run())


# -- node-postgres and pgjdbc ---------------------------------------------------------------


@pytest.mark.slow
def test_node_postgres(matrix: Matrix) -> None:
    """node-postgres (npm ``pg``, tests/clients/node/matrix.js): TLS with our CA and
    ``servername: <endpoint>.db.localhost``, the SNI name pgwake routes by and the name the
    certificate is checked against, while the socket goes to 127.0.0.1."""
    node = need_program("node")
    need_file(NODE_DIR / "node_modules" / "pg", "node-postgres (npm ci in tests/clients/node)")
    name = "node-pg"
    config = {
        "host": "127.0.0.1",
        "port": matrix.server.port,
        "user": "app",
        "password": PASSWORD,
        "database": "app",
        "servername": f"{name}.{BASE_DOMAIN}",
        "ca": str(matrix.ca),
    }
    with cold_start(matrix, name, via="sni"):
        result = subprocess.run(
            [node, "matrix.js", json.dumps(config)],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out.pop("cancel_ms") < CANCEL_BOUND_MS
    assert out == {
        "encrypted": True,
        "query": "app",
        "prepared": 42,
        "prepared_again": 2,
        "named_statements": ["plus_one"],
        "inside": 2,
        "transaction": [1],
        "cancel": "57014",
        "after_cancel": 1,
    }


@pytest.mark.slow
def test_pgjdbc(matrix: Matrix, pgjdbc_classes: str) -> None:
    """pgjdbc (Debian's 42.5): ``sslmode=verify-full`` with our PEM CA as
    ``sslrootcert``, against ``localhost`` (a JDBC URL has no hostaddr), routed by the
    ``options`` connection property; ``Statement.cancel()`` from another thread."""
    name = "pgjdbc"
    url = (
        f"jdbc:postgresql://localhost:{matrix.server.port}/app?sslmode=verify-full"
        f"&sslrootcert={matrix.ca}&options=endpoint%3D{name}&connectTimeout=60"
    )
    with cold_start(matrix, name, via="options"):
        result = subprocess.run(
            [need_program("java"), "-cp", pgjdbc_classes, "Matrix", url, "app", PASSWORD],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    out = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert int(out.pop("cancel_ms")) < CANCEL_BOUND_MS
    assert out == {
        "query": "app",
        "prepared": "42",
        "server_prepared": "true",
        "named_statements": "1",
        "inside": "2",
        "transaction": "1",
        "cancel": "57014",
        "after_cancel": "1",
    }
