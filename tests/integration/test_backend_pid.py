"""Clients see their backend's real process id: what they do with it works as on Postgres."""

from __future__ import annotations

import socket
import struct

import psycopg
import pytest

from tests.integration.pgwake_fixture import Pgwake


@pytest.fixture(scope="module")
def endpoint(shared_pgwake: Pgwake) -> tuple[Pgwake, str]:
    shared_pgwake.create("pids", idle_timeout=600)
    return shared_pgwake, "pids"


def test_pg_terminate_backend_of_a_clients_pid_ends_that_connection(
    endpoint: tuple[Pgwake, str],
) -> None:
    pgwake, name = endpoint
    with (
        psycopg.connect(pgwake.dsn(name), connect_timeout=60, autocommit=True) as victim,
        psycopg.connect(pgwake.dsn(name), connect_timeout=60, autocommit=True) as admin,
    ):
        row = admin.execute(
            "select pg_terminate_backend(%s)", (victim.info.backend_pid,)
        ).fetchone()
        assert row == (True,)
        with pytest.raises(psycopg.OperationalError) as info:
            victim.execute("select 1")
        assert info.value.sqlstate == "57P01"  # terminating connection due to admin command


def test_a_listener_gets_its_own_notify_with_its_own_pid(endpoint: tuple[Pgwake, str]) -> None:
    pgwake, name = endpoint
    with psycopg.connect(pgwake.dsn(name), connect_timeout=60, autocommit=True) as conn:
        conn.execute("listen pids_channel")
        conn.execute("notify pids_channel, 'hello'")
        notifies = list(conn.notifies(timeout=10, stop_after=1))
        assert [(n.channel, n.payload) for n in notifies] == [("pids_channel", "hello")]
        assert notifies[0].pid == conn.info.backend_pid


def test_pg_stat_activity_rows_match_client_connections(endpoint: tuple[Pgwake, str]) -> None:
    pgwake, name = endpoint
    with (
        psycopg.connect(pgwake.dsn(name, application_name="pid-a"), connect_timeout=60) as a,
        psycopg.connect(pgwake.dsn(name), connect_timeout=60) as b,
    ):
        row = b.execute(
            "select application_name from pg_stat_activity where pid = %s",
            (a.info.backend_pid,),
        ).fetchone()
        assert row == ("pid-a",)


def test_cancel_with_the_backends_own_secret_is_not_forwarded(
    endpoint: tuple[Pgwake, str],
) -> None:
    """The pid is real, the secret is pgwake's: a key made of the pid and any other secret
    cancels nothing."""
    pgwake, name = endpoint
    before = pgwake.metric("pgwake_cancel_requests_total", outcome="unknown_key")
    with psycopg.connect(pgwake.dsn(name), connect_timeout=60) as conn:
        cancel = struct.pack("!iiiI", 16, 80877102, conn.info.backend_pid, 12345)
        with socket.create_connection(("127.0.0.1", pgwake.port), timeout=30) as sock:
            sock.sendall(cancel)
            assert sock.recv(1) == b""
        assert conn.execute("select 1").fetchone() == (1,)
    assert pgwake.metric("pgwake_cancel_requests_total", outcome="unknown_key") == before + 1
