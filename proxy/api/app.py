"""The HTTP control plane: FastAPI routes over ``pgwake.endpoint.control_plane.ControlPlane``.

Rule: no decision lives here. A route authenticates its caller (a bearer token), takes a
body that ``models.py`` validated completely, and calls one ``ControlPlane`` method, which
decides who may do what. Every error, ours or the framework's, is the same JSON shape:
``{"error": {"code": "<stable_code>", "message": "..."}}``. Routes are ``async`` so that
they run on pgwake's event loop, where the catalog and the lifecycles live.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any, Final, cast

import prometheus_client
from fastapi import APIRouter, Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from pgwake import __version__
from pgwake.api.models import (
    ENDPOINT_NAME_PATTERN,
    TOKEN_ID_PATTERN,
    BranchCreate,
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointOut,
    ErrorResponse,
    Health,
    NewPassword,
    PasswordChange,
    Readiness,
    TokenCreate,
    TokenMinted,
)
from pgwake.endpoint.control_plane import Caller, ControlError, ControlPlane

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from fastapi.routing import APIRoute
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MAX_BODY_BYTES", "create_app"]

logger = logging.getLogger(__name__)

#: Request bodies are a few hundred bytes; anything far larger is refused unread (413).
MAX_BODY_BYTES: Final = 64 * 1024

#: An encoded slash in the path. The server decodes ``%2F`` before routing, so
#: ``/v1/endpoints/demo%2Fsuspend`` would be routed as ``/v1/endpoints/{name}/suspend``
#: with ``name=demo``. Every path parameter (an endpoint name, a token id) is one segment,
#: so a path holding one is refused before routing, whatever the route.
_ENCODED_SLASH: Final = b"%2f"

#: What a JSON value is, for "must be a JSON number, not <this>".
_JSON_KINDS: Final = {
    bool: "a boolean",
    str: "a string",
    float: "a decimal number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}

#: Stable codes for the errors the framework raises (unknown route, wrong method, ...).
_HTTP_CODES: Final = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

_DESCRIPTIONS: Final = {
    401: "No token, or a token that is not valid (code `unauthorized`).",
    403: "The token may not do this (`forbidden`, `quota_exceeded`, `ttl_too_long`).",
    404: "No such endpoint, or one another token owns (`endpoint_not_found`); no such "
    "login role (`role_not_found`).",
    409: "The name is taken (`endpoint_exists`), or the branch cannot be made.",
    413: "The request body is too large (`payload_too_large`).",
    422: "The request is malformed (`invalid_request`, `invalid_name`, `invalid_cidr`), or "
    "the password is not acceptable (`invalid_password`).",
    503: "The compute could not start or be copied, no free name was found, or the running "
    "compute could not take a new password (`password_failed`).",
    504: "The compute did not start within `wake_timeout` (`wake_timeout`).",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer with."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


# -- dependencies ------------------------------------------------------------------------

_bearer: Final = HTTPBearer(
    auto_error=False,
    description="The admin token (`PGWAKE_ADMIN_TOKEN` or `<state_dir>/admin-token`), or a "
    "scoped token from `POST /v1/tokens`.",
)


def _control(request: Request) -> ControlPlane:
    return cast(ControlPlane, request.app.state.control)


ControlDep = Annotated[ControlPlane, Depends(_control)]


async def _caller(
    control: ControlDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller the ``Authorization: Bearer`` header names; raise 401 without one."""
    caller = control.authenticate(credentials.credentials) if credentials is not None else None
    if caller is None:
        raise ControlError("unauthorized", "a valid bearer token is required", 401)
    return caller


CallerDep = Annotated[Caller, Depends(_caller)]
EndpointName = Annotated[
    str,
    Path(
        pattern=ENDPOINT_NAME_PATTERN,
        max_length=63,
        description="The endpoint's name (a lowercase DNS label).",
        examples=["demo"],
    ),
]
TokenId = Annotated[str, Path(pattern=TOKEN_ID_PATTERN, description="The token's id.")]

# -- routes ------------------------------------------------------------------------------

_endpoints = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


@_endpoints.post(
    "",
    status_code=201,
    summary="Create an endpoint",
    responses=_errors(401, 403, 409, 413, 422, 503),
)
async def create_endpoint(
    control: ControlDep, caller: CallerDep, body: EndpointCreate | None = None
) -> EndpointCreated:
    """Create a suspended endpoint; its first connect starts it. The response is the only
    one that shows the password."""
    body = body or EndpointCreate()
    created = await control.create(
        caller,
        name=body.name,
        password=body.password,
        idle_timeout=body.idle_timeout_seconds,
        ttl_seconds=body.ttl_seconds,
        delete_after_idle_seconds=body.delete_after_idle_seconds,
        allowed_cidrs=tuple(body.allowed_cidrs),
        backend=body.backend,
        compute_options={
            "image": body.image,
            "memory": body.memory,
            "cpus": f"{body.cpus:g}" if body.cpus is not None else None,
        },
    )
    return EndpointCreated.from_created(created)


@_endpoints.get("", summary="List endpoints", responses=_errors(401))
async def list_endpoints(control: ControlDep, caller: CallerDep) -> EndpointList:
    """Every endpoint the token may see (all of them for the admin)."""
    views = control.list_endpoints(caller)
    return EndpointList(endpoints=[EndpointOut.from_view(view) for view in views])


@_endpoints.get("/{name}", summary="Get an endpoint", responses=_errors(401, 404, 422))
async def get_endpoint(control: ControlDep, caller: CallerDep, name: EndpointName) -> EndpointOut:
    return EndpointOut.from_view(control.get(caller, name))


@_endpoints.delete(
    "/{name}",
    status_code=204,
    response_class=Response,
    summary="Delete an endpoint",
    responses=_errors(401, 404, 422, 503),
)
async def delete_endpoint(control: ControlDep, caller: CallerDep, name: EndpointName) -> Response:
    """Stop the compute if it runs and delete the endpoint with its data."""
    await control.delete(caller, name)
    return Response(status_code=204)


@_endpoints.post("/{name}/suspend", summary="Suspend an endpoint", responses=_errors(401, 404, 422))
async def suspend_endpoint(
    control: ControlDep, caller: CallerDep, name: EndpointName
) -> EndpointOut:
    """Shut the compute down cleanly (its sessions end); the next connect wakes it."""
    return EndpointOut.from_view(await control.suspend(caller, name))


@_endpoints.post(
    "/{name}/wake", summary="Wake an endpoint", responses=_errors(401, 404, 422, 503, 504)
)
async def wake_endpoint(control: ControlDep, caller: CallerDep, name: EndpointName) -> EndpointOut:
    """Start the compute now and return once it accepts connections."""
    return EndpointOut.from_view(await control.wake(caller, name))


@_endpoints.post(
    "/{name}/branches",
    status_code=201,
    summary="Branch an endpoint",
    responses=_errors(401, 403, 404, 409, 413, 422, 503, 504),
)
async def branch_endpoint(
    control: ControlDep,
    caller: CallerDep,
    name: EndpointName,
    body: BranchCreate | None = None,
) -> EndpointCreated:
    """A new endpoint with a consistent copy of this one's data, taken while it runs (it
    is woken if needed). The branch keeps the source's roles and passwords, so
    ``password`` is ``null``."""
    body = body or BranchCreate()
    created = await control.branch(caller, name, name=body.name, ttl_seconds=body.ttl_seconds)
    return EndpointCreated.from_created(created)


@_endpoints.post(
    "/{name}/password",
    summary="Set a role's password",
    responses=_errors(401, 404, 413, 422, 503),
)
async def set_password(
    control: ControlDep,
    caller: CallerDep,
    name: EndpointName,
    body: PasswordChange | None = None,
) -> NewPassword:
    """Give one of the endpoint's login roles (default `app`) a new password, the given
    one or a generated one; the response is the only one that shows it. A running compute
    takes it at once; a suspended one at its next start, while pgwake checks clients
    against the new one from now on."""
    body = body or PasswordChange()
    changed = await control.set_password(caller, name, role=body.role, password=body.password)
    return NewPassword.from_password_set(changed)


_tokens = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@_tokens.post(
    "",
    status_code=201,
    summary="Mint a scoped token (admin only)",
    responses=_errors(401, 403, 413, 422),
)
async def create_token(
    control: ControlDep, caller: CallerDep, body: TokenCreate | None = None
) -> TokenMinted:
    """A token that sees and manages only the endpoints it creates, within its quotas.
    The secret (``token``) is shown once; pgwake keeps only its hash."""
    body = body or TokenCreate()
    minted = control.mint_token(
        caller,
        label=body.label,
        max_endpoints=body.max_endpoints,
        max_ttl_seconds=body.max_ttl_seconds,
    )
    return TokenMinted.from_minted(minted)


@_tokens.delete(
    "/{token_id}",
    status_code=204,
    response_class=Response,
    summary="Revoke a token (admin only)",
    responses={
        **_errors(401, 403, 422),
        404: {"model": ErrorResponse, "description": "No such token (`token_not_found`)."},
    },
)
async def revoke_token(control: ControlDep, caller: CallerDep, token_id: TokenId) -> Response:
    """The token stops working at once; the endpoints it made stay (the admin sees them)."""
    control.revoke_token(caller, token_id)
    return Response(status_code=204)


_operations = APIRouter(tags=["operations"])


@_operations.get("/healthz", summary="Liveness")
async def healthz() -> Health:
    """Always 200 while the process serves HTTP."""
    return Health(status="ok")


@_operations.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"model": ErrorResponse, "description": "Starting or shutting down."}},
)
async def readyz(request: Request) -> Readiness:
    """200 while pgwake accepts connections; 503 while it starts or shuts down."""
    ready = cast("Callable[[], bool]", request.app.state.ready)
    if not ready():
        raise ControlError("not_ready", "pgwake is starting or shutting down", 503)
    return Readiness(status="ready")


@_operations.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics() -> Response:
    return Response(
        prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST
    )


# -- errors ------------------------------------------------------------------------------


async def _on_control_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ControlError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return _error(exc.status, exc.code, exc.message, headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 400:  # FastAPI's "error parsing the body": e.g. JSON that is not UTF-8
        return _error(422, "invalid_request", "body: not valid JSON text")
    code = _HTTP_CODES.get(status, f"http_{status}")
    try:
        message = HTTPStatus(status).phrase.lower()
    except ValueError:
        message = "error"
    return _error(status, code, message, exc.headers)


def _describe(error: Mapping[str, Any]) -> str:
    """One readable line for one validation error: where, and what is wrong."""
    loc = [str(part) for part in error.get("loc", ())]
    if loc and loc[0] == "body":
        where = ".".join(loc[1:]) if len(loc) > 1 and error.get("type") != "json_invalid" else ""
        where = where or "body"
    else:
        where = " ".join(loc[:1]) + (" parameter " + ".".join(loc[1:]) if len(loc) > 1 else "")
    kind = _JSON_KINDS.get(type(error.get("input")))
    if error.get("type") in ("float_type", "int_type") and kind is not None:
        # pydantic's "Input should be a valid number" puzzles whoever sent "10".
        expected = "number" if error["type"] == "float_type" else "integer"
        return f"{where}: must be a JSON {expected}, not {kind}"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}"


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    message = "; ".join(_describe(error) for error in errors[:5])
    if len(errors) > 5:
        message += f"; and {len(errors) - 5} more"
    return _error(422, "invalid_request", message or "invalid request")


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
            await _error(
                422,
                "invalid_request",
                "path: a name or id cannot contain '/' (sent as %2F); "
                "each path parameter is one segment",
            )(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                await _error(413, "payload_too_large", "the request body is too large")(
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
                await _error(500, "internal_error", "internal error; see pgwake's log")(
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
    app.include_router(_endpoints)
    app.include_router(_tokens)
    app.include_router(_operations)
    app.add_exception_handler(ControlError, _on_control_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_middleware(_Guard)
    return app
