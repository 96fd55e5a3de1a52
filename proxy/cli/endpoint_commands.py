"""``pgwake endpoint ...``: through the running server's API, or on the local catalog.

With ``PGWAKE_API_URL`` set, or while a ``pgwake serve`` holds this state dir, every
command goes through the HTTP API (so the server's lifecycles stay in charge). Otherwise
the command works on the local catalog and computes directly, as the admin.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
from typing import TYPE_CHECKING, Any, Protocol

import pydantic

from pgwake.api.client import ApiError, Endpoint, NewEndpoint, NewPassword, PgwakeClient, build
from pgwake.catalog import Catalog
from pgwake.compute import Backends
from pgwake.endpoint.connection_uri import DEFAULT_ROLE, format_age, format_time
from pgwake.endpoint.control_plane import ADMIN, ControlError, ControlPlane
from pgwake.endpoint.lifecycles import LifecycleManager
from pgwake.endpoint.passwords import MIN_PASSWORD_LENGTH
from pgwake.settings import (
    MAX_CPUS,
    MIN_CPUS,
    MIN_IDLE_TIMEOUT_SECONDS,
    MIN_LIFETIME_SECONDS,
    Cpus,
    IdleTimeout,
    Lifetime,
)
from pgwake.state_dir import ADMIN_TOKEN, StateDir

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgwake.settings import Settings

__all__ = ["add_endpoint_commands", "run_endpoint_command"]


class _Endpoints(Protocol):
    async def create(self, args: argparse.Namespace) -> NewEndpoint: ...
    async def list(self) -> list[Endpoint]: ...
    async def get(self, name: str) -> Endpoint: ...
    async def delete(self, name: str) -> None: ...
    async def suspend(self, name: str) -> Endpoint: ...
    async def wake(self, name: str) -> Endpoint: ...
    async def branch(self, source: str, name: str | None, ttl: float | None) -> NewEndpoint: ...
    async def set_password(self, name: str, role: str, password: str | None) -> NewPassword: ...
    def disk_bytes(self, endpoint: Endpoint) -> int | None: ...


def _bounded(kind: Any) -> Callable[[str], float]:
    """An argparse ``type``: the number in a flag, within ``kind``'s bounds, the ones the
    settings and the HTTP API apply (``pgwake.settings``)."""
    adapter: pydantic.TypeAdapter[float] = pydantic.TypeAdapter(kind)

    def parse(text: str) -> float:
        try:
            return adapter.validate_python(text)
        except pydantic.ValidationError as exc:
            raise argparse.ArgumentTypeError(exc.errors()[0]["msg"]) from None

    return parse


def add_endpoint_commands(actions: Any, add_settings: Any) -> None:
    """Register the ``endpoint`` subcommands on ``actions`` (an argparse subparsers)."""
    create = actions.add_parser("create", help="Create an endpoint; prints its URI last.")
    create.add_argument("name", nargs="?", help="Name (generated, unguessable, if omitted).")
    create.add_argument(
        "--password",
        help=f"Password of role 'app', at least {MIN_PASSWORD_LENGTH} characters "
        "(generated if omitted).",
    )
    create.add_argument(
        "--allow",
        action="append",
        metavar="CIDR",
        help="Only accept clients from this network (repeatable).",
    )
    create.add_argument(
        "--idle-timeout",
        dest="endpoint_idle_timeout",
        type=_bounded(IdleTimeout),
        metavar="SECONDS",
        help=f"Suspend after this many idle seconds (at least {MIN_IDLE_TIMEOUT_SECONDS:g}).",
    )
    create.add_argument(
        "--ttl",
        type=_bounded(Lifetime),
        metavar="SECONDS",
        help="Delete the endpoint this many seconds after creation "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )
    create.add_argument(
        "--delete-after-idle",
        type=_bounded(Lifetime),
        metavar="SECONDS",
        help="Delete the endpoint once unused for this many seconds "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )
    create.add_argument(
        "--backend",
        choices=("local", "docker"),
        help="Where the compute runs (default: the compute_backend setting).",
    )
    create.add_argument("--image", help="Docker image (docker; default: docker_image).")
    create.add_argument(
        "--memory", help="Container memory limit, e.g. 512m (docker; default: docker_memory)."
    )
    create.add_argument(
        "--cpus",
        type=_bounded(Cpus),
        help=f"Container CPU limit, {MIN_CPUS:g} to {MAX_CPUS:g} (docker; default: docker_cpus).",
    )
    add_settings(create)
    add_settings(actions.add_parser("list", help="List endpoints."))
    for action, text in (
        ("get", "Show one endpoint."),
        ("delete", "Delete an endpoint and its data."),
        ("suspend", "Suspend an endpoint's compute now."),
        ("wake", "Start an endpoint's compute now."),
    ):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("name")
        add_settings(parser)
    branch = actions.add_parser("branch", help="Copy an endpoint's data into a new endpoint.")
    branch.add_argument("source")
    branch.add_argument("name", nargs="?", help="Name of the branch (generated if omitted).")
    branch.add_argument(
        "--ttl",
        type=_bounded(Lifetime),
        metavar="SECONDS",
        help="Delete the branch this many seconds after creation "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )
    add_settings(branch)
    password = actions.add_parser(
        "password",
        help="Give a role a new password; prints a URI with it last.",
        description="Give one of the endpoint's login roles a new password (a lost one "
        "cannot be shown again). A running compute takes it at once, a suspended one at "
        "its next start; pgwake accepts the new one from now on.",
    )
    password.add_argument("name")
    password.add_argument(
        "--role", default=DEFAULT_ROLE, help=f"The role (default: {DEFAULT_ROLE})."
    )
    password.add_argument(
        "--password",
        help=f"The new password, at least {MIN_PASSWORD_LENGTH} characters (generated if omitted).",
    )
    add_settings(password)


class _Remote:
    def __init__(self, client: PgwakeClient) -> None:
        self._client = client

    async def create(self, args: argparse.Namespace) -> NewEndpoint:
        return self._client.create_endpoint(
            args.name,
            password=args.password,
            idle_timeout_seconds=args.endpoint_idle_timeout,
            ttl_seconds=args.ttl,
            delete_after_idle_seconds=args.delete_after_idle,
            allowed_cidrs=args.allow,
            backend=args.backend,
            **_compute_options(args),
        )

    async def list(self) -> list[Endpoint]:
        return self._client.list_endpoints()

    async def get(self, name: str) -> Endpoint:
        return self._client.get_endpoint(name)

    async def delete(self, name: str) -> None:
        self._client.delete_endpoint(name)

    async def suspend(self, name: str) -> Endpoint:
        return self._client.suspend_endpoint(name)

    async def wake(self, name: str) -> Endpoint:
        return self._client.wake_endpoint(name)

    async def branch(self, source: str, name: str | None, ttl: float | None) -> NewEndpoint:
        return self._client.branch_endpoint(source, name, ttl_seconds=ttl)

    async def set_password(self, name: str, role: str, password: str | None) -> NewPassword:
        return self._client.set_password(name, role=role, password=password)

    def disk_bytes(self, endpoint: Endpoint) -> int | None:
        return endpoint.disk_bytes  # the server's: measured at create and after each suspend


def _as(cls: type[Any], view: Any, **extra: Any) -> Any:
    return build(cls, {**dataclasses.asdict(view), **extra})


class _Local:
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
            compute_options=_compute_options(args),
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


def _compute_options(args: argparse.Namespace) -> dict[str, str | None]:
    """The backend options given on the command line (``None`` = the server's default)."""
    options = {"image": args.image, "memory": args.memory}
    if args.cpus is not None:
        options["cpus"] = f"{args.cpus:g}"
    return options


def _remote_client(settings: Settings) -> PgwakeClient | None:
    url = os.environ.get("PGWAKE_API_URL")
    if url:
        return PgwakeClient(url)
    api_listen = getattr(settings, "api_listen", "")
    if api_listen and StateDir(settings.state_dir).server_running():
        host, _, port = api_listen.rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "", "[::]") else host
        token = os.environ.get("PGWAKE_TOKEN") or settings_admin_token(settings)
        return PgwakeClient(f"http://{host}:{port}", token)
    return None


def settings_admin_token(settings: Settings) -> str | None:
    """The admin token a local server uses: the setting, else its token file."""
    configured = getattr(settings, "admin_token", None)
    if configured is not None:
        secret = (
            configured.get_secret_value()
            if hasattr(configured, "get_secret_value")
            else str(configured)
        )
        if secret:
            return str(secret)
    return StateDir(settings.state_dir).read_secret(ADMIN_TOKEN)


_TIMES = frozenset({"created_at", "last_active", "expires_at"})


def _shown(name: str, value: Any) -> str:
    """One field of ``endpoint get`` as a person reads it: times in ISO 8601 with their
    age, lists and mappings as plain words (empty when empty), ``-`` for none."""
    if name in _TIMES:
        return format_time(value)
    if isinstance(value, tuple):
        return " ".join(value)
    if isinstance(value, dict):
        return " ".join(f"{key}={value[key]}" for key in sorted(value))
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _print_endpoint(endpoint: Endpoint, disk: int | None) -> None:
    for field in dataclasses.fields(endpoint):
        if field.name == "password":
            continue
        text = _shown(field.name, getattr(endpoint, field.name))
        if field.name == "disk_bytes":
            text = f"{disk} ({_megabytes(disk).strip()})" if disk is not None else "-"
        print(f"{field.name}: {text}" if text else f"{field.name}:")


def _megabytes(size: int | None) -> str:
    return f"{size / 2**20:>7.1f}MB" if size is not None else f"{'-':>9}"


async def run_endpoint_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run one ``pgwake endpoint`` subcommand; return the exit status."""
    client = _remote_client(settings)
    catalog: Catalog | None = None
    local: _Local | None = None
    endpoints: _Endpoints
    if client is not None:
        endpoints = _Remote(client)
    else:
        # Run on the catalog itself: this command owns the state dir like a server would.
        state = StateDir(settings.state_dir)
        state.ensure()
        catalog = Catalog(state.catalog)
        endpoints = local = _Local(settings, catalog)
    try:
        if local is not None:
            await local.open()
        return await _dispatch(args, endpoints)
    except (ApiError, ControlError) as exc:
        print(f"pgwake: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if local is not None:
            await local.close()
        if catalog is not None:
            catalog.close()


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
        print(
            f"{'NAME':<24} {'STATE':<11} {'BACKEND':<8} {'IDLE':>6} {'LAST ACTIVE':<12} {'DISK':>9}"
        )
        for row in await endpoints.list():
            idle = f"{row.idle_timeout_seconds:g}s" if row.idle_timeout_seconds else "-"
            last = "now" if row.sessions else format_age(row.last_active)
            print(
                f"{row.name:<24} {row.state:<11} {row.backend:<8} {idle:>6} "
                f"{last:<12} {_megabytes(endpoints.disk_bytes(row))}"
            )
    elif action == "get":
        endpoint = await endpoints.get(args.name)
        _print_endpoint(endpoint, endpoints.disk_bytes(endpoint))
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
