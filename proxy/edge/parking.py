"""Sessions that outlive their backend: park an idle one, re-attach it on its next message.

An endpoint suspends once no session has run anything for its ``idle_timeout``; a client
that merely keeps its connection open (a pool, a psql window) must not keep it awake. So
before the compute stops, each idle session is *parked* (``park``):

1. the relay hands over the compute's connection at rest (``Relay.take_compute``); what
   the client sends meanwhile is held;
2. one query reads the session's state (``session_state.capture``): its ``SET``s and
   prepared statements, and anything that pins it (temporary tables, ``LISTEN``, advisory
   locks, ``WITH HOLD`` cursors);
3. unpinned and quiet, its backend gets Terminate; the client's connection stays open.
   Pinned, or the client spoke meanwhile, the backend goes back to the relay as it was.

The client's next message *re-attaches* the session (``reattach``): the endpoint wakes
(single flight with every other waker), pgwake logs in with the client's SCRAM key (held
in memory only while its session lives; or takes a backend server reuse keeps for the same
startup message, already logged in and reset), restores the state (``session_state.restore``),
tells the client of any ParameterStatus that changed, moves its cancel key to the new
backend, and forwards the message. When that fails the client's request gets an error and
ReadyForQuery (``session_state.Refuser``), and its next message tries again.

What cannot be hidden (README): ``pg_backend_pid()`` changes, ``currval()`` needs a
``nextval()`` first, and the unnamed prepared statement is not kept.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.edge.backend import connect_compute
from pgwake.edge.cancel_keys import BackendTarget
from pgwake.edge.compute_login import ComputeRefused, StaleVerifier, log_in
from pgwake.edge.exchange import PeerClosed
from pgwake.edge.packet_stream import drive
from pgwake.edge.session_state import (
    CaptureFailed,
    Refuser,
    RestoreFailed,
    SessionState,
    capture,
    restore,
)
from pgwake.protocol import encode
from pgwake.protocol.errors import (
    CannotConnectNow,
    ClientError,
    InvalidPassword,
    ProtocolViolation,
)
from pgwake.protocol.framing import MAX_STARTUP_PHASE_MESSAGE_LENGTH, MessageReader
from pgwake.protocol.messages import NEED_DATA, PARAMETER_STATUS, TERMINATE, Frame

if TYPE_CHECKING:
    from pgwake.auth.scram import ScramVerifier
    from pgwake.edge.cancel_keys import CancelKey, CancelMap
    from pgwake.edge.kept_connections import EndpointConnections
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.edge.relay import Relay
    from pgwake.endpoint.lifecycle import Lifecycle

__all__ = ["Credentials", "ParkOutcome", "Parked", "Reattached", "park", "reattach"]

logger = logging.getLogger(__name__)

#: Reading a session's state must take no longer (it is a catalog query).
_CAPTURE_TIMEOUT: Final = 5.0
#: Postgres's own authentication_timeout default, for the login of a re-attach.
_LOGIN_TIMEOUT: Final = 60.0
#: Restoring settings and prepared statements.
_RESTORE_TIMEOUT: Final = 30.0
_TERMINATE: Final = encode.message(TERMINATE)


class ParkOutcome(enum.Enum):
    """What an attempt to park a session came to (a metric label)."""

    PARKED = "parked"
    #: It holds state that cannot be restored; it stays attached.
    PINNED = "pinned"
    #: It was not at rest, or its client spoke meanwhile; it stays attached.
    BUSY = "busy"
    #: Its backend or client went away meanwhile.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Parked:
    """The result of ``park``: the state captured (``PARKED``), or the pins."""

    outcome: ParkOutcome
    state: SessionState | None = None
    pins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Credentials:
    """What logging in again for a session takes: the compute's startup message, the
    client's SCRAM ClientKey and the verifier it proved itself against. Held in memory
    while the session lives, never written anywhere."""

    startup: bytes
    client_key: bytes
    verifier: ScramVerifier

    def __repr__(self) -> str:
        return "Credentials(...)"


async def park(relay: Relay) -> Parked:
    """Park ``relay``'s session if it is at rest and holds nothing that pins it."""
    stream = relay.take_compute()
    if stream is None:
        return Parked(ParkOutcome.BUSY)
    try:
        async with asyncio.timeout(_CAPTURE_TIMEOUT):
            captured = await drive(stream, capture())
    except CaptureFailed as failed:
        relay.give_compute(stream)
        return Parked(ParkOutcome.PINNED, pins=(f"its state cannot be read: {failed.reason}",))
    except (PeerClosed, OSError, TimeoutError, ProtocolViolation):
        # A compute that does not answer its catalog: the relay tells the client (57P01).
        stream.close()
        relay.give_compute(stream)
        return Parked(ParkOutcome.FAILED)
    if relay.client_gone:
        stream.close()
        return Parked(ParkOutcome.FAILED)
    relay.write_to_client(captured.passthrough)
    if captured.pins or captured.state is None:
        relay.give_compute(stream)
        return Parked(ParkOutcome.PINNED, pins=captured.pins)
    if relay.held:
        relay.give_compute(stream)
        return Parked(ParkOutcome.BUSY)
    stream.write(_TERMINATE)  # a clean end: the backend does not log a lost client
    stream.close()
    relay.park()
    return Parked(ParkOutcome.PARKED, state=captured.state)


@dataclass(frozen=True, slots=True)
class Reattached:
    """A re-attach that worked: the new backend's own key (``None``: it sent none)."""

    backend_key: tuple[int, int] | None


class ReattachFailed(Exception):
    """A re-attach did not get the session a backend; ``error`` is what the client hears
    (an ERROR, not a FATAL: the session stays usable), ``outcome`` the metric label."""

    def __init__(self, error: ClientError, outcome: str, *, fatal: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcome = outcome
        #: The session can never re-attach (its password changed): end it.
        self.fatal = fatal


async def reattach(
    relay: Relay,
    lifecycle: Lifecycle,
    *,
    credentials: Credentials,
    state: SessionState,
    connections: EndpointConnections,
    cancels: CancelMap,
    cancel_key: CancelKey | None,
    told: dict[bytes, bytes],
    wake_timeout: float,
    conn_id: str,
) -> Reattached | None:
    """Give the parked session of ``relay`` a backend again: wake, log in, restore, then
    relay. ``told`` is every ParameterStatus the client was told (name to body); what
    differs on the new backend is sent to the client first. ``None`` when it did not
    work: the client's request has then been answered (``Refuser``)."""
    started = time.monotonic()
    endpoint = lifecycle.name
    try:
        stream, backend_key, reported = await _log_in_and_restore(
            lifecycle,
            credentials=credentials,
            state=state,
            connections=connections,
            wake_timeout=wake_timeout,
            conn_id=conn_id,
        )
    except ReattachFailed as failed:
        _observe(lifecycle, failed.outcome, started)
        logger.warning(
            "event=reattach_failed conn=%s endpoint=%s outcome=%s reason=%r",
            conn_id,
            endpoint,
            failed.outcome,
            failed.error.message,
        )
        metrics.CLIENT_ERRORS.labels(failed.error.sqlstate, failed.error.kind.value).inc()
        if failed.fatal:
            relay.end(encode.error_response(failed.error))
        else:
            relay.refuse(Refuser(encode.error_response(failed.error, severity="ERROR")))
        return None
    if relay.client_gone:
        stream.close()
        return None
    address = lifecycle.address
    if cancel_key is not None and backend_key is not None and address is not None:
        cancels.retarget(cancel_key, BackendTarget(endpoint, address, *backend_key))
    changed = [body for name, body in reported.items() if told.get(name) != body]
    if changed:
        relay.write_to_client(b"".join(encode.message(PARAMETER_STATUS, b) for b in changed))
    relay.give_compute(stream)
    _observe(lifecycle, "ok", started)
    logger.info(
        "event=reattached conn=%s endpoint=%s ms=%d backend_pid=%s",
        conn_id,
        endpoint,
        (time.monotonic() - started) * 1000,
        backend_key[0] if backend_key is not None else "-",
    )
    return Reattached(backend_key)


async def _log_in_and_restore(
    lifecycle: Lifecycle,
    *,
    credentials: Credentials,
    state: SessionState,
    connections: EndpointConnections,
    wake_timeout: float,
    conn_id: str,
) -> tuple[PacketStream, tuple[int, int] | None, dict[bytes, bytes]]:
    """A backend logged in and restored, its key, and the ParameterStatus it reported.

    A backend that server reuse keeps for the same startup message (``server_reuse.py``:
    logged in, reset) saves the login: the session's state is restored onto it."""
    kept = (
        connections.idle_servers.take(credentials.startup)
        if lifecycle.address is not None
        else None
    )
    if kept is not None:
        stream = kept.stream
        backend_key: tuple[int, int] | None = (kept.process_id, kept.secret_key)
        reported = parameter_bodies(kept.parameter_status)
    else:
        try:
            stream, _ = await connect_compute(lifecycle, connections, wake_timeout, conn_id)
        except CannotConnectNow as error:
            raise ReattachFailed(error, "wake_failed") from None
    try:
        if kept is None:
            async with asyncio.timeout(_LOGIN_TIMEOUT):
                login = await drive(
                    stream,
                    log_in(
                        credentials.startup,
                        client_key=credentials.client_key,
                        verifier=credentials.verifier,
                        cancel_key_for=lambda process_id, secret_key: (process_id, secret_key),
                    ),
                )
            backend_key, reported = login.backend_key, parameter_bodies(login.parameter_status)
        async with asyncio.timeout(_RESTORE_TIMEOUT):
            restored = await drive(stream, restore(state))
    except StaleVerifier:
        stream.close()
        raise ReattachFailed(
            InvalidPassword(
                "the role's password changed while the session was parked",
                hint="Reconnect with the new password.",
            ),
            "login_failed",
            fatal=True,
        ) from None
    except (ComputeRefused, CannotConnectNow, PeerClosed, OSError, TimeoutError) as exc:
        stream.close()
        detail = exc.message if isinstance(exc, CannotConnectNow) else type(exc).__name__
        raise ReattachFailed(
            CannotConnectNow(
                f'endpoint "{lifecycle.name}" could not take the session back',
                detail=f"logging in again failed: {detail}",
                hint="Try again shortly.",
            ),
            "login_failed",
        ) from None
    except RestoreFailed as failed:
        stream.close()
        raise ReattachFailed(
            CannotConnectNow(
                "the session's settings could not be restored on the woken compute",
                detail=failed.reason,
                hint="Try again, or reconnect for a fresh session.",
            ),
            "restore_failed",
        ) from None
    if restored.dropped:
        logger.warning(
            "event=statements_dropped conn=%s endpoint=%s names=%s",
            conn_id,
            lifecycle.name,
            ",".join(restored.dropped),
        )
    for name, value in restored.parameter_status.items():
        reported[name.encode()] = name.encode() + b"\0" + value.encode() + b"\0"
    return stream, backend_key, reported


def parameter_bodies(encoded: bytes) -> dict[bytes, bytes]:
    """Encoded ParameterStatus messages as name to body (``name\\0value\\0``)."""
    reader = MessageReader(MAX_STARTUP_PHASE_MESSAGE_LENGTH)
    reader.feed(encoded)
    bodies: dict[bytes, bytes] = {}
    while (frame := reader.next_message()) is not NEED_DATA:
        assert isinstance(frame, Frame)
        if frame.type == PARAMETER_STATUS:
            bodies[frame.body.split(b"\0", 1)[0]] = frame.body
    return bodies


def _observe(lifecycle: Lifecycle, outcome: str, started: float) -> None:
    metrics.REATTACHES.labels(lifecycle.name, outcome).inc()
    metrics.REATTACH_DURATION.labels(lifecycle.backend.name).observe(time.monotonic() - started)
