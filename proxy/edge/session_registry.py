"""The relayed sessions of each endpoint, for what the lifecycle asks of them.

The lifecycle speaks no protocol: when its endpoint has run nothing for ``idle_timeout``
it asks the edge to park the sessions (``park``), each tick what they did (``activity``)
and to close those pinned too long (``expire_pinned``), and the API asks how many sessions
are in which state (``states``). Each session answers for itself (``ClientConnection``: ``park``,
``observe``, ``describe``, ``pinned_for``, ``end_pinned``); this only keeps them by endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Final, Protocol

from pgwake import metrics
from pgwake.edge.session_state import (
    PIN_ADVISORY_LOCKS,
    PIN_LISTEN,
    PIN_TEMPORARY_TABLES,
    PIN_WITH_HOLD_CURSORS,
)
from pgwake.endpoint.compute_resources import SessionActivity, SessionStates

if TYPE_CHECKING:
    from pgwake.edge.parking import ParkOutcome
    from pgwake.endpoint.compute_resources import PinnedSession

__all__ = ["Session", "SessionRegistry"]

#: Sessions parked at once, over every endpoint: each runs a query on the compute and
#: holds its answer until its backend is ended. Python keeps the memory a wave of parks
#: peaks at, so parks take turns, each reusing what the parks before it freed (sixteen
#: at once per endpoint cost 0.8 KiB more per parked session; ``bench/parking.py``). A
#: park is a round trip to the compute, a few ms.
_PARKING_AT_ONCE: Final = 4
#: Pin reasons in words (``session_state.PIN_*``, ``ClientConnection.describe``) to their
#: metric label.
_PIN_LABELS: Final = {
    "open transaction": "open_transaction",
    "failed transaction": "open_transaction",
    PIN_TEMPORARY_TABLES: "temporary_tables",
    PIN_LISTEN: "listen",
    PIN_ADVISORY_LOCKS: "advisory_locks",
    PIN_WITH_HOLD_CURSORS: "with_hold_cursors",
    "COPY in progress": "copy",
}


class Session(Protocol):
    """What the registry needs of a session (``ClientConnection``)."""

    async def park(self) -> ParkOutcome | None: ...

    def describe(self) -> tuple[str, PinnedSession | None]: ...

    def pinned_for(self, now: float) -> float | None: ...

    def end_pinned(self, seconds: float) -> None: ...

    def observe(self, now: float) -> tuple[bool, bool]: ...


class SessionRegistry:
    """Relayed (and parked) sessions by endpoint."""

    def __init__(self) -> None:
        self._by_endpoint: dict[str, set[Session]] = {}
        self._parking = asyncio.Semaphore(_PARKING_AT_ONCE)

    def add(self, endpoint: str, session: Session) -> None:
        self._by_endpoint.setdefault(endpoint, set()).add(session)

    def discard(self, endpoint: str, session: Session) -> None:
        sessions = self._by_endpoint.get(endpoint)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_endpoint[endpoint]

    def of(self, endpoint: str) -> list[Session]:
        return list(self._by_endpoint.get(endpoint, ()))

    async def park(self, endpoint: str) -> int:
        """Park every idle session of ``endpoint`` (``_PARKING_AT_ONCE`` at a time); return
        how many still hold a backend."""
        sessions = self.of(endpoint)
        if not sessions:
            return 0
        # A few workers over one iterator, not a task per session: a thousand tasks
        # waiting their turn would cost more memory than the backends parking frees.
        queue = iter(sessions)
        outcomes: list[ParkOutcome | None] = []

        async def worker() -> None:
            for session in queue:
                async with self._parking:
                    outcomes.append(await session.park())

        await asyncio.gather(*(worker() for _ in range(min(_PARKING_AT_ONCE, len(sessions)))))
        for outcome in outcomes:
            if outcome is not None:
                metrics.PARKS.labels(endpoint, outcome.value).inc()
        return sum(1 for session in sessions if session.describe()[0] != "parked")

    def activity(self, endpoint: str) -> SessionActivity:
        """What ``endpoint``'s sessions did since the last look (``Session.observe``)."""
        now = time.monotonic()
        busy = 0
        ran = False
        for session in self._by_endpoint.get(endpoint, ()):
            session_busy, session_ran = session.observe(now)
            busy += session_busy
            ran = ran or session_ran
        return SessionActivity(busy, ran)

    def expire_pinned(self, endpoint: str, timeout: float | None) -> None:
        """Close the sessions pinned at rest for ``timeout`` seconds or more."""
        if timeout is None:
            return
        now = time.monotonic()
        for session in self.of(endpoint):
            pinned = session.pinned_for(now)
            if pinned is not None and pinned >= timeout:
                session.end_pinned(pinned)

    def states(self, endpoint: str) -> SessionStates:
        """``endpoint``'s sessions by state; also published as metrics."""
        counts: Counter[str] = Counter()
        pinned: list[PinnedSession] = []
        for session in self.of(endpoint):
            state, pin = session.describe()
            counts[state] += 1
            if pin is not None:
                pinned.append(pin)
        for state in metrics.SESSION_STATES:
            metrics.CLIENT_SESSIONS.labels(endpoint, state).set(counts[state])
        # One label per kind of pin, from a closed set (a reason's details are no label).
        reasons = Counter(
            _PIN_LABELS.get(reason.split(":", 1)[0], "other")
            for pin in pinned
            for reason in pin.reason.split("; ")
        )
        for label in metrics.PINNED_REASONS:
            metrics.PINNED_SESSIONS.labels(endpoint, label).set(reasons[label])
        return SessionStates(
            active=counts["active"],
            idle=counts["idle"],
            parked=counts["parked"],
            pinned=tuple(sorted(pinned, key=lambda pin: pin.since)),
        )
