"""The postgresql.conf settings pgwake gives a compute, for every backend.

Rule: a setting every compute gets is in ``COMMON_SETTINGS``, here and nowhere else. A
backend passes only where its computes listen, which differs: a local compute listens on
its unix socket alone, a container on loopback TCP (the port is picked when the container
is made, so it is on that command line). Each backend appends ``render``'s block once, to
the postgresql.conf initdb wrote (the local template; a docker endpoint's volume).
"""

from __future__ import annotations

from typing import Final

__all__ = ["COMMON_SETTINGS", "render"]

#: Every compute's settings, as postgresql.conf values (strings quoted).
COMMON_SETTINGS: Final = {
    # Every client session is its own backend (no pooling), so leave room for bursts.
    "max_connections": "300",
    "shared_buffers": "32MB",
    # The time and the process in each line, for the compute's own log.
    "log_line_prefix": "'%m [%p] '",
}

_HEADER: Final = "\n# --- pgwake ---\n"


def render(
    *, listen_addresses: str | None = None, unix_socket_permissions: str | None = None
) -> str:
    """The block to append to a compute's postgresql.conf: the backend's listening
    settings (``None`` leaves one to the command line or Postgres's default), then
    ``COMMON_SETTINGS``. Values are postgresql.conf values: ``listen_addresses="''"``."""
    own = {"listen_addresses": listen_addresses, "unix_socket_permissions": unix_socket_permissions}
    settings = {name: value for name, value in own.items() if value is not None}
    settings.update(COMMON_SETTINGS)
    return _HEADER + "".join(f"{name} = {value}\n" for name, value in settings.items())
