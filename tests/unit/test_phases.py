"""A client connection's phases: the table of moves walked whole, the one method that
changes the phase, and what is left of a connection once it relays."""

from __future__ import annotations

import asyncio
import itertools
import logging
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pgwake.edge.cancel_keys import CancelMap
from pgwake.edge.client_connection import ClientConnection
from pgwake.edge.packet_stream import PacketStream
from pgwake.edge.phases import PHASE_MOVES, IllegalPhaseMove, Phase
from pgwake.edge.relay import Relays

FORWARD = [
    Phase.HANDSHAKE,
    Phase.ROUTED,
    Phase.AUTHENTICATED,
    Phase.ATTACHED,
    Phase.RELAYING,
    Phase.CLOSED,
]


def test_every_phase_has_its_moves() -> None:
    assert set(PHASE_MOVES) == set(Phase)


def test_the_moves_are_one_step_forward_or_closed() -> None:
    for current, following in itertools.pairwise(FORWARD):
        # Besides: a relayed session may be parked, and a parked one relayed again.
        parked = {Phase.PARKED} if current is Phase.RELAYING else set()
        assert PHASE_MOVES[current] == {following, Phase.CLOSED, *parked}
    assert PHASE_MOVES[Phase.PARKED] == {Phase.RELAYING, Phase.CLOSED}
    assert PHASE_MOVES[Phase.CLOSED] == frozenset()


def test_every_phase_is_reached_from_the_handshake_and_reaches_closed() -> None:
    reached, frontier = {Phase.HANDSHAKE}, [Phase.HANDSHAKE]
    while frontier:
        for phase in PHASE_MOVES[frontier.pop()]:
            if phase not in reached:
                reached.add(phase)
                frontier.append(phase)
    assert reached == set(Phase)
    assert all(Phase.CLOSED in PHASE_MOVES[phase] for phase in Phase if phase is not Phase.CLOSED)


def _connection(ctx: object = None) -> ClientConnection:
    return ClientConnection(cast("Any", ctx), "c0ffee00", "192.0.2.1")


def _phase(connection: ClientConnection) -> Phase:
    """The phase now (a call, so mypy does not keep what an earlier assert narrowed)."""
    return connection.phase


def test_enter_logs_each_move_once(caplog: pytest.LogCaptureFixture) -> None:
    connection = _connection()
    assert connection.phase is Phase.HANDSHAKE
    with caplog.at_level(logging.DEBUG, logger="pgwake.edge.client_connection"):
        connection._enter(Phase.ROUTED)
        connection._enter(Phase.AUTHENTICATED)
    assert _phase(connection) is Phase.AUTHENTICATED
    assert [record.getMessage() for record in caplog.records] == [
        "event=phase conn=c0ffee00 from=handshake to=routed",
        "event=phase conn=c0ffee00 from=routed to=authenticated",
    ]


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], Phase.AUTHENTICATED),  # a skipped phase: no session without a proof
        ([Phase.ROUTED], Phase.HANDSHAKE),  # backwards
        ([Phase.CLOSED], Phase.CLOSED),  # closed twice
        ([Phase.CLOSED], Phase.ROUTED),
    ],
)
def test_enter_refuses_a_move_the_table_does_not_list(path: list[Phase], illegal: Phase) -> None:
    connection = _connection()
    for phase in path:
        connection._enter(phase)
    before = connection.phase
    with pytest.raises(IllegalPhaseMove):
        connection._enter(illegal)
    assert connection.phase is before


class _Transport:
    """A connected transport that can be closed from the peer's side."""

    def __init__(self) -> None:
        self.protocol: asyncio.BaseProtocol | None = None
        self.closing = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        return self.protocol

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _stream() -> tuple[PacketStream, _Transport]:
    stream, transport = PacketStream(), _Transport()
    stream.connection_made(transport)  # type: ignore[arg-type]
    transport.protocol = stream
    return stream, transport


def test_a_relayed_connection_holds_only_its_slots_and_closes_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        ctx = SimpleNamespace(relays=Relays(), cancels=CancelMap(), active_sessions=0)
        connection = _connection(ctx)
        for phase in (Phase.ROUTED, Phase.AUTHENTICATED, Phase.ATTACHED):
            connection._enter(phase)
        client, client_transport = _stream()
        connection.compute, _ = _stream()
        connection._relay(client)
        assert connection.phase is Phase.RELAYING
        assert connection.compute is None  # the relay's now; nothing else is kept
        assert not hasattr(connection, "__dict__")
        assert len(ctx.relays) == 1
        client_transport.close()
        await asyncio.wait_for(ctx.relays.wait_closed(), 5)
        assert connection.phase is Phase.CLOSED

    with caplog.at_level(logging.INFO, logger="pgwake.edge.client_connection"):
        asyncio.run(scenario())
    closed = [record for record in caplog.records if "event=closed" in record.getMessage()]
    assert len(closed) == 1
    assert "conn=c0ffee00 endpoint=- outcome=ok" in closed[0].getMessage()
