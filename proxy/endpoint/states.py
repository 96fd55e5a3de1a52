"""An endpoint's states, the moves between them and the start back-off: data, no I/O.

Rule 1 (after h11's ``_state.py``): every legal move is a row of ``TRANSITIONS``, and
``EndpointStateMachine.fire`` is the only code that assigns a state. A trigger with no
row for the current state raises ``IllegalTransition`` and changes nothing.

No asyncio, no clock, no logging, no catalog: ``lifecycle.py`` drives this module and
does the I/O around each move (the log line, the metric, the catalog write). Code that
needs the time takes ``now`` as an argument.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "RETRY_BASE_SECONDS",
    "RETRY_MAX_SECONDS",
    "TRANSITIONS",
    "Backoff",
    "EndpointState",
    "EndpointStateMachine",
    "IllegalTransition",
    "Trigger",
    "retry_delay",
    "state_diagram",
]


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

    #: A client (or the API) needs a suspended compute.
    WAKE = "wake"
    #: A connect after a failed start's retry time.
    RETRY = "retry"
    #: The backend reports the compute ready.
    STARTED = "started"
    #: The backend could not start the compute.
    START_FAILED = "start_failed"
    #: Idle, the API, a delete or the server's shutdown asks for a clean stop.
    SUSPEND = "suspend"
    #: The clean stop is done.
    STOPPED = "stopped"
    #: The compute's process exited without being asked to.
    CRASHED = "crashed"
    #: A compute left running by an earlier pgwake is taken over.
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


class IllegalTransition(Exception):
    """A trigger fired in a state that has no move for it (a pgwake bug)."""

    def __init__(self, endpoint: str, state: EndpointState, trigger: Trigger) -> None:
        super().__init__(
            f"endpoint {endpoint}: no transition from {state.value} on {trigger.value}"
        )
        self.endpoint = endpoint
        self.state = state
        self.trigger = trigger


class EndpointStateMachine:
    """One endpoint's state and the reason given with its last move."""

    __slots__ = ("_reason", "_state", "endpoint")

    def __init__(self, endpoint: str, state: EndpointState = EndpointState.SUSPENDED) -> None:
        self.endpoint = endpoint
        self._state = state
        self._reason: str | None = None

    @property
    def state(self) -> EndpointState:
        return self._state

    @property
    def reason(self) -> str | None:
        """Why the endpoint is in its state (a failed start's reason), if a move said."""
        return self._reason

    def fire(self, trigger: Trigger, reason: str | None = None) -> EndpointState:
        """Make the move ``trigger`` makes from the current state, recording ``reason``;
        return the state left.

        Raises ``IllegalTransition`` (and changes nothing) when the table has no move."""
        try:
            new_state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise IllegalTransition(self.endpoint, self._state, trigger) from None
        old_state, self._state, self._reason = self._state, new_state, reason
        return old_state


#: Failed starts are retried no sooner than this, doubling per failure (no retry storm).
RETRY_BASE_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 30.0


def retry_delay(failures: int) -> float:
    """Seconds to wait before retrying a start after ``failures`` failures in a row."""
    # Cap the exponent first: 2.0 ** 1024 overflows long before anyone notices.
    delay: float = RETRY_BASE_SECONDS * 2.0 ** min(max(failures - 1, 0), 32)
    return min(delay, RETRY_MAX_SECONDS)


@dataclass(slots=True)
class Backoff:
    """Failed starts in a row, and when the next start may run (``now`` is monotonic)."""

    failures: int = 0
    retry_at: float = 0.0

    def start_failed(self, now: float) -> float:
        """Count a failed start; return the seconds until the next may run."""
        self.failures += 1
        delay = retry_delay(self.failures)
        self.retry_at = now + delay
        return delay

    def started(self) -> None:
        """A start succeeded: the next failure waits the base delay again."""
        self.failures = 0

    def retry_in(self, now: float) -> float:
        """Seconds until a retry may run; zero or less means now."""
        return self.retry_at - now


def state_diagram() -> str:
    """The transition table as a Mermaid state diagram (README shows it; a test compares)."""
    lines = ["stateDiagram-v2", "    [*] --> suspended"]
    for (source, trigger), target in TRANSITIONS.items():
        lines.append(f"    {source.value} --> {target.value}: {trigger.value}")
    return "\n".join(lines)
