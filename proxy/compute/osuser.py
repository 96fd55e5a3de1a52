"""The unprivileged OS user computes run as when pgwake runs as root.

Postgres refuses to run as root, so a root pgwake starts computes as ``compute_user``
(default ``pgwake``), creating that system user when it is missing. The user must be able
to reach its data directories, so this module also tells whether a path is reachable.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["DEFAULT_COMPUTE_USER", "OsUser", "can_reach", "resolve_compute_user"]

DEFAULT_COMPUTE_USER: Final = "pgwake"
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OsUser:
    """An OS account computes run as."""

    name: str
    uid: int
    gid: int

    @property
    def groups(self) -> frozenset[int]:
        extra = {g.gr_gid for g in grp.getgrall() if self.name in g.gr_mem}
        return frozenset({self.gid, *extra})


def _create_system_user(name: str) -> None:
    nologin = shutil.which("nologin") or "/bin/false"
    if shutil.which("useradd"):
        command = [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            nologin,
            name,
        ]
    elif shutil.which("adduser"):  # busybox/Alpine
        command = ["adduser", "-S", "-D", "-H", "-s", nologin, name]
    else:
        raise RuntimeError(f"cannot create OS user {name!r}: no useradd or adduser")
    subprocess.run(command, check=True, capture_output=True, timeout=30)
    logger.warning("event=os_user_created user=%s reason=computes_cannot_run_as_root", name)


def resolve_compute_user(configured: str | None) -> OsUser | None:
    """Return the user computes run as, or ``None`` to run them as ourselves (non-root)."""
    if os.geteuid() != 0:
        return None
    name = configured or DEFAULT_COMPUTE_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _create_system_user(name)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise RuntimeError(f"compute user {name!r} is root; Postgres refuses to run as root")
    return OsUser(name, entry.pw_uid, entry.pw_gid)


def can_reach(path: Path, user: OsUser | None) -> bool:
    """True when ``user`` may search every directory on the way to ``path`` (inclusive)."""
    if user is None:
        return True
    groups = user.groups
    current = path.resolve()
    for directory in [current, *current.parents]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            continue  # not created yet: its parent decides
        if info.st_uid == user.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True
