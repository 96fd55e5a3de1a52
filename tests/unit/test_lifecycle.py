"""The lifecycle's verbs over the state table (``test_states.py`` walks the table itself):
the I/O around each move, single-flight wake, back-off, suspend, crash, the idle rule,
adoption, shutdown, and the hook that tells the edge when to let its connections go.

The backend, catalog, management connection and edge here are plain test doubles: an
event loop runs, but no socket, process or database.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from pgwake.compute import ComputeAddress, ComputeBackend, ComputeStartError, EndpointSpec
from pgwake.compute.management import ManagementConnection
from pgwake.endpoint.compute_resources import SessionActivity, SessionStates
from pgwake.endpoint.disk_usage import record_disk_usage
from pgwake.endpoint.lifecycle import Lifecycle, ShuttingDown, WakeFailed
from pgwake.endpoint.lifecycles import LifecycleManager
from pgwake.endpoint.states import (
    RETRY_BASE_SECONDS,
    TRANSITIONS,
    EndpointState,
    EndpointStateMachine,
    IllegalTransition,
    Trigger,
)

ALL_PAIRS = list(itertools.product(EndpointState, Trigger))
ADDRESS = ComputeAddress(unix_socket="/nonexistent/.s.PGSQL.5432")
_names = (f"unit-lifecycle-{n}" for n in itertools.count())
#: idle_timeout for the timer tests: ticks of 0.05 s (the shortest).
SHORT_IDLE = 0.25


class Events(list[str]):
    """One ordered record of what every double was asked to do."""


class FakeCatalog:
    """Records writes instead of making them."""

    def __init__(self, events: Events | None = None) -> None:
        self.events = events if events is not None else Events()
        self.calls: list[tuple[str, str, str | None, float | None]] = []
        self.verifiers: dict[str, str] = {"alice": "SCRAM-SHA-256$catalog"}
        self.disk: dict[str, int] = {}

    def set_state(
        self, name: str, state: str, reason: str | None = None, last_active: float | None = None
    ) -> None:
        self.calls.append((name, state, reason, last_active))

    def touch(self, name: str, now: float) -> None:
        pass

    def replace_verifiers(self, name: str, verifiers: dict[str, str]) -> None:
        self.events.append("catalog.replace_verifiers")
        self.verifiers = dict(verifiers)

    def verifier(self, name: str, role: str) -> str | None:
        return self.verifiers.get(role)

    def set_disk_bytes(self, name: str, size: int) -> None:
        self.disk[name] = size

    def pending_verifiers(self, name: str) -> dict[str, str]:
        return {}

    @property
    def states(self) -> list[str]:
        return [call[1] for call in self.calls]


class FakeManagement(ManagementConnection):
    """The compute's own view: its session count and its verifiers (a management
    connection without a compute behind it)."""

    def __init__(self, events: Events) -> None:  # no compute to connect to
        self.events = events
        self.sessions = 0
        self.roles = {"alice": "SCRAM-SHA-256$compute"}
        self.failing = False
        self.closed = False

    async def count_client_sessions(self) -> int:
        self.events.append("management.count")
        return self.sessions

    async def verifiers(self) -> dict[str, str]:
        if self.failing:
            raise TimeoutError
        return dict(self.roles)

    async def verifier(self, role: str) -> str | None:
        if self.failing:
            raise TimeoutError
        return self.roles.get(role)

    async def close(self) -> None:
        self.closed = True


class FakeBackend:
    """Starts that succeed or fail as the test says; a stop the test may hold."""

    name = "fake"

    def __init__(self, outcomes: list[ComputeAddress | str] | None = None) -> None:
        self.outcomes = deque(outcomes or [])
        self.events = Events()
        self.management_connection = FakeManagement(self.events)
        self.starts = 0
        self.stops = 0
        self.alive = True
        self.disk = 4096
        self.may_stop = asyncio.Event()
        self.may_stop.set()

    async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
        self.starts += 1
        await asyncio.sleep(0)  # let every waiter pile up behind the one start
        outcome = self.outcomes.popleft()
        if isinstance(outcome, str):
            raise ComputeStartError(outcome)
        return outcome

    def resolve_options(self, requested: dict[str, str | None]) -> dict[str, str]:
        return {}

    async def prepare(self) -> None:
        pass

    async def maintain(self) -> None:
        pass

    async def create(self, spec: EndpointSpec) -> None:
        pass

    async def delete(self, endpoint: str) -> None:
        pass

    async def branch(self, source: str, target: str) -> None:
        pass

    async def close(self) -> None:
        pass

    async def stop(self, endpoint: str) -> None:
        await self.may_stop.wait()
        self.events.append("backend.stop")
        self.stops += 1

    async def is_alive(self, endpoint: str) -> bool:
        return self.alive

    async def probe(self, endpoint: str) -> ComputeAddress | None:
        return ADDRESS

    def management(self, endpoint: str) -> FakeManagement:
        self.management_connection.closed = False
        return self.management_connection

    def disk_bytes(self, endpoint: str) -> int:
        return self.disk


def _state(lifecycle: Lifecycle) -> EndpointState:
    """The state now (a call, so mypy does not keep what an earlier assert narrowed)."""
    return lifecycle.state


#: mypy checks here that the double is a ``ComputeBackend`` (``tests/test_sourcecode.py``).
_BACKEND: ComputeBackend = FakeBackend()


class FakeEdge:
    """The edge's side of ``ComputeResources``: ``kept`` backends it would close."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.kept = 0
        #: Sessions that ``park_sessions`` leaves attached (pinned).
        self.attached = 0

    def expire(self, endpoint: str, *, pinned_timeout: float | None) -> SessionActivity:
        self.events.append("edge.expire")
        return SessionActivity()

    def close_sessions(self, endpoint: str) -> bool:
        closed, self.kept = self.kept > 0, 0
        self.events.append(f"edge.close_sessions={closed}")
        return closed

    def compute_gone(self, endpoint: str) -> None:
        self.events.append("edge.compute_gone")

    def forget(self, endpoint: str) -> None:
        self.events.append(f"edge.forget:{endpoint}")

    async def park_sessions(self, endpoint: str, *, pinned_timeout: float | None) -> int:
        self.events.append("edge.park_sessions")
        return self.attached

    def session_states(self, endpoint: str) -> SessionStates:
        return SessionStates()


def make_lifecycle(
    backend: FakeBackend | None = None, *, idle_timeout: float = 3600.0
) -> tuple[Lifecycle, FakeCatalog, FakeEdge]:
    backend = backend or FakeBackend()
    catalog = FakeCatalog(backend.events)
    edge = FakeEdge(backend.events)
    lifecycle = Lifecycle(
        next(_names),
        backend,
        cast(Any, catalog),
        idle_timeout=idle_timeout,
        wake_timeout=5.0,
        resources=edge,
    )
    return lifecycle, catalog, edge


def run(lifecycle: Lifecycle, main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` on a fresh loop, then stop the lifecycle's timer."""

    async def wrapper() -> None:
        try:
            await main()
        finally:
            await lifecycle.close()
            await lifecycle.settle()

    asyncio.run(wrapper())


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


def gauge(name: str, state: EndpointState) -> float | None:
    return REGISTRY.get_sample_value(
        "pgwake_endpoint_state", {"endpoint": name, "state": state.value}
    )


def transitions_counted(trigger: Trigger) -> float:
    value = REGISTRY.get_sample_value(
        "pgwake_endpoint_transitions_total", {"trigger": trigger.value}
    )
    return value or 0.0


# -- the one place a move is made ----------------------------------------------------------


def test_new_lifecycle_is_suspended_and_published() -> None:
    lifecycle, catalog, _ = make_lifecycle()
    assert lifecycle.state is EndpointState.SUSPENDED
    for state in EndpointState:
        assert gauge(lifecycle.name, state) == (1.0 if state is EndpointState.SUSPENDED else 0.0)
    assert catalog.calls == []


@pytest.mark.parametrize(
    ("state", "trigger"), ALL_PAIRS, ids=[f"{s.value}-{t.value}" for s, t in ALL_PAIRS]
)
def test_every_pair_writes_logs_and_counts_once(
    state: EndpointState, trigger: Trigger, caplog: pytest.LogCaptureFixture
) -> None:
    lifecycle, catalog, _ = make_lifecycle()
    lifecycle._machine = EndpointStateMachine(lifecycle.name, state)
    counted = transitions_counted(trigger)
    caplog.set_level(logging.INFO, logger="pgwake.endpoint.lifecycle")

    if (state, trigger) not in TRANSITIONS:
        with pytest.raises(IllegalTransition):
            lifecycle._transition(trigger)
        assert lifecycle.state is state
        assert catalog.calls == []
        assert transitions_counted(trigger) == counted
        assert caplog.records == []
        return

    new_state = TRANSITIONS[state, trigger]
    lifecycle._transition(trigger, "a reason", ms=12)
    assert lifecycle.state is new_state
    assert lifecycle.reason == "a reason"
    # One catalog write, one counter bump, one log line, and the gauge follows.
    assert len(catalog.calls) == 1
    name, written_state, reason, last_active = catalog.calls[0]
    assert (name, written_state, reason) == (lifecycle.name, new_state.value, "a reason")
    assert isinstance(last_active, float)
    assert transitions_counted(trigger) == counted + 1
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == (
        f"event=transition endpoint={lifecycle.name} from={state.value} to={new_state.value} "
        f"trigger={trigger.value} backend=fake ms=12 reason='a reason'"
    )
    failure = new_state is EndpointState.FAILED or trigger is Trigger.CRASHED
    assert caplog.records[0].levelno == (logging.WARNING if failure else logging.INFO)
    for other in EndpointState:
        assert gauge(lifecycle.name, other) == (1.0 if other is new_state else 0.0)


# -- wake ----------------------------------------------------------------------------------


def test_wake_is_single_flight() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, catalog, _ = make_lifecycle(backend)

    async def main() -> None:
        assert await asyncio.gather(*(lifecycle.wake() for _ in range(5))) == [ADDRESS] * 5

    run(lifecycle, main)
    assert backend.starts == 1
    assert lifecycle.state is EndpointState.RUNNING
    assert catalog.states == ["starting", "running"]


def test_a_waiter_that_gives_up_does_not_cancel_the_start() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, _, _ = make_lifecycle(backend)

    async def main() -> None:
        impatient = asyncio.create_task(lifecycle.wake())
        await asyncio.sleep(0)
        impatient.cancel()
        assert await lifecycle.wake() == ADDRESS

    run(lifecycle, main)
    assert backend.starts == 1


def test_failed_start_raises_wake_failed_then_retries_after_the_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FakeBackend(["could not bind: address in use", "still broken", ADDRESS])
    lifecycle, catalog, _ = make_lifecycle(backend)
    caplog.set_level(logging.INFO, logger="pgwake.endpoint.lifecycle")

    async def main() -> None:
        with pytest.raises(WakeFailed) as first:
            await lifecycle.wake()
        assert first.value.reason == "could not bind: address in use"
        assert 0 < first.value.retry_in <= RETRY_BASE_SECONDS
        assert str(first.value) == f'endpoint "{lifecycle.name}" could not start'
        assert lifecycle.state is EndpointState.FAILED
        # Within the retry delay: refused at once, nothing started.
        with pytest.raises(WakeFailed):
            await lifecycle.wake()
        assert backend.starts == 1
        # Once the delay has passed, the next connect retries; the next delay doubles.
        lifecycle._backoff.retry_at = 0.0
        with pytest.raises(WakeFailed) as second:
            await lifecycle.wake()
        assert RETRY_BASE_SECONDS < second.value.retry_in <= 2 * RETRY_BASE_SECONDS
        lifecycle._backoff.retry_at = 0.0
        assert await lifecycle.wake() == ADDRESS
        assert lifecycle._backoff.failures == 0

    run(lifecycle, main)
    assert backend.starts == 3
    assert catalog.states == ["starting", "failed", "starting", "failed", "starting", "running"]
    assert catalog.calls[1][2] == "could not bind: address in use"
    failed = [r.getMessage() for r in caplog.records if "to=failed" in r.getMessage()]
    assert "failures=1 retry_in_s=1.0" in failed[0]
    assert "failures=2 retry_in_s=2.0" in failed[1]


def test_an_unexpected_start_error_is_a_failed_start_with_a_safe_reason() -> None:
    class Broken(FakeBackend):
        async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
            raise RuntimeError("secret internals")

    lifecycle, _, _ = make_lifecycle(Broken())

    async def main() -> None:
        with pytest.raises(WakeFailed) as failed:
            await lifecycle.wake()
        assert failed.value.reason == "internal error while starting the compute"

    run(lifecycle, main)


def test_no_start_once_closing_but_a_running_compute_still_serves() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, _, _ = make_lifecycle(backend)

    async def main() -> None:
        assert await lifecycle.wake() == ADDRESS
        await lifecycle.close()
        assert await lifecycle.wake() == ADDRESS  # still running: served
        await lifecycle.suspend("shutdown")
        with pytest.raises(ShuttingDown, match="pgwake is shutting down"):
            await lifecycle.wake()

    run(lifecycle, main)
    assert backend.starts == 1


# -- suspend -------------------------------------------------------------------------------


def test_suspend_tells_the_edge_first_then_saves_verifiers_then_stops() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, catalog, _ = make_lifecycle(backend)

    async def main() -> None:
        await lifecycle.wake()
        backend.events.clear()
        await lifecycle.suspend("api")

    run(lifecycle, main)
    assert backend.events == ["edge.compute_gone", "catalog.replace_verifiers", "backend.stop"]
    assert catalog.verifiers == {"alice": "SCRAM-SHA-256$compute"}
    assert backend.management_connection.closed
    assert catalog.states == ["starting", "running", "suspending", "suspended"]
    assert catalog.calls[2][2] == "api"
    assert lifecycle.address is None
    assert catalog.disk[lifecycle.name] == 4096  # measured after the stop


def test_suspend_waits_for_a_start_in_flight() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, catalog, _ = make_lifecycle(backend)

    async def main() -> None:
        waker = asyncio.create_task(lifecycle.wake())
        await asyncio.sleep(0)
        assert lifecycle.state is EndpointState.STARTING
        await lifecycle.suspend("api")
        assert _state(lifecycle) is EndpointState.SUSPENDED
        waker.cancel()

    run(lifecycle, main)
    assert (backend.starts, backend.stops) == (1, 1)
    assert catalog.states[:4] == ["starting", "running", "suspending", "suspended"]


def test_a_connect_during_suspending_waits_for_the_stop_then_wakes() -> None:
    backend = FakeBackend([ADDRESS, ADDRESS])
    lifecycle, catalog, _ = make_lifecycle(backend)

    async def main() -> None:
        await lifecycle.wake()
        backend.may_stop.clear()
        stopping = asyncio.create_task(lifecycle.suspend("api"))
        await until(lambda: lifecycle.state is EndpointState.SUSPENDING)
        assert lifecycle.address is None  # nobody logs in to a dying compute
        waker = asyncio.create_task(lifecycle.wake())
        await asyncio.sleep(0.05)
        assert not waker.done()
        backend.may_stop.set()
        assert await waker == ADDRESS
        await stopping

    run(lifecycle, main)
    assert backend.starts == 2
    assert catalog.states == [
        "starting",
        "running",
        "suspending",
        "suspended",
        "starting",
        "running",
    ]


def test_suspend_of_a_suspended_endpoint_does_nothing() -> None:
    lifecycle, catalog, edge = make_lifecycle()

    async def main() -> None:
        await lifecycle.suspend("api")

    run(lifecycle, main)
    assert catalog.calls == []
    assert edge.events == []


# -- crashes -------------------------------------------------------------------------------


def test_the_timer_notices_a_crash_and_tells_the_edge() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, catalog, _ = make_lifecycle(backend, idle_timeout=SHORT_IDLE)

    async def main() -> None:
        await lifecycle.wake()
        backend.alive = False
        await until(lambda: lifecycle.state is EndpointState.SUSPENDED)
        await lifecycle.settle()

    run(lifecycle, main)
    assert catalog.states == ["starting", "running", "suspended"]
    assert catalog.calls[-1][2] == "the compute exited on its own"
    assert "edge.compute_gone" in backend.events
    assert backend.management_connection.closed
    assert backend.stops == 0
    assert lifecycle.address is None


def test_compute_unreachable_rechecks_the_compute() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, catalog, _ = make_lifecycle(backend)

    async def main() -> None:
        await lifecycle.wake()
        await lifecycle.compute_unreachable()  # alive: nothing happens
        assert lifecycle.state is EndpointState.RUNNING
        backend.alive = False
        await lifecycle.compute_unreachable()
        assert _state(lifecycle) is EndpointState.SUSPENDED

    run(lifecycle, main)
    assert catalog.states == ["starting", "running", "suspended"]
    assert backend.events.count("edge.compute_gone") == 1


# -- the idle rule -------------------------------------------------------------------------


def test_kept_backends_are_closed_before_the_compute_counts_its_sessions() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, catalog, edge = make_lifecycle(backend, idle_timeout=SHORT_IDLE)
    edge.kept = 2

    async def main() -> None:
        await lifecycle.wake()
        await until(lambda: lifecycle.state is EndpointState.SUSPENDED)

    run(lifecycle, main)
    events = backend.events
    closed = events.index("edge.close_sessions=True")
    assert "management.count" not in events[:closed]
    # The count comes a tick later, after another close_sessions found nothing left.
    counted = events.index("management.count")
    assert "edge.close_sessions=False" in events[closed:counted]
    assert "edge.expire" in events[closed:counted]
    assert catalog.calls[2][1:3] == ("suspending", "idle")


def test_the_compute_s_own_sessions_keep_it_awake() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, catalog, _ = make_lifecycle(backend, idle_timeout=SHORT_IDLE)
    backend.management_connection.sessions = 1  # e.g. a direct connection

    async def main() -> None:
        assert lifecycle.compute_other_sessions is None  # not counted yet
        await lifecycle.wake()
        await until(lambda: backend.events.count("management.count") >= 3)
        assert lifecycle.state is EndpointState.RUNNING
        assert lifecycle.compute_other_sessions == 1  # kept for the view, no I/O there
        backend.management_connection.sessions = 0
        await until(lambda: lifecycle.state is EndpointState.SUSPENDED)

    run(lifecycle, main)
    assert catalog.calls[2][1:3] == ("suspending", "idle")
    assert lifecycle.compute_other_sessions is None  # the compute is gone


def test_a_session_keeps_it_awake_and_its_end_restarts_the_timer() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, _, _ = make_lifecycle(backend, idle_timeout=SHORT_IDLE)

    async def main() -> None:
        lifecycle.acquire()
        await lifecycle.wake()
        await asyncio.sleep(3 * SHORT_IDLE)
        assert lifecycle.state is EndpointState.RUNNING
        assert "management.count" not in backend.events  # a session: nothing to count
        lifecycle.release(busy=True)
        released = asyncio.get_running_loop().time()
        await until(lambda: lifecycle.state is EndpointState.SUSPENDED)
        assert asyncio.get_running_loop().time() - released >= SHORT_IDLE

    run(lifecycle, main)


# -- verifiers -----------------------------------------------------------------------------


def test_verifier_is_the_compute_s_while_it_runs_else_the_catalog_s() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, _, _ = make_lifecycle(backend)

    async def main() -> None:
        assert await lifecycle.verifier("alice") == "SCRAM-SHA-256$catalog"
        await lifecycle.wake()
        assert await lifecycle.verifier("alice") == "SCRAM-SHA-256$compute"
        assert await lifecycle.verifier("mallory") is None
        backend.management_connection.failing = True  # a compute that does not answer
        assert await lifecycle.verifier("alice") == "SCRAM-SHA-256$catalog"

    run(lifecycle, main)
    assert backend.starts == 1  # a lookup never starts anything


def test_a_failed_sync_keeps_the_catalog_s_copy_and_still_suspends() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, catalog, _ = make_lifecycle(backend)

    async def main() -> None:
        await lifecycle.wake()
        backend.management_connection.failing = True
        await lifecycle.suspend("api")

    run(lifecycle, main)
    assert catalog.verifiers == {"alice": "SCRAM-SHA-256$catalog"}
    assert catalog.states[-1] == "suspended"


# -- all endpoints -------------------------------------------------------------------------


class FakeBackends:
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend

    def get(self, name: str) -> FakeBackend:
        return self.backend


class FakeRecord:
    def __init__(self, name: str, state: str = "suspended") -> None:
        self.name = name
        self.backend = "fake"
        self.idle_timeout: float | None = None
        self.park_sessions = True
        self.pinned_session_timeout: float | None = None
        self.state = state


def test_adopt_running_then_suspend_all_then_forget() -> None:
    backend = FakeBackend()
    events = backend.events
    catalog = FakeCatalog(events)
    records = [FakeRecord(next(_names), "running"), FakeRecord(next(_names))]
    cast(Any, catalog).list = lambda: records
    edge = FakeEdge(events)
    manager = LifecycleManager(
        cast(Any, FakeBackends(backend)), cast(Any, catalog), 3600, 5, resources=edge
    )

    async def main() -> None:
        assert await manager.adopt_running() == 2
        lifecycles = list(manager)
        assert [lc.state for lc in lifecycles] == [EndpointState.RUNNING] * 2
        await manager.suspend_all()
        assert [lc.state for lc in lifecycles] == [EndpointState.SUSPENDED] * 2
        assert events.count("edge.compute_gone") == 2
        with pytest.raises(ShuttingDown):
            await lifecycles[0].wake()
        # A lifecycle made after the shutdown began refuses starts too.
        late = manager.get(cast(Any, FakeRecord(next(_names))))
        with pytest.raises(ShuttingDown):
            await late.wake()

    asyncio.run(main())
    assert backend.stops == 2
    # suspend_all waited for the disk measures of the stops it made.
    assert {record.name for record in records} <= set(catalog.disk)
    manager.forget(records[0].name)
    assert events[-1] == f"edge.forget:{records[0].name}"
    assert records[0].name not in {lc.name for lc in manager}


# -- disk usage ----------------------------------------------------------------------------


def test_disk_usage_is_recorded_unless_unknown_or_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FakeBackend()
    catalog = FakeCatalog()

    async def main() -> None:
        await record_disk_usage(cast(Any, backend), cast(Any, catalog), "a")
        backend.disk = 0  # the backend cannot tell: the last measure stays
        await record_disk_usage(cast(Any, backend), cast(Any, catalog), "a")
        cast(Any, backend).disk_bytes = lambda endpoint: 1 // 0
        await record_disk_usage(cast(Any, backend), cast(Any, catalog), "a")

    asyncio.run(main())
    assert catalog.disk == {"a": 4096}
    assert "event=disk_measure_failed endpoint=a error=ZeroDivisionError" in caplog.text
