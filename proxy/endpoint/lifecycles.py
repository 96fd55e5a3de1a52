"""Every endpoint's lifecycle: made on first use, adopted at start, suspended at shutdown.

One ``Lifecycle`` (``lifecycle.py``) per endpoint the server has seen. The server builds
one manager and hands it the edge's ``ComputeResources``, which every lifecycle then
tells when to close what the edge keeps open to its compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.endpoint.compute_resources import NoResources
from pgwake.endpoint.lifecycle import Lifecycle
from pgwake.endpoint.states import EndpointState

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pgwake.catalog import Catalog, EndpointRecord
    from pgwake.compute import Backends
    from pgwake.endpoint.compute_resources import ComputeResources

__all__ = ["LifecycleManager"]

logger = logging.getLogger(__name__)

# At shutdown, how long the background work of the final stops may take.
_SETTLE_SECONDS: Final = 10.0


class LifecycleManager:
    """All endpoints' lifecycles, created on first use."""

    def __init__(
        self,
        backends: Backends,
        catalog: Catalog,
        default_idle_timeout: float,
        wake_timeout: float,
        *,
        resources: ComputeResources | None = None,
    ) -> None:
        self.backends = backends
        self._catalog = catalog
        self._resources: ComputeResources = resources if resources is not None else NoResources()
        self._default_idle_timeout = default_idle_timeout
        self._wake_timeout = wake_timeout
        self._lifecycles: dict[str, Lifecycle] = {}
        self._closing = False

    def get(self, record: EndpointRecord) -> Lifecycle:
        """``record``'s lifecycle, made on first use, with the record's idle and session
        settings."""
        lifecycle = self._lifecycles.get(record.name)
        idle_timeout = record.idle_timeout or self._default_idle_timeout
        if lifecycle is None:
            lifecycle = Lifecycle(
                record.name,
                self.backends.get(record.backend),
                self._catalog,
                idle_timeout,
                self._wake_timeout,
                resources=self._resources,
            )
            self._lifecycles[record.name] = lifecycle
            lifecycle.closing = self._closing
        # The record's settings, each time: a change to them takes effect at once.
        lifecycle.idle_timeout = idle_timeout
        lifecycle.park_sessions = record.park_sessions
        lifecycle.pinned_session_timeout = record.pinned_session_timeout
        return lifecycle

    def forget(self, name: str) -> None:
        """Drop a deleted endpoint's lifecycle, its state gauges and what is kept for it."""
        lifecycle = self._lifecycles.pop(name, None)
        if lifecycle is not None:
            with contextlib.suppress(KeyError):
                metrics.ENDPOINT_INFO.remove(name, lifecycle.backend.name)
        for state in EndpointState:
            with contextlib.suppress(KeyError):
                metrics.ENDPOINT_STATE.remove(name, state.value)
        metrics.forget_endpoint(name)
        self._resources.forget(name)

    def __iter__(self) -> Iterator[Lifecycle]:
        return iter(self._lifecycles.values())

    async def adopt_running(self) -> int:
        """Adopt every compute still running from an earlier pgwake; return how many."""
        adopted = 0
        for record in self._catalog.list():
            lifecycle = self.get(record)  # also publishes its state gauge from the start
            try:
                address = await lifecycle.backend.probe(record.name)
            except Exception as exc:  # an engine that is down: its endpoints stay suspended
                logger.warning(
                    "event=adopt_failed endpoint=%s backend=%s error=%s",
                    record.name,
                    record.backend,
                    exc,
                )
                address = None
            if address is not None:
                lifecycle.adopt(address)
                adopted += 1
            elif record.state != EndpointState.SUSPENDED.value:
                self._catalog.set_state(record.name, EndpointState.SUSPENDED.value)
        return adopted

    async def suspend_all(self) -> None:
        """Suspend every compute cleanly (server shutdown); no start happens after this."""
        self._closing = True
        lifecycles = list(self._lifecycles.values())
        for lifecycle in lifecycles:
            await lifecycle.close()
        await asyncio.gather(*(lc.suspend("shutdown") for lc in lifecycles), return_exceptions=True)
        # Disk measurements of the stops just made, before the server closes the catalog.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SETTLE_SECONDS):
                await asyncio.gather(*(lc.settle() for lc in lifecycles), return_exceptions=True)
