"""Small endpoint helpers shared by the control plane and the CLI: the connection URI
clients are given, and how ages are shown."""

from __future__ import annotations

import time
import urllib.parse
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pgwake.settings import Settings

__all__ = ["DEFAULT_ROLE", "connection_uri", "format_age"]

DEFAULT_ROLE: Final = "app"


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


def format_age(timestamp: float | None, now: float | None = None) -> str:
    """'12s ago', '3m ago', '2h ago', '4d ago' or '-'."""
    if timestamp is None:
        return "-"
    seconds = max(0, int((now or time.time()) - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
