"""PacketStream's read buffer is bounded: a full buffer pauses the peer until the reader has
consumed it. Driven through a stand-in transport, no socket."""

from __future__ import annotations

import asyncio

from pgwake.edge.packet_stream import _READ_BUFFER_LIMIT, PacketStream


class _Transport:
    """Only what PacketStream touches: reading can be paused and resumed."""

    def __init__(self) -> None:
        self.reading = True
        self.pauses = 0

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _connected() -> tuple[PacketStream, _Transport]:
    stream = PacketStream()
    transport = _Transport()
    stream.connection_made(transport)  # type: ignore[arg-type]
    return stream, transport


def test_a_full_buffer_stays_paused_until_the_reader_asks_for_more() -> None:
    async def scenario() -> None:
        stream, transport = _connected()
        stream.data_received(b"a" * _READ_BUFFER_LIMIT)
        assert transport.reading  # not more than the limit yet
        stream.data_received(b"b")
        assert not transport.reading
        data = await stream.read()
        assert len(data) == _READ_BUFFER_LIMIT + 1
        # Handed out, not consumed yet: the peer stays paused meanwhile.
        assert not transport.reading
        more = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0)  # one turn: read() found the buffer empty and waits
        assert transport.reading
        stream.data_received(b"c")
        assert await asyncio.wait_for(more, 5) == b"c"

    asyncio.run(scenario())


def test_a_paused_stream_still_hands_out_what_it_holds_and_resumes_on_detach() -> None:
    async def scenario() -> None:
        stream, transport = _connected()
        stream.data_received(b"x" * (_READ_BUFFER_LIMIT + 10))
        stream.unread(b"head")
        assert not transport.reading
        detached, rest = stream.detach()
        assert detached is transport  # type: ignore[comparison-overlap]
        assert rest == b"head" + b"x" * (_READ_BUFFER_LIMIT + 10)
        assert transport.reading

    asyncio.run(scenario())
