"""The relay's pumps, through stand-in transports: what a client hears when its compute
closes under it, and when it hears nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pgwake.edge.packet_stream import PacketStream
from pgwake.edge.relay import Mode, Relay, Relays, _ClientPump, start_relay
from pgwake.edge.session_state import Refuser
from pgwake.protocol import encode
from pgwake.protocol.framing import MessageReader, parse_error_fields
from pgwake.protocol.messages import NEED_DATA, Frame

READY_IDLE = encode.message(b"Z", b"I")
READY_IN_TRANSACTION = encode.message(b"Z", b"T")
SELECT_ONE = (
    encode.message(b"T", b"\0\x01?column?\0" + b"\0" * 18)
    + encode.message(b"D", b"\0\x01\0\0\0\x011")
    + encode.message(b"C", b"SELECT 1\0")
)
QUERY = encode.message(b"Q", b"SELECT 1\0")
TERMINATE = b"X\0\0\0\x04"
COMPUTE_FATAL = encode.message(
    b"E", b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0"
)


class _Transport:
    """A connected transport: what is written, whether it is closed, and reading."""

    def __init__(self) -> None:
        self.protocol: asyncio.BaseProtocol | None = None
        self.written = bytearray()
        self.closing = False
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        return self.protocol

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.written += data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self._lost)

    abort = close

    def _lost(self) -> None:
        assert self.protocol is not None
        self.protocol.connection_lost(None)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    # -- the peer's side ---------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        assert isinstance(self.protocol, asyncio.Protocol)
        self.protocol.data_received(data)

    def peer_closes(self) -> None:
        """The peer's FIN: the protocol refuses half-close, so the transport closes."""
        assert isinstance(self.protocol, asyncio.Protocol)
        if not self.protocol.eof_received():
            self.close()


@dataclass
class _Session:
    client: _Transport
    compute: _Transport
    done: asyncio.Future[tuple[int, int]]
    reused: list[bytes]

    async def ended(self) -> None:
        await asyncio.wait_for(self.done, 5)


class _Owner:
    """The relay's owner: records what the relay tells it."""

    def __init__(self) -> None:
        self.done: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.reused: list[bytes] = []
        self.wanted = 0

    def wants_compute(self) -> None:
        self.wanted += 1

    def relayed(self, to_compute: int, to_client: int) -> None:
        self.done.set_result((to_compute, to_client))

    def keep_compute(self, stream: PacketStream, status: bytes) -> None:
        self.reused.append(status)
        stream.close()


def _relayed(*, reuse: bool = False) -> _Session:
    client, compute = _Transport(), _Transport()
    client_stream, compute_stream = PacketStream(), PacketStream()
    client_stream.connection_made(client)  # type: ignore[arg-type]
    compute_stream.connection_made(compute)  # type: ignore[arg-type]
    owner = _Owner()
    start_relay(client_stream, compute_stream, Relays(), owner, reusable=reuse)
    return _Session(client, compute, owner.done, owner.reused)


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario()

    asyncio.run(main())


def _messages(data: bytes) -> list[Frame]:
    reader = MessageReader()
    reader.feed(data)
    frames = []
    while (frame := reader.next_message()) is not NEED_DATA:
        assert isinstance(frame, Frame)
        frames.append(frame)
    assert reader.take_remaining() == b""
    return frames


def _told_compute_stopped(data: bytes) -> bool:
    frames = _messages(data)
    if not frames or frames[-1].type != b"E":
        return False
    fields = parse_error_fields(frames[-1])
    assert fields["S"] == "FATAL"
    assert fields["C"] == "57P01"
    assert "compute stopped unexpectedly" in fields["M"]
    assert "Reconnect" in fields["H"]
    return "compute stopped unexpectedly" in fields["M"]


# -- the compute closes on its own -----------------------------------------------------------


def test_a_compute_killed_at_rest_leaves_the_client_a_fatal_57P01() -> None:
    async def scenario() -> None:
        session = _relayed()
        session.client.receive(QUERY)
        session.compute.receive(SELECT_ONE + READY_IDLE)
        session.compute.peer_closes()  # kill -9: no word from the backend
        await session.ended()
        assert session.client.closing
        assert session.client.written.startswith(SELECT_ONE + READY_IDLE)
        assert _told_compute_stopped(bytes(session.client.written))

    _run(scenario)


def test_a_compute_killed_inside_a_transaction_too() -> None:
    async def scenario() -> None:
        session = _relayed(reuse=True)
        session.compute.receive(READY_IN_TRANSACTION)
        session.compute.peer_closes()
        await session.ended()
        assert _told_compute_stopped(bytes(session.client.written))
        assert session.reused == []

    _run(scenario)


def test_a_compute_killed_right_after_the_login() -> None:
    # The relay starts just after the login's ReadyForQuery: already at rest.
    async def scenario() -> None:
        session = _relayed()
        session.compute.peer_closes()
        await session.ended()
        assert _told_compute_stopped(bytes(session.client.written))

    _run(scenario)


def test_a_compute_killed_while_the_client_waits_for_a_reply() -> None:
    # The query went out, nothing came back: the stream to the client is still at the
    # last ReadyForQuery, so the client is told instead of seeing a bare close.
    async def scenario() -> None:
        session = _relayed()
        session.client.receive(QUERY)
        session.compute.peer_closes()
        await session.ended()
        assert _told_compute_stopped(bytes(session.client.written))

    _run(scenario)


# -- nothing is added -------------------------------------------------------------------------


def test_a_compute_that_explains_itself_gets_no_second_error() -> None:
    # pg_terminate_backend, a fast shutdown: the backend's own FATAL comes last.
    async def scenario() -> None:
        session = _relayed()
        session.compute.receive(COMPUTE_FATAL)
        session.compute.peer_closes()
        await session.ended()
        assert bytes(session.client.written) == COMPUTE_FATAL

    _run(scenario)


def test_a_compute_that_closes_mid_message_gets_nothing_added() -> None:
    # Not at a message boundary: an ErrorResponse would land inside a DataRow.
    async def scenario() -> None:
        session = _relayed()
        session.compute.receive(SELECT_ONE[:-3])
        session.compute.peer_closes()
        await session.ended()
        assert bytes(session.client.written) == SELECT_ONE[:-3]

    _run(scenario)


def test_a_compute_closing_after_the_clients_terminate_is_no_news() -> None:
    # Without server reuse the Terminate goes to the backend, which exits: a client that
    # waits for that close (asyncpg does) must not get an error.
    async def scenario() -> None:
        session = _relayed()
        session.compute.receive(READY_IDLE)
        session.client.receive(QUERY + TERMINATE)
        assert session.compute.written.endswith(TERMINATE)
        session.compute.peer_closes()
        await session.ended()
        assert bytes(session.client.written) == READY_IDLE

    _run(scenario)


def test_a_pipelined_terminate_is_forwarded_and_no_news_with_reuse_either() -> None:
    async def scenario() -> None:
        session = _relayed(reuse=True)
        session.client.receive(QUERY + TERMINATE)
        assert session.compute.written == QUERY + TERMINATE
        session.compute.peer_closes()
        await session.ended()
        assert bytes(session.client.written) == b""
        assert session.reused == []

    _run(scenario)


def test_a_client_that_leaves_first_hears_nothing() -> None:
    async def scenario() -> None:
        session = _relayed()
        session.compute.receive(READY_IDLE)
        session.client.peer_closes()
        await session.ended()
        assert session.compute.closing
        assert bytes(session.client.written) == READY_IDLE

    _run(scenario)


def test_a_terminate_alone_still_hands_the_backend_over() -> None:
    async def scenario() -> None:
        session = _relayed(reuse=True)
        session.client.receive(QUERY)
        session.compute.receive(SELECT_ONE + READY_IDLE)
        session.client.receive(TERMINATE)
        await session.ended()
        assert session.compute.written == QUERY  # the Terminate was withheld
        assert session.reused == [b"I"]
        assert bytes(session.client.written) == SELECT_ONE + READY_IDLE

    _run(scenario)


# -- parking: the compute taken, given back, gone ---------------------------------------------


def _relay_of(session: _Session) -> Relay:
    protocol = session.client.protocol
    assert isinstance(protocol, _ClientPump)
    relay = protocol._relay
    assert relay is not None
    return relay


def _park(relay: Relay) -> None:
    """Park the session as ``parking.park`` does: its backend taken at rest, ended."""
    stream = relay.take_compute()
    assert stream is not None
    stream.close()
    relay.park()


def _mode(relay: Relay) -> Mode:
    """The mode now (a call, so mypy does not keep what an earlier assert narrowed)."""
    return relay.mode


def _compute_stream() -> tuple[PacketStream, _Transport]:
    transport = _Transport()
    stream = PacketStream()
    stream.connection_made(transport)  # type: ignore[arg-type]
    transport.set_protocol(stream)
    return stream, transport


def test_the_compute_is_taken_only_at_rest() -> None:
    async def scenario() -> None:
        session = _relayed()
        relay = _relay_of(session)
        session.client.receive(QUERY)
        assert relay.take_compute() is None  # an answer is due
        session.compute.receive(SELECT_ONE + READY_IDLE)
        stream = relay.take_compute()
        assert stream is not None
        assert relay.mode is Mode.HOLDING
        # Held while pgwake uses the backend: nothing reaches it.
        session.client.receive(QUERY)
        assert session.compute.written == QUERY
        assert relay.held
        relay.give_compute(stream)  # back, and the held query goes out
        assert _mode(relay) is Mode.RELAYING
        assert session.compute.written == QUERY + QUERY
        session.compute.receive(SELECT_ONE + READY_IDLE)
        assert bytes(session.client.written) == (SELECT_ONE + READY_IDLE) * 2

    _run(scenario)


def test_a_parked_session_asks_for_a_backend_at_its_next_message_and_gets_a_new_one() -> None:
    async def scenario() -> None:
        session = _relayed()
        relay = _relay_of(session)
        owner = relay.owner
        assert isinstance(owner, _Owner)
        _park(relay)
        assert relay.mode is Mode.PARKED
        assert owner.wanted == 0
        session.client.receive(QUERY[:3])
        assert owner.wanted == 1
        session.client.receive(QUERY[3:])
        assert owner.wanted == 1  # asked once
        new_stream, new_compute = _compute_stream()
        relay.give_compute(new_stream)
        assert new_compute.written == QUERY
        new_compute.receive(SELECT_ONE + READY_IDLE)
        assert bytes(session.client.written) == SELECT_ONE + READY_IDLE
        assert relay.tracker.idle

    _run(scenario)


def test_a_parked_client_that_terminates_wakes_nothing() -> None:
    async def scenario() -> None:
        session = _relayed()
        relay = _relay_of(session)
        owner = relay.owner
        assert isinstance(owner, _Owner)
        _park(relay)
        session.client.receive(TERMINATE)
        await session.ended()
        assert owner.wanted == 0
        assert session.client.closing

    _run(scenario)


def test_a_failed_reattach_answers_the_request_and_stays_parked() -> None:
    async def scenario() -> None:
        session = _relayed()
        relay = _relay_of(session)
        _park(relay)
        session.client.receive(QUERY)
        error = encode.message(b"E", b"SERROR\0C57P03\0Mnot now\0\0")
        relay.refuse(Refuser(error))
        assert bytes(session.client.written) == error + READY_IDLE
        assert relay.mode is Mode.PARKED
        assert relay.refuser is None  # answered whole: the next message tries again
        assert not session.client.closing

    _run(scenario)


def test_a_parked_session_ended_for_pgwake_own_reason_is_told() -> None:
    async def scenario() -> None:
        session = _relayed()
        relay = _relay_of(session)
        _park(relay)
        relays = Relays()
        relays.add(relay)
        assert relays.end_parked("shutting down") == 1
        await session.ended()
        assert _messages(bytes(session.client.written))[-1].type == b"E"

    _run(scenario)
