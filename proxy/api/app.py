"""The HTTP control plane: FastAPI routes over ``pgwake.endpoint.control_plane.ControlPlane``.

Rule: no decision lives here. A route authenticates its caller (a bearer token), takes a
body that ``models.py`` validated completely, and calls one ``ControlPlane`` method, which
decides who may do what. Every error, ours or the framework's, is the same JSON shape:
``{"error": {"code": "<stable_code>", "message": "..."}}``. Routes are ``async`` so that
they run on pgwake's event loop, where the catalog and the lifecycles live.

This module builds the application: the routes by resource (``endpoint_routes.py``,
``token_routes.py``, ``operation_routes.py``, over ``dependencies.py``), the error
mapping (``errors.py``) and the outermost guard middleware, here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from pgwake import __version__
from pgwake.api import endpoint_routes, operation_routes, token_routes
from pgwake.api.errors import add_error_handlers, error_response

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi.routing import APIRoute
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from pgwake.endpoint.control_plane import ControlPlane

__all__ = ["MAX_BODY_BYTES", "create_app"]

logger = logging.getLogger(__name__)

#: Request bodies are a few hundred bytes; anything far larger is refused unread (413).
MAX_BODY_BYTES: Final = 64 * 1024

#: An encoded slash in the path. The server decodes ``%2F`` before routing, so
#: ``/v1/endpoints/demo%2Fsuspend`` would be routed as ``/v1/endpoints/{name}/suspend``
#: with ``name=demo``. Every path parameter (an endpoint name, a token id) is one segment,
#: so a path holding one is refused before routing, whatever the route.
_ENCODED_SLASH: Final = b"%2f"


class _BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413)


class _Guard:
    """Outermost of our middlewares: refuses paths with an encoded slash (422) and
    oversized bodies (413), and turns anything unexpected into a logged 500
    ``internal_error``, so no error escapes the JSON shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # raw_path is the path as sent (uvicorn's has no query string; others may).
        raw_path = (scope.get("raw_path") or b"").partition(b"?")[0]
        if _ENCODED_SLASH in raw_path.lower():
            await error_response(
                422,
                "invalid_request",
                "path: a name or id cannot contain '/' (sent as %2F); "
                "each path parameter is one segment",
            )(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                await error_response(413, "payload_too_large", "the request body is too large")(
                    scope, receive, send
                )
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            logger.exception(
                "event=api_internal_error method=%s path=%s", scope["method"], scope["path"]
            )
            if not started:
                await error_response(500, "internal_error", "internal error; see pgwake's log")(
                    scope, receive, send
                )


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(control: ControlPlane, *, ready: Callable[[], bool]) -> FastAPI:
    """The API application over ``control``; ``ready()`` answers ``/readyz``."""
    app = FastAPI(
        title="pgwake",
        version=__version__,
        summary="Scale-to-zero Postgres: create, branch, suspend, wake and delete databases.",
        redirect_slashes=False,
        generate_unique_id_function=_operation_id,
    )
    app.state.control = control
    app.state.ready = ready
    app.include_router(endpoint_routes.router)
    app.include_router(token_routes.router)
    app.include_router(operation_routes.router)
    add_error_handlers(app)
    app.add_middleware(_Guard)
    return app
