"""The endpoint lifecycle: wake on connect, suspend when idle (ARCHITECTURE.md).

Rule 1 (after h11's ``_state.py``): the moves are the table in ``states.py``, and
``Lifecycle._transition`` is the only code here that fires one; it logs one line, bumps
one counter and writes the state to the catalog per move. Everything else calls verbs:
``wake()``, ``suspend()``, ``adopt()``, ``acquire()``/``release()``.

Single flight: one start task per endpoint, awaited through ``asyncio.shield`` so a client
that gives up does not cancel the start the others wait for.

The lifecycle speaks no protocol: it raises its own errors (``WakeFailed``,
``ShuttingDown``), which the edge and the API turn into what their clients are told.
Connections other parts keep to a compute are theirs (``compute_resources.py``): the
lifecycle only tells their owner when to close them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.compute import ComputeStartError
from pgwake.compute.management import apply_pending_verifiers
from pgwake.endpoint.compute_resources import NoResources
from pgwake.endpoint.disk_usage import record_disk_usage
from pgwake.endpoint.states import Backoff, EndpointState, EndpointStateMachine, Trigger
from pgwake.endpoint.verifiers import VerifierSync

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

    from pgwake.catalog import Catalog
    from pgwake.compute import ComputeAddress, ComputeBackend
    from pgwake.compute.management import ManagementConnection
    from pgwake.endpoint.compute_resources import ComputeResources, SessionStates

__all__ = ["Lifecycle", "ShuttingDown", "WakeFailed"]

logger = logging.getLogger(__name__)

# How often a running endpoint is checked: often enough for short idle timeouts in tests
# and to notice a crashed compute within a second.
_MAX_TICK_SECONDS: Final = 1.0
_MIN_TICK_SECONDS: Final = 0.05
_PERSIST_ACTIVITY_SECONDS: Final = 1.0
# Verifiers are copied to the catalog this often while a compute runs (in ticks).
_SYNC_EVERY_TICKS: Final = 30


class WakeFailed(Exception):
    """The compute could not start: ``reason`` says why (client-safe), and no start is
    tried again for ``retry_in`` seconds."""

    def __init__(self, endpoint: str, reason: str | None, retry_in: float) -> None:
        super().__init__(f'endpoint "{endpoint}" could not start')
        self.endpoint = endpoint
        self.reason = reason
        self.retry_in = retry_in


class ShuttingDown(Exception):
    """No more starts: pgwake is shutting down, or the endpoint is being deleted."""

    def __init__(self) -> None:
        super().__init__("pgwake is shutting down")


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
        resources: ComputeResources | None = None,
    ) -> None:
        self.name = name
        self.backend = backend
        self.idle_timeout = idle_timeout
        #: Idle sessions are parked at suspend (their backends end, their clients stay);
        #: ``False``: any open session keeps the compute awake.
        self.park_sessions = True
        #: Seconds a pinned session may stay idle before it is closed (``None``: forever).
        self.pinned_session_timeout: float | None = None
        self._catalog = catalog
        self._wake_timeout = wake_timeout
        self._resources: ComputeResources = resources if resources is not None else NoResources()
        self._machine = EndpointStateMachine(name)
        self._backoff = Backoff()
        #: The running compute's SCRAM verifiers, and the catalog's copy of them.
        self._verifiers = VerifierSync(name, catalog)
        self.address: ComputeAddress | None = None
        #: Authenticated client sessions of this endpoint (waiting for it, relaying, parked).
        self.sessions = 0
        #: Those of them that keep the compute awake while no relay can tell: connecting,
        #: or re-attaching after a park (``session_busy``/``session_rested``). What relayed
        #: sessions run, the edge reports each tick (``ComputeResources.expire``).
        self.busy = 0
        #: The compute's own client sessions that are not pgwake's (direct clients, other
        #: proxies), as its last idle check counted them; ``None`` before one, and once
        #: the compute is down. Shown as it is: reading it does no I/O.
        self.compute_other_sessions: int | None = None
        self._last_active = time.monotonic()
        self._last_persisted = 0.0
        self._management: ManagementConnection | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self.starts = 0
        self._background: set[asyncio.Task[None]] = set()
        #: Set at server shutdown: no more starts.
        self.closing = False
        self._publish_state()
        metrics.publish_endpoint(name, backend.name)

    @property
    def state(self) -> EndpointState:
        return self._machine.state

    @property
    def reason(self) -> str | None:
        """Why the endpoint is in its state (a failed start's reason), if known."""
        return self._machine.reason

    # -- the one place a move is made ---------------------------------------------------

    def _transition(self, trigger: Trigger, reason: str | None = None, **fields: object) -> None:
        old_state = self._machine.fire(trigger, reason)  # IllegalTransition: nothing moved
        new_state = self._machine.state
        log = (
            logger.warning
            if new_state is EndpointState.FAILED or trigger is Trigger.CRASHED
            else logger.info
        )
        words = ["event=transition endpoint=%s from=%s to=%s trigger=%s backend=%s"]
        args: list[object] = [
            self.name,
            old_state.value,
            new_state.value,
            trigger.value,
            self.backend.name,
        ]
        for key, value in fields.items():
            words.append(f"{key}=%s")
            args.append(value)
        if reason:
            words.append("reason=%r")
            args.append(reason)
        log(" ".join(words), *args)
        metrics.STATE_TRANSITIONS.labels(trigger.value).inc()
        self._publish_state()
        self._catalog.set_state(self.name, new_state.value, reason, last_active=time.time())

    def _publish_state(self) -> None:
        metrics.ENDPOINT_INFO.labels(self.name, self.backend.name).set(1)
        for state in EndpointState:
            metrics.ENDPOINT_STATE.labels(self.name, state.value).set(state is self.state)

    # -- sessions ------------------------------------------------------------------------

    def session_states(self) -> SessionStates:
        """This endpoint's client sessions by state (active, idle, parked, pinned), as
        the edge keeps them (``ComputeResources.session_states``); no I/O."""
        return self._resources.session_states(self.name)

    def acquire(self) -> None:
        """An authenticated client session starts using this endpoint (before it waits
        for a wake); it is busy until it rests. Connections still authenticating are not
        sessions: they neither hold a slot nor keep the compute awake."""
        self.sessions += 1
        self.busy += 1
        self._last_active = time.monotonic()

    def session_busy(self) -> None:
        """A session at rest runs something again (or re-attaches)."""
        self.busy += 1
        self._last_active = time.monotonic()

    def session_rested(self) -> None:
        """A busy session is at rest outside any transaction: it no longer keeps the
        compute awake by itself (parking takes care of it)."""
        self.busy -= 1
        self._last_active = time.monotonic()

    def release(self, *, busy: bool) -> None:
        """A client session ended (``busy``: it was counted busy)."""
        self.sessions -= 1
        if busy:
            self.busy -= 1
        self._last_active = time.monotonic()
        now = time.time()
        # For `endpoint list`; at most once a second, so connect storms don't write a lot.
        if now - self._last_persisted >= _PERSIST_ACTIVITY_SECONDS:
            self._last_persisted = now
            self._catalog.touch(self.name, now)

    # -- wake ----------------------------------------------------------------------------

    async def wake(self) -> ComputeAddress:
        """Return the running compute's address, starting it if needed (single flight).

        Raises ``WakeFailed`` when the start fails or a failed endpoint is still in its
        retry delay, ``ShuttingDown`` once no more starts may run."""
        while True:
            state = self.state
            if self.closing and state is not EndpointState.RUNNING:
                raise ShuttingDown
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
                wait = self._backoff.retry_in(time.monotonic())
                if wait > 0:
                    raise WakeFailed(self.name, self.reason, wait)
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
        self._backoff.started()
        self._last_active = time.monotonic()
        metrics.WAKES.labels(self.name, "success").inc()
        metrics.WAKE_DURATION.labels(self.backend.name).observe(elapsed)
        self._transition(Trigger.STARTED, ms=round(elapsed * 1000), waiters=self.sessions)
        self._running()

    def _start_failed(self, reason: str) -> None:
        delay = self._backoff.start_failed(time.monotonic())
        metrics.WAKES.labels(self.name, "failure").inc()
        self._transition(
            Trigger.START_FAILED, reason, failures=self._backoff.failures, retry_in_s=delay
        )

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
        self.compute_other_sessions = None
        self._resources.compute_gone(self.name)
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
            self.compute_other_sessions = None
            self._resources.compute_gone(self.name)
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

    # -- background work -----------------------------------------------------------------

    def measure_disk(self) -> None:
        """Record the endpoint's storage in the catalog, in the background (at create and
        after each suspend; ``disk_usage.py``)."""
        self.in_background(
            record_disk_usage(self.backend, self._catalog, self.name), f"disk:{self.name}"
        )

    def in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` as a task the lifecycle keeps (``settle`` waits for it)."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for the background work in flight (server shutdown, before the catalog
        closes)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- idle timer ----------------------------------------------------------------------

    async def _monitor(self) -> None:
        """While running: notice a crash, and suspend once idle for ``idle_timeout``."""
        try:
            await self._watch()
        except Exception:
            # Never silently: without its monitor a compute would run forever.
            logger.exception("event=monitor_error endpoint=%s", self.name)
            raise

    async def _watch(self) -> None:
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
            activity = self._resources.expire(self.name, pinned_timeout=self.pinned_session_timeout)
            if ticks % _SYNC_EVERY_TICKS == 1:  # soon after the start, then now and then
                await self.sync_verifiers()
            now = time.monotonic()
            if (
                self.busy > 0
                or activity.busy > 0
                or activity.ran
                or (self.sessions > 0 and not self.park_sessions)
            ):
                self._last_active = now
                continue
            if now - self._last_active < self.idle_timeout:
                continue
            if self.sessions > 0:
                # Idle sessions are parked; pinned ones keep the compute (checked again
                # each tick: they are known and cost no query until they run something).
                attached = await self._resources.park_sessions(
                    self.name, pinned_timeout=self.pinned_session_timeout
                )
                if attached > 0 or self.busy > 0 or self.state is not EndpointState.RUNNING:
                    continue
            # Kept backends are not clients, but the compute counts them: they go first,
            # and its sessions are counted at the next tick, once they have left its view.
            if self._resources.close_sessions(self.name):
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
            # Re-check after the await: a client may have arrived or woken meanwhile.
            if self.busy == 0 and self.state is EndpointState.RUNNING:
                await self.suspend("idle")
                return

    async def _count_compute_sessions(self) -> int:
        if self._management is None:
            return 0
        count = await self._management.count_client_sessions()
        self.compute_other_sessions = count
        return count

    def _drop_management(self) -> None:
        management, self._management = self._management, None
        if management is not None:
            self.in_background(management.close(), f"management-close:{self.name}")

    # -- verifiers (``verifiers.py``) ------------------------------------------------------

    async def sync_verifiers(self) -> None:
        """Copy every login role's SCRAM verifier from the running compute to the catalog."""
        await self._verifiers.save(self._management)

    async def verifier(self, role: str) -> str | None:
        """``role``'s SCRAM verifier: the running compute's own when it runs (so ALTER ROLE
        takes effect at once), else the catalog's copy. Never starts anything."""
        running = self.state is EndpointState.RUNNING
        return await self._verifiers.lookup(role, self._management if running else None)

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
