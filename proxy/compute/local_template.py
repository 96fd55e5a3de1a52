"""The local backend's template data directory and its spare copies.

``initdb`` runs once per compute root (guarded by a file lock) and a single-user backend
adds the default role and database, so creating an endpoint is a copy of the template.
A running server keeps ``_SPARE_COPIES`` ready copies under ``spares/``, so that a create is
usually a rename, not a 35 MB copy. A template made by an older pgwake
(``_TEMPLATE_VERSION``) is made again, and its spares with it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Final

from pgwake.compute import management, postgresql_conf
from pgwake.state_dir import write_private

if TYPE_CHECKING:
    from pathlib import Path

    from pgwake.compute.local_layout import LocalLayout
    from pgwake.state_dir import StateDir

__all__ = ["SPARE_COPIES", "Template"]

logger = logging.getLogger(__name__)

_TEMPLATE_READY_MARK: Final = "template.ready"
# Bumped when the template's contents change; an older template is made again.
# 2: the template holds the default role and database, so creating an endpoint is a copy.
# 3: 1 MB WAL segments (a smaller copy).
_TEMPLATE_VERSION: Final = "3"
#: Ready copies of the template kept by a running server (each ~35 MB of disk).
SPARE_COPIES: Final = 2
# Run by a single-user backend on the template: the default role (no password until an
# endpoint's first start sets its verifier) and its database.
_TEMPLATE_SQL: Final = (
    "CREATE ROLE app NOLOGIN CREATEDB CREATEROLE;\nCREATE DATABASE app OWNER app;\n"
)

# Appended to the template's postgresql.conf. Computes listen on a unix socket only, in a
# directory of their own, that only the compute user may use.
_TEMPLATE_CONF: Final = postgresql_conf.render(
    listen_addresses="''", unix_socket_permissions="0700"
)


class Template:
    """The template under ``layout.root`` and its spare copies."""

    def __init__(self, layout: LocalLayout, state: StateDir) -> None:
        self._layout = layout
        self._state = state
        self._spares_wanted = asyncio.Event()

    def _ready(self) -> bool:
        try:
            return (
                self._layout.root / _TEMPLATE_READY_MARK
            ).read_text().strip() == _TEMPLATE_VERSION
        except FileNotFoundError:
            return False

    async def prepare(self) -> None:
        """Make the template data directory once (initdb), guarded by a file lock."""
        if self._ready():
            return
        await asyncio.to_thread(self._make)

    def _make(self) -> None:
        layout = self._layout
        root = layout.root
        root.mkdir(parents=True, exist_ok=True, mode=0o711)
        root.chmod(0o711)  # the compute user needs to pass through, not to list
        (root / "endpoints").mkdir(exist_ok=True, mode=0o711)
        with open(root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._ready():
                return
            management.admin_password(self._state)
            shutil.rmtree(layout.template, ignore_errors=True)
            shutil.rmtree(root / "spares", ignore_errors=True)  # copies of the old one
            layout.mkdir_for_compute(layout.template)
            pwfile = root / ".initdb-pw"
            write_private(pwfile, management.admin_password(self._state).encode())
            if layout.user:
                os.chown(pwfile, layout.user.uid, layout.user.gid)
            started = time.monotonic()
            try:
                layout.run_as_compute(
                    [
                        str(layout.bindir / "initdb"),
                        "-D",
                        str(layout.template),
                        "-U",
                        management.ADMIN_ROLE,
                        f"--pwfile={pwfile}",
                        "-E",
                        "UTF8",
                        "--no-locale",
                        "--auth-local=scram-sha-256",
                        "--auth-host=scram-sha-256",
                        "--no-sync",
                        # 1 MB WAL segments instead of 16: every new endpoint copies the
                        # template, and a fresh cluster's WAL is one mostly empty segment.
                        "--wal-segsize=1",
                    ],
                    cwd=str(root),
                )
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
            finally:
                pwfile.unlink(missing_ok=True)
            with open(layout.template / "postgresql.conf", "a") as conf:
                conf.write(_TEMPLATE_CONF)
            try:
                layout.run_as_compute(
                    [
                        str(layout.bindir / "postgres"),
                        "--single",
                        "-D",
                        str(layout.template),
                        "-F",
                        "-c",
                        "listen_addresses=",
                        "postgres",
                    ],
                    cwd=str(root),
                    input=_TEMPLATE_SQL.encode(),
                )
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(
                    f"template setup failed: {exc.stderr.decode(errors='replace')}"
                ) from exc
            os.sync()  # initdb ran with --no-sync; flush once here instead of per file
            (root / _TEMPLATE_READY_MARK).write_text(_TEMPLATE_VERSION)
            logger.info(
                "event=template_created ms=%d bindir=%s",
                (time.monotonic() - started) * 1000,
                layout.bindir,
            )

    # -- copies --------------------------------------------------------------------------

    async def copy_to(self, target: Path) -> None:
        """Put a copy of the template at ``target``: a spare if one is ready (a rename),
        else a copy made now. Either way, ``maintain`` makes the spares up again."""
        if not self._take_spare(target):
            await asyncio.to_thread(self._copy, target)
        self._spares_wanted.set()

    def _copy(self, target: Path) -> None:
        subprocess.run(
            _copy_command(self._layout.template, target),
            check=True,
            capture_output=True,
            timeout=300,
        )

    def _take_spare(self, target: Path) -> bool:
        """Move a ready copy of the template into place (a rename: instant)."""
        spares = self._layout.root / "spares"
        try:
            names = sorted(p.name for p in spares.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return False
        for name in names:
            try:
                (spares / name).rename(target)  # atomic: two creators never share one
            except OSError:
                continue
            return True
        return False

    def _spare_count(self) -> int:
        try:
            return sum(
                1 for p in (self._layout.root / "spares").iterdir() if not p.name.startswith(".")
            )
        except FileNotFoundError:
            return 0

    async def _make_spare(self) -> None:
        """Copy the template into ``spares/``. Cancelled (the server stops), the copy stops
        too and leaves nothing: a copy in a thread would hold the process's exit up
        until it had finished."""
        spares = self._layout.root / "spares"
        spares.mkdir(exist_ok=True, mode=0o711)
        name = secrets.token_hex(8)
        partial = spares / f".{name}"
        try:
            copy = await asyncio.create_subprocess_exec(
                *_copy_command(self._layout.template, partial),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                _, stderr = await copy.communicate()
            finally:
                if copy.returncode is None:
                    copy.kill()
                    await copy.wait()
            if copy.returncode != 0:
                raise RuntimeError(f"cp failed: {stderr.decode(errors='replace').strip()}")
            partial.rename(spares / name)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    async def maintain(self, spares: int = SPARE_COPIES) -> None:
        """Keep ``spares`` copies of the template ready, so that creating an endpoint is a
        rename rather than a 35 MB copy. Runs until cancelled (the server runs it)."""
        await self.prepare()
        while True:
            while self._spare_count() < spares:
                await self._make_spare()
            self._spares_wanted.clear()
            await self._spares_wanted.wait()


def _copy_command(source: Path, target: Path) -> list[str]:
    """``cp`` of a data directory: ``-a`` keeps the compute user's ownership; reflink makes
    it instant where the filesystem allows (btrfs, XFS), a plain copy (~35 MB) elsewhere."""
    return ["cp", "-a", "--reflink=auto", str(source), str(target)]
