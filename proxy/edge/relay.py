"""The byte pump between a client and its compute, with flow control both ways.

Bytes are copied as they come. When one side's write buffer passes its high-water mark,
reading from the other side pauses until it drains (uvicorn's ``flow_control.py``), so a
slow client never makes pgwake buffer a large result. Either side closing closes the
other once its pending bytes are written.

Each read is shown to the session's ``SessionTracker`` first (``protocol/
session_tracking.py``): message headers only, so pgwake knows whether anything runs, the
transaction status, a COPY, a real Terminate. The endpoint's idle check reads it once a
tick (``ClientConnection.observe``): nothing on the hot path calls out.

A relay outlives its backend. Its modes:

* ``RELAYING``: both pumps copy bytes.
* ``HOLDING``: pgwake has taken the compute's connection, at rest, for an exchange of its
  own (``take_compute``: parking captures the session's state over it). What the client
  sends meanwhile is held, not forwarded.
* ``PARKED``: no backend (``park``). The client's connection stays open and hears
  nothing; its next message is held and the owner is asked for a backend
  (``RelayOwner.wants_compute``), which it attaches with ``give_compute``. A Terminate
  while parked just ends the session. After a failed re-attach, a ``Refuser`` answers
  the client's held request as Postgres answers one after an error.

A relayed session is only its transports, pumps, tracker and this ``Relay``: the
session's coroutine has ended by then, which keeps an idle session at a few KB.

When the compute closes on its own (killed, crashed) at a message boundary, without a
last ErrorResponse, while the client is still there and has not terminated, the client
gets a FATAL 57P01 saying so instead of a bare close. With server reuse
(``server_reuse.py``), a Terminate read on its own while the session is at rest is not
forwarded: the compute's connection is handed over with its transaction status.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING, Final, Protocol

from pgwake import metrics
from pgwake.edge.packet_stream import PacketStream
from pgwake.protocol import encode
from pgwake.protocol.errors import AdminShutdown, ErrorKind
from pgwake.protocol.messages import TERMINATE
from pgwake.protocol.session_tracking import SessionTracker

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pgwake.edge.session_state import Refuser


__all__ = ["Mode", "Relay", "RelayOwner", "Relays", "start_relay"]

# Larger than asyncio's 64 KiB default: fewer pause/resume flips on big results.
_HIGH_WATER: Final = 512 * 1024
_LOW_WATER: Final = 128 * 1024
#: Client bytes held while no backend is attached; past this, its reading pauses.
_HOLD_LIMIT: Final = 1024 * 1024
_TERMINATE: Final = encode.message(TERMINATE)
#: What a client is told when its compute closed under it at rest.
_COMPUTE_STOPPED_ERROR: Final = AdminShutdown(
    "terminating connection because the endpoint's compute stopped unexpectedly",
    hint="Reconnect: the next connection starts the compute again.",
)
_COMPUTE_STOPPED: Final = encode.error_response(_COMPUTE_STOPPED_ERROR)


class Mode(enum.Enum):
    RELAYING = "relaying"
    HOLDING = "holding"
    PARKED = "parked"


_RELAYING: Final = Mode.RELAYING
_PARKED: Final = Mode.PARKED


class RelayOwner(Protocol):
    """Who a relay reports to (``ClientConnection``)."""

    def wants_compute(self) -> None:
        """A parked session's client sent a message: attach a backend (``give_compute``)."""

    def relayed(self, to_compute: int, to_client: int) -> None:
        """Both sides have closed: the session is over."""

    def keep_compute(self, stream: PacketStream, status: bytes) -> None:
        """The client terminated at rest: the compute's connection, for server reuse."""


class _Pump(asyncio.Protocol):
    """Reads from one transport (the one it is the protocol of), writes to ``peer``.

    ``data_received`` runs once per read on every relayed session, so it does the least it
    can: the tracker walks headers only. (The peer's ``write`` is not kept bound: a bound
    method is 64 bytes per side of every session, parked ones included.)"""

    __slots__ = ("_relay", "bytes_read", "peer", "transport")

    def __init__(self, relay: Relay, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.peer: _Pump | None = None
        self.bytes_read = 0
        self._relay: Relay | None = relay

    def connect_to(self, peer: _Pump | None) -> None:
        self.peer = peer

    def eof_received(self) -> bool:
        # The Postgres protocol has no half-close: EOF from one side ends the session.
        return False

    # Our transport's write buffer is full: stop reading the side that fills it.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()


class _ClientPump(_Pump):
    """The client's side. Off the relay (holding, parked) its bytes go to the relay."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        relay = self._relay
        if relay is None:
            return
        if relay.mode is not _RELAYING:
            relay.client_sent_off_relay(data)
            return
        tracker = relay.tracker
        if data == _TERMINATE and relay.reusable and tracker.at_rest:
            # A Terminate on its own at rest: not forwarded, so the backend lives; pgwake
            # closes the client's connection itself, as the backend would have (some
            # clients, asyncpg among them, wait for that close).
            tracker.terminated = True
            relay.withheld_terminate = True
            self.transport.close()
            return
        tracker.from_client(data)
        if (peer := self.peer) is not None:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.client_closed()


class _ComputePump(_Pump):
    """The compute's side, while a backend is attached."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        relay = self._relay
        if relay is None:
            return
        relay.tracker.from_server(data)
        if (peer := self.peer) is not None:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.compute_closed(self)


class Relay:
    """One relayed session, from its first relayed byte to both sides closed; it outlives
    the backends attached to it (``take_compute``, ``park``, ``give_compute``)."""

    __slots__ = (
        "_client",
        "_client_lost",
        "_compute",
        "_done",
        "_held",
        "_relays",
        "_to_client",
        "endpoint",
        "mode",
        "owner",
        "refuser",
        "reusable",
        "tracker",
        "withheld_terminate",
    )

    def __init__(
        self,
        relays: Relays,
        owner: RelayOwner,
        *,
        endpoint: str | None = None,
        reusable: bool = False,
    ) -> None:
        #: The endpoint whose compute the session uses (``Relays.end_endpoint``).
        self.endpoint = endpoint
        self.owner = owner
        self.tracker = SessionTracker()
        self.mode = _RELAYING
        #: Whether a Terminate at rest hands the backend to server reuse.
        self.reusable = reusable
        self.withheld_terminate = False
        #: Answers a parked client's messages after a failed re-attach.
        self.refuser: Refuser | None = None
        self._relays = relays
        self._client: _ClientPump | None = None
        self._client_lost = False
        self._compute: _ComputePump | None = None
        self._held: bytearray | None = None
        self._to_client = 0
        self._done = False

    # -- starting ------------------------------------------------------------------------

    def _attach_client(self, transport: asyncio.Transport) -> _ClientPump:
        pump = self._client = _ClientPump(self, transport)
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)
        transport.set_protocol(pump)
        return pump

    def _attach_compute(self, transport: asyncio.Transport) -> _ComputePump:
        client = self._client
        assert client is not None
        pump = self._compute = _ComputePump(self, transport)
        pump.connect_to(client)
        client.connect_to(pump)
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)
        transport.set_protocol(pump)
        if not transport.is_reading():  # paused while an exchange had it
            transport.resume_reading()
        return pump

    # -- the compute taken, given, gone ----------------------------------------------------

    @property
    def has_compute(self) -> bool:
        return self._compute is not None

    def take_compute(self) -> PacketStream | None:
        """RELAYING at rest -> HOLDING: the compute's connection, for an exchange of
        pgwake's own; the client's bytes are held meanwhile. ``None`` if it cannot be."""
        pump = self._compute
        if self.mode is not _RELAYING or pump is None or not self.tracker.at_rest:
            return None
        if pump.transport.is_closing() or self._client is None:
            return None
        stream = self._detach_compute(pump)
        self.mode = Mode.HOLDING
        return stream

    def _detach_compute(self, pump: _ComputePump) -> PacketStream:
        transport = pump.transport
        pump._relay = None
        pump.connect_to(None)
        self._compute = None
        self._to_client += pump.bytes_read
        if self._client is not None:
            self._client.connect_to(None)
            if not self._client.transport.is_reading():  # paused for this compute
                self._client.transport.resume_reading()
        stream = PacketStream()
        transport.set_protocol(stream)
        stream.connection_made(transport)
        if not transport.is_reading():  # paused while the client's buffer was full
            transport.resume_reading()
        return stream

    def give_compute(self, stream: PacketStream) -> None:
        """HOLDING or PARKED -> RELAYING with the backend on ``stream`` (the one taken, or
        a new one logged in and restored); then forward what the client sent meanwhile."""
        client = self._client
        if client is None:  # the client left meanwhile
            stream.close()
            return
        lost = stream.closed.done()
        transport, pending = stream.detach()
        pump = self._attach_compute(transport)
        self.mode = _RELAYING
        self.refuser = None
        held, self._held = self._held, None
        if not client.transport.is_reading():
            client.transport.resume_reading()
        if pending:
            pump.data_received(pending)
        if held:
            data = bytes(held)
            self.tracker.from_client(data)
            transport.write(data)
        if lost:
            pump.connection_lost(None)

    def park(self) -> None:
        """HOLDING -> PARKED: the backend is gone (the caller ended it). The client's next
        message asks the owner for another."""
        self.mode = _PARKED
        if self._held:
            self.owner.wants_compute()

    def refuse(self, refuser: Refuser) -> None:
        """A re-attach failed: ``refuser`` answers what the client sent (and its batch's
        rest); the session stays parked for its next try."""
        held, self._held = self._held, None
        self.refuser = refuser
        if self._client is not None and not self._client.transport.is_reading():
            self._client.transport.resume_reading()
        self.mode = _PARKED
        if held:
            self._refuse(bytes(held))

    def _refuse(self, data: bytes) -> None:
        refuser, client = self.refuser, self._client
        assert refuser is not None
        answer = refuser.feed(data)
        if client is None:
            return
        if answer:
            client.transport.write(answer)
        if refuser.terminated:
            client.transport.close()
        elif refuser.idle:
            self.refuser = None

    def write_to_client(self, data: bytes) -> None:
        """Send the client bytes of pgwake's own, at a message boundary (while holding or
        parked, or between messages)."""
        if self._client is not None and data:
            self._client.transport.write(data)

    @property
    def traffic(self) -> int:
        """Bytes relayed both ways so far, every backend included: when it has not moved
        since the last look, the session did nothing (``ClientConnection.observe``)."""
        client = self._client.bytes_read if self._client is not None else 0
        compute = self._compute.bytes_read if self._compute is not None else 0
        return client + self._to_client + compute

    @property
    def held(self) -> bool:
        """The client sent something since the compute was taken."""
        return bool(self._held)

    def client_sent_off_relay(self, data: bytes) -> None:
        """The client's bytes while no backend is attached to the relay."""
        if self.refuser is not None:
            self._refuse(data)
            return
        client = self._client
        if client is None:
            return
        if self.mode is _PARKED and not self._held and data == _TERMINATE:
            # A parked client that leaves wakes nothing.
            self.tracker.terminated = True
            client.transport.close()
            return
        first = not self._held
        if self._held is None:
            self._held = bytearray()
        self._held += data
        if len(self._held) > _HOLD_LIMIT:
            client.transport.pause_reading()
        if first and self.mode is _PARKED:
            self.owner.wants_compute()

    # -- ends ----------------------------------------------------------------------------

    def client_closed(self) -> None:
        self._client_lost = True
        compute = self._compute
        if compute is not None:
            if (
                self.withheld_terminate
                and not compute.transport.is_closing()
                and self.tracker.at_rest
            ):
                stream = self._detach_compute(compute)
                self.reusable = False
                self.owner.keep_compute(stream, self.tracker.status)
            else:
                compute.transport.close()  # flushes what is already queued, then closes
                return  # done when the compute's side has closed too
        self._finish()

    def compute_closed(self, pump: _ComputePump) -> None:
        self._compute = None
        self._to_client += pump.bytes_read
        client = self._client
        if self._client_lost or client is None:
            self._finish()
            return
        tracker = self.tracker
        if (
            tracker.server_at_boundary
            and not tracker.server_sent_error
            and not tracker.terminated
            and not client.transport.is_closing()
        ):
            # Closed by the compute, not after the client (whose close closes us first):
            # the client would otherwise see a bare close and no SQLSTATE.
            client.transport.write(_COMPUTE_STOPPED)
            metrics.CLIENT_ERRORS.labels(
                _COMPUTE_STOPPED_ERROR.sqlstate, ErrorKind.COMPUTE.value
            ).inc()
        client.transport.close()  # its connection_lost finishes the relay

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._relays.discard(self)
        to_compute = self._client.bytes_read if self._client is not None else 0
        self.owner.relayed(to_compute, self._to_client)

    @property
    def client_gone(self) -> bool:
        """The client has left (or is being closed)."""
        return self._client_lost or self._client is None or self._client.transport.is_closing()

    def end(self, error: bytes) -> bool:
        """End the session for a reason of pgwake's own (e.g. its endpoint is deleted): the
        client gets ``error``, an encoded FATAL ErrorResponse, when its stream is at a
        message boundary, then both sides close. Nothing the compute sends from now on
        reaches the client, and its close adds no error. Returns whether the client was
        told."""
        client, compute = self._client, self._compute
        if client is None:
            return False
        told = self.tracker.server_at_boundary and not client.transport.is_closing()
        if compute is not None:
            compute.connect_to(None)
            self.tracker.terminated = True  # no 57P01 of the relay's own on top
            compute.transport.close()
        if told:
            client.transport.write(error)
        client.transport.close()
        return told

    def abort(self) -> None:
        """Cut both sides now (a forced shutdown); ``relayed`` still runs."""
        for pump in (self._client, self._compute):
            if pump is not None:
                pump.transport.abort()


class Relays:
    """The relayed sessions of one server, so a shutdown can wait for them or cut them,
    and an endpoint's can be parked or ended."""

    def __init__(self) -> None:
        self._relays: set[Relay] = set()
        self._by_endpoint: dict[str, set[Relay]] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._relays)

    def add(self, relay: Relay) -> None:
        self._relays.add(relay)
        if relay.endpoint is not None:
            self._by_endpoint.setdefault(relay.endpoint, set()).add(relay)
        self._empty.clear()

    def discard(self, relay: Relay) -> None:
        self._relays.discard(relay)
        if relay.endpoint is not None:
            of_endpoint = self._by_endpoint.get(relay.endpoint)
            if of_endpoint is not None:
                of_endpoint.discard(relay)
                if not of_endpoint:
                    del self._by_endpoint[relay.endpoint]
        if not self._relays:
            self._empty.set()

    def of(self, endpoint: str) -> Iterator[Relay]:
        """``endpoint``'s relayed sessions (a copy: parking may end some)."""
        return iter(list(self._by_endpoint.get(endpoint, ())))

    async def wait_closed(self) -> None:
        """Return once no relay is left."""
        await self._empty.wait()

    def abort_all(self) -> None:
        for relay in list(self._relays):
            relay.abort()

    def end_endpoint(self, endpoint: str, message: str, hint: str | None = None) -> int:
        """End every relayed session of ``endpoint``, telling each client why in a FATAL
        57P01 (``Relay.end``); return how many sessions were ended."""
        return self._end(list(self.of(endpoint)), message, hint)

    def end_parked(self, message: str, hint: str | None = None) -> int:
        """End every parked session (server shutdown: nobody would re-attach them)."""
        parked = [relay for relay in self._relays if relay.mode is _PARKED]
        return self._end(parked, message, hint)

    def _end(self, relays: list[Relay], message: str, hint: str | None) -> int:
        error = AdminShutdown(message, hint=hint)
        encoded = encode.error_response(error)
        for relay in relays:
            if relay.end(encoded):
                metrics.CLIENT_ERRORS.labels(error.sqlstate, error.kind.value).inc()
        return len(relays)


def start_relay(
    client_stream: PacketStream,
    compute_stream: PacketStream,
    relays: Relays,
    owner: RelayOwner,
    *,
    endpoint: str | None = None,
    reusable: bool = False,
) -> Relay:
    """Take over both streams' transports and pump bytes until both sides are closed,
    then call ``owner.relayed(to_compute, to_client)``. Returns at once; ``endpoint``
    names the session's endpoint for ``Relays``.

    With ``reusable``, a session that ends at rest hands the compute's connection to
    ``owner.keep_compute`` instead of closing it. Bytes the handshake read but did not
    consume are delivered first."""
    client_lost, compute_lost = client_stream.closed.done(), compute_stream.closed.done()
    client, client_pending = client_stream.detach()
    compute, compute_pending = compute_stream.detach()
    relay = Relay(relays, owner, endpoint=endpoint, reusable=reusable)
    relays.add(relay)
    from_client = relay._attach_client(client)
    from_compute = relay._attach_compute(compute)
    if client_pending:
        from_client.data_received(client_pending)
    if compute_pending:
        from_compute.data_received(compute_pending)
    # A side already lost during the handshake never calls its new pump's connection_lost.
    if compute_lost:
        from_compute.connection_lost(None)
    if client_lost:
        from_client.connection_lost(None)
    return relay
