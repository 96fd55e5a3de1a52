"""The byte pump between a client and its compute, with flow control both ways.

Nothing here parses: after ``ReadyForQuery`` bytes are copied as they come. When one
side's write buffer passes its high-water mark, reading from the other side pauses until
it drains (uvicorn's ``flow_control.py``), so a slow client never makes pgwake buffer a
large result. Either side closing closes the other once its pending bytes are written.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from proxy.stream import PacketStream

__all__ = ["RelayResult", "relay"]

# Larger than asyncio's 64 KiB default: fewer pause/resume flips on big results.
_HIGH_WATER: Final = 512 * 1024
_LOW_WATER: Final = 128 * 1024


@dataclass(slots=True)
class RelayResult:
    """Bytes moved in each direction."""

    to_compute: int = 0
    to_client: int = 0


class _Pump(asyncio.Protocol):
    """Reads from one transport (the one it is the protocol of), writes to ``peer``.

    ``data_received`` runs once per read on every relayed session, so it does the least it
    can: the peer's ``write`` is bound once, and byte counting is one addition."""

    __slots__ = ("_done", "_write", "bytes_read", "peer", "transport")

    def __init__(self, done: asyncio.Future[None], transport: asyncio.Transport) -> None:
        self.transport = transport
        self.peer: _Pump | None = None
        self.bytes_read = 0
        self._done = done
        self._write = _discard

    def connect_to(self, peer: _Pump) -> None:
        self.peer = peer
        self._write = peer.transport.write

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        self._write(data)

    def eof_received(self) -> bool:
        # The Postgres protocol has no half-close: EOF from one side ends the session.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.transport.close()  # flushes what is already queued, then closes
        if not self._done.done():
            self._done.set_result(None)

    # Our transport's write buffer is full: stop reading the side that fills it.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()


def _discard(data: bytes) -> None:
    """Where a pump writes before it is connected (never in practice)."""


async def relay(client_stream: PacketStream, compute_stream: PacketStream) -> RelayResult:
    """Take over both streams' transports and pump bytes until both sides are closed.

    Bytes the handshake read but did not consume are delivered first."""
    client_lost, compute_lost = client_stream.closed.done(), compute_stream.closed.done()
    client, client_pending = client_stream.detach()
    compute, compute_pending = compute_stream.detach()
    loop = asyncio.get_running_loop()
    client_closed: asyncio.Future[None] = loop.create_future()
    compute_closed: asyncio.Future[None] = loop.create_future()
    from_client, from_compute = _Pump(client_closed, client), _Pump(compute_closed, compute)
    from_client.connect_to(from_compute)
    from_compute.connect_to(from_client)
    for transport in (client, compute):
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)
    client.set_protocol(from_client)
    compute.set_protocol(from_compute)
    if client_pending:
        from_client.data_received(client_pending)
    if compute_pending:
        from_compute.data_received(compute_pending)
    # A side already lost during the handshake never calls its new pump's connection_lost.
    for pump, lost in ((from_client, client_lost), (from_compute, compute_lost)):
        if lost:
            pump.connection_lost(None)
    try:
        await asyncio.gather(client_closed, compute_closed)
    except asyncio.CancelledError:
        client.abort()
        compute.abort()
        raise
    return RelayResult(to_compute=from_client.bytes_read, to_client=from_compute.bytes_read)
