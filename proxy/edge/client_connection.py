"""One client connection, from its first byte to its relay (ARCHITECTURE.md).

The phases, each in its own module of this package:

1. ``handshake``: PROXY header (trusted proxies), TLS (SSLRequest or direct), startup.
   Until its proof is verified a connection counts only in the unauthenticated budget
   (``admission``): no session slot, no effect on idleness, no compute connection;
2. ``routing`` and the catalog; the endpoint's IP allow-list;
3. ``client_auth``: SCRAM with the client against the stored verifier, the failed-login
   ``throttle`` checked in the same step. Nothing is woken before the proof;
4. the session's slot, then ``endpoint.lifecycle``: wake the compute (the client waits,
   up to ``wake_timeout``);
5. a backend: a kept one (``server_reuse``), else ``compute_login`` over a connection
   from ``warm_sockets`` or a new one, with the recovered ClientKey; the session's opening
   is forwarded with pgwake's own cancel keys;
6. ``relay``: copy bytes both ways until either side closes.

Any ``ClientError`` becomes one FATAL ``ErrorResponse`` and a close; anything else is
logged with its traceback and answered with XX000. The client never sees a traceback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.edge.admission import Refusal, UnauthenticatedBudget
from pgwake.edge.cancel_keys import BackendTarget
from pgwake.edge.client_auth import authenticate_client, is_text, password_failed, throttled
from pgwake.edge.compute_login import (
    ComputeRefused,
    SessionOpening,
    StaleVerifier,
    begin_login,
    open_compute,
    open_session,
)
from pgwake.edge.handshake import read_handshake, require_tls_error
from pgwake.edge.relay import Relays, start_relay
from pgwake.edge.routing import resolve
from pgwake.edge.server_reuse import IdleServer, reset_for_reuse
from pgwake.protocol import encode
from pgwake.protocol.errors import (
    AdminShutdown,
    CannotConnectNow,
    ClientError,
    InternalError,
    InvalidAuthorizationSpecification,
    InvalidCatalogName,
    ProtocolViolation,
    TooManyConnections,
)
from pgwake.protocol.framing import MAX_AUTHENTICATION_MESSAGE_LENGTH, MessageReader
from pgwake.protocol.messages import AuthenticationRequest, CancelRequest, StartupMessage

if TYPE_CHECKING:
    from pgwake.catalog import Catalog, EndpointRecord
    from pgwake.compute import ComputeAddress
    from pgwake.edge.cancel_keys import CancelMap
    from pgwake.edge.client_auth import EdgeAuthResult
    from pgwake.edge.handshake import Handshake
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.edge.throttle import AuthThrottle
    from pgwake.edge.tls import TlsMaterial
    from pgwake.endpoint.lifecycle import Lifecycle, LifecycleManager
    from pgwake.settings import Settings

__all__ = ["SessionContext", "serve_session"]

logger = logging.getLogger(__name__)

_AUTHENTICATION_OK: Final = encode.authentication(AuthenticationRequest.OK)
_READY_IDLE: Final = encode.message(b"Z", b"I")

# Postgres's own authentication_timeout default: the compute must finish pgwake's login
# within it (the compute enforces the same on its side).
_AUTHENTICATION_TIMEOUT: Final = 60.0
#: The newest protocol 3.x minor pgwake speaks (NegotiateProtocolVersion otherwise).
_NEWEST_MINOR: Final = 0


@dataclass(slots=True)
class SessionContext:
    """What every session shares; built once by ``server.py``."""

    settings: Settings
    catalog: Catalog
    lifecycles: LifecycleManager
    cancels: CancelMap
    throttle: AuthThrottle
    #: Server-wide secret for SCRAM mock salts (stable, so probes see stable salts).
    mock_secret: bytes
    #: The current certificate; replaced on SIGHUP (sessions keep the one they began with).
    tls: TlsMaterial | None
    #: Relayed sessions (their coroutines have ended; the server's drain waits on these).
    relays: Relays = field(default_factory=Relays)
    #: Authenticated sessions open now (``max_client_connections``).
    active_sessions: int = field(default=0)
    #: Connections that have not proved a password yet (``admission.py``).
    unauthenticated: UnauthenticatedBudget = field(init=False)

    def __post_init__(self) -> None:
        self.unauthenticated = UnauthenticatedBudget(
            per_address=self.settings.max_unauthenticated_per_address,
            total=self.settings.max_unauthenticated_connections,
        )


def too_many_unauthenticated(refusal: Refusal) -> TooManyConnections:
    """The 53300 for a connection over the unauthenticated budget."""
    if refusal.scope == "address":
        return TooManyConnections(
            "too many connections from your address are still logging in",
            detail=f"at most {refusal.limit} connections per client address may be in "
            "TLS, startup or authentication at once",
            hint="Finish or close the connections that are still logging in.",
        )
    return TooManyConnections(
        "too many connections are still logging in",
        detail=f"at most {refusal.limit} connections may be in TLS, startup or "
        "authentication at once",
        hint="Try again shortly.",
    )


def _compute_parameters(startup: StartupMessage, role: str, options: str | None) -> dict[str, str]:
    parameters = {
        key: value
        for key, value in startup.parameters.items()
        # _pq_.* are protocol extensions we declined in NegotiateProtocolVersion.
        if key not in ("user", "options") and not key.startswith("_pq_.")
    }
    parameters = {"user": role, **parameters}
    if options:
        parameters["options"] = options
    return parameters


def _allowed(client_host: str, record: EndpointRecord) -> bool:
    if not record.allowed_cidrs:
        return True
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in record.allowed_cidrs)


class _Session:
    def __init__(
        self, client: PacketStream, ctx: SessionContext, conn_id: str, peer_host: str
    ) -> None:
        self.client = client
        self.ctx = ctx
        self.conn_id = conn_id
        self.peer_host = peer_host
        self.client_host = peer_host
        #: The address this connection counts under in the unauthenticated budget
        #: (``None`` once it has proved its password, or if it never entered).
        self.unauthenticated_as: str | None = None
        self.endpoint: str | None = None
        self.compute: PacketStream | None = None
        self.cancel_key: tuple[int, int] | None = None
        #: The compute's startup message and login: what keeping its backend needs.
        self.startup = b""
        self.opening: SessionOpening | None = None
        #: Set once the relay runs: from then on the relay ends the session, not us.
        self.relaying = False
        #: Set once the client is a session of the endpoint (authenticated, counted).
        self.lifecycle: Lifecycle | None = None
        #: The startup *and* the client's SCRAM exchange must be done by then.
        self.deadline = asyncio.get_running_loop().time() + ctx.settings.startup_timeout

    def admit(self) -> None:
        """Count the new connection in the unauthenticated budget (``Refusal`` if full)."""
        self.ctx.unauthenticated.enter(self.peer_host)
        self.unauthenticated_as = self.peer_host
        metrics.UNAUTHENTICATED.inc()

    def leave_unauthenticated(self) -> None:
        """Leave the unauthenticated budget: the client proved its password, or left."""
        address, self.unauthenticated_as = self.unauthenticated_as, None
        if address is not None:
            self.ctx.unauthenticated.leave(address)
            metrics.UNAUTHENTICATED.dec()

    async def run(self) -> None:
        ctx = self.ctx
        settings = ctx.settings
        try:
            async with asyncio.timeout_at(self.deadline):
                handshake = await read_handshake(
                    self.client,
                    peer_host=self.peer_host,
                    tls=ctx.tls,
                    trusted_proxies=settings.trusted_networks,
                    conn_id=self.conn_id,
                )
        except TimeoutError:
            raise ProtocolViolation(
                "startup not completed in time",
                detail=f"the limit is {settings.startup_timeout:g} s",
            ) from None
        self.client_host = handshake.client_host
        if self.unauthenticated_as is not None and self.client_host != self.unauthenticated_as:
            # A PROXY header named the real client: it counts under its own address.
            try:
                ctx.unauthenticated.move(self.unauthenticated_as, self.client_host)
            except Refusal as refusal:
                metrics.UNAUTHENTICATED_REFUSED.labels(refusal.scope).inc()
                raise too_many_unauthenticated(refusal) from None
            self.unauthenticated_as = self.client_host
        message = handshake.message
        if isinstance(message, CancelRequest):
            # Plaintext cancels are allowed, as in Postgres: the key is the secret.
            await ctx.cancels.forward(message.process_id, message.secret_key)
            return
        if handshake.tls is None and settings.tls_required:
            raise require_tls_error()
        if message.protocol_minor > _NEWEST_MINOR or any(
            key.startswith("_pq_.") for key in message.parameters
        ):
            self.client.write(
                encode.negotiate_protocol_version(
                    _NEWEST_MINOR, [k for k in message.parameters if k.startswith("_pq_.")]
                )
            )

        catalog = ctx.catalog
        route = resolve(
            user=message.user,
            options=message.parameters.get("options"),
            server_name=handshake.server_name,
            base_domain=settings.base_domain,
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
            self.client_host,
        )
        if not _allowed(self.client_host, record):
            raise InvalidAuthorizationSpecification(
                "connection refused by the endpoint's IP allow-list",
                detail=f"address {self.client_host} is not allowed",
            )
        lifecycle = ctx.lifecycles.get(record)
        auth = await self._authenticate(lifecycle, route.role, handshake)
        self.leave_unauthenticated()
        # Only now is the client a session: it takes a slot and keeps the endpoint awake.
        if ctx.active_sessions >= settings.max_client_connections:
            raise TooManyConnections("sorry, too many clients already")
        if lifecycle.sessions >= settings.max_endpoint_connections:
            raise TooManyConnections(
                f'too many connections to endpoint "{record.name}"',
                detail=f"the limit is {settings.max_endpoint_connections}",
            )
        ctx.active_sessions += 1
        lifecycle.acquire()
        self.lifecycle = lifecycle
        metrics.CONNECTIONS_ACTIVE.labels(record.name).inc()
        metrics.CONNECTIONS_TOTAL.labels(record.name).inc()
        startup = encode.startup_message(_compute_parameters(message, route.role, route.options))
        self.startup = startup
        await self._open_compute_session(lifecycle, auth, startup, route.role)

    async def _authenticate(
        self, lifecycle: Lifecycle, role: str, handshake: Handshake
    ) -> EdgeAuthResult:
        throttle = self.ctx.throttle
        endpoint = lifecycle.name
        # A cheap early refusal; the check that bounds parallel guesses runs at the proof.
        wait = throttle.wait_seconds(self.client_host, endpoint, time.monotonic())
        if wait > 0:
            raise throttled(wait)
        reader = MessageReader(MAX_AUTHENTICATION_MESSAGE_LENGTH)
        reader.feed(handshake.trailing)
        tls = handshake.tls
        try:
            async with asyncio.timeout_at(self.deadline):
                auth = await authenticate_client(
                    self.client,
                    reader,
                    role=role,
                    # A name that is not UTF-8 is no role: a mock exchange, then 28P01.
                    verifier_lookup=lifecycle.verifier(role) if is_text(role) else None,
                    mock_secret=self.ctx.mock_secret,
                    channel_binding=tls.end_point_hash if tls is not None else None,
                    throttle=throttle,
                    client_host=self.client_host,
                    endpoint=endpoint,
                )
        except TimeoutError:
            raise ProtocolViolation(
                "authentication not completed in time",
                detail=f"startup and authentication must finish within "
                f"{self.ctx.settings.startup_timeout:g} s",
            ) from None
        except ClientError as error:
            if error.sqlstate in (
                password_failed(role).sqlstate,
                InvalidAuthorizationSpecification.sqlstate,
            ):
                logger.warning(
                    "event=auth_failed conn=%s endpoint=%s client=%s retry_in_s=%g",
                    self.conn_id,
                    endpoint,
                    self.client_host,
                    throttle.wait_seconds(self.client_host, endpoint, time.monotonic()),
                )
            raise
        # auth.sasl_final goes out with the compute's opening (``open_session``).
        leftover = reader.take_remaining()
        if leftover:
            self.client.unread(leftover)
        return auth

    async def _wake(self, lifecycle: Lifecycle) -> ComputeAddress:
        timeout = self.ctx.settings.wake_timeout
        was_running = lifecycle.address is not None
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                address = await lifecycle.wake()
        except TimeoutError:
            raise CannotConnectNow(
                f'endpoint "{lifecycle.name}" did not start in time',
                detail=f"the compute was not ready within {timeout:g} s",
                hint="Try again shortly.",
            ) from None
        if not was_running:
            logger.info(
                "event=woke conn=%s endpoint=%s ms=%d",
                self.conn_id,
                lifecycle.name,
                (time.monotonic() - started) * 1000,
            )
        return address

    async def _open_compute_session(
        self, lifecycle: Lifecycle, auth: EdgeAuthResult, startup: bytes, role: str
    ) -> None:
        address = lifecycle.address
        if address is not None and (kept := lifecycle.idle_servers.take(startup)) is not None:
            self._reuse(lifecycle, address, auth, kept)
            return
        address = await self._wake(lifecycle)
        try:
            self.compute = await self._connect(lifecycle, address)
        except (OSError, TimeoutError):
            # The compute died after we saw it running: recheck it and wake once more.
            await lifecycle.compute_unreachable()
            address = await self._wake(lifecycle)
            try:
                self.compute = await self._connect(lifecycle, address)
            except (OSError, TimeoutError) as exc:
                raise CannotConnectNow(
                    f'endpoint "{lifecycle.name}" is not reachable',
                    detail=f"connecting to the compute failed: {type(exc).__name__}",
                ) from None
        await self._login(lifecycle, auth=auth, address=address, role=role, startup=startup)

    @staticmethod
    async def _connect(lifecycle: Lifecycle, address: ComputeAddress) -> PacketStream:
        """A connection whose backend is forked already (``warm_sockets.py``), else a new
        one."""
        warm = lifecycle.warm_sockets.take(address)
        return warm if warm is not None else await open_compute(address)

    def _reuse(
        self, lifecycle: Lifecycle, address: ComputeAddress, auth: EdgeAuthResult, kept: IdleServer
    ) -> None:
        """Hand the client a kept backend (``server_reuse.py``): the opening its login
        would have had, with pgwake's own cancel keys, in one write."""
        self.compute = kept.stream
        self.cancel_key = self.ctx.cancels.register(
            BackendTarget(lifecycle.name, address, kept.process_id, kept.secret_key)
        )
        self.opening = SessionOpening(
            self.cancel_key, (kept.process_id, kept.secret_key), kept.parameter_status
        )
        self.client.write(
            auth.sasl_final
            + _AUTHENTICATION_OK
            + kept.parameter_status
            + encode.backend_key_data(*self.cancel_key)
            + _READY_IDLE
        )
        logger.info(
            "event=reused conn=%s endpoint=%s backend_pid=%d",
            self.conn_id,
            lifecycle.name,
            kept.process_id,
        )

    async def _login(
        self,
        lifecycle: Lifecycle,
        *,
        auth: EdgeAuthResult,
        address: ComputeAddress,
        role: str,
        startup: bytes,
    ) -> None:
        assert self.compute is not None
        try:
            async with asyncio.timeout(_AUTHENTICATION_TIMEOUT):
                login = await begin_login(self.compute, startup)
                self.opening = await open_session(
                    login,
                    self.client,
                    preface=auth.sasl_final,
                    client_key=auth.client_key,
                    verifier=auth.verifier,
                    endpoint=lifecycle.name,
                    address=address,
                    cancels=self.ctx.cancels,
                )
                self.cancel_key = self.opening.cancel_key
        except TimeoutError:
            raise CannotConnectNow(
                f'endpoint "{lifecycle.name}" did not complete the login',
                detail=f"no ReadyForQuery within {_AUTHENTICATION_TIMEOUT:g} s",
            ) from None
        except StaleVerifier:
            # The password changed since the catalog's copy: refresh it, refuse this one.
            await lifecycle.sync_verifiers()
            raise password_failed(role) from None

    def close(self) -> None:
        """Close both sides (the cancel key goes with ``_SessionEnd.finish``)."""
        self.leave_unauthenticated()
        if self.compute is not None:
            self.compute.close()
        self.client.close()


class _SessionEnd:
    """What is left of a session once it relays: everything its end must undo and log.

    It holds no reference to the ``_Session``, so the handshake, SCRAM state and the
    coroutine's frames are freed while the relay runs."""

    __slots__ = (
        "cancel_key",
        "conn_id",
        "ctx",
        "endpoint",
        "lifecycle",
        "opening",
        "started",
        "startup",
    )

    def __init__(self, ctx: SessionContext, conn_id: str, started: float) -> None:
        self.ctx = ctx
        self.conn_id = conn_id
        self.started = started
        self.endpoint: str | None = None
        self.lifecycle: Lifecycle | None = None
        self.cancel_key: tuple[int, int] | None = None
        self.startup = b""
        self.opening: SessionOpening | None = None

    def take_over(self, session: _Session) -> None:
        self.endpoint = session.endpoint
        self.lifecycle = session.lifecycle
        self.cancel_key = session.cancel_key
        self.startup = session.startup
        self.opening = session.opening

    def may_keep_compute(self) -> bool:
        """Whether this session's backend may be kept when it ends at rest."""
        lifecycle, opening = self.lifecycle, self.opening
        return (
            lifecycle is not None
            and lifecycle.idle_servers.enabled
            and opening is not None
            and opening.backend_key is not None
        )

    def keep_compute(self, stream: PacketStream, status: bytes) -> None:
        """The relay's ``on_reusable``: reset the backend, then keep it (in the background)."""
        lifecycle, opening = self.lifecycle, self.opening
        assert lifecycle is not None
        assert opening is not None
        lifecycle.in_background(
            _keep(lifecycle, stream, status, self.startup, opening), f"keep:{lifecycle.name}"
        )

    def relayed(self, to_compute: int, to_client: int) -> None:
        self.finish("ok", to_compute, to_client)

    def finish(self, outcome: str, to_compute: int = 0, to_client: int = 0) -> None:
        ctx = self.ctx
        metrics.OPEN_CONNECTIONS.dec()
        if self.lifecycle is not None:  # it was a session (authenticated, counted)
            ctx.active_sessions -= 1
            self.lifecycle.release()
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
    """Serve one accepted client connection up to its relay (which then ends the session
    by itself, see ``_SessionEnd``) or its close; never raises but ``CancelledError``."""
    conn_id = secrets.token_hex(4)
    peername = client.peername
    peer_host = peername[0] if isinstance(peername, tuple) else "local"
    peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "local"
    end = _SessionEnd(ctx, conn_id, time.monotonic())
    session = _Session(client, ctx, conn_id, peer_host)
    metrics.OPEN_CONNECTIONS.inc()
    metrics.ACCEPTED.inc()
    logger.info("event=accepted conn=%s peer=%s", conn_id, peer)
    outcome = "ok"
    try:
        try:
            session.admit()
        except Refusal as refusal:
            # Refused before reading a byte: an ErrorResponse is what libpq expects
            # even in answer to an SSLRequest (as when a server cannot fork).
            metrics.UNAUTHENTICATED_REFUSED.labels(refusal.scope).inc()
            raise too_many_unauthenticated(refusal) from None
        await session.run()
        if session.compute is not None:
            end.take_over(session)
            reusable = end.keep_compute if end.may_keep_compute() else None
            start_relay(
                client, session.compute, ctx.relays, end.relayed, reusable, endpoint=end.endpoint
            )
            session.relaying = True
    except ComputeRefused as refused:
        outcome = refused.sqlstate or "compute_refused"
    except ClientError as error:
        outcome = error.sqlstate
        _report(session, error)
    except (ConnectionError, TimeoutError) as exc:
        outcome = type(exc).__name__
    except ssl.SSLError as exc:
        # A broken TLS handshake: nothing can be said to the client in clear text.
        outcome = "tls_error"
        logger.warning("event=tls_error conn=%s peer=%s reason=%s", conn_id, peer, exc.reason)
    except asyncio.CancelledError:
        outcome = "cancelled"
        _report(session, AdminShutdown("terminating connection due to administrator command"))
        raise
    except Exception:
        outcome = InternalError.sqlstate
        logger.exception("event=session_error conn=%s", conn_id)
        _report(session, InternalError("internal error in pgwake"))
    finally:
        if not session.relaying:
            session.close()
            end.take_over(session)
            end.finish(outcome)


async def _keep(
    lifecycle: Lifecycle,
    stream: PacketStream,
    status: bytes,
    startup: bytes,
    opening: SessionOpening,
) -> None:
    assert opening.backend_key is not None
    parameter_status = await reset_for_reuse(stream, opening.parameter_status, status)
    if parameter_status is None:
        metrics.SERVER_REUSE.labels(lifecycle.name, "reset_failed").inc()
        stream.close()
        return
    if lifecycle.address is None:  # the compute is going away
        stream.close()
        return
    process_id, secret_key = opening.backend_key
    kept = IdleServer(stream, process_id, secret_key, parameter_status, time.monotonic())
    if not lifecycle.idle_servers.put(startup, kept):
        metrics.SERVER_REUSE.labels(lifecycle.name, "full").inc()
        stream.close()


def _report(session: _Session, error: ClientError) -> None:
    metrics.CLIENT_ERRORS.labels(error.sqlstate, error.kind.value).inc()
    log = logger.error if error.kind.value == "internal" else logger.warning
    log(
        "event=client_error conn=%s endpoint=%s sqlstate=%s message=%r",
        session.conn_id,
        session.endpoint or "-",
        error.sqlstate,
        error.message,
    )
    session.client.write(encode.error_response(error))
