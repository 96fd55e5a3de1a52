"""What the edge keeps open to each endpoint's compute between clients.

Two kinds, both the edge's own: logged-in backends whose client left cleanly
(``server_reuse.py``) and connections opened ahead for authenticated clients
(``warm_sockets.py``). The endpoint's lifecycle decides when a compute stops, so it says
when they must go: ``KeptConnections`` is the ``ComputeResources`` the server registers
with the lifecycles (``pgwake.endpoint.compute_resources``), and through it the lifecycle
parks the endpoint's idle sessions (``session_registry.py``, ``parking.py``). Kept
backends are closed when the compute stops or crashes, and before the idle check counts
the compute's sessions; warm sockets when it stops or crashes (a backend waiting for its
startup is not a session).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgwake.edge.compute_login import open_compute
from pgwake.edge.server_reuse import IdleServers
from pgwake.edge.session_registry import SessionRegistry
from pgwake.edge.warm_sockets import WarmSockets
from pgwake.endpoint.compute_resources import SessionActivity, SessionStates

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pgwake.compute import ComputeAddress
    from pgwake.edge.packet_stream import PacketStream

__all__ = ["EndpointConnections", "KeptConnections"]


class EndpointConnections:
    """One endpoint's kept backends and warm sockets."""

    __slots__ = ("idle_servers", "warm_sockets")

    def __init__(
        self,
        endpoint: str,
        keep_seconds: float,
        connect: Callable[[ComputeAddress], Awaitable[PacketStream]],
    ) -> None:
        #: Logged-in backends kept for the next client (``server_reuse.py``).
        self.idle_servers = IdleServers(endpoint, keep_seconds)
        #: Compute connections opened ahead for authenticated clients (``warm_sockets.py``).
        self.warm_sockets = WarmSockets(endpoint, connect)

    def close_all(self) -> None:
        self.idle_servers.close_all("compute_stopped")
        self.warm_sockets.close_all()


class KeptConnections:
    """Every endpoint's ``EndpointConnections``, made on first use."""

    def __init__(
        self,
        keep_seconds: float,
        connect: Callable[[ComputeAddress], Awaitable[PacketStream]] = open_compute,
    ) -> None:
        #: ``server_reuse_seconds``: 0 keeps no backend.
        self.keep_seconds = keep_seconds
        self._connect = connect
        self._by_endpoint: dict[str, EndpointConnections] = {}
        #: Every endpoint's relayed sessions (``session_registry.py``).
        self.sessions = SessionRegistry()

    @property
    def reuse_enabled(self) -> bool:
        """Whether backends are kept at all."""
        return self.keep_seconds > 0

    def of(self, endpoint: str) -> EndpointConnections:
        """``endpoint``'s kept connections (an empty set the first time)."""
        kept = self._by_endpoint.get(endpoint)
        if kept is None:
            kept = self._by_endpoint[endpoint] = EndpointConnections(
                endpoint, self.keep_seconds, self._connect
            )
        return kept

    # -- ComputeResources: what the lifecycle tells us -------------------------------------

    def expire(self, endpoint: str, *, pinned_timeout: float | None) -> SessionActivity:
        kept = self._by_endpoint.get(endpoint)
        if kept is not None:
            kept.idle_servers.expire()
            kept.warm_sockets.expire()
        activity = self.sessions.activity(endpoint)
        self.sessions.expire_pinned(endpoint, pinned_timeout)
        self.sessions.states(endpoint)  # the session gauges, once a tick
        return activity

    def close_sessions(self, endpoint: str) -> bool:
        kept = self._by_endpoint.get(endpoint)
        if kept is None or not len(kept.idle_servers):
            return False
        kept.idle_servers.close_all("idle")
        return True

    def compute_gone(self, endpoint: str) -> None:
        kept = self._by_endpoint.get(endpoint)
        if kept is not None:
            kept.close_all()

    def forget(self, endpoint: str) -> None:
        kept = self._by_endpoint.pop(endpoint, None)
        if kept is not None:
            kept.close_all()

    async def park_sessions(self, endpoint: str, *, pinned_timeout: float | None) -> int:
        self.sessions.expire_pinned(endpoint, pinned_timeout)
        attached = await self.sessions.park(endpoint)
        self.sessions.states(endpoint)
        return attached

    def session_states(self, endpoint: str) -> SessionStates:
        return self.sessions.states(endpoint)
