"""The lifecycle table, walked whole, and the one state setter ``Lifecycle._transition``.

The backend and catalog here are plain test doubles: the state logic under test never
reaches a compute or a database.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from pgwake.compute import ComputeAddress, ComputeStartError
from pgwake.endpoint.lifecycle import (
    RETRY_BASE_SECONDS,
    RETRY_MAX_SECONDS,
    TRANSITIONS,
    EndpointState,
    IllegalTransition,
    Lifecycle,
    Trigger,
    retry_delay,
)
from pgwake.protocol.errors import CannotConnectNow

ALL_PAIRS = list(itertools.product(EndpointState, Trigger))
_names = (f"unit-lifecycle-{n}" for n in itertools.count())


class FakeCatalog:
    """Records ``set_state`` calls instead of writing a database."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, float | None]] = []

    def set_state(
        self, name: str, state: str, reason: str | None = None, last_active: float | None = None
    ) -> None:
        self.calls.append((name, state, reason, last_active))

    def pending_verifiers(self, name: str) -> dict[str, str]:
        return {}


class FakeBackend:
    """A compute backend whose starts succeed or fail as the test says, instantly."""

    name = "fake"

    def __init__(self, outcomes: list[ComputeAddress | str] | None = None) -> None:
        self.outcomes = deque(outcomes or [])
        self.starts = 0
        self.stops = 0

    async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
        self.starts += 1
        await asyncio.sleep(0)  # let every waiter pile up behind the one start
        outcome = self.outcomes.popleft()
        if isinstance(outcome, str):
            raise ComputeStartError(outcome)
        return outcome

    async def stop(self, endpoint: str) -> None:
        self.stops += 1

    async def is_alive(self, endpoint: str) -> bool:
        return True

    def management(self, endpoint: str) -> None:
        return None  # no compute to ask: the double models a compute without SQL access


def make_lifecycle(
    backend: FakeBackend | None = None, catalog: FakeCatalog | None = None
) -> tuple[Lifecycle, FakeCatalog]:
    catalog = catalog or FakeCatalog()
    lifecycle = Lifecycle(
        next(_names),
        cast(Any, backend or FakeBackend()),
        cast(Any, catalog),
        idle_timeout=3600.0,
        wake_timeout=5.0,
    )
    return lifecycle, catalog


def gauge(name: str, state: EndpointState) -> float | None:
    return REGISTRY.get_sample_value(
        "pgwake_endpoint_state", {"endpoint": name, "state": state.value}
    )


def transitions_counted(trigger: Trigger) -> float:
    value = REGISTRY.get_sample_value(
        "pgwake_endpoint_transitions_total", {"trigger": trigger.value}
    )
    return value or 0.0


# -- the table -----------------------------------------------------------------------------


def test_new_lifecycle_is_suspended_and_published() -> None:
    lifecycle, catalog = make_lifecycle()
    assert lifecycle.state is EndpointState.SUSPENDED
    for state in EndpointState:
        assert gauge(lifecycle.name, state) == (1.0 if state is EndpointState.SUSPENDED else 0.0)
    assert catalog.calls == []


@pytest.mark.parametrize(
    ("state", "trigger"), ALL_PAIRS, ids=[f"{s.value}-{t.value}" for s, t in ALL_PAIRS]
)
def test_every_pair(
    state: EndpointState, trigger: Trigger, caplog: pytest.LogCaptureFixture
) -> None:
    lifecycle, catalog = make_lifecycle()
    lifecycle.state = state
    counted = transitions_counted(trigger)
    caplog.set_level(logging.INFO, logger="pgwake.endpoint.lifecycle")

    if (state, trigger) not in TRANSITIONS:
        with pytest.raises(IllegalTransition) as info:
            lifecycle._transition(trigger)
        message = str(info.value)
        assert lifecycle.name in message
        assert state.value in message
        assert trigger.value in message
        assert lifecycle.state is state
        assert catalog.calls == []
        assert transitions_counted(trigger) == counted
        assert caplog.records == []
        return

    new_state = TRANSITIONS[state, trigger]
    lifecycle._transition(trigger, "a reason")
    assert lifecycle.state is new_state
    assert lifecycle.reason == "a reason"
    # One catalog write, one counter bump, one log line, and the gauge follows.
    assert len(catalog.calls) == 1
    name, written_state, reason, last_active = catalog.calls[0]
    assert (name, written_state, reason) == (lifecycle.name, new_state.value, "a reason")
    assert isinstance(last_active, float)
    assert transitions_counted(trigger) == counted + 1
    assert len(caplog.records) == 1
    assert "event=transition" in caplog.records[0].getMessage()
    for other in EndpointState:
        assert gauge(lifecycle.name, other) == (1.0 if other is new_state else 0.0)


def test_table_uses_only_known_states_and_triggers() -> None:
    for (state, trigger), new_state in TRANSITIONS.items():
        assert isinstance(state, EndpointState)
        assert isinstance(trigger, Trigger)
        assert isinstance(new_state, EndpointState)


def test_every_state_is_reachable_from_suspended() -> None:
    reached = {EndpointState.SUSPENDED}
    frontier = [EndpointState.SUSPENDED]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(EndpointState)


def test_every_state_can_be_left() -> None:
    assert {source for source, _ in TRANSITIONS} == set(EndpointState)


def test_every_trigger_is_used() -> None:
    assert {trigger for _, trigger in TRANSITIONS} == set(Trigger)


def test_failed_is_left_only_by_a_retry() -> None:
    # design: failed is a real state that only a retry trigger leaves.
    exits = {trigger for state, trigger in TRANSITIONS if state is EndpointState.FAILED}
    assert exits == {Trigger.RETRY}


def test_the_normal_cycle() -> None:
    lifecycle, catalog = make_lifecycle()
    for trigger in (Trigger.WAKE, Trigger.STARTED, Trigger.SUSPEND, Trigger.STOPPED):
        lifecycle._transition(trigger)
    assert lifecycle.state is EndpointState.SUSPENDED
    assert [call[1] for call in catalog.calls] == ["starting", "running", "suspending", "suspended"]


# -- retry delay ---------------------------------------------------------------------------


def test_retry_delay_starts_at_the_base() -> None:
    assert retry_delay(0) == retry_delay(1) == RETRY_BASE_SECONDS


def test_retry_delay_doubles_then_is_capped() -> None:
    delays = [retry_delay(failures) for failures in range(1, 40)]
    assert delays == sorted(delays)
    assert delays[1] == 2 * delays[0]
    assert delays[2] == 2 * delays[1]
    assert max(delays) == RETRY_MAX_SECONDS
    assert delays[-1] == RETRY_MAX_SECONDS


# -- the verbs over the table (an event loop, but no sockets and no processes) ------------

ADDRESS = ComputeAddress(unix_socket="/nonexistent/.s.PGSQL.5432")


def test_wake_is_single_flight() -> None:
    backend = FakeBackend([ADDRESS])
    lifecycle, catalog = make_lifecycle(backend)

    async def main() -> list[ComputeAddress]:
        try:
            return await asyncio.gather(*(lifecycle.wake() for _ in range(5)))
        finally:
            await lifecycle.close()

    assert asyncio.run(main()) == [ADDRESS] * 5
    assert backend.starts == 1
    assert lifecycle.state is EndpointState.RUNNING
    assert [call[1] for call in catalog.calls] == ["starting", "running"]


def test_failed_start_gives_57p03_with_the_reason_then_retries() -> None:
    backend = FakeBackend(["could not bind: address in use", ADDRESS])
    lifecycle, catalog = make_lifecycle(backend)

    async def main() -> None:
        try:
            with pytest.raises(CannotConnectNow) as first:
                await lifecycle.wake()
            assert first.value.sqlstate == "57P03"
            assert first.value.detail == "could not bind: address in use"
            assert lifecycle.state is EndpointState.FAILED
            # Within the retry delay: refused at once, nothing started.
            with pytest.raises(CannotConnectNow):
                await lifecycle.wake()
            assert backend.starts == 1
            # Once the delay has passed, the next connect retries.
            lifecycle._retry_at = 0.0
            assert await lifecycle.wake() == ADDRESS
        finally:
            await lifecycle.close()

    asyncio.run(main())
    assert backend.starts == 2
    assert [call[1] for call in catalog.calls] == ["starting", "failed", "starting", "running"]
    assert catalog.calls[1][2] == "could not bind: address in use"
