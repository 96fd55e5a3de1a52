"""The operations routes: liveness (``/healthz``), readiness (``/readyz``) and the
Prometheus metrics (``/metrics``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import prometheus_client
from fastapi import APIRouter, Request, Response

from pgwake.api.models import ErrorResponse, Health, Readiness
from pgwake.endpoint.callers import ControlError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Health:
    """Always 200 while the process serves HTTP."""
    return Health(status="ok")


@router.get(
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


@router.get(
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
