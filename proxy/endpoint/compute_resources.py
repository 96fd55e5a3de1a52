"""The hook between the lifecycle and what other parts keep open to a compute.

Rule: the endpoint domain owns no client-facing connection. The edge keeps logged-in
backends (``server_reuse``) and pre-opened sockets (``warm_sockets``) to running computes;
it implements ``ComputeResources`` and registers it with ``LifecycleManager``, and each
lifecycle calls it when its compute ticks, looks idle, stops or crashes. No module of
``proxy/endpoint/`` imports ``proxy/edge/``.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ComputeResources", "NoResources"]


class ComputeResources(Protocol):
    """Connections another part of pgwake keeps open to endpoints' computes between
    clients (the edge's kept backends and warm sockets). Their owner registers them with
    ``LifecycleManager``; the lifecycle tells it when to let them go."""

    def expire(self, endpoint: str) -> None:
        """A tick of ``endpoint``'s running compute: close what was kept too long."""

    def close_sessions(self, endpoint: str) -> bool:
        """``endpoint`` has had no client for ``idle_timeout``: close what its compute
        counts as sessions (kept backends). Return whether anything was closed (the
        compute's count is then taken a tick later, once they have left its view)."""

    def compute_gone(self, endpoint: str) -> None:
        """``endpoint``'s compute is stopping or has crashed: close everything kept."""

    def forget(self, endpoint: str) -> None:
        """``endpoint`` was deleted: close and drop what is kept for it."""


class NoResources:
    """For a lifecycle nobody keeps connections for (the CLI without a server)."""

    def expire(self, endpoint: str) -> None:
        pass

    def close_sessions(self, endpoint: str) -> bool:
        return False

    def compute_gone(self, endpoint: str) -> None:
        pass

    def forget(self, endpoint: str) -> None:
        pass
