"""The API's one error shape, ``{"error": {"code": "<stable_code>", "message": "..."}}``:
building it, mapping every error to it (ours, ``ControlError``, and the framework's), and
documenting it in the OpenAPI document.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pgwake.api.models import ErrorResponse
from pgwake.endpoint.callers import ControlError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fastapi import FastAPI, Request, Response

__all__ = ["add_error_handlers", "error_response", "error_responses"]

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


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer with."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A response in the one JSON error shape."""
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _on_control_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ControlError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.status, exc.code, exc.message, headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 400:  # FastAPI's "error parsing the body": e.g. JSON that is not UTF-8
        return error_response(422, "invalid_request", "body: not valid JSON text")
    code = _HTTP_CODES.get(status, f"http_{status}")
    try:
        message = HTTPStatus(status).phrase.lower()
    except ValueError:
        message = "error"
    return error_response(status, code, message, exc.headers)


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
    return error_response(422, "invalid_request", message or "invalid request")


def add_error_handlers(app: FastAPI) -> None:
    """Answer ``ControlError``, the framework's HTTP errors and validation errors in the
    one JSON shape."""
    app.add_exception_handler(ControlError, _on_control_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
