"""Local compute backend: each endpoint is a data directory and a ``postgres`` process.

Layout under ``<state_dir>/computes`` (or a reachable fallback, see ``_compute_root``)::

    template/            made once by initdb; new endpoints are copies of it
    endpoints/<name>/data         the endpoint's PGDATA
    endpoints/<name>/run          private socket directory (mode 0700)
    endpoints/<name>/postgres.log server log (postgres.log.1: the one before, see _spawn)

Start spawns ``postgres`` directly and polls ``postmaster.pid`` for the ``ready`` status
every few milliseconds (``pg_ctl -w`` sleeps in 100 ms steps). Stop is SIGINT, a fast
shutdown with a checkpoint; SIGQUIT only after ``stop_timeout``, logged as an error.
Computes run in their own session, so they outlive a ``kill -9`` of pgwake and are
adopted by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pgwake.compute import (
    ComputeAddress,
    ComputeStartError,
    EndpointSpec,
    management,
    postgresql_conf,
)
from pgwake.compute.binaries import find_bindir
from pgwake.compute.osuser import OsUser, can_reach, resolve_compute_user
from pgwake.compute.pgdata import read_postmaster_pid, start_failure_reason
from pgwake.state_dir import StateDir, write_private

if TYPE_CHECKING:
    from pgwake.settings import Settings

__all__ = ["LocalBackend"]

logger = logging.getLogger(__name__)

_PORT: Final = 5432
# sockaddr_un.sun_path is 108 bytes on Linux, 104 on macOS; keep a margin.
_MAX_SOCKET_PATH: Final = 100
_READY_POLL_SECONDS: Final = 0.002
_TEMPLATE_READY_MARK: Final = "template.ready"
# Bumped when the template's contents change; an older template is made again.
# 2: the template holds the default role and database, so creating an endpoint is a copy.
# 3: 1 MB WAL segments (a smaller copy).
_TEMPLATE_VERSION: Final = "3"
_SETUP_FILE: Final = "setup.json"
# Ready copies of the template kept by a running server (each ~35 MB of disk).
_SPARE_COPIES: Final = 2
# A start moves a server log this big to postgres.log.1 (replacing the older one), so an
# endpoint woken thousands of times keeps at most about twice this much log.
_LOG_ROTATE_BYTES: Final = 16 * 1024 * 1024
# Run by a single-user backend on the template: the default role (no password until an
# endpoint's first start sets its verifier) and its database.
_TEMPLATE_SQL: Final = (
    "CREATE ROLE app NOLOGIN CREATEDB CREATEROLE;\nCREATE DATABASE app OWNER app;\n"
)
_FALLBACK_ROOT: Final = Path("/var/lib/pgwake")

# Appended to the template's postgresql.conf. Computes listen on a unix socket only, in a
# directory of their own, that only the compute user may use.
_TEMPLATE_CONF: Final = postgresql_conf.render(
    listen_addresses="''", unix_socket_permissions="0700"
)


class LocalBackend:
    """Runs computes as ``postgres`` processes on this host."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._user: OsUser | None = resolve_compute_user(settings.compute_user)
        self._state = StateDir(settings.state_dir.resolve())
        self._root = self._compute_root()
        self._bindir = self._reachable_bindir(find_bindir(settings.pg_bindir))
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._spares_wanted = asyncio.Event()

    # -- paths ---------------------------------------------------------------------------

    def _compute_root(self) -> Path:
        root = self._state.computes
        if can_reach(root, self._user):
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
        if can_reach(bindir / "postgres", self._user):
            return bindir
        # E.g. the pgserver wheel under /root/...: out of the compute user's reach. Copy the
        # install (bin, lib, share) next to the computes once, keeping the layout its
        # relative rpath expects: auditwheel puts shared libraries in a sibling
        # "<package>.libs" directory of the package, three levels above bin/.
        install = bindir.parent
        package = install.parent
        wheel_libs = package.parent / f"{package.name}.libs"
        target = self._root / "postgres-bundle" / package.name / install.name
        if not (target / "bin" / "postgres").is_file():
            self._root.mkdir(parents=True, exist_ok=True, mode=0o711)
            shutil.copytree(install, target, symlinks=True, dirs_exist_ok=True)
            if wheel_libs.is_dir():
                shutil.copytree(
                    wheel_libs,
                    target.parent.parent / wheel_libs.name,
                    symlinks=True,
                    dirs_exist_ok=True,
                )
            for directory in (self._root / "postgres-bundle", target.parent):
                directory.chmod(0o755)
        return target / "bin"

    @property
    def bindir(self) -> Path:
        return self._bindir

    @property
    def _template(self) -> Path:
        return self._root / "template"

    def _endpoint_dir(self, endpoint: str) -> Path:
        return self._root / "endpoints" / endpoint

    def data_dir(self, endpoint: str) -> Path:
        """The endpoint's PGDATA (tests break its config to test start failures)."""
        return self._endpoint_dir(endpoint) / "data"

    def _socket_dir(self, endpoint: str) -> Path:
        preferred = self._endpoint_dir(endpoint) / "run"
        if len(str(preferred / f".s.PGSQL.{_PORT}")) <= _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(str(self._root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgwake-{digest}" / endpoint

    def _address(self, socket_dir: Path | str) -> ComputeAddress:
        return ComputeAddress(unix_socket=f"{socket_dir}/.s.PGSQL.{_PORT}", port=_PORT)

    def _admin_password(self) -> str:
        return management.admin_password(self._state)

    # -- ownership -----------------------------------------------------------------------

    def _mkdir_for_compute(self, path: Path, mode: int = 0o700) -> None:
        """Create ``path`` owned by the compute user; refuse a path someone else owns."""
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        info = path.lstat()
        expected = self._user.uid if self._user else os.geteuid()
        if info.st_uid not in (expected, os.geteuid()):
            raise ComputeStartError(f"directory {path.name} is owned by another user")
        if self._user is not None:
            os.chown(path, self._user.uid, self._user.gid)
        path.chmod(mode)

    def _run_as_compute(
        self, argv: list[str], extra_env: dict[str, str] | None = None, **kwargs: object
    ) -> None:
        user = (
            {"user": self._user.uid, "group": self._user.gid, "extra_groups": []}
            if self._user
            else {}
        )
        subprocess.run(
            argv,
            check=True,
            capture_output=True,
            timeout=300,
            env={**self._child_env(), **(extra_env or {})},
            **user,
            **kwargs,
        )  # type: ignore[call-overload]

    def _child_env(self) -> dict[str, str]:
        return {
            "PATH": f"{self._bindir}:/usr/bin:/bin",
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": os.environ.get("TZ", "UTC"),
        }

    # -- template ------------------------------------------------------------------------

    def _template_ready(self) -> bool:
        try:
            return (self._root / _TEMPLATE_READY_MARK).read_text().strip() == _TEMPLATE_VERSION
        except FileNotFoundError:
            return False

    def resolve_options(self, requested: dict[str, str | None]) -> dict[str, str]:
        given = sorted(key for key, value in requested.items() if value is not None)
        if given:
            raise ValueError(f"local endpoints take no {', '.join(given)} (docker ones do)")
        return {}

    async def prepare(self) -> None:
        """Make the template data directory once (initdb), guarded by a file lock."""
        if self._template_ready():
            return
        await asyncio.to_thread(self._make_template)

    def _make_template(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True, mode=0o711)
        self._root.chmod(0o711)  # the compute user needs to pass through, not to list
        (self._root / "endpoints").mkdir(exist_ok=True, mode=0o711)
        with open(self._root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._template_ready():
                return
            management.admin_password(self._state)
            shutil.rmtree(self._template, ignore_errors=True)
            shutil.rmtree(self._root / "spares", ignore_errors=True)  # copies of the old one
            self._mkdir_for_compute(self._template)
            pwfile = self._root / ".initdb-pw"
            write_private(pwfile, self._admin_password().encode())
            if self._user:
                os.chown(pwfile, self._user.uid, self._user.gid)
            started = time.monotonic()
            try:
                self._run_as_compute(
                    [
                        str(self._bindir / "initdb"),
                        "-D",
                        str(self._template),
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
                    cwd=str(self._root),
                )
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
            finally:
                pwfile.unlink(missing_ok=True)
            with open(self._template / "postgresql.conf", "a") as conf:
                conf.write(_TEMPLATE_CONF)
            try:
                self._run_as_compute(
                    [
                        str(self._bindir / "postgres"),
                        "--single",
                        "-D",
                        str(self._template),
                        "-F",
                        "-c",
                        "listen_addresses=",
                        "postgres",
                    ],
                    cwd=str(self._root),
                    input=_TEMPLATE_SQL.encode(),
                )
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(
                    f"template setup failed: {exc.stderr.decode(errors='replace')}"
                ) from exc
            os.sync()  # initdb ran with --no-sync; flush once here instead of per file
            (self._root / _TEMPLATE_READY_MARK).write_text(_TEMPLATE_VERSION)
            logger.info(
                "event=template_created ms=%d bindir=%s",
                (time.monotonic() - started) * 1000,
                self._bindir,
            )

    # -- create / delete -----------------------------------------------------------------

    async def create(self, spec: EndpointSpec) -> None:
        await self.prepare()
        endpoint_dir = self._endpoint_dir(spec.name)
        if endpoint_dir.exists():
            raise FileExistsError(f"endpoint {spec.name!r} already has a data directory")
        try:
            self._mkdir_for_compute(endpoint_dir)
            if not self._take_spare(self.data_dir(spec.name)):
                await asyncio.to_thread(self._copy_template, self.data_dir(spec.name))
            self._spares_wanted.set()
            # The role's verifier is set on the first start (see _apply_setup): creating
            # an endpoint is just this copy.
            setup = endpoint_dir / _SETUP_FILE
            write_private(
                setup,
                json.dumps(
                    {"role": spec.role, "database": spec.database, "verifier": spec.verifier}
                ).encode(),
            )
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, endpoint_dir, True)
            raise

    # -- spare copies of the template ----------------------------------------------------

    def _copy_template(self, target: Path) -> None:
        subprocess.run(
            _copy_command(self._template, target), check=True, capture_output=True, timeout=300
        )

    def _take_spare(self, target: Path) -> bool:
        """Move a ready copy of the template into place (a rename: instant)."""
        spares = self._root / "spares"
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
            return sum(1 for p in (self._root / "spares").iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return 0

    async def _make_spare(self) -> None:
        """Copy the template into ``spares/``. Cancelled (the server stops), the copy stops
        too and leaves nothing: a copy in a thread would hold the process's exit up
        until it had finished."""
        spares = self._root / "spares"
        spares.mkdir(exist_ok=True, mode=0o711)
        name = secrets.token_hex(8)
        partial = spares / f".{name}"
        try:
            copy = await asyncio.create_subprocess_exec(
                *_copy_command(self._template, partial),
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

    async def maintain(self, spares: int = _SPARE_COPIES) -> None:
        """Keep ``spares`` copies of the template ready, so that creating an endpoint is a
        rename rather than a 35 MB copy. Runs until cancelled (the server runs it)."""
        await self.prepare()
        while True:
            while self._spare_count() < spares:
                await self._make_spare()
            self._spares_wanted.clear()
            await self._spares_wanted.wait()

    async def branch(self, source: str, target: str) -> None:
        """Copy the running ``source`` with ``pg_basebackup`` (a consistent snapshot even
        under writes); the copy recovers to that point on its first start."""
        address = self._probe(source)
        if address is None:
            raise ComputeStartError("the source compute is not running")
        target_dir = self._endpoint_dir(target)
        if target_dir.exists():
            raise FileExistsError(f"endpoint {target!r} already has a data directory")
        assert address.unix_socket is not None
        socket_dir = address.unix_socket.rsplit("/", 1)[0]
        try:
            self._mkdir_for_compute(target_dir)
            argv = [
                str(self._bindir / "pg_basebackup"),
                "-h",
                socket_dir,
                "-p",
                str(_PORT),
                "-U",
                management.ADMIN_ROLE,
                "-D",
                str(self.data_dir(target)),
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-password",
            ]
            try:
                await asyncio.to_thread(
                    self._run_as_compute,
                    argv,
                    cwd=str(target_dir),
                    extra_env={"PGPASSWORD": self._admin_password()},
                )
            except subprocess.CalledProcessError as exc:
                lines = exc.stderr.decode(errors="replace").strip().splitlines()
                raise ComputeStartError(
                    f"pg_basebackup failed: {lines[-1] if lines else '?'}"
                ) from None
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, target_dir, True)
            raise

    async def delete(self, endpoint: str) -> None:
        if self._postmaster_pid(endpoint) is not None:
            await self.stop(endpoint)
        await asyncio.to_thread(shutil.rmtree, self._endpoint_dir(endpoint), True)
        with contextlib.suppress(OSError):
            shutil.rmtree(self._socket_dir(endpoint))

    # -- start / stop --------------------------------------------------------------------

    async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
        data_dir = self.data_dir(endpoint)
        if not data_dir.is_dir():
            raise ComputeStartError("the endpoint has no data directory")
        running = self._probe(endpoint)
        if running is not None:
            return running
        socket_dir = self._socket_dir(endpoint)
        self._mkdir_for_compute(socket_dir.parent, mode=0o711)
        self._mkdir_for_compute(socket_dir)
        log_path = self._endpoint_dir(endpoint) / "postgres.log"
        # fork+exec takes milliseconds: off the event loop, so other sessions keep flowing.
        process, log_offset = await asyncio.to_thread(self._spawn, data_dir, socket_dir, log_path)
        self._children[endpoint] = process
        deadline = time.monotonic() + ready_timeout
        while True:
            pid_file = read_postmaster_pid(data_dir)
            if pid_file is not None and pid_file.pid == process.pid and pid_file.status == "ready":
                address = self._address(socket_dir)
                await self._apply_setup(endpoint, address)
                return address
            if process.poll() is not None:
                self._children.pop(endpoint, None)
                raise ComputeStartError(self._failure_reason(log_path, log_offset, data_dir))
            if time.monotonic() > deadline:
                await self.stop(endpoint)
                raise ComputeStartError(f"postgres did not become ready within {ready_timeout:g} s")
            await asyncio.sleep(_READY_POLL_SECONDS)

    async def _apply_setup(self, endpoint: str, address: ComputeAddress) -> None:
        """First start of a new endpoint: give its role the verifier chosen at create."""
        setup_path = self._endpoint_dir(endpoint) / _SETUP_FILE
        try:
            setup = json.loads(setup_path.read_text())
        except FileNotFoundError:
            return
        spec = EndpointSpec(endpoint, setup["role"], setup["database"], setup["verifier"])
        try:
            await management.setup_endpoint(address, self._admin_password(), spec)
        except Exception as exc:
            logger.exception("event=endpoint_setup_failed endpoint=%s", endpoint)
            await self.stop(endpoint)
            raise ComputeStartError("the endpoint's first-start setup failed") from exc
        setup_path.unlink()

    def _spawn(
        self, data_dir: Path, socket_dir: Path, log_path: Path
    ) -> tuple[subprocess.Popen[bytes], int]:
        with contextlib.suppress(FileNotFoundError):
            if log_path.stat().st_size >= _LOG_ROTATE_BYTES:
                log_path.replace(log_path.with_name(log_path.name + ".1"))
        with open(log_path, "ab") as log:
            log_offset = log.tell()
            user = (
                {"user": self._user.uid, "group": self._user.gid, "extra_groups": []}
                if self._user
                else {}
            )
            process = subprocess.Popen(  # type: ignore[call-overload]
                [
                    str(self._bindir / "postgres"),
                    "-D",
                    str(data_dir),
                    "-k",
                    str(socket_dir),
                    "-p",
                    str(_PORT),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(data_dir.parent),
                env=self._child_env(),
                start_new_session=True,
                close_fds=True,
                **user,
            )
        return process, log_offset

    def _failure_reason(self, log_path: Path, offset: int, data_dir: Path) -> str:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read(64 * 1024).decode("utf-8", "replace")
        return start_failure_reason(text, data_dir)

    def _postmaster_pid(self, endpoint: str) -> int | None:
        child = self._children.get(endpoint)
        if child is not None:
            if child.poll() is None:
                return child.pid
            del self._children[endpoint]  # reaped now; fall through to the pid file
        pid_file = read_postmaster_pid(self.data_dir(endpoint))
        if pid_file is None or not _is_postgres_process(pid_file.pid):
            return None
        return pid_file.pid

    async def stop(self, endpoint: str) -> None:
        pid = self._postmaster_pid(endpoint)
        if pid is None:
            return
        started = time.monotonic()
        if await self._signal_and_wait(endpoint, pid, signal.SIGINT, self._settings.stop_timeout):
            logger.debug(
                "event=compute_stopped endpoint=%s ms=%d",
                endpoint,
                (time.monotonic() - started) * 1000,
            )
            return
        logger.error(
            "event=compute_stop_hung endpoint=%s pid=%d action=SIGQUIT waited_s=%g",
            endpoint,
            pid,
            self._settings.stop_timeout,
        )
        if await self._signal_and_wait(endpoint, pid, signal.SIGQUIT, 10):
            return
        logger.error("event=compute_stop_hung endpoint=%s pid=%d action=SIGKILL", endpoint, pid)
        await self._signal_and_wait(endpoint, pid, signal.SIGKILL, 10)

    async def _signal_and_wait(self, endpoint: str, pid: int, signum: int, bound: float) -> bool:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if self._postmaster_pid(endpoint) != pid:
                return True
            await asyncio.sleep(_READY_POLL_SECONDS)
        return False

    # -- observation ---------------------------------------------------------------------

    async def probe(self, endpoint: str) -> ComputeAddress | None:
        return self._probe(endpoint)

    def _probe(self, endpoint: str) -> ComputeAddress | None:
        pid = self._postmaster_pid(endpoint)
        if pid is None:
            return None
        pid_file = read_postmaster_pid(self.data_dir(endpoint))
        if pid_file is None or pid_file.status != "ready" or not pid_file.socket_dir:
            return None
        return self._address(pid_file.socket_dir)

    async def is_alive(self, endpoint: str) -> bool:
        return self._postmaster_pid(endpoint) is not None

    def management(self, endpoint: str) -> management.ManagementConnection | None:
        address = self._probe(endpoint)
        if address is None:
            return None
        return management.ManagementConnection(address, self._admin_password())

    async def close(self) -> None:
        """Nothing to release: computes are plain processes that outlive pgwake."""

    def disk_bytes(self, endpoint: str) -> int:
        total = 0
        for directory, _, files in os.walk(self._endpoint_dir(endpoint)):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(directory, name)).st_size
        return total


def _copy_command(source: Path, target: Path) -> list[str]:
    """``cp`` of a data directory: ``-a`` keeps the compute user's ownership; reflink makes
    it instant where the filesystem allows (btrfs, XFS), a plain copy (~35 MB) elsewhere."""
    return ["cp", "-a", "--reflink=auto", str(source), str(target)]


def _is_postgres_process(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) process that looks like a postmaster."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if sys.platform != "linux":
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat_line.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and b"postgres" in cmdline
