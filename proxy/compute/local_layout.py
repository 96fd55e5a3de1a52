"""Where the local backend's computes live on this host, and acting there as the compute user.

Layout under ``<state_dir>/computes``, or under ``/var/lib/pgwake/<digest>`` when the compute
user cannot reach the state dir (see ``LocalLayout``)::

    template/                     made once by initdb; new endpoints are copies of it
    spares/                       ready copies of the template (``local_template.py``)
    postgres-bundle/              the server binaries, when the compute user cannot reach them
    endpoints/<name>/data         the endpoint's PGDATA
    endpoints/<name>/run          private socket directory (mode 0700)
    endpoints/<name>/postgres.log server log (``local_process.py`` rotates it)

Every directory a compute uses is made here, owned by the compute user; every command a
compute runs (initdb, pg_basebackup) gets the same small environment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pgwake.compute import ComputeAddress, ComputeStartError
from pgwake.compute.binaries import find_bindir
from pgwake.compute.osuser import OsUser, can_reach, resolve_compute_user

if TYPE_CHECKING:
    from pgwake.settings import Settings
    from pgwake.state_dir import StateDir

__all__ = ["PORT", "LocalLayout"]

logger = logging.getLogger(__name__)

#: The port every local compute listens on, in its own socket directory.
PORT: Final = 5432
# sockaddr_un.sun_path is 108 bytes on Linux, 104 on macOS; keep a margin.
_MAX_SOCKET_PATH: Final = 100
_FALLBACK_ROOT: Final = Path("/var/lib/pgwake")


class LocalLayout:
    """The compute root, the server binaries and the compute user of one state dir."""

    def __init__(self, settings: Settings, state: StateDir) -> None:
        self._state = state
        self.user: OsUser | None = resolve_compute_user(settings.compute_user)
        self.root = self._compute_root()
        self.bindir = self._reachable_bindir(find_bindir(settings.pg_bindir))

    def _compute_root(self) -> Path:
        root = self._state.computes
        if can_reach(root, self.user):
            return root
        # e.g. a state dir under /root (mode 0700): the compute user cannot get there.
        digest = hashlib.sha256(str(self._state.path).encode()).hexdigest()[:12]
        fallback = _FALLBACK_ROOT / digest
        logger.warning(
            "event=compute_root_fallback state_dir=%s compute_root=%s "
            "reason=compute_user_cannot_reach_state_dir",
            self._state.path,
            fallback,
        )
        return fallback

    def _reachable_bindir(self, bindir: Path) -> Path:
        if can_reach(bindir / "postgres", self.user):
            return bindir
        # E.g. the pgserver wheel under /root/...: out of the compute user's reach. Copy the
        # install (bin, lib, share) next to the computes once, keeping the layout its
        # relative rpath expects: auditwheel puts shared libraries in a sibling
        # "<package>.libs" directory of the package, three levels above bin/.
        install = bindir.parent
        package = install.parent
        wheel_libs = package.parent / f"{package.name}.libs"
        target = self.root / "postgres-bundle" / package.name / install.name
        if not (target / "bin" / "postgres").is_file():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
            shutil.copytree(install, target, symlinks=True, dirs_exist_ok=True)
            if wheel_libs.is_dir():
                shutil.copytree(
                    wheel_libs,
                    target.parent.parent / wheel_libs.name,
                    symlinks=True,
                    dirs_exist_ok=True,
                )
            for directory in (self.root / "postgres-bundle", target.parent):
                directory.chmod(0o755)
        return target / "bin"

    # -- paths ---------------------------------------------------------------------------

    @property
    def template(self) -> Path:
        return self.root / "template"

    def endpoint_dir(self, endpoint: str) -> Path:
        return self.root / "endpoints" / endpoint

    def data_dir(self, endpoint: str) -> Path:
        return self.endpoint_dir(endpoint) / "data"

    def socket_dir(self, endpoint: str) -> Path:
        preferred = self.endpoint_dir(endpoint) / "run"
        if len(str(preferred / f".s.PGSQL.{PORT}")) <= _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgwake-{digest}" / endpoint

    def address(self, socket_dir: Path | str) -> ComputeAddress:
        return ComputeAddress(unix_socket=f"{socket_dir}/.s.PGSQL.{PORT}", port=PORT)

    # -- ownership -----------------------------------------------------------------------

    def mkdir_for_compute(self, path: Path, mode: int = 0o700) -> None:
        """Create ``path`` owned by the compute user; refuse a path someone else owns."""
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        info = path.lstat()
        expected = self.user.uid if self.user else os.geteuid()
        if info.st_uid not in (expected, os.geteuid()):
            raise ComputeStartError(f"directory {path.name} is owned by another user")
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid)
        path.chmod(mode)

    def as_compute_user(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a child as the compute user (none when pgwake
        is not root)."""
        if self.user is None:
            return {}
        return {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}

    def run_as_compute(
        self, argv: list[str], extra_env: dict[str, str] | None = None, **kwargs: object
    ) -> None:
        """Run ``argv`` to its end as the compute user; ``CalledProcessError`` unless it
        exits 0."""
        subprocess.run(
            argv,
            check=True,
            capture_output=True,
            timeout=300,
            env={**self.child_env(), **(extra_env or {})},
            **self.as_compute_user(),
            **kwargs,
        )  # type: ignore[call-overload]

    def child_env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bindir}:/usr/bin:/bin",
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": os.environ.get("TZ", "UTC"),
        }
