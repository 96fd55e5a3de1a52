"""The ``/v1/endpoints`` routes: create, list, get, update, delete, suspend, wake,
branch, and a role's password. Each calls one ``ControlPlane`` method."""

from __future__ import annotations

from fastapi import APIRouter, Response

from pgwake.api.dependencies import CallerDep, ControlDep, EndpointName
from pgwake.api.errors import error_responses
from pgwake.api.models import (
    BranchCreate,
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointOut,
    EndpointUpdate,
    NewPassword,
    PasswordChange,
)
from pgwake.endpoint.control_plane import KEEP

__all__ = ["router"]

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


@router.post(
    "",
    status_code=201,
    summary="Create an endpoint",
    responses=error_responses(401, 403, 409, 413, 422, 503),
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
        park_sessions=body.park_sessions,
        pinned_session_timeout=body.pinned_session_timeout_seconds,
    )
    return EndpointCreated.from_created(created)


@router.get("", summary="List endpoints", responses=error_responses(401))
async def list_endpoints(control: ControlDep, caller: CallerDep) -> EndpointList:
    """Every endpoint the token may see (all of them for the admin)."""
    views = control.list_endpoints(caller)
    return EndpointList(endpoints=[EndpointOut.from_view(view) for view in views])


@router.get("/{name}", summary="Get an endpoint", responses=error_responses(401, 404, 422))
async def get_endpoint(control: ControlDep, caller: CallerDep, name: EndpointName) -> EndpointOut:
    return EndpointOut.from_view(control.get(caller, name))


@router.patch(
    "/{name}",
    summary="Change an endpoint's settings",
    responses=error_responses(401, 404, 413, 422),
)
async def update_endpoint(
    control: ControlDep, caller: CallerDep, name: EndpointName, body: EndpointUpdate
) -> EndpointOut:
    """Change the idle timeout and what becomes of idle sessions at a suspend; the fields
    left out keep their values, `null` sets the default. They take effect at once."""
    given = body.model_fields_set
    view = control.update(
        caller,
        name,
        idle_timeout=body.idle_timeout_seconds if "idle_timeout_seconds" in given else KEEP,
        park_sessions=body.park_sessions if "park_sessions" in given else KEEP,
        pinned_session_timeout=(
            body.pinned_session_timeout_seconds
            if "pinned_session_timeout_seconds" in given
            else KEEP
        ),
    )
    return EndpointOut.from_view(view)


@router.delete(
    "/{name}",
    status_code=204,
    response_class=Response,
    summary="Delete an endpoint",
    responses=error_responses(401, 404, 422, 503),
)
async def delete_endpoint(control: ControlDep, caller: CallerDep, name: EndpointName) -> Response:
    """Stop the compute if it runs and delete the endpoint with its data."""
    await control.delete(caller, name)
    return Response(status_code=204)


@router.post(
    "/{name}/suspend", summary="Suspend an endpoint", responses=error_responses(401, 404, 422)
)
async def suspend_endpoint(
    control: ControlDep, caller: CallerDep, name: EndpointName
) -> EndpointOut:
    """Shut the compute down cleanly (its sessions end); the next connect wakes it."""
    return EndpointOut.from_view(await control.suspend(caller, name))


@router.post(
    "/{name}/wake", summary="Wake an endpoint", responses=error_responses(401, 404, 422, 503, 504)
)
async def wake_endpoint(control: ControlDep, caller: CallerDep, name: EndpointName) -> EndpointOut:
    """Start the compute now and return once it accepts connections."""
    return EndpointOut.from_view(await control.wake(caller, name))


@router.post(
    "/{name}/branches",
    status_code=201,
    summary="Branch an endpoint",
    responses=error_responses(401, 403, 404, 409, 413, 422, 503, 504),
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


@router.post(
    "/{name}/password",
    summary="Set a role's password",
    responses=error_responses(401, 404, 413, 422, 503),
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
