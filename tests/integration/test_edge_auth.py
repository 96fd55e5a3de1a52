"""SCRAM at the edge (ARCHITECTURE.md): refusals wake nothing, real clients get in, passwords
changed on the compute keep working across a suspend, no plaintext is stored, and clients
only ever see pgwake's own cancel keys.

Failed logins are throttled per (client address, endpoint) (tested in test_edge_limits)
after ``FREE_FAILURES`` of them; no test here fails more than twice on one endpoint.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from pathlib import Path

import asyncpg
import psycopg
import pytest
import uvloop

from tests.integration.pgwake_fixture import PASSWORD, Pgwake, wait_for_async
from tests.integration.wire import read_message, startup_packet

NEW_PASSWORD = "new1-pw-Kq7ZxR2m"
BOB_PASSWORD = "b0b-pw-Vn4TjW8c"
MD5_PASSWORD = "md5-pw-Hs3LpQ9e"
WRONG_PASSWORD = "wr0ng-pw-Yb6DmF1a"


def _failed_text(role: str) -> str:
    return f'password authentication failed for user "{role}"'


async def _connect(pgwake: Pgwake, endpoint: str, user: str, password: str) -> asyncpg.Connection:
    kwargs = {**pgwake.asyncpg_kwargs(endpoint), "user": user, "password": password}
    return await asyncpg.connect(**kwargs, timeout=60)


def _refusal(
    pgwake: Pgwake, endpoint: str, *, user: str = "app", password: str = PASSWORD
) -> asyncpg.PostgresError:
    async def connect_and_close() -> None:
        conn = await _connect(pgwake, endpoint, user, password)
        await conn.close()

    async def attempt() -> asyncpg.PostgresError:
        with pytest.raises(asyncpg.PostgresError) as info:
            await connect_and_close()
        return info.value

    return uvloop.run(attempt())


def _current_user(pgwake: Pgwake, endpoint: str, *, user: str = "app", password: str) -> str:
    async def attempt() -> str:
        conn = await _connect(pgwake, endpoint, user, password)
        try:
            return str(await conn.fetchval("select current_user"))
        finally:
            await conn.close()

    return uvloop.run(attempt())


def _shape(error: asyncpg.PostgresError, role: str) -> dict[str, object]:
    """Every field of the ErrorResponse, with the role name masked."""
    return {
        key: value.replace(f'"{role}"', '"<role>"') if isinstance(value, str) else value
        for key, value in error.as_dict().items()
    }


def _first_reply(port: int, parameters: dict[str, str]) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(startup_packet(parameters))
        message = read_message(sock)
    assert message is not None
    return message


def _wakes(pgwake: Pgwake, endpoint: str) -> float:
    return pgwake.metric(
        "pgwake_wakes_total", endpoint=endpoint, outcome="success"
    ) + pgwake.metric("pgwake_wakes_total", endpoint=endpoint, outcome="failure")


@pytest.fixture(scope="module")
def clients_endpoint(shared_pgwake: Pgwake) -> tuple[Pgwake, str]:
    shared_pgwake.create("clients")
    return shared_pgwake, "clients"


def test_wrong_password_and_unknown_role_get_one_answer_and_wake_nothing(
    shared_pgwake: Pgwake,
) -> None:
    pgwake = shared_pgwake
    pgwake.create("cold")
    assert pgwake.compute_starts("cold") == 0  # creating an endpoint starts nothing

    # An unknown role gets the same opening as a real one (a mock exchange), no early error.
    for role in ("app", "ghost"):
        kind, body = _first_reply(
            pgwake.port, {"user": role, "database": "app", "options": "endpoint=cold"}
        )
        assert kind == b"R"
        assert body == struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0"  # AuthenticationSASL

    wrong = _refusal(pgwake, "cold", password=WRONG_PASSWORD)
    unknown = _refusal(pgwake, "cold", user="ghost")

    assert isinstance(wrong, asyncpg.InvalidPasswordError)
    assert wrong.sqlstate == unknown.sqlstate == "28P01"
    assert wrong.args[0] == _failed_text("app")
    assert unknown.args[0] == _failed_text("ghost")
    assert _shape(wrong, "app") == _shape(unknown, "ghost")  # no role oracle in any field

    assert pgwake.compute_starts("cold") == 0
    assert _wakes(pgwake, "cold") == 0
    assert pgwake.state("cold") == "suspended"


def test_roles_without_a_scram_verifier_are_refused_like_a_wrong_password(
    shared_pgwake: Pgwake,
) -> None:
    pgwake = shared_pgwake
    pgwake.create("noscram")

    async def make_roles() -> None:
        conn = await _connect(pgwake, "noscram", "app", PASSWORD)
        try:
            await conn.execute("CREATE ROLE nopw LOGIN")
            await conn.execute("SET password_encryption = 'md5'")
            await conn.execute(f"CREATE ROLE md5role LOGIN PASSWORD '{MD5_PASSWORD}'")
        finally:
            await conn.close()

    uvloop.run(make_roles())
    assert pgwake.state("noscram") == "running"  # looked up live on the compute

    no_password = _refusal(pgwake, "noscram", user="nopw", password="anything")
    md5 = _refusal(pgwake, "noscram", user="md5role", password=MD5_PASSWORD)

    assert no_password.sqlstate == md5.sqlstate == "28P01"
    assert no_password.args[0] == _failed_text("nopw")
    assert md5.args[0] == _failed_text("md5role")
    assert _shape(no_password, "nopw") == _shape(md5, "md5role")
    assert no_password.detail is None
    assert no_password.hint is None


def test_psql_asyncpg_and_psycopg_log_in(clients_endpoint: tuple[Pgwake, str]) -> None:
    pgwake, endpoint = clients_endpoint
    out = subprocess.run(
        ["psql", pgwake.dsn(endpoint), "-XAtc", "select current_user"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "app"

    assert _current_user(pgwake, endpoint, password=PASSWORD) == "app"

    with psycopg.connect(pgwake.dsn(endpoint), connect_timeout=60) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)


def test_channel_binding_over_tls(clients_endpoint: tuple[Pgwake, str]) -> None:
    pgwake, endpoint = clients_endpoint
    # libpq refuses to finish unless the server ran SCRAM-SHA-256-PLUS with it.
    dsn = pgwake.dsn(endpoint, sslmode="require", channel_binding="require")
    with psycopg.connect(dsn, connect_timeout=60) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)
        assert conn.pgconn.ssl_in_use

    # Without TLS there is nothing to bind to: libpq itself gives up.
    plain = pgwake.dsn(endpoint, sslmode="disable", channel_binding="require")
    with pytest.raises(psycopg.OperationalError, match="channel binding required"):
        psycopg.connect(plain, connect_timeout=60)


def test_password_changes_follow_the_compute_and_survive_a_suspend(pgwake: Pgwake) -> None:
    endpoint = "sync"
    pgwake.settings["log_level"] = "debug"  # for the event=verifiers_synced lines
    pgwake.create(endpoint, idle_timeout=1)
    pgwake.start()
    synced = f"event=verifiers_synced endpoint={endpoint} "

    async def running_phase() -> None:
        admin = await _connect(pgwake, endpoint, "app", PASSWORD)
        try:
            # Past the verifier sync soon after the start: from here on, only the sync
            # before the suspend can carry the changes below to the catalog.
            await wait_for_async(lambda: synced in pgwake.log_text())
            await admin.execute(f"ALTER ROLE app PASSWORD '{NEW_PASSWORD}'")
            await admin.execute(f"CREATE ROLE bob LOGIN PASSWORD '{BOB_PASSWORD}'")
            # New connections while the compute runs (the session above keeps it up).
            conn = await _connect(pgwake, endpoint, "app", NEW_PASSWORD)
            assert await conn.fetchval("select current_user") == "app"
            await conn.close()
            conn = await _connect(pgwake, endpoint, "bob", BOB_PASSWORD)  # options form
            assert await conn.fetchval("select current_user") == "bob"
            await conn.close()
            user_form = {
                **pgwake.asyncpg_kwargs(endpoint),
                "user": f"bob.{endpoint}",
                "password": BOB_PASSWORD,
                "server_settings": {},
            }
            conn = await asyncpg.connect(**user_form, timeout=60)
            assert await conn.fetchval("select current_user") == "bob"
            await conn.close()
            with pytest.raises(asyncpg.InvalidPasswordError):
                await _connect(pgwake, endpoint, "app", PASSWORD)
            # The periodic sync has not run again: the catalog still has the old set.
            assert pgwake.log_text().count(synced) == 1
        finally:
            await admin.close()

    uvloop.run(running_phase())
    assert pgwake.compute_starts(endpoint) == 1  # all of it on one compute

    # After a suspend, the first login is checked against the catalog's copy (the compute
    # is woken only after the proof): new1 and bob were saved before the stop.
    pgwake.wait_state(endpoint, "suspended")
    assert _current_user(pgwake, endpoint, password=NEW_PASSWORD) == "app"
    assert pgwake.compute_starts(endpoint) == 2
    pgwake.wait_state(endpoint, "suspended")
    assert _current_user(pgwake, endpoint, user=f"bob.{endpoint}", password=BOB_PASSWORD) == "bob"
    assert pgwake.compute_starts(endpoint) == 3
    pgwake.wait_state(endpoint, "suspended")

    # The old password fails on the suspended endpoint and wakes nothing.
    wakes = _wakes(pgwake, endpoint)
    error = _refusal(pgwake, endpoint, password=PASSWORD)
    assert error.sqlstate == "28P01"
    assert pgwake.compute_starts(endpoint) == 3
    assert _wakes(pgwake, endpoint) == wakes
    assert pgwake.state(endpoint) == "suspended"

    # Nothing in the state dir holds a client's plaintext password (ARCHITECTURE.md). The
    # scanner does find a plaintext secret that is meant to be there: pgwake's own.
    admin_password = (pgwake.state_dir / "admin-password").read_text().strip()
    assert len(admin_password) >= 16
    assert pgwake.state_dir / "admin-password" in _files_containing(
        pgwake.state_dir, admin_password.encode()
    )
    for password in (PASSWORD, NEW_PASSWORD, BOB_PASSWORD, MD5_PASSWORD):
        assert _files_containing(pgwake.state_dir, password.encode()) == [], password


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if needle in data:
                found.append(path)
    return found


def test_clients_see_the_real_backend_pid_and_unknown_keys_are_dropped(
    clients_endpoint: tuple[Pgwake, str],
) -> None:
    pgwake, endpoint = clients_endpoint
    with psycopg.connect(pgwake.dsn(endpoint), connect_timeout=60) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        assert conn.info.backend_pid == row[0]

    before = pgwake.metric("pgwake_cancel_requests_total", outcome="unknown_key")
    forwarded = pgwake.metric("pgwake_cancel_requests_total", outcome="forwarded")
    cancel = struct.pack("!iiii", 16, 80877102, *struct.unpack("!ii", os.urandom(8)))
    with socket.create_connection(("127.0.0.1", pgwake.port), timeout=30) as sock:
        sock.sendall(cancel)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received == b""  # closed without a word, as Postgres does
    assert pgwake.metric("pgwake_cancel_requests_total", outcome="unknown_key") == before + 1
    assert pgwake.metric("pgwake_cancel_requests_total", outcome="forwarded") == forwarded
