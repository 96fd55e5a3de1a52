"""``pgwake endpoint`` through a running server's HTTP API: finding that server (and
its admin token), and each command as one API call."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pgwake.api.client import PgwakeClient
from pgwake.cli.endpoint_parser import compute_options
from pgwake.state_dir import ADMIN_TOKEN, StateDir

if TYPE_CHECKING:
    import argparse

    from pgwake.api.client import Endpoint, NewEndpoint, NewPassword
    from pgwake.settings import Settings

__all__ = ["RemoteEndpoints", "remote_client", "settings_admin_token"]


class RemoteEndpoints:
    """``pgwake endpoint`` through the running server's HTTP API."""

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
            park_sessions=args.park_sessions,
            pinned_session_timeout_seconds=args.pinned_session_timeout,
            **compute_options(args),
        )

    async def update(self, name: str, changes: dict[str, float | bool | None]) -> Endpoint:
        return self._client.update_endpoint(name, **changes)

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


def remote_client(settings: Settings) -> PgwakeClient | None:
    """A client of the running server's API: ``PGWAKE_API_URL``, else the server that
    holds this state dir; ``None`` when neither is there."""
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
