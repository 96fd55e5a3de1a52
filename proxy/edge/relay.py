"""The byte pump between a client and its compute, with flow control both ways.

Nothing here parses: after ``ReadyForQuery`` bytes are copied as they come. When one
side's write buffer passes its high-water mark, reading from the other side pauses until
it drains (uvicorn's ``flow_control.py``), so a slow client never makes pgwake buffer a
large result. Either side closing closes the other once its pending bytes are written.

A relayed session is only its two transports, two pumps and one ``Relay``: the session's
coroutine has ended by then (its frames, the handshake and the SCRAM state are freed), and
``on_done`` is called once both sides have closed. That keeps an idle session at a few KB.

The pumps also notice, still without parsing, where each side's stream stands: whether the
compute's last read ended with a whole ReadyForQuery (its stream to the client is at a
message boundary, one ``endswith`` per read) and whether the client's last read ended with
Terminate. Two things use that:

* A compute that closes on its own (killed, crashed) at a message boundary while its client
  is still there and has not terminated: the client gets a FATAL ErrorResponse (57P01)
  saying so before its connection closes, instead of a bare close and a driver's "server
  closed the connection unexpectedly". A compute that explains itself (its own FATAL, as
  for pg_terminate_backend or a shutdown) last sent an ErrorResponse, so nothing is added.
* With ``server_reuse_seconds`` (``server_reuse.py``), a session that ended at rest: the
  client's last read was the Terminate message alone (not forwarded: pgwake closes the
  client itself) and the compute's last read ended with ReadyForQuery. Then the compute's
  connection is handed over, with that ReadyForQuery's transaction status, instead of
  closed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.edge.packet_stream import PacketStream
from pgwake.protocol import encode
from pgwake.protocol.errors import AdminShutdown, ErrorKind
from pgwake.protocol.messages import (
    READY_FOR_QUERY,
    TERMINATE,
    TRANSACTION_FAILED,
    TRANSACTION_IDLE,
    TRANSACTION_IN_BLOCK,
)

if TYPE_CHECKING:
    from collections.abc import Callable


__all__ = ["Relay", "Relays", "start_relay"]

# Larger than asyncio's 64 KiB default: fewer pause/resume flips on big results.
_HIGH_WATER: Final = 512 * 1024
_LOW_WATER: Final = 128 * 1024
# Terminate as a whole message, and ReadyForQuery without its status byte.
_TERMINATE: Final = encode.message(TERMINATE)
_READY_FOR_QUERY: Final = encode.message(READY_FOR_QUERY, TRANSACTION_IDLE)[:-1]
# The transaction statuses a ReadyForQuery may carry; a relay starts right after the
# login's (or a kept backend's reset's) ReadyForQuery, which is always idle.
_STATUSES: Final = (TRANSACTION_IDLE, TRANSACTION_IN_BLOCK, TRANSACTION_FAILED)
_IDLE: Final = TRANSACTION_IDLE
#: What a client is told when its compute closed under it at rest.
_COMPUTE_STOPPED_ERROR: Final = AdminShutdown(
    "terminating connection because the endpoint's compute stopped unexpectedly",
    hint="Reconnect: the next connection starts the compute again.",
)
_COMPUTE_STOPPED: Final = encode.error_response(_COMPUTE_STOPPED_ERROR)


class _Pump(asyncio.Protocol):
    """Reads from one transport (the one it is the protocol of), writes to ``peer``.

    ``data_received`` runs once per read on every relayed session, so it does the least it
    can: the peer's ``write`` is bound once, and byte counting is one addition."""

    __slots__ = ("_relay", "_write", "bytes_read", "peer", "transport")

    def __init__(self, relay: Relay, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.peer: _Pump | None = None
        self.bytes_read = 0
        self._relay: Relay | None = relay
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
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.side_closed()

    # Our transport's write buffer is full: stop reading the side that fills it.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()


class _ClientPump(_Pump):
    """The client's pump: notes whether a read ended with Terminate (the client is done,
    so a compute closing after it is no news to tell)."""

    __slots__ = ("terminated",)

    def __init__(self, relay: Relay, transport: asyncio.Transport) -> None:
        super().__init__(relay, transport)
        self.terminated = False

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        if data.endswith(_TERMINATE):
            self.terminated = True
        self._write(data)


class _ClientEndPump(_ClientPump):
    """The client's pump when its compute may be kept. A read that is exactly the
    Terminate message (how clients end a session) is not forwarded, so the backend
    lives; pgwake closes the client's connection itself, as the backend would have
    (some clients, asyncpg among them, wait for that close)."""

    __slots__ = ("withheld",)

    def __init__(self, relay: Relay, transport: asyncio.Transport) -> None:
        super().__init__(relay, transport)
        #: The Terminate was the whole read and was not forwarded.
        self.withheld = False

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        if data.endswith(_TERMINATE):
            self.terminated = True
            if len(data) == len(_TERMINATE):
                # Only a client's own stream could fake it (its session ends, nothing
                # else: a backend is kept only if its reset answers exactly as expected).
                self.withheld = True
                self.transport.close()
                return
        self._write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        relay, peer = self._relay, self.peer
        if (
            self.withheld
            and isinstance(peer, _ComputePump)
            and peer.status
            and relay is not None
            and relay.hand_over_compute(peer.status)
        ):
            self.peer = None  # the compute's transport is someone else's now
        super().connection_lost(exc)


class _ComputePump(_Pump):
    """The compute's pump: remembers the transaction status of a ReadyForQuery that ended
    its last read (``b""`` if none did: the backend is busy, or the stream is mid-message).
    When the compute closes on its own at such a point, the client hears why."""

    __slots__ = ("status",)

    def __init__(self, relay: Relay, transport: asyncio.Transport) -> None:
        super().__init__(relay, transport)
        self.status = _IDLE

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        # No copies: endswith over data[:-1], and a one-byte slice is a cached object.
        self.status = data[-1:] if data.endswith(_READY_FOR_QUERY, 0, -1) else b""
        self._write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.peer
        if (
            self.status in _STATUSES
            and isinstance(client, _ClientPump)
            and not client.terminated
            and not client.transport.is_closing()
        ):
            # Closed by the compute, not after the client (whose close closes us first):
            # the client would otherwise see a bare close and no SQLSTATE.
            client.transport.write(_COMPUTE_STOPPED)
            metrics.CLIENT_ERRORS.labels(
                _COMPUTE_STOPPED_ERROR.sqlstate, ErrorKind.COMPUTE.value
            ).inc()
        super().connection_lost(exc)


def _discard(data: bytes) -> None:
    """Where a pump writes before it is connected (never in practice)."""


class Relay:
    """One relayed session: calls ``on_done(to_compute, to_client)`` once, when both
    sides have closed."""

    __slots__ = (
        "_from_client",
        "_from_compute",
        "_on_done",
        "_on_reusable",
        "_open",
        "_relays",
        "endpoint",
    )

    def __init__(
        self,
        relays: Relays,
        on_done: Callable[[int, int], None],
        on_reusable: Callable[[PacketStream, bytes], None] | None = None,
        endpoint: str | None = None,
    ) -> None:
        #: The endpoint whose compute the session uses (``Relays.end_endpoint``).
        self.endpoint = endpoint
        self._relays = relays
        self._on_done: Callable[[int, int], None] | None = on_done
        self._on_reusable = on_reusable
        self._open = 2
        self._from_client: _Pump | None = None
        self._from_compute: _Pump | None = None

    def attach(self, from_client: _Pump, from_compute: _Pump) -> None:
        self._from_client, self._from_compute = from_client, from_compute
        from_client.connect_to(from_compute)
        from_compute.connect_to(from_client)

    def side_closed(self) -> None:
        self._open -= 1
        if self._open > 0:
            return
        on_done, self._on_done = self._on_done, None
        self._relays.discard(self)
        if on_done is not None:
            to_compute = self._from_client.bytes_read if self._from_client else 0
            to_client = self._from_compute.bytes_read if self._from_compute else 0
            on_done(to_compute, to_client)

    def hand_over_compute(self, status: bytes) -> bool:
        """The client ended at rest: give the compute's connection to ``on_reusable`` as a
        ``PacketStream``, with the transaction status of its last ReadyForQuery, instead
        of closing it. Returns ``False`` if it cannot be."""
        pump, on_reusable = self._from_compute, self._on_reusable
        if pump is None or on_reusable is None or pump.transport.is_closing():
            return False
        self._on_reusable = None
        transport = pump.transport
        pump.peer, pump._relay = None, None  # the pump is this relay's own
        stream = PacketStream()
        transport.set_protocol(stream)
        stream.connection_made(transport)
        if not transport.is_reading():  # paused while the client's buffer was full
            transport.resume_reading()
        self.side_closed()  # the compute side is done as far as this relay goes
        on_reusable(stream, status)
        return True

    def end(self, error: bytes) -> bool:
        """End the session for a reason of pgwake's own (e.g. its endpoint is deleted): the
        client gets ``error``, an encoded FATAL ErrorResponse, when its stream is at a
        message boundary, then both sides close. Nothing the compute sends from now on
        reaches the client, and its close adds no error. Returns whether the client was
        told."""
        client, compute = self._from_client, self._from_compute
        if client is None or not isinstance(compute, _ComputePump):
            return False
        told = compute.status in _STATUSES and not client.transport.is_closing()
        if compute._relay is not None:  # not handed over to server reuse
            compute.status = b""
            compute.peer, compute._write = None, _discard
            compute.transport.close()
        if told:
            client.transport.write(error)
        client.transport.close()
        return told

    def abort(self) -> None:
        """Cut both sides now (a forced shutdown); ``on_done`` still runs."""
        for pump in (self._from_client, self._from_compute):
            if pump is not None:
                pump.transport.abort()


class Relays:
    """The relayed sessions of one server, so a shutdown can wait for them or cut them."""

    def __init__(self) -> None:
        self._relays: set[Relay] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._relays)

    def add(self, relay: Relay) -> None:
        self._relays.add(relay)
        self._empty.clear()

    def discard(self, relay: Relay) -> None:
        self._relays.discard(relay)
        if not self._relays:
            self._empty.set()

    async def wait_closed(self) -> None:
        """Return once no relay is left."""
        await self._empty.wait()

    def abort_all(self) -> None:
        for relay in list(self._relays):
            relay.abort()

    def end_endpoint(self, endpoint: str, message: str, hint: str | None = None) -> int:
        """End every relayed session of ``endpoint``, telling each client why in a FATAL
        57P01 (``Relay.end``); return how many sessions were ended."""
        error = AdminShutdown(message, hint=hint)
        ended = [relay for relay in self._relays if relay.endpoint == endpoint]
        encoded = encode.error_response(error)
        for relay in ended:
            if relay.end(encoded):
                metrics.CLIENT_ERRORS.labels(error.sqlstate, error.kind.value).inc()
        return len(ended)


def start_relay(
    client_stream: PacketStream,
    compute_stream: PacketStream,
    relays: Relays,
    on_done: Callable[[int, int], None],
    on_reusable: Callable[[PacketStream, bytes], None] | None = None,
    *,
    endpoint: str | None = None,
) -> Relay:
    """Take over both streams' transports and pump bytes until both sides are closed,
    then call ``on_done(to_compute, to_client)``. Returns at once; ``endpoint`` names the
    session's endpoint for ``Relays.end_endpoint``.

    With ``on_reusable``, a session that ends at rest hands the compute's connection to
    it (as a ``PacketStream``, with the last transaction status) instead of closing it.
    Bytes the handshake read but did not consume are delivered first."""
    client_lost, compute_lost = client_stream.closed.done(), compute_stream.closed.done()
    client, client_pending = client_stream.detach()
    compute, compute_pending = compute_stream.detach()
    relay = Relay(relays, on_done, on_reusable, endpoint)
    relays.add(relay)
    from_client = (
        _ClientPump(relay, client) if on_reusable is None else _ClientEndPump(relay, client)
    )
    from_compute = _ComputePump(relay, compute)
    relay.attach(from_client, from_compute)
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
    return relay
