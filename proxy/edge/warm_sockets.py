"""Connections opened ahead of time to a running compute, for clients that have proved
their password.

Postgres forks a backend when it accepts a connection, before the startup packet, and
the fork is most of what a new session costs on the compute's side. pgwake opens a
compute connection only after the client's proof is verified (a stranger must not fork
anything), so to keep that fork off the critical path it keeps a couple of connections
already accepted: a client that has authenticated takes one and sends its startup
packet at once, and taking one opens its replacement in the background.

Strangers cannot drain or multiply them: only an authenticated client takes one, and
there are never more than ``SIZE`` per endpoint. Nothing is opened for an endpoint that
nobody logs in to: the set fills when a client takes from it, and ages out unused.
A waiting backend is not a session (``pg_stat_activity`` does not list it), so these
never keep a compute awake; they are closed when it suspends or crashes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pgwake.compute import ComputeAddress
    from pgwake.edge.packet_stream import PacketStream

__all__ = ["MAX_AGE_SECONDS", "SIZE", "WarmSockets"]

logger = logging.getLogger(__name__)

#: Connections kept per endpoint.
SIZE: Final = 2
#: Postgres ends a connection that sends no startup packet within its
#: ``authentication_timeout`` (60 s by default); ours are dropped well before.
MAX_AGE_SECONDS: Final = 30.0


class WarmSockets:
    """Up to ``SIZE`` connections to one endpoint's compute, each waiting for a startup."""

    def __init__(
        self, name: str, connect: Callable[[ComputeAddress], Awaitable[PacketStream]]
    ) -> None:
        self.name = name
        self._connect = connect
        self._sockets: deque[tuple[ComputeAddress, PacketStream, float]] = deque()
        self._filling: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sockets)

    def take(self, address: ComputeAddress) -> PacketStream | None:
        """A fresh connection to ``address``, if one is ready; start opening its
        replacement either way (the caller is an authenticated client)."""
        now = time.monotonic()
        taken: PacketStream | None = None
        while self._sockets and taken is None:
            kept_address, stream, opened = self._sockets.popleft()
            if kept_address == address and now - opened < MAX_AGE_SECONDS and _usable(stream):
                taken = stream
            else:
                stream.close()
        self._fill(address)
        return taken

    def expire(self) -> None:
        """Close the connections too old to be used (not replaced)."""
        now = time.monotonic()
        fresh = deque(entry for entry in self._sockets if now - entry[2] < MAX_AGE_SECONDS)
        for _, stream, opened in self._sockets:
            if now - opened >= MAX_AGE_SECONDS:
                stream.close()
        self._sockets = fresh

    def close_all(self) -> None:
        """The compute is going away: drop every connection and stop opening more."""
        if self._filling is not None:
            self._filling.cancel()
            self._filling = None
        while self._sockets:
            self._sockets.popleft()[1].close()

    def _fill(self, address: ComputeAddress) -> None:
        if self._filling is None or self._filling.done():
            self._filling = asyncio.create_task(self._open(address), name=f"warm:{self.name}")

    async def _open(self, address: ComputeAddress) -> None:
        while len(self._sockets) < SIZE:
            try:
                stream = await self._connect(address)
            except (OSError, TimeoutError) as exc:
                # The compute is stopping or gone: the lifecycle notices; sessions
                # connect on their own meanwhile.
                logger.debug("event=warm_socket_failed endpoint=%s error=%s", self.name, exc)
                return
            self._sockets.append((address, stream, time.monotonic()))


def _usable(stream: PacketStream) -> bool:
    transport = stream.transport
    return transport is not None and not transport.is_closing() and not stream.closed.done()
