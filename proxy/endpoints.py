"""Endpoint administration shared by the CLI (and later the HTTP API): create, list, delete.

Creating an endpoint clones the backend's template, sets the first role's password from a
SCRAM verifier (the plaintext never reaches disk or logs), and records it in the catalog.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy.auth.scram import make_verifier
from proxy.catalog import EndpointExists
from proxy.compute import EndpointSpec
from proxy.routing import is_valid_endpoint_name

if TYPE_CHECKING:
    from proxy.catalog import Catalog, EndpointRecord
    from proxy.compute import ComputeBackend
    from proxy.settings import Settings

__all__ = [
    "DEFAULT_ROLE",
    "EndpointRow",
    "connection_uri",
    "create_endpoint",
    "delete_endpoint",
    "list_endpoints",
]

DEFAULT_ROLE: Final = "app"
_ACTIVE_STATES: Final = frozenset({"running", "starting", "suspending"})


class InvalidEndpointRequest(ValueError):
    """The endpoint cannot be created as asked (bad name, bad network)."""


def connection_uri(
    settings: Settings, endpoint: str, role: str, password: str | None, database: str
) -> str:
    """A libpq URI that reaches ``endpoint`` through pgwake (the options routing form)."""
    host, port = settings.listen_address
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    userinfo = urllib.parse.quote(role, safe="")
    if password is not None:
        userinfo += ":" + urllib.parse.quote(password, safe="")
    options = urllib.parse.quote(f"endpoint={endpoint}", safe="")
    return (
        f"postgresql://{userinfo}@{host}:{port}/{urllib.parse.quote(database, safe='')}"
        f"?options={options}"
    )


async def create_endpoint(
    settings: Settings,
    catalog: Catalog,
    backend: ComputeBackend,
    name: str,
    *,
    password: str | None = None,
    idle_timeout: float | None = None,
    role: str = DEFAULT_ROLE,
    database: str | None = None,
    allowed_cidrs: tuple[str, ...] = (),
) -> tuple[EndpointRecord, str]:
    """Create a suspended endpoint; return its record and a URI holding the password."""
    if not is_valid_endpoint_name(name):
        raise InvalidEndpointRequest(
            f"invalid endpoint name {name!r}: use lowercase letters, digits and hyphens "
            "(a DNS label of at most 63 characters)"
        )
    if catalog.exists(name):
        raise EndpointExists(name)
    try:
        allowed_cidrs = tuple(str(ipaddress.ip_network(c, strict=False)) for c in allowed_cidrs)
    except ValueError as exc:
        raise InvalidEndpointRequest(f"invalid network in the allow-list: {exc}") from None
    password = password or secrets.token_urlsafe(18)
    database = database or role
    verifier = make_verifier(password)
    await backend.create(EndpointSpec(name, role, database, verifier))
    try:
        record = catalog.add_endpoint(
            name, backend.name, idle_timeout, role, verifier, allowed_cidrs
        )
    except EndpointExists:
        await backend.delete(name)
        raise
    return record, connection_uri(settings, name, role, password, database)


async def delete_endpoint(catalog: Catalog, backend: ComputeBackend, name: str) -> bool:
    """Stop and remove the endpoint's compute and data; False if there was none."""
    if not catalog.exists(name):
        return False
    await backend.delete(name)
    catalog.delete(name)
    return True


@dataclass(frozen=True, slots=True)
class EndpointRow:
    """One line of ``pgwake endpoint list``."""

    name: str
    state: str
    backend: str
    idle_timeout: float | None
    last_active: float | None
    disk_bytes: int


def list_endpoints(catalog: Catalog, backend: ComputeBackend) -> list[EndpointRow]:
    """Every endpoint with its live state (asked of the backend, not only the catalog)."""
    rows = []
    for record in catalog.list():
        if backend.is_alive(record.name):
            state = "running" if record.state not in ("suspending",) else record.state
        elif record.state in _ACTIVE_STATES:
            state = "suspended"  # the catalog is stale: no process runs
        else:
            state = record.state
        rows.append(
            EndpointRow(
                record.name,
                state,
                record.backend,
                record.idle_timeout,
                record.last_active,
                backend.disk_bytes(record.name),
            )
        )
    return rows


def format_age(timestamp: float | None, now: float | None = None) -> str:
    """'12s ago', '3m ago', '2h ago', '4d ago' or '-'."""
    if timestamp is None:
        return "-"
    seconds = max(0, int((now or time.time()) - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
