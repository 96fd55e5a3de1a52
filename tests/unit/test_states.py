"""The endpoint state table, walked whole, its one setter, the start back-off and the
diagram: pure code, no event loop, no clock."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from pgwake.endpoint import states
from pgwake.endpoint.states import (
    RETRY_BASE_SECONDS,
    RETRY_MAX_SECONDS,
    TRANSITIONS,
    Backoff,
    EndpointState,
    EndpointStateMachine,
    IllegalTransition,
    Trigger,
    retry_delay,
    state_diagram,
)

ALL_PAIRS = list(itertools.product(EndpointState, Trigger))
PAIR_IDS = [f"{s.value}-{t.value}" for s, t in ALL_PAIRS]
S, T = EndpointState, Trigger

# The table as the README and ARCHITECTURE.md describe it, written out once more by hand:
# a change to the table must change this too.
EXPECTED = {
    (S.SUSPENDED, T.WAKE): S.STARTING,
    (S.SUSPENDED, T.ADOPT): S.RUNNING,
    (S.FAILED, T.RETRY): S.STARTING,
    (S.STARTING, T.STARTED): S.RUNNING,
    (S.STARTING, T.START_FAILED): S.FAILED,
    (S.RUNNING, T.SUSPEND): S.SUSPENDING,
    (S.RUNNING, T.CRASHED): S.SUSPENDED,
    (S.SUSPENDING, T.STOPPED): S.SUSPENDED,
}


# -- the table -----------------------------------------------------------------------------


def test_the_table_is_the_documented_one() -> None:
    assert TRANSITIONS == EXPECTED


def test_a_new_machine_is_suspended_without_a_reason() -> None:
    machine = EndpointStateMachine("demo")
    assert machine.state is EndpointState.SUSPENDED
    assert machine.reason is None


@pytest.mark.parametrize(("state", "trigger"), ALL_PAIRS, ids=PAIR_IDS)
def test_every_pair(state: EndpointState, trigger: Trigger) -> None:
    machine = EndpointStateMachine("demo", state)
    if (state, trigger) not in EXPECTED:
        with pytest.raises(IllegalTransition) as info:
            machine.fire(trigger, "ignored")
        message = str(info.value)
        assert "demo" in message
        assert state.value in message
        assert trigger.value in message
        assert (info.value.endpoint, info.value.state, info.value.trigger) == (
            "demo",
            state,
            trigger,
        )
        # Nothing moved, and the reason was not taken either.
        assert machine.state is state
        assert machine.reason is None
        return
    assert machine.fire(trigger, "a reason") is state  # the state it left
    assert machine.state is EXPECTED[state, trigger]
    assert machine.reason == "a reason"


def test_a_move_without_a_reason_clears_the_last_one() -> None:
    machine = EndpointStateMachine("demo", EndpointState.STARTING)
    machine.fire(Trigger.START_FAILED, "out of disk")
    assert machine.reason == "out of disk"
    machine.fire(Trigger.RETRY)
    assert machine.reason is None


def test_state_cannot_be_assigned_from_outside() -> None:
    machine = EndpointStateMachine("demo")
    with pytest.raises(AttributeError):
        machine.state = EndpointState.RUNNING  # type: ignore[misc]


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


def test_every_state_can_be_left_and_every_trigger_is_used() -> None:
    assert {source for source, _ in TRANSITIONS} == set(EndpointState)
    assert {trigger for _, trigger in TRANSITIONS} == set(Trigger)


def test_failed_is_left_only_by_a_retry() -> None:
    # Like h11's ERROR and asyncpg's FAILED: a real state, left by one trigger only.
    exits = {trigger for state, trigger in TRANSITIONS if state is EndpointState.FAILED}
    assert exits == {Trigger.RETRY}


@pytest.mark.parametrize(
    "triggers",
    [
        [T.WAKE, T.STARTED, T.SUSPEND, T.STOPPED],
        [T.WAKE, T.START_FAILED, T.RETRY, T.STARTED, T.CRASHED],
        [T.ADOPT, T.SUSPEND, T.STOPPED],
    ],
    ids=["normal", "failed-retried-crashed", "adopted"],
)
def test_each_cycle_ends_suspended(triggers: list[Trigger]) -> None:
    machine = EndpointStateMachine("demo")
    for trigger in triggers:
        machine.fire(trigger)
    assert machine.state is EndpointState.SUSPENDED


# -- back-off ------------------------------------------------------------------------------


def test_retry_delay_starts_at_the_base() -> None:
    assert retry_delay(0) == retry_delay(1) == RETRY_BASE_SECONDS


def test_retry_delay_doubles_then_is_capped() -> None:
    assert [retry_delay(failures) for failures in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    delays = [retry_delay(failures) for failures in range(1, 40)]
    assert delays == sorted(delays)
    assert delays[-1] == RETRY_MAX_SECONDS


def test_backoff_schedule() -> None:
    backoff = Backoff()
    assert backoff.retry_in(now=100.0) <= 0  # never failed: no wait
    assert backoff.start_failed(now=100.0) == 1.0
    assert backoff.failures == 1
    assert backoff.retry_in(now=100.0) == 1.0
    assert backoff.retry_in(now=100.5) == 0.5
    assert backoff.retry_in(now=101.0) == 0.0  # due: a retry may run
    assert backoff.start_failed(now=101.0) == 2.0
    assert backoff.retry_at == 103.0
    assert backoff.start_failed(now=103.0) == 4.0
    assert backoff.failures == 3


def test_backoff_is_capped_and_reset_by_a_start() -> None:
    backoff = Backoff()
    for _ in range(50):
        delay = backoff.start_failed(now=0.0)
    assert delay == RETRY_MAX_SECONDS
    assert backoff.retry_in(now=0.0) == RETRY_MAX_SECONDS
    backoff.started()
    assert backoff.failures == 0
    assert backoff.start_failed(now=10.0) == RETRY_BASE_SECONDS


# -- the diagram ---------------------------------------------------------------------------


def test_the_diagram_draws_every_move_once() -> None:
    lines = state_diagram().splitlines()
    assert lines[:2] == ["stateDiagram-v2", "    [*] --> suspended"]
    moves = lines[2:]
    assert len(moves) == len(TRANSITIONS)
    for (source, trigger), target in TRANSITIONS.items():
        assert f"    {source.value} --> {target.value}: {trigger.value}" in moves


# -- the module stays pure -----------------------------------------------------------------


def test_states_does_no_io() -> None:
    """No asyncio, clock, logging, metrics or catalog: only the standard library's
    data helpers (style.md: the pure layers)."""
    tree = ast.parse(Path(states.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "enum", "dataclasses", "typing"}
