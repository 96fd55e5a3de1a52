"""session_state.capture and restore against a real PostgreSQL 15: a session's state is
read on one backend and set again on another, over the compute login pgwake uses."""

from __future__ import annotations

import asyncio

import pytest

from pgwake.auth.scram import make_verifier, parse_verifier
from pgwake.compute import ComputeAddress
from pgwake.edge.compute_login import log_in, open_compute
from pgwake.edge.exchange import Exchange, Send, receive_message
from pgwake.edge.packet_stream import PacketStream, drive
from pgwake.edge.session_state import (
    PIN_ADVISORY_LOCKS,
    PIN_COMPOUND_PREPARE,
    PIN_LISTEN,
    PIN_TEMPORARY_TABLES,
    PIN_WITH_HOLD_CURSORS,
    CaptureFailed,
    RestoreFailed,
    SessionState,
    capture,
    restore,
)
from pgwake.protocol import encode
from pgwake.protocol.framing import MessageReader, parse_data_row, parse_error_fields
from tests.integration import test_scram_real_postgres as real

cluster = real.cluster
PASSWORD = "parking pässword"
LOGIN = "parker"
ROLE = "parker_app"


@pytest.fixture(scope="module")
def setup(cluster: real.Cluster) -> real.Cluster:
    verifier = make_verifier(PASSWORD)
    cluster.sql(f"CREATE ROLE {ROLE}")
    cluster.sql(f"CREATE ROLE {LOGIN} LOGIN PASSWORD '{verifier}' IN ROLE {ROLE}")
    cluster.sql(f"CREATE SCHEMA app AUTHORIZATION {ROLE}")
    cluster.sql(f"CREATE TABLE app.items (id int) ; ALTER TABLE app.items OWNER TO {ROLE}")
    return cluster


class SqlError(Exception):
    pass


def _run(query: str) -> Exchange[list[tuple[str | None, ...]]]:
    return _send(encode.query(query))


def _send(data: bytes) -> Exchange[list[tuple[str | None, ...]]]:
    """Send ``data`` and read up to ReadyForQuery: the rows, or ``SqlError``."""
    yield Send(data)
    reader = MessageReader(1 << 20)
    rows: list[tuple[str | None, ...]] = []
    error: str | None = None
    while True:
        frame = yield from receive_message(reader.feed, reader.next_message)
        if frame.type == b"D":
            rows.append(tuple(None if v is None else v.decode() for v in parse_data_row(frame)))
        elif frame.type == b"E":
            error = parse_error_fields(frame)["M"]
        elif frame.type == b"Z":
            if error is not None:
                raise SqlError(error)
            return rows


async def _session(cluster: real.Cluster) -> PacketStream:
    socket_path = str(cluster.socket_dir / f".s.PGSQL.{real.PORT}")
    stream = await open_compute(ComputeAddress(unix_socket=socket_path))
    verifier_text = cluster.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{LOGIN}'")
    text = str(verifier_text[0][0])
    client_key = real.client_key_recovered_at_the_edge(PASSWORD, text)
    startup = encode.startup_message({"user": LOGIN, "database": "postgres"})
    await drive(
        stream,
        log_in(
            startup,
            client_key=client_key,
            verifier=parse_verifier(text),
            cancel_key_for=lambda pid, key: (pid, key),
        ),
    )
    return stream


async def _sql(stream: PacketStream, query: str) -> list[tuple[str | None, ...]]:
    return await drive(stream, _run(query))


def test_a_session_moves_to_another_backend(setup: real.Cluster) -> None:
    async def scenario() -> None:
        first = await _session(setup)
        for statement in (
            "SET search_path = app, public",
            "SET statement_timeout = '5s'",
            "SET TIME ZONE 'Europe/Paris'",
            "SET application_name = 'parked app'",
            f"SET ROLE {ROLE}",
            "PREPARE by_id(int) AS SELECT count(*) FROM items WHERE id = $1",
        ):
            await _sql(first, statement)
        # Protocol-level Parse: one explicit and one inferred parameter type.
        await drive(first, _send(encode.parse("sum", "SELECT $1 + $2", (23, 0)) + encode.sync()))
        captured = await drive(first, capture())
        assert captured.pins == ()
        state = captured.state
        assert state is not None
        assert state.settings[-1] == ("role", ROLE)
        first_pid = await _sql(first, "SELECT pg_backend_pid()")
        first.close()

        second = await _session(setup)
        assert await _sql(second, "SELECT pg_backend_pid()") != first_pid
        restored = await drive(second, restore(state))
        assert restored.dropped == ()
        assert restored.parameter_status["application_name"] == "parked app"
        assert restored.parameter_status["TimeZone"] == "Europe/Paris"
        assert await _sql(second, "SHOW search_path") == [("app, public",)]
        assert await _sql(second, "SHOW statement_timeout") == [("5s",)]
        assert await _sql(second, "SHOW TimeZone") == [("Europe/Paris",)]
        assert await _sql(second, "SHOW application_name") == [("parked app",)]
        assert await _sql(second, "SELECT current_user, session_user") == [(ROLE, LOGIN)]
        assert await _sql(
            second,
            "SELECT name, parameter_types::text, from_sql FROM pg_prepared_statements"
            " ORDER BY name",
        ) == [("by_id", "{integer}", "t"), ("sum", "{integer,integer}", "f")]
        assert await _sql(second, "EXECUTE by_id(1)") == [("0",)]
        executed = await drive(
            second,
            _send(encode.bind("sum", [b"2", b"3"]) + encode.execute() + encode.sync()),
        )
        assert executed == [("5",)]
        # What the restore set is what a new capture sees.
        again = await drive(second, capture())
        assert again.state == state
        second.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.parametrize(
    ("statements", "pin"),
    [
        (["CREATE TEMP TABLE scratch (x int)"], PIN_TEMPORARY_TABLES),
        (["LISTEN jobs"], PIN_LISTEN),
        (["SELECT pg_advisory_lock(42)"], PIN_ADVISORY_LOCKS),
        (["BEGIN", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "COMMIT"], PIN_WITH_HOLD_CURSORS),
        (["PREPARE a AS SELECT 1; SELECT 2"], PIN_COMPOUND_PREPARE),
    ],
    ids=["temporary_table", "listen", "advisory_lock", "with_hold_cursor", "compound_prepare"],
)
def test_what_cannot_move_pins_the_session(
    setup: real.Cluster, statements: list[str], pin: str
) -> None:
    async def scenario() -> None:
        stream = await _session(setup)
        assert (await drive(stream, capture())).pins == ()  # a clean session
        for statement in statements:
            await _sql(stream, statement)
        captured = await drive(stream, capture())
        assert captured.pins == (pin,)
        assert captured.state is None
        # The whole string of a multi-statement PREPARE is what Postgres records.
        if pin == PIN_COMPOUND_PREPARE:
            assert await _sql(stream, "SELECT statement FROM pg_prepared_statements") == [
                ("PREPARE a AS SELECT 1; SELECT 2",)
            ]
        stream.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_statement_whose_table_is_gone_is_dropped(setup: real.Cluster) -> None:
    async def scenario() -> None:
        first = await _session(setup)
        await _sql(first, "SET search_path = app")
        await _sql(first, "SET ROLE parker_app")
        await _sql(first, "CREATE TABLE doomed (x int)")
        await _sql(first, "PREPARE keep AS SELECT 1")
        await drive(first, _send(encode.parse("lost", "SELECT x FROM doomed") + encode.sync()))
        state = (await drive(first, capture())).state
        assert state is not None
        await _sql(first, "DROP TABLE doomed")
        first.close()

        second = await _session(setup)
        restored = await drive(second, restore(state))
        assert restored.dropped == ("lost",)
        assert await _sql(second, "SELECT name FROM pg_prepared_statements") == [("keep",)]
        second.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_settings_that_fail_fail_the_restore(setup: real.Cluster) -> None:
    async def scenario() -> None:
        stream = await _session(setup)
        state = SessionState((("role", "no_such_role"),), ())
        with pytest.raises(RestoreFailed, match="no_such_role"):
            await drive(stream, restore(state))
        assert await _sql(stream, "SELECT current_user") == [(LOGIN,)]  # at rest
        stream.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_failing_capture_reports_the_servers_error(setup: real.Cluster) -> None:
    async def scenario() -> None:
        stream = await _session(setup)
        await _sql(stream, "BEGIN")
        with pytest.raises(SqlError):
            await _sql(stream, "SELECT 1/0")
        with pytest.raises(CaptureFailed, match="aborted"):
            await drive(stream, capture())
        stream.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
