"""Listeners, signals and the graceful drain (uvicorn's ``server.py`` order).

Start: create or tighten the state dir (``StateDir.ensure``), lock it, open the catalog,
prepare the backend, adopt computes still running from an earlier pgwake, serve metrics,
listen (the proxy, then the HTTP API on the same event loop), start the reaper. Stop
(SIGTERM/SIGINT): stop accepting, let sessions and API requests finish for
``drain_timeout``, stop the API, the metrics and the reaper, then suspend every compute
cleanly (its fast shutdown ends the remaining sessions with 57P01). A second signal skips
the drain. Nothing waits on a timer when nothing is left to wait for: an idle server stops
in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import ssl
import time
from typing import TYPE_CHECKING

import prometheus_client
from fastapi import FastAPI

from pgwake.api import ApiServer, bind, create_app
from pgwake.catalog import Catalog
from pgwake.compute import Backends
from pgwake.edge.cancel_keys import CancelMap
from pgwake.edge.client_connection import SessionContext, serve_session
from pgwake.edge.kept_connections import KeptConnections
from pgwake.edge.packet_stream import PacketStream
from pgwake.edge.throttle import AuthThrottle
from pgwake.edge.tls import ensure_self_signed, load_tls
from pgwake.endpoint.control_plane import ControlPlane
from pgwake.endpoint.lifecycles import LifecycleManager
from pgwake.state_dir import ADMIN_TOKEN, MOCK_SECRET, StateDir, UnsafeStateDir

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pgwake.compute import ComputeBackend
    from pgwake.edge.tls import TlsMaterial
    from pgwake.settings import Settings

__all__ = ["Server", "StartupFailure"]

logger = logging.getLogger(__name__)
_LISTEN_BACKLOG = 2048
# How long shutdown waits for a reaper sweep in flight before cancelling it.
_REAPER_STOP_SECONDS = 10.0


def _new_admin_token() -> bytes:
    return ("pgwa_" + secrets.token_urlsafe(32) + "\n").encode()


def _admin_token(settings: Settings, state: StateDir) -> str:
    """``admin_token``, else the one in ``<state_dir>/admin-token``, made (0600) on first use.

    The token's path is logged, never its value."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    created: list[Path] = []
    made = state.secret(ADMIN_TOKEN, _new_admin_token, on_create=created.append)
    token = made.decode().strip()
    if not token:
        raise StartupFailure(
            f"{state.admin_token} is empty; delete it to generate a new admin token"
        )
    if created:
        logger.info("event=admin_token_generated path=%s", state.admin_token)
    else:
        logger.info("event=admin_token_loaded path=%s", state.admin_token)
    return token


def _metrics_app() -> FastAPI:
    """Prometheus metrics at every path, as ``prometheus_client``'s own server answers."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.mount("/", prometheus_client.make_asgi_app())
    return app


class StartupFailure(Exception):
    """pgwake cannot start; the message says why in one line."""


class _ClientProtocol(PacketStream):
    """A client connection: on accept, a session task takes it over."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peername = transport.get_extra_info("peername")
        self._server.start_session(self)


class Server:
    """One pgwake process: the proxy listener, metrics, lifecycles."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sessions: set[asyncio.Task[None]] = set()
        self._shutdown = asyncio.Event()
        self._force = False
        self._listening = False
        self._ctx: SessionContext | None = None
        self._api: ApiServer | None = None
        self._metrics: ApiServer | None = None
        self._upkeep: list[asyncio.Task[None]] = []

    def start_session(self, stream: PacketStream) -> None:
        if self._ctx is None or self._shutdown.is_set():
            stream.abort()
            return
        task = asyncio.create_task(serve_session(stream, self._ctx))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    def request_shutdown(self, signum: int | None = None) -> None:
        if self._shutdown.is_set():
            self._force = True
            logger.warning("event=shutdown_forced signal=%s", signum)
            for task in list(self._sessions):
                task.cancel()
            if self._ctx is not None:
                self._ctx.relays.abort_all()
            for http in (self._api, self._metrics):
                if http is not None:
                    http.request_stop(force=True)
            return
        relayed = len(self._ctx.relays) if self._ctx is not None else 0
        logger.info(
            "event=shutdown_requested signal=%s sessions=%d",
            signum,
            len(self._sessions) + relayed,
        )
        # The API keeps answering while sessions drain: /readyz says 503 from now on.
        self._shutdown.set()

    def ready(self) -> bool:
        """Whether pgwake accepts connections (``/readyz``): listening, not shutting down."""
        return self._listening and not self._shutdown.is_set()

    def _load_tls(self, state: StateDir) -> TlsMaterial:
        settings = self.settings
        if settings.tls_cert is not None and settings.tls_key is not None:
            cert, key = settings.tls_cert, settings.tls_key
        elif settings.tls_cert is not None or settings.tls_key is not None:
            raise ValueError("set both tls_cert and tls_key, or neither")
        else:
            cert, key = ensure_self_signed(state)
        return load_tls(cert, key)

    def reload_tls(self, state: StateDir) -> None:
        """SIGHUP: load the certificate again; open sessions keep the one they began with."""
        if self._ctx is None:
            return
        try:
            self._ctx.tls = self._load_tls(state)
        except (OSError, ValueError, ssl.SSLError) as exc:
            logger.error("event=tls_reload_failed error=%s action=keeping_old_certificate", exc)
            return
        logger.info("event=tls_reloaded cert=%s", self._ctx.tls.cert_path)

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run until a shutdown is requested and done. Raises ``StartupFailure``."""
        settings = self.settings
        state = StateDir(settings.state_dir.resolve())
        try:
            state.ensure()
        except (UnsafeStateDir, OSError) as exc:
            raise StartupFailure(str(exc)) from exc
        lock = state.lock()
        if lock is None:
            raise StartupFailure(f"another pgwake serve is using {state.path}")
        catalog = Catalog(state.catalog)
        reaper: asyncio.Task[None] | None = None
        backends: Backends | None = None
        try:
            backends = Backends(settings, on_load=self._start_upkeep)
            # The default backend and every backend an endpoint uses must load now; a
            # Docker engine that is down only fails that backend's wakes (57P03), later.
            for name in sorted({settings.compute_backend} | {r.backend for r in catalog.list()}):
                try:
                    await backends.get(name).prepare()
                except Exception as exc:
                    raise StartupFailure(f"compute backend {name} not usable: {exc}") from exc
            try:
                tls = self._load_tls(state)
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise StartupFailure(f"cannot load the TLS certificate: {exc}") from exc
            # The edge owns what it keeps open to computes; the lifecycles say when it goes.
            kept = KeptConnections(settings.server_reuse_seconds)
            lifecycles = LifecycleManager(
                backends, catalog, settings.idle_timeout, settings.wake_timeout, resources=kept
            )
            adopted = await lifecycles.adopt_running()
            # Without the API nobody holds the admin token: an unguessable throwaway.
            admin_token = (
                _admin_token(settings, state)
                if settings.api_address is not None
                else secrets.token_urlsafe(32)
            )
            control = ControlPlane(settings, catalog, backends, lifecycles, admin_token)
            self._ctx = SessionContext(
                settings,
                catalog,
                lifecycles,
                CancelMap(),
                AuthThrottle(),
                state.secret(MOCK_SECRET, lambda: secrets.token_bytes(32)),
                tls,
                kept,
            )
            # A deleted endpoint's sessions are told why they end (e.g. its TTL ran out).
            control.end_sessions = self._ctx.relays.end_endpoint

            if settings.metrics_address is not None:
                try:
                    metrics_socket = bind(*settings.metrics_address)
                except OSError as exc:
                    raise StartupFailure(
                        f"cannot listen on metrics {settings.metrics_listen}: {exc.strerror}"
                    ) from exc
                # On the event loop, like the API, and stopped with it: the stdlib server
                # of prometheus_client would poll for its shutdown every 0.5 s.
                self._metrics = ApiServer(
                    _metrics_app(), metrics_socket, debug=False, graceful_seconds=1
                )
                self._metrics.start()
            loop = asyncio.get_running_loop()
            host, port = settings.listen_address
            try:
                listener = await loop.create_server(
                    lambda: _ClientProtocol(self),
                    host,
                    port,
                    backlog=_LISTEN_BACKLOG,
                    reuse_address=True,
                )
            except OSError as exc:
                raise StartupFailure(f"cannot listen on {settings.listen}: {exc.strerror}") from exc
            if settings.api_address is not None:
                try:
                    api_socket = bind(*settings.api_address)
                except OSError as exc:
                    listener.close()
                    raise StartupFailure(
                        f"cannot listen on api {settings.api_listen}: {exc.strerror}"
                    ) from exc
                self._api = ApiServer(
                    create_app(control, ready=self.ready),
                    api_socket,
                    debug=settings.log_level == "debug",
                    graceful_seconds=settings.drain_timeout,
                )
                self._api.start()
            reaper = asyncio.create_task(self._reap(control), name="reaper")
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self.request_shutdown, signum)
            loop.add_signal_handler(signal.SIGHUP, self.reload_tls, state)
            self._listening = True
            logger.info(
                "event=listening address=%s metrics=%s api=%s endpoints=%d adopted=%d "
                "backends=%s default_backend=%s",
                settings.listen,
                settings.metrics_listen or "off",
                self._api.address if self._api is not None else "off",
                len(catalog.list()),
                adopted,
                ",".join(backend.name for backend in backends.loaded()),
                settings.compute_backend,
            )
            if on_ready is not None:
                on_ready()
            await self._shutdown.wait()
            await self._drain(listener, lifecycles, reaper)
        finally:
            self._listening = False
            await self._stop_http()
            for task in (reaper, *self._upkeep):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if backends is not None:
                await backends.close()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_signal_handler(signum)
            catalog.close()
            lock.close()

    async def _stop_http(self) -> None:
        """Stop the API and the metrics listener, together."""
        servers = [http for http in (self._api, self._metrics) if http is not None]
        await asyncio.gather(*(http.stop() for http in servers))

    def _start_upkeep(self, backend: ComputeBackend) -> None:
        task = asyncio.create_task(self._maintain(backend), name=f"upkeep:{backend.name}")
        self._upkeep.append(task)

    async def _maintain(self, backend: ComputeBackend) -> None:
        """The backend's upkeep (spare template copies); a failure is logged, not fatal."""
        try:
            await backend.maintain()
        except Exception:
            logger.exception("event=backend_upkeep_failed backend=%s", backend.name)

    async def _reap(self, control: ControlPlane) -> None:
        """Every ``reaper_interval`` seconds: delete endpoints past their TTL or idle time."""
        while not self._shutdown.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.reaper_interval):
                    await self._shutdown.wait()
            if self._shutdown.is_set():
                return
            try:
                await control.reap()
            except Exception:
                logger.exception("event=reap_failed")

    async def _drain(
        self,
        listener: asyncio.Server,
        lifecycles: LifecycleManager,
        reaper: asyncio.Task[None] | None,
    ) -> None:
        listener.close()
        started = time.monotonic()
        self._end_parked()
        if not self._force and not await self._sessions_ended(self.settings.drain_timeout):
            assert self._ctx is not None
            logger.warning(
                "event=drain_timeout closing=%d", len(self._sessions) + len(self._ctx.relays)
            )
        # The API and the reaper stop before the computes: a create, wake or delete in
        # flight finishes (or is cut off) first, and none starts a compute afterwards.
        # The metrics stop with the API, at the same time (each stop takes uvicorn ~0.1 s).
        await self._stop_http()
        if reaper is not None:
            _, pending_reap = await asyncio.wait({reaper}, timeout=_REAPER_STOP_SECONDS)
            for task in pending_reap:
                task.cancel()
        # Suspending first lets each compute end its remaining sessions itself: a fast
        # shutdown sends every client a well-framed FATAL 57P01, which the relay forwards.
        await lifecycles.suspend_all()
        self._end_parked()  # parked while the drain ran
        if not await self._sessions_ended(5):
            for task in list(self._sessions):
                task.cancel()
            if self._ctx is not None:
                self._ctx.relays.abort_all()
            await self._sessions_ended(5)
        logger.info("event=stopped ms=%d", (time.monotonic() - started) * 1000)

    def _end_parked(self) -> None:
        """End the parked sessions: idle, with no backend to end them, they would only
        hold the drain up. Each client hears why (57P01), as from a compute's shutdown."""
        if self._ctx is not None:
            self._ctx.relays.end_parked(
                "terminating connection because pgwake is shutting down",
                hint="Reconnect: the next connection starts the compute again.",
            )

    async def _sessions_ended(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every session (in its handshake or relaying) to end."""
        deadline = time.monotonic() + seconds
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=seconds)
        if self._ctx is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._ctx.relays.wait_closed()
        relays = len(self._ctx.relays) if self._ctx is not None else 0
        return not self._sessions and not relays
