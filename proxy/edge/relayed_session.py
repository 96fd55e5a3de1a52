"""A client connection from its relay on: what its relay, its endpoint's idle check,
parking and the sessions view work with (ARCHITECTURE.md).

``ClientConnection`` takes a connection up to the relay and releases it at the end; once
it relays, this is the relay's ``RelayOwner`` and the registry's ``Session``
(``session_registry.py``): it says once a tick whether the session is busy and whether
its traffic moved (``observe``), parks it when its endpoint is about to suspend
(``park``), re-attaches it at its client's next message (``wants_compute``), and shows
it (``describe``), pinned ones with why and since when. Phase changes still go through
the connection (``ClientConnection.parked``, ``ClientConnection.reattached``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pgwake import metrics
from pgwake.edge.parking import Credentials, ParkOutcome, parameter_bodies, park, reattach
from pgwake.edge.phases import Phase
from pgwake.edge.relay import Mode
from pgwake.endpoint.compute_resources import PinnedSession
from pgwake.protocol import encode
from pgwake.protocol.errors import (
    IdleInTransactionSessionTimeout,
    IdleSessionTimeout,
    InternalError,
)
from pgwake.protocol.messages import TRANSACTION_FAILED, TRANSACTION_IDLE

if TYPE_CHECKING:
    from pgwake.edge.client_connection import ClientConnection
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.edge.relay import Relay
    from pgwake.edge.session_state import SessionState
    from pgwake.endpoint.lifecycle import Lifecycle

__all__ = ["RelayedSession"]

logger = logging.getLogger(__name__)


class RelayedSession:
    """One relayed session; it lives as long as its relay (parked or not)."""

    __slots__ = (
        "active_at",
        "connection",
        "parked_state",
        "pins",
        "reattaching",
        "relay",
        "seen_traffic",
    )

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        #: Set once the relay has started.
        self.relay: Relay | None = None
        #: When it was last seen running something (monotonic; ``observe``).
        self.active_at = time.monotonic()
        #: Its relay's ``traffic`` at the last look.
        self.seen_traffic = 0
        #: Why the last attempt to park it failed; cleared when it runs something.
        self.pins: tuple[str, ...] = ()
        #: While parked: what its backend had, to restore on the next.
        self.parked_state: SessionState | None = None
        #: A re-attach is in flight.
        self.reattaching = False

    # -- the relay's owner ---------------------------------------------------------------

    def relayed(self, to_compute: int, to_client: int) -> None:
        """Both sides have closed."""
        self.connection.finish("ok", to_compute, to_client)

    def keep_compute(self, stream: PacketStream, status: bytes) -> None:
        """The client ended at rest: server reuse may keep the backend."""
        self.connection.keep_compute(stream, status)

    # -- the idle check, parking, the view --------------------------------------------------

    def observe(self, now: float) -> tuple[bool, bool]:
        """Once a tick: whether the session keeps its compute awake now (something runs or
        is due, or a transaction is open), and whether it ran anything since the last
        look. Running something forgets its pins: they are read again at the next park."""
        relay = self.relay
        if relay is None or self.connection.phase is not Phase.RELAYING:
            return False, False
        tracker = relay.tracker
        traffic = relay.traffic
        ran = traffic != self.seen_traffic  # a query, its answer, COPY data, a NOTIFY...
        if ran:
            self.seen_traffic = traffic
            self.active_at = now
            self.pins = ()
        busy = not tracker.quiet or tracker.status != TRANSACTION_IDLE or tracker.copy
        return busy, ran

    async def park(self) -> ParkOutcome | None:
        """Park the session if it is idle and nothing pins it (``parking.park``); ``None``
        when nothing was tried (it is busy, parked, or known to be pinned)."""
        relay = self.relay
        if relay is None or self.connection.phase is not Phase.RELAYING or self.connection.busy:
            return None
        if self.pins:  # known, and it has run nothing since: no query every tick
            return None
        parked = await park(relay)
        if parked.outcome is ParkOutcome.PARKED and self.connection.phase is Phase.RELAYING:
            self.parked_state = parked.state
            self.connection.parked()
            settings, statements = parked.state.unpacked() if parked.state else ((), ())
            logger.info(
                "event=parked conn=%s endpoint=%s settings=%d statements=%d",
                self.connection.conn_id,
                self.connection.endpoint,
                len(settings),
                len(statements),
            )
        elif parked.outcome is ParkOutcome.PINNED:
            self.pins = parked.pins
            logger.info(
                "event=pinned conn=%s endpoint=%s reason=%r",
                self.connection.conn_id,
                self.connection.endpoint,
                "; ".join(parked.pins),
            )
        return parked.outcome

    def wants_compute(self) -> None:
        """The relay's news: the parked client sent a message. Re-attach, in the
        background (one at a time)."""
        lifecycle = self.connection.lifecycle
        if self.reattaching or lifecycle is None or self.connection.phase is not Phase.PARKED:
            return
        self.reattaching = True
        lifecycle.in_background(self._reattach(lifecycle), f"reattach:{self.connection.conn_id}")

    async def _reattach(self, lifecycle: Lifecycle) -> None:
        relay, state, connection = self.relay, self.parked_state, self.connection
        assert relay is not None
        assert state is not None
        assert connection.client_key is not None
        assert connection.verifier is not None
        credentials = Credentials(connection.startup, connection.client_key, connection.verifier)
        self.connection.set_busy(True)  # while it waits: the compute must not suspend
        try:
            attached = await reattach(
                relay,
                lifecycle,
                credentials=credentials,
                state=state,
                connections=self.connection.ctx.kept.of(lifecycle.name),
                cancels=self.connection.ctx.cancels,
                cancel_key=self.connection.cancel_key,
                told=self.told_parameters(),
                wake_timeout=self.connection.ctx.settings.wake_timeout,
                conn_id=self.connection.conn_id,
            )
        except Exception:
            logger.exception("event=reattach_error conn=%s", self.connection.conn_id)
            attached = None
            relay.end(encode.error_response(InternalError("internal error in pgwake")))
        finally:
            self.reattaching = False
        if self.connection.phase is Phase.CLOSED:
            return
        self.connection.set_busy(False)  # the tracker tells from now on
        if attached is not None:
            self.parked_state = None
            self.active_at = time.monotonic()
            self.connection.reattached(attached.backend_key)
        elif relay.mode is Mode.PARKED and relay.held and relay.refuser is None:
            self.wants_compute()  # the client sent more after its answer

    def told_parameters(self) -> dict[bytes, bytes]:
        """Every ParameterStatus the client was told: the login's, then the compute's
        later ones (name to ``name\0value\0``)."""
        told = parameter_bodies(self.connection.parameter_status)
        if self.relay is not None and self.relay.tracker.parameter_status:
            told.update(self.relay.tracker.parameter_status)
        return told

    def describe(self) -> tuple[str, PinnedSession | None]:
        """The session's state for ``SessionStates`` (active, idle, parked, pinned), and
        for a pinned one what the view shows of it."""
        relay = self.relay
        if relay is None or (
            self.connection.phase is not Phase.RELAYING
            and self.connection.phase is not Phase.PARKED
        ):
            return "active", None
        if self.connection.phase is Phase.PARKED:
            return ("active" if self.reattaching else "parked"), None
        tracker = relay.tracker
        reason = ""
        if tracker.copy:
            reason = "COPY in progress"
        elif tracker.quiet and tracker.status == TRANSACTION_FAILED:
            reason = "failed transaction"
        elif tracker.quiet and tracker.status != TRANSACTION_IDLE:
            reason = "open transaction"
        elif tracker.quiet and self.pins:
            reason = "; ".join(self.pins)
        elif tracker.quiet:
            return "idle", None
        if not reason:
            return "active", None
        application = self.told_parameters().get(b"application_name", b"application_name\0\0")
        return "pinned", PinnedSession(
            client=self.connection.client_host,
            application_name=application.split(b"\0")[1].decode(errors="replace"),
            since=time.time() - (time.monotonic() - self.active_at),
            reason=reason,
        )

    def pinned_for(self, now: float) -> float | None:
        """Seconds this session has been pinned with no traffic either way (``None``: it
        is not pinned: at rest in no transaction and with no pins, or running a query)."""
        relay = self.relay
        if relay is None or self.connection.phase is not Phase.RELAYING:
            return None
        tracker = relay.tracker
        if not tracker.copy and not tracker.quiet:
            return None  # a query runs: not idle
        if not tracker.copy and tracker.status == TRANSACTION_IDLE and not self.pins:
            return None
        return now - self.active_at

    def end_pinned(self, seconds: float) -> None:
        """Close a session pinned at rest for longer than ``pinned_session_timeout``."""
        relay = self.relay
        if relay is None:
            return
        reason = self.describe()[1]
        in_transaction = relay.tracker.status != TRANSACTION_IDLE
        error_class = IdleInTransactionSessionTimeout if in_transaction else IdleSessionTimeout
        error = error_class(
            f"terminating connection: it kept the endpoint's compute awake for {seconds:.0f} s "
            f"while idle ({reason.reason if reason else 'pinned'})",
            hint="pgwake cannot park a session with this state; end it (COMMIT, UNLISTEN, "
            "DISCARD ALL...) when idle, or raise pinned_session_timeout.",
        )
        logger.info(
            "event=pinned_timeout conn=%s endpoint=%s seconds=%d",
            self.connection.conn_id,
            self.connection.endpoint,
            seconds,
        )
        if relay.end(encode.error_response(error)):
            metrics.CLIENT_ERRORS.labels(error.sqlstate, error.kind.value).inc()
