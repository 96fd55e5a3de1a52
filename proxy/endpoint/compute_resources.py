"""The hook between the lifecycle and what other parts keep open to a compute.

Rule: the endpoint domain owns no client-facing connection. The edge keeps logged-in
backends (``server_reuse``) and pre-opened sockets (``warm_sockets``) to running computes;
it implements ``ComputeResources`` and registers it with ``LifecycleManager``, and each
lifecycle calls it when its compute ticks, looks idle, stops or crashes. No module of
``proxy/endpoint/`` imports ``proxy/edge/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ComputeResources", "NoResources", "PinnedSession", "SessionActivity", "SessionStates"]


@dataclass(frozen=True, slots=True)
class SessionActivity:
    """What an endpoint's relayed sessions did, as one tick sees it."""

    #: Sessions running something, with an answer due, or inside a transaction now.
    busy: int = 0
    #: Whether any session ran something since the last tick.
    ran: bool = False


@dataclass(frozen=True, slots=True)
class PinnedSession:
    """A session that keeps its endpoint's compute awake although it runs nothing: it
    holds state that cannot be restored on another backend."""

    #: The client's address.
    client: str
    application_name: str
    #: Unix time since when it has run nothing.
    since: float
    #: Why it cannot be parked, in words (``open transaction``, ``temporary tables``...).
    reason: str


@dataclass(frozen=True, slots=True)
class SessionStates:
    """An endpoint's client sessions by state (``ComputeResources.sessions``)."""

    #: Running a query, or waiting for the compute / a login.
    active: int = 0
    #: Attached to a backend, running nothing, parkable.
    idle: int = 0
    #: Detached from any backend: the compute may be gone; the next message re-attaches.
    parked: int = 0
    #: Attached, running nothing, but holding state that cannot be restored.
    pinned: tuple[PinnedSession, ...] = ()


class ComputeResources(Protocol):
    """Connections another part of pgwake keeps open to endpoints' computes between
    clients (the edge's kept backends and warm sockets). Their owner registers them with
    ``LifecycleManager``; the lifecycle tells it when to let them go."""

    def expire(self, endpoint: str, *, pinned_timeout: float | None) -> SessionActivity:
        """A tick of ``endpoint``'s running compute: close what was kept too long, and the
        sessions pinned and idle longer than ``pinned_timeout`` (``None``: never); return
        what the sessions did since the last tick."""

    def close_sessions(self, endpoint: str) -> bool:
        """``endpoint`` has had no client for ``idle_timeout``: close what its compute
        counts as sessions (kept backends). Return whether anything was closed (the
        compute's count is then taken a tick later, once they have left its view)."""

    def compute_gone(self, endpoint: str) -> None:
        """``endpoint``'s compute is stopping or has crashed: close everything kept."""

    def forget(self, endpoint: str) -> None:
        """``endpoint`` was deleted: close and drop what is kept for it."""

    async def park_sessions(self, endpoint: str, *, pinned_timeout: float | None) -> int:
        """``endpoint`` has run nothing for ``idle_timeout``: park each idle session (its
        state captured, its backend ended, its client kept). Sessions that are pinned and
        idle longer than ``pinned_timeout`` (``None``: never) are closed with a FATAL.
        Return how many sessions still hold a backend (pinned, or active again)."""

    def session_states(self, endpoint: str) -> SessionStates:
        """``endpoint``'s client sessions by state."""


class NoResources:
    """For a lifecycle nobody keeps connections for (the CLI without a server)."""

    def expire(self, endpoint: str, *, pinned_timeout: float | None) -> SessionActivity:
        return SessionActivity()

    def close_sessions(self, endpoint: str) -> bool:
        return False

    def compute_gone(self, endpoint: str) -> None:
        pass

    def forget(self, endpoint: str) -> None:
        pass

    async def park_sessions(self, endpoint: str, *, pinned_timeout: float | None) -> int:
        return 0

    def session_states(self, endpoint: str) -> SessionStates:
        return SessionStates()
