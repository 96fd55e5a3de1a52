"""A minimal buffered asyncio protocol for a connection before its relay, and the driver
that runs sans-IO exchanges over it (psycopg's ``waiting.py``).

Until the relay starts, a connection is read and written only through ``drive``, which
runs one exchange (``exchange.py``) at a time over a ``PacketStream``. Unlike
``asyncio.StreamReader`` the stream takes back every byte an exchange did not consume,
hands the transport to the relay's protocol (``detach``), and survives ``loop.start_tls``.

Its buffer is bounded: once it holds ``_READ_BUFFER_LIMIT`` bytes, reading from the peer
pauses until the reader has consumed them and asks for more. A peer that sends faster
than the session parses (a client streaming a huge message before it is authenticated)
costs at most that much, plus one transport read, not what it sends.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from pgwake.edge.exchange import RECEIVE, PeerClosed, Send, TLSInfo, Unread
from pgwake.edge.tls import server_name_of

if TYPE_CHECKING:
    import ssl

    from pgwake.edge.exchange import Exchange, Reply, StartTLS

T = TypeVar("T")

__all__ = ["PacketStream", "PeerClosed", "drive"]

# How long closing a TLS connection waits for the peer's close_notify. asyncio's default
# (30 s) lets a silent client hold a socket long after its session ended.
_TLS_SHUTDOWN_SECONDS: Final = 2.0
# Pause the peer once this much unread data piles up during the handshake: a whole
# authentication message at its largest (framing.MAX_AUTHENTICATION_MESSAGE_LENGTH).
_READ_BUFFER_LIMIT: Final = 64 * 1024


def _feed_protocol(protocol: Any, data: bytes) -> None:
    # uvloop's SSL protocol is a buffered protocol without subclassing asyncio's ABC.
    if hasattr(protocol, "get_buffer"):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view))).cast("B")
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    else:
        protocol.data_received(data)


async def drive(stream: PacketStream, exchange: Exchange[T]) -> T:
    """Run ``exchange`` over ``stream`` until it returns; return its result.

    Each step is answered as ``exchange.py`` says: ``Send`` writes, ``RECEIVE`` waits for
    bytes, ``Unread`` puts bytes back, ``StartTLS`` upgrades the connection. Raises what
    the exchange raises, and ``PeerClosed`` when the peer leaves during a TLS handshake."""
    reply: Reply = None
    try:
        while True:
            try:
                step = exchange.send(reply)
            except StopIteration as done:
                result: T = done.value
                return result
            if step is RECEIVE:
                reply = await stream.read()
            elif isinstance(step, Send):
                stream.write(step.data)
                reply = None
            elif isinstance(step, Unread):
                stream.unread(step.data)
                reply = None
            else:
                reply = await _start_tls(stream, step)
    finally:
        exchange.close()


async def _start_tls(stream: PacketStream, step: StartTLS) -> TLSInfo:
    await stream.start_tls(step.context, step.initial)
    assert stream.transport is not None
    ssl_object = stream.transport.get_extra_info("ssl_object")
    if ssl_object is None or stream.closed.done():
        raise PeerClosed("client closed during the TLS handshake")
    return TLSInfo(server_name_of(ssl_object), ssl_object.selected_alpn_protocol())


class PacketStream(asyncio.Protocol):
    """Buffers incoming bytes; ``read()`` returns them, ``b""`` at EOF."""

    #: The peer's address, for a client's connection (``server._ClientProtocol``): a
    #: transport forgets it once closed. A compute's is not asked for (uvloop makes a
    #: socket object per unix-socket transport to answer it, kept while it lives).
    peername: object = None

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- protocol callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _READ_BUFFER_LIMIT and self.transport and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- API for the session -------------------------------------------------------------

    async def read(self) -> bytes:
        """Return all buffered bytes, waiting for some; ``b""`` means the peer closed.

        Reading paused by a full buffer resumes only here, once the buffer is empty: a
        caller that comes back for more has consumed what it got before."""
        if not self._buffer:
            self._resume()
            while not self._buffer and not self._eof:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of the buffer (bytes a parser read ahead)."""
        self._buffer[:0] = data

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def start_tls(self, context: ssl.SSLContext, initial: bytes = b"") -> None:
        """Upgrade to TLS as the server side; the stream keeps working on the new transport.

        ``initial`` holds TLS bytes already read (direct TLS: the ClientHello that told us
        this is TLS is in our buffer, but ``loop.start_tls`` reads from the socket). Once
        the TLS protocol is connected it gets them as if it had read them itself."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        transport = self.transport
        starting = loop.start_tls(
            transport, self, context, server_side=True, ssl_shutdown_timeout=_TLS_SHUTDOWN_SECONDS
        )
        if initial:
            upgrade = asyncio.ensure_future(starting)
            await asyncio.sleep(0)  # start_tls has now swapped in its protocol and queued
            # connection_made; queue the hand-over behind it, before any socket read.
            loop.call_soon(_feed_protocol, transport.get_protocol(), initial)
            new_transport = await upgrade
        else:
            # Awaited directly: start_tls swaps protocols before we yield, so no byte of
            # the ClientHello can reach this stream's buffer first.
            new_transport = await starting
        if new_transport is None:  # the peer went away during the handshake
            raise ConnectionResetError("client closed during the TLS handshake")
        self.transport = new_transport

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """Give up the transport and the unread bytes (to the relay)."""
        assert self.transport is not None
        data = bytes(self._buffer)
        self._buffer.clear()
        self._resume()
        return self.transport, data

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
