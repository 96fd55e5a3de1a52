"""The phases of a client connection, and the moves between them. Pure.

Rule (h11's ``_state.py``): the moves are data, ``PHASE_MOVES``; ``ClientConnection._enter``
(``client_connection.py``) is the only code that changes a connection's phase, and it
refuses a move the table does not list. In order:

1. ``HANDSHAKE``: PROXY header, TLS, startup packet (``handshake.py``);
2. ``ROUTED``: the endpoint is known and lets the client in (``routing.py``, the catalog);
   SCRAM with the client runs (``client_auth.py``);
3. ``AUTHENTICATED``: the password is proved, the session holds its slot and keeps the
   endpoint awake; a backend is found and logged in (``backend.py``);
4. ``ATTACHED``: the client got the session's opening, with pgwake's own cancel keys;
5. ``RELAYING``: the relay copies bytes both ways (``relay.py``);
6. ``PARKED``: the session's backend was ended while it was idle; the client's next
   message re-attaches it, back to ``RELAYING`` (``parking.py``);
7. ``CLOSED``: what the connection held is released, its end logged.

Any phase but the last may go to ``CLOSED``: an error, a cancel request (which ends in
``HANDSHAKE``), or the end of the relay.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["PHASE_MOVES", "IllegalPhaseMove", "Phase"]


class Phase(enum.Enum):
    """Where a client connection stands."""

    #: PROXY header, encryption, startup packet: where it goes is not known yet.
    HANDSHAKE = "handshake"
    #: The endpoint is known and lets the client's address in; SCRAM with the client.
    ROUTED = "routed"
    #: The password is proved: a session slot is taken, the endpoint kept awake.
    AUTHENTICATED = "authenticated"
    #: A backend is logged in for the client, which got the session's opening.
    ATTACHED = "attached"
    #: The relay copies bytes; the connection's coroutine has ended.
    RELAYING = "relaying"
    #: No backend: the session's state is captured, its client's connection open.
    PARKED = "parked"
    #: Everything is released, the close is logged.
    CLOSED = "closed"


#: Each phase's possible next ones: one step forward (parked and back), or closed.
PHASE_MOVES: Final[dict[Phase, frozenset[Phase]]] = {
    Phase.HANDSHAKE: frozenset({Phase.ROUTED, Phase.CLOSED}),
    Phase.ROUTED: frozenset({Phase.AUTHENTICATED, Phase.CLOSED}),
    Phase.AUTHENTICATED: frozenset({Phase.ATTACHED, Phase.CLOSED}),
    Phase.ATTACHED: frozenset({Phase.RELAYING, Phase.CLOSED}),
    Phase.RELAYING: frozenset({Phase.PARKED, Phase.CLOSED}),
    Phase.PARKED: frozenset({Phase.RELAYING, Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


class IllegalPhaseMove(RuntimeError):
    """A move ``PHASE_MOVES`` does not list: a bug in pgwake, never the client's doing."""

    def __init__(self, current: Phase, target: Phase) -> None:
        super().__init__(f"a connection cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target
