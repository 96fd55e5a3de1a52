"""Find PostgreSQL server binaries (``postgres``, ``initdb``).

Order: the ``pg_bindir`` setting, then ``PATH`` / ``pg_config --bindir``, then the newest
``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu), then the ``pgserver`` wheel that pgwake
depends on, so a plain ``pip install`` works on a machine without Postgres.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["PostgresNotFound", "find_bindir", "server_version"]

_DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"


class PostgresNotFound(Exception):
    """No usable PostgreSQL server binaries; the message lists every place tried."""


def _usable(bindir: Path) -> bool:
    return (bindir / "postgres").is_file() and (bindir / "initdb").is_file()


def _from_path() -> Path | None:
    postgres = shutil.which("postgres")
    # Resolve symlinks (/usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres):
    # initdb and postgres find their share/ and lib/ relative to the real binary.
    if postgres and _usable(Path(postgres).resolve().parent):
        return Path(postgres).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        if out and _usable(Path(out)):
            return Path(out)
    return None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def _from_debian_layout() -> Path | None:
    candidates = [p for p in Path("/").glob(_DEBIAN_GLOB.lstrip("/")) if _usable(p)]
    return max(candidates, key=_version_key) if candidates else None


def _from_pgserver_wheel() -> Path | None:
    # Located without importing: importing pgserver has side effects (warnings, dirs).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if _usable(bindir):
            return bindir
    return None


def find_bindir(configured: Path | None) -> Path:
    """Return the directory holding ``postgres`` and ``initdb``; raise ``PostgresNotFound``."""
    if configured is not None:
        if _usable(configured):
            return configured
        raise PostgresNotFound(f"pg_bindir {configured} holds no postgres and initdb")
    for finder in (_from_path, _from_debian_layout, _from_pgserver_wheel):
        found = finder()
        if found is not None:
            return found
    raise PostgresNotFound(
        "no PostgreSQL server binaries found: tried PGWAKE_PG_BINDIR, PATH, pg_config, "
        f"{_DEBIAN_GLOB} and the pgserver wheel; install PostgreSQL or `pip install pgserver`"
    )


def server_version(bindir: Path) -> str:
    """Return e.g. ``15.8`` for the ``postgres`` in ``bindir``."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    match = re.search(r"(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else out.strip()
