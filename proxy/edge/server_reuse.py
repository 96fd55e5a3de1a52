"""Keep a compute backend whose client left cleanly, for the next client of the same kind.

A client that connects per request (an agent, a serverless function, ``pgbench -C``) pays
for a backend fork and a SCRAM login on the compute every time. PgBouncer keeps server
connections for that; pgwake does the same in session mode, opt-in with
``server_reuse_seconds``:

* A backend is kept only when its client ended cleanly: the client's last bytes were the
  Terminate message on their own, and the compute's last bytes ended with ReadyForQuery.
  The relay checks both without parsing (``relay.py``).
* Before it is kept, a transaction the client left open is rolled back (what the backend
  would do had the client's Terminate reached it), then ``DISCARD ALL`` runs (temporary
  tables, prepared statements, settings, ``SET ROLE``/``SESSION AUTHORIZATION``,
  ``LISTEN``, advisory locks). The answer must be exactly that: CommandComplete for each,
  any ParameterStatus, ReadyForQuery ``I``. Anything else, and the backend is closed.
* It is handed only to a client that authenticated at the edge for the same endpoint and
  sent the same startup message (role, database, options, application name...), so the
  compute sees the same session it would have logged in.
* Kept backends are closed after ``server_reuse_seconds``, when the endpoint suspends or
  its compute crashes, and before the idle check counts the compute's sessions.

``reset`` is the reset's exchange, sans-IO (``exchange.py``); ``keep_backend`` drives it
and keeps the backend.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.edge.exchange import PeerClosed, Send, receive_message
from pgwake.edge.packet_stream import drive
from pgwake.protocol import encode
from pgwake.protocol.errors import ProtocolViolation
from pgwake.protocol.framing import MAX_STARTUP_PHASE_MESSAGE_LENGTH, MessageReader
from pgwake.protocol.messages import (
    COMMAND_COMPLETE,
    NEED_DATA,
    PARAMETER_STATUS,
    QUERY,
    READY_FOR_QUERY,
    TRANSACTION_IDLE,
    Frame,
)

if TYPE_CHECKING:
    from pgwake.edge.exchange import Exchange
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.endpoint.lifecycle import Lifecycle

__all__ = ["IdleServer", "IdleServers", "keep_backend", "reset", "reset_for_reuse"]

#: A compute's answer to the reset must come within this.
_RESET_TIMEOUT: Final = 5.0
#: Kept backends per endpoint at most (a compute has ``max_connections = 300``).
_LIMIT_PER_ENDPOINT: Final = 16
_ROLLBACK: Final = b"ROLLBACK\0"
_DISCARD_ALL: Final = b"DISCARD ALL\0"


@dataclass(slots=True)
class IdleServer:
    """A logged-in, reset backend and what its next client must be told."""

    stream: PacketStream
    process_id: int
    secret_key: int
    #: The ParameterStatus messages of its login, as the next client gets them.
    parameter_status: bytes
    since: float


def reset(parameter_status: bytes, status: bytes) -> Exchange[bytes | None]:
    """The reset of a backend whose client has left, sans-IO: ROLLBACK if its last
    ReadyForQuery status ``status`` was not idle, then DISCARD ALL, in one write.

    Returns the ParameterStatus messages a new client must get (the login's
    ``parameter_status``, updated by what the reset reported), or ``None`` when the answer
    is anything but CommandComplete for each command, ParameterStatus messages and
    ReadyForQuery idle, and nothing after. Raises ``ProtocolViolation`` for a message that
    is not one (or over ``MAX_STARTUP_PHASE_MESSAGE_LENGTH``) and ``PeerClosed`` at EOF."""
    commands = [_DISCARD_ALL] if status == TRANSACTION_IDLE else [_ROLLBACK, _DISCARD_ALL]
    yield Send(b"".join(encode.message(QUERY, command) for command in commands))
    reader = MessageReader(MAX_STARTUP_PHASE_MESSAGE_LENGTH)
    reported: dict[bytes, bytes] = {}
    for command in commands:
        frame = yield from receive_message(reader.feed, reader.next_message)
        if (frame.type, frame.body) != (COMMAND_COMPLETE, command):
            return None
        while True:
            frame = yield from receive_message(reader.feed, reader.next_message)
            if frame.type == PARAMETER_STATUS:
                reported[frame.body.split(b"\0", 1)[0]] = frame.body
            elif (frame.type, frame.body) == (READY_FOR_QUERY, TRANSACTION_IDLE):
                break
            else:
                return None
    if reader.take_remaining():
        return None  # more than the reset's answer: not a backend at rest
    if not reported:
        return parameter_status
    return _merge_parameter_status(parameter_status, reported)


async def reset_for_reuse(
    stream: PacketStream, parameter_status: bytes, status: bytes
) -> bytes | None:
    """Run ``reset`` over ``stream`` within ``_RESET_TIMEOUT``; ``None`` when the backend
    is not clean and idle afterwards, or does not answer in time."""
    try:
        async with asyncio.timeout(_RESET_TIMEOUT):
            return await drive(stream, reset(parameter_status, status))
    except (TimeoutError, PeerClosed, ProtocolViolation, OSError):
        return None


def _merge_parameter_status(opening: bytes, reported: dict[bytes, bytes]) -> bytes:
    reader = MessageReader(MAX_STARTUP_PHASE_MESSAGE_LENGTH)
    reader.feed(opening)
    merged: list[bytes] = []
    while (frame := reader.next_message()) is not NEED_DATA:
        assert isinstance(frame, Frame)
        name = frame.body.split(b"\0", 1)[0]
        merged.append(encode.message(PARAMETER_STATUS, reported.pop(name, frame.body)))
    merged += [encode.message(PARAMETER_STATUS, body) for body in reported.values()]
    return b"".join(merged)


async def keep_backend(
    lifecycle: Lifecycle,
    stream: PacketStream,
    status: bytes,
    startup: bytes,
    *,
    backend_key: tuple[int, int],
    told: bytes,
    idle_servers: IdleServers,
) -> None:
    """Reset the backend of a session that ended at rest and keep it for the next client
    with the same ``startup``; close it when it cannot be kept. ``backend_key`` is the
    backend's own, ``told`` the ParameterStatus messages its client was sent at login."""
    parameter_status = await reset_for_reuse(stream, told, status)
    if parameter_status is None:
        metrics.SERVER_REUSE.labels(lifecycle.name, "reset_failed").inc()
        stream.close()
        return
    if lifecycle.address is None:  # the compute is going away
        stream.close()
        return
    process_id, secret_key = backend_key
    kept = IdleServer(stream, process_id, secret_key, parameter_status, time.monotonic())
    if not idle_servers.put(startup, kept):
        metrics.SERVER_REUSE.labels(lifecycle.name, "full").inc()
        stream.close()


class IdleServers:
    """One endpoint's kept backends, by the exact startup message they logged in with."""

    def __init__(self, endpoint: str, keep_seconds: float) -> None:
        self.endpoint = endpoint
        self.keep_seconds = keep_seconds
        self._by_startup: dict[bytes, deque[IdleServer]] = {}
        self._count = 0

    @property
    def enabled(self) -> bool:
        return self.keep_seconds > 0

    def __len__(self) -> int:
        return self._count

    def has(self, startup: bytes) -> bool:
        return bool(self._by_startup.get(startup))

    def put(self, startup: bytes, server: IdleServer) -> bool:
        """Keep ``server``; ``False`` (and the caller closes it) when full or disabled."""
        if not self.enabled or self._count >= _LIMIT_PER_ENDPOINT:
            return False
        self._by_startup.setdefault(startup, deque()).append(server)
        self._count += 1
        metrics.SERVER_REUSE.labels(self.endpoint, "kept").inc()
        return True

    def take(self, startup: bytes) -> IdleServer | None:
        """The most recently kept live backend for ``startup``, if any."""
        servers = self._by_startup.get(startup)
        while servers:
            server = servers.pop()
            self._count -= 1
            if server.stream.closed.done():  # the compute ended it meanwhile
                continue
            metrics.SERVER_REUSE.labels(self.endpoint, "reused").inc()
            return server
        return None

    def expire(self, now: float | None = None) -> None:
        """Close the backends kept longer than ``keep_seconds``."""
        now = time.monotonic() if now is None else now
        for servers in self._by_startup.values():
            while servers and now - servers[0].since >= self.keep_seconds:
                self._close(servers.popleft(), "expired")

    def close_all(self, reason: str) -> None:
        for servers in self._by_startup.values():
            while servers:
                self._close(servers.popleft(), reason)
        self._by_startup.clear()

    def _close(self, server: IdleServer, reason: str) -> None:
        self._count -= 1
        server.stream.close()
        metrics.SERVER_REUSE.labels(self.endpoint, reason).inc()
