"""The steps of a sans-IO exchange and the driver that runs one over a ``PacketStream``
(through a stand-in transport, no socket)."""

from __future__ import annotations

import asyncio

import pytest

from pgwake.edge.exchange import (
    RECEIVE,
    Exchange,
    PeerClosed,
    Send,
    Unread,
    receive_message,
    unread,
)
from pgwake.edge.packet_stream import PacketStream, drive
from pgwake.protocol import encode
from pgwake.protocol.errors import ProtocolViolation
from pgwake.protocol.framing import MessageReader
from pgwake.protocol.messages import Frame
from tests.unit.exchanges import Peer, byte_by_byte

QUERY = encode.message(b"Q", b"SELECT 1\0")


def _one_message(reader: MessageReader) -> Exchange[Frame]:
    frame = yield from receive_message(reader.feed, reader.next_message)
    yield from unread(reader.take_remaining())
    return frame


@pytest.mark.parametrize("chunks", [[QUERY], byte_by_byte(QUERY)], ids=["whole", "byte_by_byte"])
def test_receive_message_asks_until_a_whole_message_is_in(chunks: list[bytes]) -> None:
    peer = Peer(*chunks)
    assert peer.run(_one_message(MessageReader())) == Frame(b"Q", b"SELECT 1\0")
    assert peer.receives == len(chunks)
    assert peer.unread == b""


def test_bytes_past_the_message_are_handed_back() -> None:
    peer = Peer(QUERY + b"next")
    assert peer.run(_one_message(MessageReader())).type == b"Q"
    assert peer.unread == b"next"


def test_eof_before_a_whole_message_is_peer_closed() -> None:
    with pytest.raises(PeerClosed):
        Peer(QUERY[:3]).run(_one_message(MessageReader()))


def test_an_oversized_header_fails_before_its_body_is_waited_for() -> None:
    peer = Peer(b"Q\x00\x01\x00\x00")
    with pytest.raises(ProtocolViolation):
        peer.run(_one_message(MessageReader(1024)))
    assert peer.receives == 1


def test_unread_of_nothing_is_no_step() -> None:
    assert list(unread(b"")) == []
    assert list(unread(b"x")) == [Unread(b"x")]


class _Transport:
    """Only what PacketStream touches, and what it wrote."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _connected() -> tuple[PacketStream, _Transport]:
    stream, transport = PacketStream(), _Transport()
    stream.connection_made(transport)  # type: ignore[arg-type]
    return stream, transport


def _echo_once() -> Exchange[bytes]:
    """Says hello, reads one message, answers with its body, gives back the rest."""
    yield Send(b"hello")
    reader = MessageReader()
    frame = yield from receive_message(reader.feed, reader.next_message)
    yield Send(frame.body)
    yield from unread(reader.take_remaining())
    return frame.type


def test_drive_writes_sends_feeds_reads_and_puts_back_the_rest() -> None:
    async def scenario() -> None:
        stream, transport = _connected()
        driving = asyncio.ensure_future(drive(stream, _echo_once()))
        await asyncio.sleep(0)
        assert transport.written == b"hello"  # sent before the first wait
        stream.data_received(QUERY[:4])
        await asyncio.sleep(0)
        assert not driving.done()
        stream.data_received(QUERY[4:] + b"rest")
        assert await asyncio.wait_for(driving, 5) == b"Q"
        assert transport.written == b"helloSELECT 1\0"
        assert await stream.read() == b"rest"  # for whoever reads next

    asyncio.run(scenario())


def test_drive_raises_what_the_exchange_raises_and_closes_it() -> None:
    closed = []

    def failing() -> Exchange[None]:
        try:
            yield RECEIVE
            raise ProtocolViolation("no")
        finally:
            closed.append(True)

    async def scenario() -> None:
        stream, _ = _connected()
        stream.data_received(b"x")
        with pytest.raises(ProtocolViolation):
            await drive(stream, failing())

    asyncio.run(scenario())
    assert closed == [True]


def test_a_cancelled_drive_closes_its_exchange() -> None:
    closed = []

    def waiting() -> Exchange[None]:
        try:
            yield RECEIVE
        finally:
            closed.append(True)

    async def scenario() -> None:
        stream, _ = _connected()
        driving = asyncio.ensure_future(drive(stream, waiting()))
        await asyncio.sleep(0)
        driving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await driving

    asyncio.run(scenario())
    assert closed == [True]


def test_drive_answers_eof_with_empty_bytes() -> None:
    async def scenario() -> None:
        stream, _ = _connected()
        stream.eof_received()
        with pytest.raises(PeerClosed):
            await drive(stream, _echo_once())

    asyncio.run(scenario())
