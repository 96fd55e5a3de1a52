"""``pgwake endpoint ...``: through the running server's API, or on the local catalog.

With ``PGWAKE_API_URL`` set, or while a ``pgwake serve`` holds this state dir, every
command goes through the HTTP API (so the server's lifecycles stay in charge). Otherwise
the command works on the local catalog and computes directly, as the admin.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Protocol

from pgwake.api.client import ApiError
from pgwake.catalog import Catalog
from pgwake.cli.endpoint_local import LocalEndpoints
from pgwake.cli.endpoint_output import (
    print_endpoint,
    print_endpoint_header,
    print_endpoint_row,
)
from pgwake.cli.endpoint_parser import setting_changes
from pgwake.cli.endpoint_remote import RemoteEndpoints, remote_client
from pgwake.endpoint.callers import ControlError
from pgwake.state_dir import StateDir

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from pgwake.api.client import Endpoint, NewEndpoint, NewPassword
    from pgwake.settings import Settings

__all__ = ["run_endpoint_command"]


class _Endpoints(Protocol):
    async def create(self, args: argparse.Namespace) -> NewEndpoint: ...
    async def list(self) -> list[Endpoint]: ...
    async def get(self, name: str) -> Endpoint: ...
    async def update(self, name: str, changes: dict[str, float | bool | None]) -> Endpoint: ...
    async def delete(self, name: str) -> None: ...
    async def suspend(self, name: str) -> Endpoint: ...
    async def wake(self, name: str) -> Endpoint: ...
    async def branch(self, source: str, name: str | None, ttl: float | None) -> NewEndpoint: ...
    async def set_password(self, name: str, role: str, password: str | None) -> NewPassword: ...
    def disk_bytes(self, endpoint: Endpoint) -> int | None: ...


#: A refusal of the request itself (an invalid password, a bad value): where the command
#: looked is beside the point.
_INVALID_REQUEST = 422


async def run_endpoint_command(
    args: argparse.Namespace, settings: Settings, where: Callable[[], str]
) -> int:
    """Run one ``pgwake endpoint`` subcommand; return the exit status. A failure also says
    ``where()`` the command looked (the catalog, or the server and its token), unless the
    request itself was invalid."""
    client = remote_client(settings)
    catalog: Catalog | None = None
    local: LocalEndpoints | None = None
    endpoints: _Endpoints
    if client is not None:
        endpoints = RemoteEndpoints(client)
    else:
        # Run on the catalog itself: this command owns the state dir like a server would.
        state = StateDir(settings.state_dir)
        state.ensure()
        catalog = Catalog(state.catalog)
        endpoints = local = LocalEndpoints(settings, catalog)
    try:
        if local is not None:
            await local.open()
        status = await _dispatch(args, endpoints)
    except (ApiError, ControlError) as exc:
        print(f"pgwake: {exc.message}", file=sys.stderr)
        if exc.status != _INVALID_REQUEST:
            print(f"pgwake: {where()}", file=sys.stderr)
        return 1
    except Exception as exc:  # one clear line, not a traceback, for operator errors
        print(f"pgwake: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"pgwake: {where()}", file=sys.stderr)
        return 1
    finally:
        if local is not None:
            await local.close()
        if catalog is not None:
            catalog.close()
    if status != 0:
        print(f"pgwake: {where()}", file=sys.stderr)
    return status


async def _dispatch(args: argparse.Namespace, endpoints: _Endpoints) -> int:
    action = args.action
    if action == "create":
        created = await endpoints.create(args)
        print(f"created endpoint {created.name} (suspended until the first connect)")
        print(created.connection_uri)
    elif action == "branch":
        created = await endpoints.branch(args.source, args.name, args.ttl)
        print(
            f"created endpoint {created.name}, a branch of {args.source} (same roles and passwords)"
        )
        print(created.connection_uri)
    elif action == "list":
        print_endpoint_header()
        for row in await endpoints.list():
            print_endpoint_row(row, endpoints.disk_bytes(row))
    elif action == "get":
        endpoint = await endpoints.get(args.name)
        print_endpoint(endpoint, endpoints.disk_bytes(endpoint))
    elif action == "update":
        changes = setting_changes(args)
        if not changes:
            raise ControlError(
                "invalid_request",
                "nothing to change: give --idle-timeout, --park-sessions or "
                "--pinned-session-timeout",
                _INVALID_REQUEST,
            )
        endpoint = await endpoints.update(args.name, changes)
        print_endpoint(endpoint, endpoints.disk_bytes(endpoint))
    elif action == "password":
        changed = await endpoints.set_password(args.name, args.role, args.password)
        print(
            f"new password of role {changed.role} on endpoint {changed.name} "
            "(shown only now); connect with:"
        )
        print(changed.connection_uri)
    elif action == "delete":
        await endpoints.delete(args.name)
        print(f"deleted endpoint {args.name}")
    elif action in ("suspend", "wake"):
        method = endpoints.suspend if action == "suspend" else endpoints.wake
        endpoint = await method(args.name)
        print(f"endpoint {endpoint.name}: {endpoint.state}")
    return 0
