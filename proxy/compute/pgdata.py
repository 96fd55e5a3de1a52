"""Facts read from a Postgres data directory and server log. Pure parsing, no processes.

``postmaster.pid`` layout is PostgreSQL's ``pidfile.h``: line 1 the postmaster PID, line 5
the socket directory, line 8 the status (``starting``, ``ready``, ``stopping``, ``standby``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["PostmasterPid", "read_postmaster_pid", "start_failure_reason"]

_MAX_REASON_LENGTH: Final = 400
_SEVERITY = re.compile(r"\b(LOG|FATAL|PANIC|ERROR|DETAIL|HINT):\s+(.*)")


@dataclass(frozen=True, slots=True)
class PostmasterPid:
    """The parts of ``postmaster.pid`` pgwake uses."""

    pid: int
    socket_dir: str | None
    port: int | None
    status: str | None


def read_postmaster_pid(data_dir: Path) -> PostmasterPid | None:
    """Parse ``data_dir/postmaster.pid``; ``None`` if absent or still being written."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    if not lines or not lines[0].strip().isdigit():
        return None

    def line(number: int) -> str | None:
        return lines[number - 1].strip() if len(lines) >= number else None

    port = line(4)
    return PostmasterPid(
        pid=int(lines[0]),
        socket_dir=line(5) or None,
        port=int(port) if port and port.isdigit() else None,
        status=line(8),
    )


def start_failure_reason(log_text: str, data_dir: Path) -> str:
    """Distil why a postmaster exited during start from the log lines it wrote.

    Returns the FATAL/PANIC message with the LOG line just before it (config errors put the
    file and line there), the data directory path replaced by ``<data>``.
    """
    entries = [m.groups() for m in map(_SEVERITY.search, log_text.splitlines()) if m]
    reason = ""
    for index, (severity, text) in enumerate(entries):
        if severity in ("FATAL", "PANIC"):
            before = entries[index - 1] if index else None
            reason = text
            if before and before[0] in ("LOG", "ERROR"):
                reason = f"{text} ({before[1]})"
    if not reason:
        reason = "postgres exited during start without a FATAL message"
    reason = reason.replace(str(data_dir), "<data>")
    return reason[:_MAX_REASON_LENGTH]
