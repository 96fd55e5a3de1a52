"""Serving the API with uvicorn on pgwake's own event loop.

Rule: pgwake's ``server.py`` owns the process: its signals, its listeners, its shutdown
order. uvicorn only serves HTTP on a socket pgwake bound (so a busy port is pgwake's
``StartupFailure``, not uvicorn's ``sys.exit``), never installs signal handlers, and
stops when ``stop()`` is awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Final

import uvicorn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fastapi import FastAPI

__all__ = ["ApiServer", "bind"]

logger = logging.getLogger(__name__)

_BACKLOG: Final = 512


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port``; raise ``OSError``."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own would replace pgwake's SIGINT/SIGTERM handlers (drain, suspend)
        # and re-raise the signal after its shutdown.
        yield


class ApiServer:
    """uvicorn serving ``app`` on an already bound socket, as a task of the running loop."""

    def __init__(
        self, app: FastAPI, sock: socket.socket, *, debug: bool, graceful_seconds: float
    ) -> None:
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            # uvicorn's INFO lines are not pgwake's key=value events; its warnings
            # (malformed HTTP, ...) still show.
            log_level=logging.DEBUG if debug else logging.WARNING,
            access_log=False,
            http="h11",
            ws="none",
            # The API answers the peer it sees: no X-Forwarded-For from anyone.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=max(1, round(graceful_seconds)),
        )
        self._server = _Uvicorn(config)
        self._sock = sock
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def started(self) -> bool:
        return self._server.started

    def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="api")

    def request_stop(self, *, force: bool = False) -> None:
        """Stop accepting; finish requests in flight (all but cancel them if ``force``)."""
        self._server.should_exit = True
        self._server.force_exit = self._server.force_exit or force

    async def stop(self) -> None:
        """Stop, and return once uvicorn has closed its socket and connections."""
        self.request_stop()
        if self._task is None:
            self._sock.close()
            return
        try:
            await self._task
        except Exception:
            logger.exception("event=api_stop_failed")
