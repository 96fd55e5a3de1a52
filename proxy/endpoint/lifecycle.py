"""The endpoint lifecycle: wake on connect, suspend when idle (ARCHITECTURE.md).

Rule 1 (after h11's ``_state.py``): everything that changes an endpoint's state lives in
this file. Transitions are data (``TRANSITIONS``); ``Lifecycle._transition`` is the only
place that assigns ``state``; it logs one line and bumps one counter per move. Everything
else calls verbs: ``wake()``, ``suspend()``, ``acquire()``/``release()``.

Single flight: one start task per endpoint, awaited through ``asyncio.shield`` so a client
that gives up does not cancel the start the others wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.compute import ComputeStartError
from pgwake.compute.management import apply_pending_verifiers
from pgwake.edge.compute_login import open_compute
from pgwake.edge.server_reuse import IdleServers
from pgwake.edge.warm_sockets import WarmSockets
from pgwake.protocol.errors import CannotConnectNow

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator
    from typing import Any

    from pgwake.catalog import Catalog, EndpointRecord
    from pgwake.compute import Backends, ComputeAddress, ComputeBackend
    from pgwake.compute.management import ManagementConnection

__all__ = [
    "TRANSITIONS",
    "EndpointState",
    "IllegalTransition",
    "Lifecycle",
    "LifecycleManager",
    "Trigger",
    "retry_delay",
    "state_diagram",
]

logger = logging.getLogger(__name__)


class EndpointState(enum.Enum):
    """Where an endpoint's compute is in its life (ARCHITECTURE.md)."""

    #: No compute process; costs nothing. A connect wakes it.
    SUSPENDED = "suspended"
    #: A start is in flight; connects wait for it.
    STARTING = "starting"
    #: The compute accepts connections; the idle timer runs.
    RUNNING = "running"
    #: A clean shutdown is in flight; connects wait for it, then wake.
    SUSPENDING = "suspending"
    #: The last start failed; connects get 57P03 until the retry time, then retry.
    FAILED = "failed"


class Trigger(enum.Enum):
    """What moves an endpoint from one state to another."""

    WAKE = "wake"
    RETRY = "retry"
    STARTED = "started"
    START_FAILED = "start_failed"
    SUSPEND = "suspend"
    STOPPED = "stopped"
    CRASHED = "crashed"
    ADOPT = "adopt"


S, T = EndpointState, Trigger
#: Every legal move. A pair missing here is a bug and raises ``IllegalTransition``.
TRANSITIONS: Final[dict[tuple[EndpointState, Trigger], EndpointState]] = {
    (S.SUSPENDED, T.WAKE): S.STARTING,
    (S.SUSPENDED, T.ADOPT): S.RUNNING,
    (S.FAILED, T.RETRY): S.STARTING,
    (S.STARTING, T.STARTED): S.RUNNING,
    (S.STARTING, T.START_FAILED): S.FAILED,
    (S.RUNNING, T.SUSPEND): S.SUSPENDING,
    (S.RUNNING, T.CRASHED): S.SUSPENDED,
    (S.SUSPENDING, T.STOPPED): S.SUSPENDED,
}
del S, T

#: Failed starts are retried no sooner than this, doubling per failure (no retry storm).
RETRY_BASE_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 30.0
# How often a running endpoint is checked: often enough for short idle timeouts in tests
# and to notice a crashed compute within a second.
_MAX_TICK_SECONDS: Final = 1.0
_MIN_TICK_SECONDS: Final = 0.05
_PERSIST_ACTIVITY_SECONDS: Final = 1.0
_MANAGEMENT_TIMEOUT: Final = 5.0
# At shutdown, how long the background work of the final stops may take.
_SETTLE_SECONDS: Final = 10.0
# Verifiers are copied to the catalog this often while a compute runs (in ticks).
_SYNC_EVERY_TICKS: Final = 30


def retry_delay(failures: int) -> float:
    """Seconds to wait before retrying a start after ``failures`` failures in a row."""
    # Cap the exponent first: 2.0 ** 1024 overflows long before anyone notices.
    delay: float = RETRY_BASE_SECONDS * 2.0 ** min(max(failures - 1, 0), 32)
    return min(delay, RETRY_MAX_SECONDS)


class IllegalTransition(Exception):
    """A trigger fired in a state that has no move for it (a pgwake bug)."""

    def __init__(self, endpoint: str, state: EndpointState, trigger: Trigger) -> None:
        super().__init__(
            f"endpoint {endpoint}: no transition from {state.value} on {trigger.value}"
        )


class Lifecycle:
    """One endpoint's state machine, start/stop tasks and idle timer."""

    def __init__(
        self,
        name: str,
        backend: ComputeBackend,
        catalog: Catalog,
        idle_timeout: float,
        wake_timeout: float,
        *,
        server_reuse_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self.backend = backend
        self.idle_timeout = idle_timeout
        self._catalog = catalog
        self._wake_timeout = wake_timeout
        self.state = EndpointState.SUSPENDED
        self.reason: str | None = None
        self.address: ComputeAddress | None = None
        #: Authenticated client sessions holding this endpoint (waiting for it or relaying).
        self.sessions = 0
        self._last_active = time.monotonic()
        self._last_persisted = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._management: ManagementConnection | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self.starts = 0
        self._background: set[asyncio.Task[None]] = set()
        #: Logged-in backends kept for the next client (``server_reuse.py``).
        self.idle_servers = IdleServers(name, server_reuse_seconds)
        #: Compute connections opened ahead for authenticated clients (``warm_sockets.py``).
        self.warm_sockets = WarmSockets(name, open_compute)
        #: Set at server shutdown: no more starts.
        self.closing = False
        self._publish_state()

    # -- the one state setter -----------------------------------------------------------

    def _transition(self, trigger: Trigger, reason: str | None = None, **fields: object) -> None:
        try:
            new_state = TRANSITIONS[self.state, trigger]
        except KeyError:
            raise IllegalTransition(self.name, self.state, trigger) from None
        old_state, self.state, self.reason = self.state, new_state, reason
        extra = "".join(f" {key}={value}" for key, value in fields.items())
        log = (
            logger.warning
            if new_state is EndpointState.FAILED or trigger is Trigger.CRASHED
            else logger.info
        )
        log(
            "event=transition endpoint=%s from=%s to=%s trigger=%s backend=%s%s%s",
            self.name,
            old_state.value,
            new_state.value,
            trigger.value,
            self.backend.name,
            extra,
            f" reason={reason!r}" if reason else "",
        )
        metrics.STATE_TRANSITIONS.labels(trigger.value).inc()
        self._publish_state()
        self._catalog.set_state(self.name, new_state.value, reason, last_active=time.time())

    def _publish_state(self) -> None:
        metrics.ENDPOINT_INFO.labels(self.name, self.backend.name).set(1)
        for state in EndpointState:
            metrics.ENDPOINT_STATE.labels(self.name, state.value).set(state is self.state)

    # -- sessions ------------------------------------------------------------------------

    def acquire(self) -> None:
        """An authenticated client session starts using this endpoint (before it waits
        for a wake). Connections still authenticating are not sessions: they neither
        hold a slot nor keep the compute awake."""
        self.sessions += 1
        self._last_active = time.monotonic()

    def release(self) -> None:
        """A client session ended."""
        self.sessions -= 1
        self._last_active = time.monotonic()
        now = time.time()
        # For `endpoint list`; at most once a second, so connect storms don't write a lot.
        if now - self._last_persisted >= _PERSIST_ACTIVITY_SECONDS:
            self._last_persisted = now
            self._catalog.touch(self.name, now)

    # -- wake ----------------------------------------------------------------------------

    async def wake(self) -> ComputeAddress:
        """Return the running compute's address, starting it if needed (single flight).

        Raises ``CannotConnectNow`` when the start fails or a failed endpoint is still in
        its retry delay."""
        while True:
            state = self.state
            if self.closing and state is not EndpointState.RUNNING:
                raise CannotConnectNow("pgwake is shutting down", hint="Connect again shortly.")
            if state is EndpointState.RUNNING:
                assert self.address is not None
                return self.address
            if state is EndpointState.STARTING:
                assert self._start_task is not None
                await asyncio.shield(self._start_task)
            elif state is EndpointState.SUSPENDING:
                assert self._stop_task is not None
                await asyncio.shield(self._stop_task)
            elif state is EndpointState.SUSPENDED:
                self._begin_start(Trigger.WAKE)
            else:  # FAILED
                wait = self._retry_at - time.monotonic()
                if wait > 0:
                    raise CannotConnectNow(
                        f'endpoint "{self.name}" could not start',
                        detail=self.reason,
                        hint=f"pgwake will try to start it again in {wait:.0f} s.",
                    )
                self._begin_start(Trigger.RETRY)

    def _begin_start(self, trigger: Trigger) -> None:
        self._transition(trigger)
        self._start_task = asyncio.create_task(self._run_start(), name=f"start:{self.name}")

    async def _run_start(self) -> None:
        started = time.monotonic()
        self.starts += 1
        try:
            address = await self.backend.start(self.name, ready_timeout=self._wake_timeout)
            # Passwords set while it was down, before any client logs in to it.
            await apply_pending_verifiers(self.backend, self._catalog, self.name)
        except ComputeStartError as exc:
            self._start_failed(exc.reason)
            return
        except Exception:
            logger.exception("event=start_error endpoint=%s", self.name)
            self._start_failed("internal error while starting the compute")
            return
        elapsed = time.monotonic() - started
        self.address = address
        self._failures = 0
        self._last_active = time.monotonic()
        metrics.WAKES.labels(self.name, "success").inc()
        metrics.WAKE_DURATION.labels(self.backend.name).observe(elapsed)
        self._transition(Trigger.STARTED, ms=round(elapsed * 1000), waiters=self.sessions)
        self._running()

    def _start_failed(self, reason: str) -> None:
        self._failures += 1
        delay = retry_delay(self._failures)
        self._retry_at = time.monotonic() + delay
        metrics.WAKES.labels(self.name, "failure").inc()
        self._transition(Trigger.START_FAILED, reason, failures=self._failures, retry_in_s=delay)

    def adopt(self, address: ComputeAddress) -> None:
        """Take over a compute that already runs (pgwake restarted); re-arm the idle timer."""
        self.address = address
        self._last_active = time.monotonic()
        self._transition(Trigger.ADOPT)
        self._running()

    def _running(self) -> None:
        self._management = self.backend.management(self.name)
        self._monitor_task = asyncio.create_task(self._monitor(), name=f"monitor:{self.name}")

    async def compute_unreachable(self) -> None:
        """A session could not connect to a compute we think runs: recheck it now."""
        if self.state is not EndpointState.RUNNING:
            return
        alive = await self.backend.is_alive(self.name)
        if not alive and self.state is EndpointState.RUNNING:
            self._crashed()

    def _crashed(self) -> None:
        self.address = None
        self.idle_servers.close_all("compute_stopped")
        self.warm_sockets.close_all()
        self._drop_management()
        metrics.SUSPENDS.labels(self.name, "crashed").inc()
        self._transition(Trigger.CRASHED, "the compute exited on its own")

    # -- suspend -------------------------------------------------------------------------

    async def suspend(self, reason: str) -> None:
        """Shut the compute down cleanly if it runs; wait for a start or stop in flight."""
        if self.state is EndpointState.STARTING and self._start_task is not None:
            await asyncio.shield(self._start_task)
        if self.state is EndpointState.RUNNING:
            self._transition(Trigger.SUSPEND, reason)
            # From now on no new session may use the compute: they wait for the stop,
            # then wake it again (ARCHITECTURE.md), instead of logging in to a dying server.
            self.address = None
            self.idle_servers.close_all("compute_stopped")
            self.warm_sockets.close_all()
            self._stop_task = asyncio.create_task(self._run_stop(reason), name=f"stop:{self.name}")
        if self.state is EndpointState.SUSPENDING and self._stop_task is not None:
            await asyncio.shield(self._stop_task)

    async def _run_stop(self, reason: str) -> None:
        started = time.monotonic()
        # Passwords changed on the compute must survive the suspend (ARCHITECTURE.md).
        await self.sync_verifiers()
        management, self._management = self._management, None
        if management is not None:
            await management.close()
        try:
            await self.backend.stop(self.name)
        except ComputeStartError as exc:  # e.g. the Docker engine went away
            logger.error("event=stop_error endpoint=%s reason=%r", self.name, exc.reason)
        except Exception:
            logger.exception("event=stop_error endpoint=%s", self.name)
        self.address = None
        metrics.SUSPENDS.labels(self.name, reason).inc()
        self._transition(Trigger.STOPPED, ms=round((time.monotonic() - started) * 1000))
        if reason != "delete":
            self.measure_disk()

    # -- storage -------------------------------------------------------------------------

    def measure_disk(self) -> None:
        """Record the endpoint's storage in the catalog, in the background (``endpoint
        list`` shows it). Done at create and after each suspend, when the data is at rest:
        walking a data directory on every list would take seconds for a thousand."""
        self.in_background(self._measure_disk(), f"disk:{self.name}")

    def in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` as a task the lifecycle keeps (``settle`` waits for it)."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _measure_disk(self) -> None:
        try:
            size = await asyncio.to_thread(self.backend.disk_bytes, self.name)
            if size:  # 0: the backend cannot tell (e.g. a remote engine's volume)
                self._catalog.set_disk_bytes(self.name, size)
        except Exception as exc:
            logger.warning(
                "event=disk_measure_failed endpoint=%s error=%s", self.name, type(exc).__name__
            )

    async def settle(self) -> None:
        """Wait for the background work in flight (server shutdown, before the catalog
        closes)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- idle timer ----------------------------------------------------------------------

    async def _monitor(self) -> None:
        """While running: notice a crash, and suspend once idle for ``idle_timeout``."""
        tick = max(_MIN_TICK_SECONDS, min(_MAX_TICK_SECONDS, self.idle_timeout / 5))
        ticks = 0
        while self.state is EndpointState.RUNNING:
            await asyncio.sleep(tick)
            if self.state is not EndpointState.RUNNING:
                return
            try:
                alive = await self.backend.is_alive(self.name)
            except Exception as exc:  # e.g. the Docker engine is briefly unreachable
                logger.warning("event=liveness_check_failed endpoint=%s error=%s", self.name, exc)
                continue
            if self.state is not EndpointState.RUNNING:
                return
            if not alive:
                self._crashed()
                return
            ticks += 1
            self.idle_servers.expire()
            self.warm_sockets.expire()
            if ticks % _SYNC_EVERY_TICKS == 1:  # soon after the start, then now and then
                await self.sync_verifiers()
            now = time.monotonic()
            if self.sessions > 0:
                self._last_active = now
                continue
            if now - self._last_active < self.idle_timeout:
                continue
            if len(self.idle_servers):
                # Kept backends are not clients: close them, and count the compute's
                # sessions at the next tick, once they have left its view.
                self.idle_servers.close_all("idle")
                continue
            try:
                # The compute's own view counts direct and other proxies' sessions too.
                others = await self._count_compute_sessions()
            except Exception as exc:  # a dying compute; the next tick sees it
                logger.warning(
                    "event=idle_check_failed endpoint=%s error=%s", self.name, type(exc).__name__
                )
                continue
            if others > 0:
                self._last_active = time.monotonic()
                continue
            # Re-check after the await: a client may have arrived meanwhile.
            if self.sessions == 0 and self.state is EndpointState.RUNNING:
                await self.suspend("idle")
                return

    async def _count_compute_sessions(self) -> int:
        if self._management is None:
            return 0
        async with asyncio.timeout(_MANAGEMENT_TIMEOUT):
            return await self._management.count_client_sessions()

    def _drop_management(self) -> None:
        management, self._management = self._management, None
        if management is not None:
            self.in_background(management.close(), f"management-close:{self.name}")

    # -- verifiers (ARCHITECTURE.md) ------------------------------------------------------

    async def sync_verifiers(self) -> None:
        """Copy every login role's SCRAM verifier from the running compute to the catalog."""
        if self._management is None:
            return
        try:
            async with asyncio.timeout(_MANAGEMENT_TIMEOUT):
                verifiers = await self._management.verifiers()
        except Exception as exc:
            logger.warning(
                "event=verifier_sync_failed endpoint=%s error=%s", self.name, type(exc).__name__
            )
            return
        self._catalog.replace_verifiers(self.name, verifiers)
        logger.debug("event=verifiers_synced endpoint=%s roles=%d", self.name, len(verifiers))

    async def verifier(self, role: str) -> str | None:
        """``role``'s SCRAM verifier: the running compute's own when it runs (so ALTER ROLE
        takes effect at once), else the catalog's copy. Never starts anything."""
        if self.state is EndpointState.RUNNING and self._management is not None:
            try:
                async with asyncio.timeout(_MANAGEMENT_TIMEOUT):
                    return await self._management.verifier(role)
            except Exception as exc:
                logger.warning(
                    "event=verifier_lookup_failed endpoint=%s error=%s",
                    self.name,
                    type(exc).__name__,
                )
        return self._catalog.verifier(self.name, role)

    async def retire(self) -> None:
        """The endpoint is being deleted: refuse new starts, stop the compute cleanly."""
        self.closing = True
        await self.suspend("delete")
        if self._monitor_task is not None:
            self._monitor_task.cancel()

    async def close(self) -> None:
        """Refuse new starts and stop the idle timer (server shutdown)."""
        self.closing = True
        if self._monitor_task is not None:
            self._monitor_task.cancel()


class LifecycleManager:
    """All endpoints' lifecycles, created on first use."""

    def __init__(
        self,
        backends: Backends,
        catalog: Catalog,
        default_idle_timeout: float,
        wake_timeout: float,
        server_reuse_seconds: float = 0.0,
    ) -> None:
        self.backends = backends
        self._catalog = catalog
        self._server_reuse_seconds = server_reuse_seconds
        self._default_idle_timeout = default_idle_timeout
        self._wake_timeout = wake_timeout
        self._lifecycles: dict[str, Lifecycle] = {}
        self._closing = False

    def get(self, record: EndpointRecord) -> Lifecycle:
        lifecycle = self._lifecycles.get(record.name)
        idle_timeout = record.idle_timeout or self._default_idle_timeout
        if lifecycle is None:
            lifecycle = Lifecycle(
                record.name,
                self.backends.get(record.backend),
                self._catalog,
                idle_timeout,
                self._wake_timeout,
                server_reuse_seconds=self._server_reuse_seconds,
            )
            self._lifecycles[record.name] = lifecycle
            lifecycle.closing = self._closing
        lifecycle.idle_timeout = idle_timeout
        return lifecycle

    def forget(self, name: str) -> None:
        """Drop a deleted endpoint's lifecycle and its state gauges."""
        lifecycle = self._lifecycles.pop(name, None)
        if lifecycle is not None:
            with contextlib.suppress(KeyError):
                metrics.ENDPOINT_INFO.remove(name, lifecycle.backend.name)
        for state in EndpointState:
            with contextlib.suppress(KeyError):
                metrics.ENDPOINT_STATE.remove(name, state.value)

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


def state_diagram() -> str:
    """The transition table as a Mermaid state diagram (README shows it; a test compares)."""
    lines = ["stateDiagram-v2", "    [*] --> suspended"]
    for (source, trigger), target in TRANSITIONS.items():
        lines.append(f"    {source.value} --> {target.value}: {trigger.value}")
    return "\n".join(lines)
