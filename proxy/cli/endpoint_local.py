"""``pgwake endpoint`` without a server: the control plane run in this process on the
local catalog and computes, as the admin, its answers shaped as the API client's."""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING, Any

from pgwake.api.client import Endpoint, NewEndpoint, NewPassword, build
from pgwake.cli.endpoint_parser import compute_options
from pgwake.compute import Backends
from pgwake.endpoint.callers import ADMIN
from pgwake.endpoint.control_plane import ControlPlane
from pgwake.endpoint.lifecycles import LifecycleManager

if TYPE_CHECKING:
    import argparse

    from pgwake.catalog import Catalog
    from pgwake.settings import Settings

__all__ = ["LocalEndpoints"]


def _as(cls: type[Any], view: Any, **extra: Any) -> Any:
    return build(cls, {**dataclasses.asdict(view), **extra})


def _control_names(changes: dict[str, Any]) -> dict[str, Any]:
    """The API's field names (``endpoint update``'s) as ``ControlPlane.update`` names them."""
    return {name.removesuffix("_seconds"): value for name, value in changes.items()}


class LocalEndpoints:
    """``pgwake endpoint`` on the local catalog and computes, as the admin (no server
    runs)."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self._backends = Backends(settings)
        self._lifecycles = LifecycleManager(
            self._backends, catalog, settings.idle_timeout, settings.wake_timeout
        )
        self._control = ControlPlane(
            settings,
            catalog,
            self._backends,
            self._lifecycles,
            admin_token=secrets.token_urlsafe(32),
        )

    async def open(self) -> None:
        await self._lifecycles.adopt_running()  # so suspend/delete see a compute that runs

    async def close(self) -> None:
        for lifecycle in self._lifecycles:  # e.g. the disk size measured after a create
            await lifecycle.settle()
        await self._backends.close()

    async def create(self, args: argparse.Namespace) -> NewEndpoint:
        created = await self._control.create(
            ADMIN,
            name=args.name,
            password=args.password,
            idle_timeout=args.endpoint_idle_timeout,
            ttl_seconds=args.ttl,
            delete_after_idle_seconds=args.delete_after_idle,
            allowed_cidrs=tuple(args.allow or ()),
            backend=args.backend,
            compute_options=compute_options(args),
            park_sessions=args.park_sessions is not False,  # None: the default, on
            pinned_session_timeout=args.pinned_session_timeout,
        )
        result: NewEndpoint = _as(
            NewEndpoint,
            created.endpoint,
            password=created.password,
            connection_uri=created.connection_uri,
        )
        return result

    async def list(self) -> list[Endpoint]:
        return [_as(Endpoint, view) for view in self._control.list_endpoints(ADMIN)]

    async def get(self, name: str) -> Endpoint:
        result: Endpoint = _as(Endpoint, self._control.get(ADMIN, name))
        return result

    async def update(self, name: str, changes: dict[str, float | bool | None]) -> Endpoint:
        view = self._control.update(ADMIN, name, **_control_names(changes))
        result: Endpoint = _as(Endpoint, view)
        return result

    async def delete(self, name: str) -> None:
        await self._control.delete(ADMIN, name, reason="cli")

    async def suspend(self, name: str) -> Endpoint:
        result: Endpoint = _as(Endpoint, await self._control.suspend(ADMIN, name))
        return result

    async def wake(self, name: str) -> Endpoint:
        # Without a server nothing will suspend it: the next `pgwake serve` adopts it.
        result: Endpoint = _as(Endpoint, await self._control.wake(ADMIN, name))
        return result

    async def branch(self, source: str, name: str | None, ttl: float | None) -> NewEndpoint:
        was_running = self._lifecycles.get(self._control.record(ADMIN, source)).state.value == (
            "running"
        )
        created = await self._control.branch(ADMIN, source, name=name, ttl_seconds=ttl)
        if not was_running:
            await self._control.suspend(ADMIN, source)  # leave it as we found it
        result: NewEndpoint = _as(
            NewEndpoint,
            created.endpoint,
            password=created.password,
            connection_uri=created.connection_uri,
        )
        return result

    async def set_password(self, name: str, role: str, password: str | None) -> NewPassword:
        changed = await self._control.set_password(ADMIN, name, role=role, password=password)
        result: NewPassword = _as(NewPassword, changed)
        return result

    def disk_bytes(self, endpoint: Endpoint) -> int | None:
        record = self._control.record(ADMIN, endpoint.name)
        return self._lifecycles.get(record).backend.disk_bytes(endpoint.name) or None
