"""One client connection, from its first byte to its close.

Until the relay starts, only this module reads the client: read, feed the sans-IO reader,
act on each message, write encoded replies (uvicorn's loop). The phases:

1. startup: SSLRequest (-> TLS, SNI captured), GSSENCRequest (-> 'N'), CancelRequest
   (-> forwarded, close) or StartupMessage, within ``startup_timeout``;
2. routing and catalog lookup;
3. wake the compute (the client waits, up to ``wake_timeout``);
4. connect to the compute and send the StartupMessage (role and options rewritten);
5. authentication is relayed message by message until ``ReadyForQuery``; the compute's
   ``BackendKeyData`` is swapped for pgwake's own keys;
6. relay bytes both ways until either side closes.

Any ``ClientError`` becomes one FATAL ``ErrorResponse`` and a close; anything else is
logged with its traceback and answered with XX000. The client never sees a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy import metrics
from proxy.cancel import BackendTarget
from proxy.protocol import encode
from proxy.protocol.errors import (
    AdminShutdown,
    CannotConnectNow,
    ClientError,
    InternalError,
    InvalidCatalogName,
    ProtocolViolation,
)
from proxy.protocol.framing import (
    MessageReader,
    parse_authentication,
    parse_backend_key_data,
    parse_error_fields,
)
from proxy.protocol.messages import (
    NEED_DATA,
    CancelRequest,
    DirectTLSHello,
    Frame,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)
from proxy.protocol.startup import StartupReader
from proxy.relay import relay
from proxy.routing import resolve
from proxy.stream import PacketStream
from proxy.tls import server_name_of

if TYPE_CHECKING:
    from proxy.cancel import CancelMap
    from proxy.catalog import Catalog
    from proxy.compute import ComputeAddress
    from proxy.lifecycle import Lifecycle, LifecycleManager
    from proxy.settings import Settings

__all__ = ["SessionContext", "serve_session"]

logger = logging.getLogger(__name__)

# Authentication request codes that expect a client response ('p' message).
# 3 cleartext, 5 MD5, 7 GSS, 8 GSS continue, 9 SSPI, 10 SASL, 11 SASL continue.
_AUTH_CODES_EXPECTING_REPLY: Final = frozenset({3, 5, 7, 8, 9, 10, 11})
_COMPUTE_CONNECT_TIMEOUT: Final = 10.0
# Postgres's own authentication_timeout default; the compute enforces it too, this bound
# only matters when the compute stops answering altogether.
_AUTHENTICATION_TIMEOUT: Final = 60.0
# Startup parameters the proxy consumes or rewrites itself.
_NEWEST_MINOR: Final = 0


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session shares; built once by ``server.py``."""

    settings: Settings
    catalog: Catalog
    lifecycles: LifecycleManager
    cancels: CancelMap
    tls: ssl.SSLContext | None


@dataclass(slots=True)
class _Startup:
    message: StartupMessage | CancelRequest
    server_name: str | None
    tls: bool


async def _read_startup(stream: PacketStream, ctx: SessionContext) -> _Startup:
    """Read until a StartupMessage or CancelRequest; handle TLS and GSS requests."""
    reader = StartupReader()
    tls_done = False
    gss_refused = False
    server_name: str | None = None
    while True:
        message = reader.next_message()
        if message is NEED_DATA:
            data = await stream.read()
            if not data:
                raise ConnectionResetError("client closed during startup")
            reader.feed(data)
            continue
        if isinstance(message, SSLRequest):
            if tls_done:
                raise ProtocolViolation("SSLRequest received on an encrypted connection")
            if reader.trailing_data:
                # Bytes after SSLRequest would be read as if encrypted (CVE-2021-23214).
                raise ProtocolViolation("received unencrypted data after SSL request")
            if ctx.tls is None:
                stream.write(encode.ENCRYPTION_REFUSED)
                continue
            stream.write(encode.ENCRYPTION_ACCEPTED)
            await stream.start_tls(ctx.tls)
            tls_done = True
            assert stream.transport is not None
            server_name = server_name_of(stream.transport.get_extra_info("ssl_object"))
        elif isinstance(message, GSSENCRequest):
            if tls_done or gss_refused:
                raise ProtocolViolation("unexpected GSSENCRequest")
            gss_refused = True
            stream.write(encode.ENCRYPTION_REFUSED)
        elif isinstance(message, DirectTLSHello):
            raise ProtocolViolation(
                "direct TLS negotiation is not supported yet",
                hint="Connect with sslnegotiation=postgres (the default).",
            )
        else:
            if reader.trailing_data and isinstance(message, CancelRequest):
                raise ProtocolViolation("unexpected data after cancel request")
            return _Startup(message, server_name, tls_done)


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


async def _open_compute(address: ComputeAddress) -> PacketStream:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(_COMPUTE_CONNECT_TIMEOUT):
        if address.unix_socket:
            _, stream = await loop.create_unix_connection(PacketStream, address.unix_socket)
        else:
            _, stream = await loop.create_connection(
                PacketStream, address.host or "127.0.0.1", address.port or 5432
            )
    return stream


async def _next_frame(stream: PacketStream, reader: MessageReader) -> Frame | None:
    while True:
        frame = reader.next_message()
        if frame is not NEED_DATA:
            return frame
        data = await stream.read()
        if not data:
            return None
        reader.feed(data)


class _Session:
    def __init__(self, client: PacketStream, ctx: SessionContext, conn_id: str, peer: str) -> None:
        self.client = client
        self.ctx = ctx
        self.conn_id = conn_id
        self.peer = peer
        self.endpoint: str | None = None
        self.compute: PacketStream | None = None
        self.cancel_key: tuple[int, int] | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    async def run(self) -> None:
        settings = self.ctx.settings
        try:
            async with asyncio.timeout(settings.startup_timeout):
                startup = await _read_startup(self.client, self.ctx)
        except TimeoutError:
            raise ProtocolViolation(
                "startup not completed in time",
                detail=f"the limit is {settings.startup_timeout:g} s",
            ) from None
        message = startup.message
        if isinstance(message, CancelRequest):
            await self.ctx.cancels.forward(message.process_id, message.secret_key)
            return
        if message.protocol_minor > _NEWEST_MINOR or any(
            key.startswith("_pq_.") for key in message.parameters
        ):
            self.client.write(
                encode.negotiate_protocol_version(
                    _NEWEST_MINOR, [k for k in message.parameters if k.startswith("_pq_.")]
                )
            )

        catalog = self.ctx.catalog
        route = resolve(
            user=message.user,
            options=message.parameters.get("options"),
            server_name=startup.server_name,
            base_domain=settings.base_domain,
            exists=catalog.exists,
        )
        record = catalog.get(route.endpoint)
        if record is None:
            raise InvalidCatalogName(f'endpoint "{route.endpoint}" does not exist')
        self.endpoint = record.name
        logger.info(
            "event=routed conn=%s endpoint=%s via=%s tls=%s",
            self.conn_id,
            record.name,
            route.source,
            startup.tls,
        )
        lifecycle = self.ctx.lifecycles.get(record)
        lifecycle.acquire()
        metrics.CONNECTIONS_ACTIVE.labels(record.name).inc()
        metrics.CONNECTIONS_TOTAL.labels(record.name).inc()
        try:
            await self._connect_and_relay(lifecycle, message, route.role, route.options)
        finally:
            lifecycle.release()
            metrics.CONNECTIONS_ACTIVE.labels(record.name).dec()

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

    async def _connect_and_relay(
        self, lifecycle: Lifecycle, startup: StartupMessage, role: str, options: str | None
    ) -> None:
        address = await self._wake(lifecycle)
        try:
            self.compute = await _open_compute(address)
        except (OSError, TimeoutError):
            # The compute died after we saw it running: recheck it and wake once more.
            lifecycle.compute_unreachable()
            address = await self._wake(lifecycle)
            try:
                self.compute = await _open_compute(address)
            except (OSError, TimeoutError) as exc:
                raise CannotConnectNow(
                    f'endpoint "{lifecycle.name}" is not reachable',
                    detail=f"connecting to the compute failed: {type(exc).__name__}",
                ) from None
        compute = self.compute
        compute.write(encode.startup_message(_compute_parameters(startup, role, options)))
        try:
            async with asyncio.timeout(_AUTHENTICATION_TIMEOUT):
                authenticated = await self._relay_authentication(compute, address, lifecycle.name)
        except TimeoutError:
            raise CannotConnectNow(
                f'endpoint "{lifecycle.name}" did not complete authentication',
                detail=f"no ReadyForQuery within {_AUTHENTICATION_TIMEOUT:g} s",
            ) from None
        if not authenticated:
            return
        result = await relay(self.client, compute)
        self.bytes_in, self.bytes_out = result.to_compute, result.to_client

    async def _relay_authentication(
        self, compute: PacketStream, address: ComputeAddress, endpoint: str
    ) -> bool:
        """Pass the auth exchange through until ReadyForQuery; True when the session is up."""
        from_compute = MessageReader()
        from_client = MessageReader()
        while True:
            try:
                frame = await _next_frame(compute, from_compute)
            except ProtocolViolation:
                raise InternalError("the compute sent an invalid message") from None
            if frame is None:
                raise CannotConnectNow(
                    f'endpoint "{endpoint}" closed the connection',
                    detail="the compute closed during authentication",
                )
            if frame.type == b"K":
                keys = parse_backend_key_data(frame)
                self.cancel_key = self.ctx.cancels.register(
                    BackendTarget(endpoint, address, keys.process_id, keys.secret_key)
                )
                self.client.write(encode.backend_key_data(*self.cancel_key))
                continue
            self.client.write(encode.message(frame.type, frame.body))
            if frame.type == b"E":
                fields = parse_error_fields(frame)
                logger.info(
                    "event=compute_refused conn=%s endpoint=%s sqlstate=%s",
                    self.conn_id,
                    endpoint,
                    fields.get("C"),
                )
                return False
            if frame.type == b"Z":
                # Hand unparsed bytes on to the relay, in order.
                self._requeue(compute, from_compute.take_remaining())
                self._requeue(self.client, from_client.take_remaining())
                return True
            if (
                frame.type == b"R"
                and parse_authentication(frame).code in _AUTH_CODES_EXPECTING_REPLY
            ):
                reply = await _next_frame(self.client, from_client)
                if reply is None:
                    return False
                compute.write(encode.message(reply.type, reply.body))

    @staticmethod
    def _requeue(stream: PacketStream, data: bytes) -> None:
        if data:
            stream.unread(data)

    def close(self) -> None:
        if self.cancel_key is not None:
            self.ctx.cancels.unregister(self.cancel_key)
        if self.compute is not None:
            self.compute.close()
        self.client.close()


async def serve_session(client: PacketStream, ctx: SessionContext) -> None:
    """Serve one accepted client connection until it closes; never raises."""
    conn_id = secrets.token_hex(4)
    transport = client.transport
    peername = transport.get_extra_info("peername") if transport else None
    peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "unix"
    started = time.monotonic()
    session = _Session(client, ctx, conn_id, peer)
    metrics.ACCEPTED.inc()
    logger.info("event=accepted conn=%s peer=%s", conn_id, peer)
    outcome = "ok"
    try:
        await session.run()
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
        _report(session, _shutdown_error())
        raise
    except Exception:
        outcome = InternalError.sqlstate
        logger.exception("event=session_error conn=%s", conn_id)
        _report(session, InternalError("internal error in pgwake"))
    finally:
        session.close()
        if session.endpoint is not None and (session.bytes_in or session.bytes_out):
            metrics.BYTES_RELAYED.labels(session.endpoint, "to_compute").inc(session.bytes_in)
            metrics.BYTES_RELAYED.labels(session.endpoint, "to_client").inc(session.bytes_out)
        logger.info(
            "event=closed conn=%s endpoint=%s outcome=%s bytes_in=%d bytes_out=%d ms=%d",
            conn_id,
            session.endpoint or "-",
            outcome,
            session.bytes_in,
            session.bytes_out,
            (time.monotonic() - started) * 1000,
        )


def _shutdown_error() -> ClientError:
    return AdminShutdown("terminating connection due to administrator command")


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
