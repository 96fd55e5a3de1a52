"""How ``pgwake endpoint`` prints endpoints: the ``list`` table and ``get``'s fields, as
people read them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pgwake.endpoint.connection_uri import format_age, format_time

if TYPE_CHECKING:
    from pgwake.api.client import Endpoint

__all__ = [
    "megabytes",
    "print_endpoint",
    "print_endpoint_header",
    "print_endpoint_row",
    "session_lines",
]

_TIMES = frozenset({"created_at", "last_active", "expires_at"})
#: Shown within the ``sessions`` line and the lines under it (``session_lines``).
_IN_SESSIONS = frozenset({"session_states", "pinned_sessions"})
_STATES = ("active", "idle", "parked", "pinned")


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
    if isinstance(value, bool):  # as the flags spell it
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def session_lines(endpoint: Endpoint) -> list[str]:
    """``endpoint get``'s ``sessions`` line, by state, then one indented line per pinned
    session: ``sessions: 3 (1 active, 1 idle, 0 parked, 1 pinned)``."""
    states = endpoint.session_states
    counts = ", ".join(f"{states.get(state, 0)} {state}" for state in _STATES)
    lines = [f"sessions: {endpoint.sessions} ({counts})"]
    lines.extend(
        f"  pinned since {format_time(pinned.since)}: {pinned.client} "
        f"app={pinned.application_name or '-'} reason={pinned.reason}"
        for pinned in endpoint.pinned_sessions
    )
    return lines


def print_endpoint(endpoint: Endpoint, disk: int | None) -> None:
    for field in dataclasses.fields(endpoint):
        if field.name == "password" or field.name in _IN_SESSIONS:
            continue
        if field.name == "sessions":
            print("\n".join(session_lines(endpoint)))
            continue
        text = _shown(field.name, getattr(endpoint, field.name))
        if field.name == "disk_bytes":
            text = f"{disk} ({megabytes(disk).strip()})" if disk is not None else "-"
        print(f"{field.name}: {text}" if text else f"{field.name}:")


def megabytes(size: int | None) -> str:
    return f"{size / 2**20:>7.1f}MB" if size is not None else f"{'-':>9}"


def print_endpoint_header() -> None:
    """The header line of ``endpoint list``."""
    print(f"{'NAME':<24} {'STATE':<11} {'BACKEND':<8} {'IDLE':>6} {'LAST ACTIVE':<12} {'DISK':>9}")


def print_endpoint_row(row: Endpoint, disk: int | None) -> None:
    """One line of ``endpoint list``."""
    idle = f"{row.idle_timeout_seconds:g}s" if row.idle_timeout_seconds else "-"
    last = "now" if row.sessions else format_age(row.last_active)
    print(f"{row.name:<24} {row.state:<11} {row.backend:<8} {idle:>6} {last:<12} {megabytes(disk)}")
