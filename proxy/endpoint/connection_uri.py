"""Small endpoint helpers shared by the control plane and the CLI: the connection URI
clients are given, and how times are shown.

The URI names the endpoint in its user name, ``<role>.<endpoint>`` (one of the three
routing forms, ``pgwake.edge.routing``), because every driver passes a user name on
unchanged: libpq (psql, psycopg), asyncpg, SQLAlchemy on either, node-postgres and
pgjdbc. The ``options=endpoint%3D...`` form is not for every driver: asyncpg reads
``options`` in a URI as a keyword it does not know (SQLAlchemy on asyncpg fails with
"unexpected keyword argument 'options'"), so it is not what pgwake prints.
"""

from __future__ import annotations

import datetime
import time
import urllib.parse
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pgwake.settings import Settings

__all__ = ["DEFAULT_ROLE", "connection_uri", "format_age", "format_time"]

DEFAULT_ROLE: Final = "app"


def connection_uri(
    settings: Settings, endpoint: str, role: str, password: str | None, database: str
) -> str:
    """A libpq URI that reaches ``endpoint`` through pgwake as ``role`` (the user name
    routing form, ``<role>.<endpoint>``), with ``password`` if given."""
    host, port = settings.listen_address
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    userinfo = urllib.parse.quote(f"{role}.{endpoint}", safe="")
    if password is not None:
        userinfo += ":" + urllib.parse.quote(password, safe="")
    return f"postgresql://{userinfo}@{host}:{port}/{urllib.parse.quote(database, safe='')}"


_UNITS: Final = (("d", 86400), ("h", 3600), ("m", 60))


def _span(seconds: int) -> str:
    for unit, size in _UNITS:
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_age(timestamp: float | None, now: float | None = None) -> str:
    """'12s ago', '3m ago', '2h ago', '4d ago'; 'in 5m' for a time to come; '-' for
    ``None``."""
    if timestamp is None:
        return "-"
    seconds = int((now if now is not None else time.time()) - timestamp)
    return f"in {_span(-seconds)}" if seconds < 0 else f"{_span(seconds)} ago"


def format_time(timestamp: float | None, now: float | None = None) -> str:
    """A unix time as local ISO 8601 to the second, with its age:
    ``2026-11-29T13:41:19+01:00 (3m ago)``; '-' for ``None``."""
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp).astimezone()
    return f"{moment.isoformat(timespec='seconds')} ({format_age(timestamp, now)})"
