"""Every URI pgwake prints works, as printed, with every client of the matrix.

One ``pgwake serve --demo`` with the defaults a new user has (loopback, TLS offered but
not required). The URIs are the ones ``serve --demo``, ``endpoint create``, ``endpoint
password``, the HTTP API and the Python client print or return, each for its own endpoint;
each goes unchanged to psql, psycopg, asyncpg, SQLAlchemy on psycopg and on asyncpg (their
driver named in the scheme, as SQLAlchemy wants) and node-postgres (``connectionString``).
pgjdbc reads no libpq URI: it gets the printed URI's host, port, database, user and
password in a JDBC URL and properties.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import psycopg
import pytest
import uvloop

from pgwake.api.client import PgwakeClient
from tests.integration.pgwake_fixture import ADMIN_TOKEN, serve, wait_for
from tests.integration.test_client_matrix import (
    NODE_DIR,
    need_file,
    need_module,
    need_program,
)

WHO = ("app", "app")  # current_user, current_database()
SOURCES = (
    "serve --demo",
    "endpoint create",
    "endpoint password",
    "POST /v1/endpoints",
    "POST /v1/endpoints/{name}/password",
    "PgwakeClient.create_endpoint",
    "PgwakeClient.set_password",
)


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def printed() -> Iterator[dict[str, str]]:
    """Each source's URI, by source, from one ``serve --demo``."""
    with serve(start=False) as server:
        offset = len(server.log_text())
        with server.log_path.open("ab") as log:
            server.process = subprocess.Popen(
                [sys.executable, "-m", "pgwake.cli", "serve", "--demo"],
                env=server.env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        stdout = server.process.stdout
        assert stdout is not None
        try:
            demo = [stdout.readline().strip() for _ in range(2)][1]
            wait_for(lambda: "event=listening" in server.log_text()[offset:], timeout=60)
            api = httpx.Client(
                base_url=server.api_url,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=60,
            )
            client = PgwakeClient(server.api_url, ADMIN_TOKEN)
            server.cli("endpoint", "create", "cli-password")
            api.post("/v1/endpoints", json={"name": "api-password"}).raise_for_status()
            client.create_endpoint("client-password")
            uris = {
                "serve --demo": demo,
                "endpoint create": _last_line(
                    server.cli("endpoint", "create", "cli-create").stdout
                ),
                "endpoint password": _last_line(
                    server.cli("endpoint", "password", "cli-password").stdout
                ),
                "POST /v1/endpoints": api.post("/v1/endpoints", json={"name": "api-create"}).json()[
                    "connection_uri"
                ],
                "POST /v1/endpoints/{name}/password": api.post(
                    "/v1/endpoints/api-password/password", json={}
                ).json()["connection_uri"],
                "PgwakeClient.create_endpoint": client.create_endpoint(
                    "client-create"
                ).connection_uri,
                "PgwakeClient.set_password": client.set_password("client-password").connection_uri,
            }
            api.close()
            yield uris
            assert "Traceback" not in server.log_text(), server.log_text()
        finally:
            server.stop()
            stdout.close()


def _psql(uri: str) -> tuple[str, ...]:
    out = subprocess.run(
        [
            need_program("psql"),
            uri,
            "-X",
            "-A",
            "-t",
            "-c",
            "select current_user, current_database()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return tuple(out.strip().split("|"))


def _psycopg(uri: str) -> tuple[str, ...]:
    with psycopg.connect(uri, connect_timeout=60) as conn:
        row = conn.execute("select current_user, current_database()").fetchone()
    assert row is not None
    return tuple(row)


def _asyncpg(uri: str) -> tuple[str, ...]:
    async def run() -> tuple[str, ...]:
        conn = await asyncpg.connect(uri, timeout=60)
        try:
            row = await conn.fetchrow("select current_user, current_database()")
        finally:
            await conn.close()
        assert row is not None
        return tuple(row)

    return uvloop.run(run())


def _sqlalchemy_psycopg(uri: str) -> tuple[str, ...]:
    sqlalchemy = need_module("sqlalchemy")
    engine = sqlalchemy.create_engine(uri.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            row = conn.execute(sqlalchemy.text("select current_user, current_database()")).one()
    finally:
        engine.dispose()
    return tuple(row)


def _sqlalchemy_asyncpg(uri: str) -> tuple[str, ...]:
    sqlalchemy = need_module("sqlalchemy")
    asyncio_ext = need_module("sqlalchemy.ext.asyncio")

    async def run() -> tuple[str, ...]:
        engine = asyncio_ext.create_async_engine(
            uri.replace("postgresql://", "postgresql+asyncpg://", 1)
        )
        try:
            async with engine.connect() as conn:
                result = await conn.execute(
                    sqlalchemy.text("select current_user, current_database()")
                )
                return tuple(result.one())
        finally:
            await engine.dispose()

    return uvloop.run(run())


def _node_postgres(uri: str) -> tuple[str, ...]:
    node = need_program("node")
    need_file(NODE_DIR / "node_modules" / "pg", "node-postgres (npm ci in tests/clients/node)")
    result = subprocess.run(
        [node, "uri.js", uri], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    return (out["user"], out["database"])


CLIENTS: dict[str, Callable[[str], tuple[str, ...]]] = {
    "psql": _psql,
    "psycopg": _psycopg,
    "asyncpg": _asyncpg,
    "sqlalchemy+psycopg": _sqlalchemy_psycopg,
    "sqlalchemy+asyncpg": _sqlalchemy_asyncpg,
    "node-postgres": _node_postgres,
}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("source", SOURCES)
def test_the_printed_uri_works_as_printed(
    printed: dict[str, str], source: str, client: str
) -> None:
    uri = printed[source]
    assert uri.startswith("postgresql://app.")
    assert CLIENTS[client](uri) == WHO


def test_pgjdbc_takes_the_printed_user_name(printed: dict[str, str], pgjdbc_classes: str) -> None:
    """pgjdbc has no libpq URIs; the printed one's parts, unchanged, are its JDBC URL and
    properties (the user name ``app.<endpoint>`` routes)."""
    parts = urllib.parse.urlsplit(printed["endpoint create"])
    assert parts.username is not None
    assert parts.password is not None
    url = f"jdbc:postgresql://{parts.hostname}:{parts.port}{parts.path}?connectTimeout=60"
    result = subprocess.run(
        [
            need_program("java"),
            "-cp",
            pgjdbc_classes,
            "Matrix",
            url,
            urllib.parse.unquote(parts.username),
            urllib.parse.unquote(parts.password),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "query=app" in result.stdout.splitlines()


def test_no_uri_needs_a_query_string(printed: dict[str, str]) -> None:
    for uri in printed.values():
        assert "?" not in uri
        assert Path(urllib.parse.urlsplit(uri).path).name == "app"
