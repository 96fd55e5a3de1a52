"""What every route depends on: the control plane, the caller its bearer token names
(401 without one), and the path parameters (an endpoint name, a token id).
"""

from __future__ import annotations

from typing import Annotated, Final, cast

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pgwake.api.models import ENDPOINT_NAME_PATTERN, TOKEN_ID_PATTERN
from pgwake.endpoint.callers import Caller, ControlError
from pgwake.endpoint.control_plane import ControlPlane

__all__ = ["CallerDep", "ControlDep", "EndpointName", "TokenId"]

_BEARER: Final = HTTPBearer(
    auto_error=False,
    description="The admin token (`PGWAKE_ADMIN_TOKEN` or `<state_dir>/admin-token`), or a "
    "scoped token from `POST /v1/tokens`.",
)


def _control(request: Request) -> ControlPlane:
    return cast(ControlPlane, request.app.state.control)


ControlDep = Annotated[ControlPlane, Depends(_control)]


async def _caller(
    control: ControlDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
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
