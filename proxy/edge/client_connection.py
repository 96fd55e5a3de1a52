"""One client connection, from its first byte to its relay (ARCHITECTURE.md).

Rule: a connection's phase (``phases.py``) changes in ``ClientConnection._enter`` only,
with one ``event=phase`` line at debug level. ``ClientConnection.run`` goes through them
in order, each phase's work done by a module of this package: ``handshake``, then
``routing`` and the catalog (``ROUTED``), ``client_auth``, the session's slot
(``AUTHENTICATED``), ``backend`` (``ATTACHED``), ``relay`` (``RELAYING``), and when its
endpoint suspends while it is idle ``parking`` (``PARKED``, and back). Until its proof
is verified a connection counts only in the unauthenticated budget (``admission``): no
session slot, no effect on idleness, no compute connection. Once it relays, its coroutine
has ended: what is left is the ``ClientConnection``'s few slots and its
``RelayedSession`` (``relayed_session.py``: the relay's owner, what the idle check and
parking work with), until ``finish``.

Any ``ClientError`` becomes one FATAL ``ErrorResponse`` and a close; anything else is
logged with its traceback and answered with XX000. The client never sees a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import ssl
import sys
import time
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.edge.admission import Refusal
from pgwake.edge.backend import acquire_backend
from pgwake.edge.client_auth import authenticate_client, is_text
from pgwake.edge.compute_login import ComputeRefused, shared
from pgwake.edge.handshake import read_handshake, require_tls_error
from pgwake.edge.phases import PHASE_MOVES, IllegalPhaseMove, Phase
from pgwake.edge.relay import start_relay
from pgwake.edge.relayed_session import RelayedSession
from pgwake.edge.routing import address_allowed, compute_parameters, resolve
from pgwake.edge.server_reuse import keep_backend
from pgwake.edge.session_context import SessionContext, too_many_unauthenticated
from pgwake.protocol import encode
from pgwake.protocol.errors import (
    AdminShutdown,
    ClientError,
    InternalError,
    InvalidAuthorizationSpecification,
    InvalidCatalogName,
    ProtocolViolation,
    TooManyConnections,
)
from pgwake.protocol.messages import CancelRequest

if TYPE_CHECKING:
    from pgwake.auth.scram import ScramVerifier
    from pgwake.edge.cancel_keys import CancelKey
    from pgwake.edge.client_auth import EdgeAuthResult
    from pgwake.edge.handshake import Handshake
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.edge.routing import Route
    from pgwake.endpoint.lifecycle import Lifecycle
    from pgwake.protocol.messages import StartupMessage

__all__ = ["ClientConnection", "SessionContext", "serve_session"]

logger = logging.getLogger(__name__)

#: The newest protocol 3.x minor pgwake speaks (NegotiateProtocolVersion otherwise).
_NEWEST_MINOR: Final = 0


class ClientConnection:
    """One client connection. ``run`` takes it through its phases up to the relay; from
    then on the relay holds it (``relayed``, ``keep_compute``) until ``finish``.

    Its slots are all that stays of it while it relays: what its end must undo and log.
    The handshake, the route and the SCRAM state live in ``run``'s frame only."""

    __slots__ = (
        "backend_key",
        "busy",
        "cancel_key",
        "client_host",
        "client_key",
        "compute",
        "conn_id",
        "ctx",
        "endpoint",
        "lifecycle",
        "parameter_status",
        "peer_host",
        "phase",
        "session",
        "started",
        "startup",
        "unauthenticated_as",
        "verifier",
    )

    def __init__(self, ctx: SessionContext, conn_id: str, peer_host: str) -> None:
        self.ctx = ctx
        self.conn_id = conn_id
        self.peer_host = peer_host
        self.started = time.monotonic()
        self.phase = Phase.HANDSHAKE
        #: The address this connection counts under in the unauthenticated budget
        #: (``None`` once it has proved its password, or if it never entered).
        self.unauthenticated_as: str | None = None
        #: Set once routed.
        self.endpoint: str | None = None
        #: Set once authenticated: the client is a session of this endpoint.
        self.lifecycle: Lifecycle | None = None
        #: Set while attached: the backend's connection (the relay's once relaying).
        self.compute: PacketStream | None = None
        #: pgwake's cancel key given to the client (``None``: the compute sent none).
        self.cancel_key: CancelKey | None = None
        #: The backend's own process id and secret key: what keeping it for server reuse
        #: needs (``None`` while parked, or if the compute sent none).
        self.backend_key: tuple[int, int] | None = None
        #: The compute's startup message, and the ParameterStatus messages the client
        #: was sent at login (both shared with the endpoint's other sessions).
        self.startup = b""
        self.parameter_status = b""
        #: With ``startup``, what logging in again for a parked session takes: the
        #: client's SCRAM ClientKey and the verifier it proved (held while it lives;
        #: slots of their own, not a ``Credentials``: a parked session is kept small).
        self.client_key: bytes | None = None
        self.verifier: ScramVerifier | None = None
        #: The client's address (the PROXY header's, if one came).
        self.client_host = peer_host
        #: Set once relaying: what the relay, the idle check and parking work with.
        self.session: RelayedSession | None = None
        #: Counted busy by the lifecycle (``Lifecycle.busy``): from its slot until it
        #: relays, and while it re-attaches (``set_busy``).
        self.busy = False

    def _enter(self, phase: Phase) -> None:
        """Move to ``phase``: the one place the phase changes."""
        if phase not in PHASE_MOVES[self.phase]:
            raise IllegalPhaseMove(self.phase, phase)
        logger.debug(
            "event=phase conn=%s from=%s to=%s", self.conn_id, self.phase.value, phase.value
        )
        self.phase = phase

    # -- the unauthenticated budget ------------------------------------------------------

    def admit(self) -> None:
        """Count the new connection in the unauthenticated budget (``Refusal`` if full)."""
        self.ctx.unauthenticated.enter(self.peer_host)
        self.unauthenticated_as = self.peer_host
        metrics.UNAUTHENTICATED.inc()

    def _count_as(self, client_host: str) -> None:
        """A PROXY header named the real client: it counts under its own address."""
        if self.unauthenticated_as is None or client_host == self.unauthenticated_as:
            return
        try:
            self.ctx.unauthenticated.move(self.unauthenticated_as, client_host)
        except Refusal as refusal:
            metrics.UNAUTHENTICATED_REFUSED.labels(refusal.scope).inc()
            raise too_many_unauthenticated(refusal) from None
        self.unauthenticated_as = client_host

    def _leave_unauthenticated(self) -> None:
        """Leave the unauthenticated budget: the client proved its password, or left."""
        address, self.unauthenticated_as = self.unauthenticated_as, None
        if address is not None:
            self.ctx.unauthenticated.leave(address)
            metrics.UNAUTHENTICATED.dec()

    # -- the phases ----------------------------------------------------------------------

    async def run(self, client: PacketStream) -> None:
        """Take the connection from its first byte to its relay, or to a forwarded cancel
        request. Raises ``ClientError`` (the client must hear it), ``ComputeRefused`` (it
        has), or ``ConnectionError``/``TimeoutError``/``ssl.SSLError``."""
        settings = self.ctx.settings
        deadline = asyncio.get_running_loop().time() + settings.startup_timeout
        try:
            async with asyncio.timeout_at(deadline):
                handshake = await read_handshake(
                    client,
                    peer_host=self.peer_host,
                    tls=self.ctx.tls,
                    trusted_proxies=settings.trusted_networks,
                    conn_id=self.conn_id,
                )
        except TimeoutError:
            raise ProtocolViolation(
                "startup not completed in time",
                detail=f"the limit is {settings.startup_timeout:g} s",
            ) from None
        self._count_as(handshake.client_host)
        self.client_host = sys.intern(handshake.client_host)
        message = handshake.message
        if isinstance(message, CancelRequest):
            # Plaintext cancels are allowed, as in Postgres: the key is the secret.
            await self.ctx.cancels.forward(message.process_id, message.secret_key)
            return
        if handshake.tls is None and settings.tls_required:
            raise require_tls_error()
        declined = [key for key in message.parameters if key.startswith("_pq_.")]
        if message.protocol_minor > _NEWEST_MINOR or declined:
            client.write(encode.negotiate_protocol_version(_NEWEST_MINOR, declined))

        route, lifecycle = self._route(handshake, message)
        try:
            async with asyncio.timeout_at(deadline):
                auth = await self._authenticate(client, lifecycle, route.role, handshake)
        except TimeoutError:
            raise ProtocolViolation(
                "authentication not completed in time",
                detail=f"startup and authentication must finish within "
                f"{settings.startup_timeout:g} s",
            ) from None
        self._take_slot(lifecycle)

        startup = shared(encode.startup_message(compute_parameters(message, route)))
        self.startup = startup
        self.client_key, self.verifier = auth.client_key, auth.verifier
        attached = await acquire_backend(
            lifecycle,
            client,
            startup=startup,
            auth=auth,
            role=route.role,
            cancels=self.ctx.cancels,
            connections=self.ctx.kept.of(lifecycle.name),
            wake_timeout=settings.wake_timeout,
            conn_id=self.conn_id,
        )
        opening = attached.opening
        self.compute = attached.stream
        self.cancel_key, self.backend_key = opening.cancel_key, opening.backend_key
        self.parameter_status = opening.parameter_status
        self._enter(Phase.ATTACHED)
        self._relay(client)

    def _route(self, handshake: Handshake, message: StartupMessage) -> tuple[Route, Lifecycle]:
        """HANDSHAKE -> ROUTED: the endpoint, from the catalog, letting the client in."""
        catalog = self.ctx.catalog
        route = resolve(
            user=message.user,
            options=message.parameters.get("options"),
            server_name=handshake.server_name,
            base_domain=self.ctx.settings.base_domain,
            exists=catalog.exists,
        )
        record = catalog.get(route.endpoint)
        if record is None:
            raise InvalidCatalogName(f'endpoint "{route.endpoint}" does not exist')
        self.endpoint = record.name
        logger.info(
            "event=routed conn=%s endpoint=%s via=%s tls=%s client=%s",
            self.conn_id,
            record.name,
            route.source,
            handshake.tls is not None,
            handshake.client_host,
        )
        if not address_allowed(handshake.client_host, record.allowed_cidrs):
            raise InvalidAuthorizationSpecification(
                "connection refused by the endpoint's IP allow-list",
                detail=f"address {handshake.client_host} is not allowed",
            )
        self._enter(Phase.ROUTED)
        lifecycle = self.ctx.lifecycles.get(record)
        self.endpoint = lifecycle.name  # one string for all of the endpoint's sessions
        return route, lifecycle

    async def _authenticate(
        self, client: PacketStream, lifecycle: Lifecycle, role: str, handshake: Handshake
    ) -> EdgeAuthResult:
        tls = handshake.tls
        return await authenticate_client(
            client,
            role=role,
            # A name that is not UTF-8 is no role: a mock exchange, then 28P01.
            verifier_lookup=functools.partial(lifecycle.verifier, role) if is_text(role) else None,
            mock_secret=self.ctx.mock_secret,
            channel_binding=tls.end_point_hash if tls is not None else None,
            throttle=self.ctx.throttle,
            client_host=handshake.client_host,
            endpoint=lifecycle.name,
            conn_id=self.conn_id,
        )

    def _take_slot(self, lifecycle: Lifecycle) -> None:
        """ROUTED -> AUTHENTICATED: only now is the client a session. It leaves the
        unauthenticated budget, takes a slot and keeps the endpoint awake."""
        ctx, settings = self.ctx, self.ctx.settings
        self._leave_unauthenticated()
        if ctx.active_sessions >= settings.max_client_connections:
            raise TooManyConnections("sorry, too many clients already")
        if lifecycle.sessions >= settings.max_endpoint_connections:
            raise TooManyConnections(
                f'too many connections to endpoint "{lifecycle.name}"',
                detail=f"the limit is {settings.max_endpoint_connections}",
            )
        ctx.active_sessions += 1
        lifecycle.acquire()
        self.busy = True
        self.lifecycle = lifecycle
        metrics.CONNECTIONS_ACTIVE.labels(lifecycle.name).inc()
        metrics.CONNECTIONS_TOTAL.labels(lifecycle.name).inc()
        self._enter(Phase.AUTHENTICATED)

    def _relay(self, client: PacketStream) -> None:
        """ATTACHED -> RELAYING: hand both connections to the relay. Entered first: a
        side that closed already ends the relay (and this connection) at once."""
        compute, self.compute = self.compute, None
        assert compute is not None
        lifecycle = self.lifecycle
        reusable = (
            lifecycle is not None and self.ctx.kept.reuse_enabled and self.backend_key is not None
        )
        self._enter(Phase.RELAYING)
        session = self.session = RelayedSession(self)
        endpoint = lifecycle.name if lifecycle is not None else None
        if endpoint is not None:
            self.ctx.kept.sessions.add(endpoint, session)
        session.relay = start_relay(
            client,
            compute,
            self.ctx.relays,
            session,
            endpoint=endpoint,
            reusable=reusable,
        )
        self.set_busy(False)  # connected: from now on the relay's tracker tells

    # -- the lifecycle's count of busy sessions ---------------------------------------

    def set_busy(self, busy: bool) -> None:
        """Count the session busy in its lifecycle (connecting, re-attaching) or not."""
        lifecycle = self.lifecycle
        if lifecycle is None or busy is self.busy or self.phase is Phase.CLOSED:
            return
        self.busy = busy
        if busy:
            lifecycle.session_busy()
        else:
            lifecycle.session_rested()

    # -- the end -------------------------------------------------------------------------

    def keep_compute(self, stream: PacketStream, status: bytes) -> None:
        """The relay's ``on_reusable``: reset the backend, then keep it (in the background)."""
        lifecycle, backend_key = self.lifecycle, self.backend_key
        assert lifecycle is not None
        if backend_key is None:  # re-attached to a backend that sent no key
            stream.close()
            return
        lifecycle.in_background(
            keep_backend(
                lifecycle,
                stream,
                status,
                self.startup,
                backend_key=backend_key,
                told=self.parameter_status,
                idle_servers=self.ctx.kept.of(lifecycle.name).idle_servers,
            ),
            f"keep:{lifecycle.name}",
        )

    def parked(self) -> None:
        """RELAYING -> PARKED: the session's backend was ended (``RelayedSession.park``);
        its cancel key stands for no backend until the next."""
        self._enter(Phase.PARKED)
        self.backend_key = None
        if self.cancel_key is not None:
            self.ctx.cancels.retarget(self.cancel_key, None)

    def reattached(self, backend_key: tuple[int, int] | None) -> None:
        """PARKED -> RELAYING: the session has a backend again (its cancel key was
        pointed at it, ``parking.reattach``); server reuse would keep this one."""
        self._enter(Phase.RELAYING)
        self.backend_key = backend_key

    def abandon(self, client: PacketStream) -> None:
        """Close both sides of a connection that never reached the relay."""
        self._leave_unauthenticated()
        compute, self.compute = self.compute, None
        if compute is not None:
            compute.close()
        client.close()

    def finish(self, outcome: str, to_compute: int = 0, to_client: int = 0) -> None:
        """-> CLOSED: release the slot and the cancel key, count, log ``event=closed``."""
        parked = self.phase is Phase.PARKED
        self._enter(Phase.CLOSED)
        ctx = self.ctx
        metrics.OPEN_CONNECTIONS.dec()
        self.client_key = self.verifier = None
        session, self.session = self.session, None
        if session is not None:
            session.parked_state = None
        if self.lifecycle is not None:  # it was a session (authenticated, counted)
            ctx.active_sessions -= 1
            if session is not None:
                ctx.kept.sessions.discard(self.lifecycle.name, session)
            if parked:  # its compute may be down, with no tick to update the gauges
                ctx.kept.sessions.states(self.lifecycle.name)
            self.lifecycle.release(busy=self.busy)
            self.busy = False
            metrics.CONNECTIONS_ACTIVE.labels(self.lifecycle.name).dec()
        if self.cancel_key is not None:
            ctx.cancels.unregister(self.cancel_key)
        if self.endpoint is not None and (to_compute or to_client):
            metrics.BYTES_RELAYED.labels(self.endpoint, "to_compute").inc(to_compute)
            metrics.BYTES_RELAYED.labels(self.endpoint, "to_client").inc(to_client)
        logger.info(
            "event=closed conn=%s endpoint=%s outcome=%s bytes_in=%d bytes_out=%d ms=%d",
            self.conn_id,
            self.endpoint or "-",
            outcome,
            to_compute,
            to_client,
            (time.monotonic() - self.started) * 1000,
        )


async def serve_session(client: PacketStream, ctx: SessionContext) -> None:
    """Serve one accepted client connection up to its relay (which then ends it, see
    ``ClientConnection.finish``) or its close; never raises but ``CancelledError``."""
    conn_id = secrets.token_hex(4)
    peername = client.peername
    # Interned: a session keeps its client's address while it lives, and most share one
    # with many others (an application server's pool).
    peer_host = sys.intern(peername[0]) if isinstance(peername, tuple) else "local"
    peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "local"
    connection = ClientConnection(ctx, conn_id, peer_host)
    metrics.OPEN_CONNECTIONS.inc()
    metrics.ACCEPTED.inc()
    logger.info("event=accepted conn=%s peer=%s", conn_id, peer)
    outcome = "ok"
    try:
        try:
            connection.admit()
        except Refusal as refusal:
            # Refused before reading a byte: an ErrorResponse is what libpq expects
            # even in answer to an SSLRequest (as when a server cannot fork).
            metrics.UNAUTHENTICATED_REFUSED.labels(refusal.scope).inc()
            raise too_many_unauthenticated(refusal) from None
        await connection.run(client)
    except ComputeRefused as refused:
        outcome = refused.sqlstate or "compute_refused"
    except ClientError as error:
        outcome = error.sqlstate
        _report(connection, client, error)
    except (ConnectionError, TimeoutError) as exc:
        outcome = type(exc).__name__
    except ssl.SSLError as exc:
        # A broken TLS handshake: nothing can be said to the client in clear text.
        outcome = "tls_error"
        logger.warning("event=tls_error conn=%s peer=%s reason=%s", conn_id, peer, exc.reason)
    except asyncio.CancelledError:
        outcome = "cancelled"
        _report(
            connection, client, AdminShutdown("terminating connection due to administrator command")
        )
        raise
    except Exception:
        outcome = InternalError.sqlstate
        logger.exception("event=session_error conn=%s", conn_id)
        _report(connection, client, InternalError("internal error in pgwake"))
    finally:
        if connection.phase not in (Phase.RELAYING, Phase.CLOSED):
            connection.abandon(client)
            connection.finish(outcome)


def _report(connection: ClientConnection, client: PacketStream, error: ClientError) -> None:
    metrics.CLIENT_ERRORS.labels(error.sqlstate, error.kind.value).inc()
    log = logger.error if error.kind.value == "internal" else logger.warning
    log(
        "event=client_error conn=%s endpoint=%s sqlstate=%s message=%r",
        connection.conn_id,
        connection.endpoint or "-",
        error.sqlstate,
        error.message,
    )
    client.write(encode.error_response(error))
