"""The ``/v1/tokens`` routes: mint and revoke scoped tokens (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from pgwake.api.dependencies import CallerDep, ControlDep, TokenId
from pgwake.api.errors import error_responses
from pgwake.api.models import ErrorResponse, TokenCreate, TokenMinted

__all__ = ["router"]

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post(
    "",
    status_code=201,
    summary="Mint a scoped token (admin only)",
    responses=error_responses(401, 403, 413, 422),
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


@router.delete(
    "/{token_id}",
    status_code=204,
    response_class=Response,
    summary="Revoke a token (admin only)",
    responses={
        **error_responses(401, 403, 422),
        404: {"model": ErrorResponse, "description": "No such token (`token_not_found`)."},
    },
)
async def revoke_token(control: ControlDep, caller: CallerDep, token_id: TokenId) -> Response:
    """The token stops working at once; the endpoints it made stay (the admin sees them)."""
    control.revoke_token(caller, token_id)
    return Response(status_code=204)
