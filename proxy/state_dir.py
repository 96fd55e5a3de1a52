"""The state directory: the names of its files, its secrets, and their permissions.

Rule: only this module names the files of the state dir and gives them their modes; the
server, the CLI, the client and the backends ask ``StateDir``. (The local backend lays
out ``computes/`` itself.)

The catalog holds what Postgres keeps in its superuser-only ``pg_authid`` (SCRAM
verifiers) and API token hashes, so the state dir is kept the way Postgres keeps PGDATA:

* every file of ``SECRET_FILES`` (the catalog with its ``-wal``, ``-shm`` and ``-journal``
  files, the admin token, the management password, the SCRAM mock secret, the
  self-signed TLS key and certificate) is 0600: nothing for group or others;
* ``tls/`` is 0700;
* the state dir itself is 0700, or 0711 when pgwake runs as root: its computes then run
  as an unprivileged user who must pass through it to ``computes/``, but may not list it.

``StateDir.ensure()`` creates the state dir that way and tightens an existing one that
is wider (``pgwake serve`` and the local CLI call it before anything else), logging one
warning per change. A mode it cannot change (a file another user owns) raises
``UnsafeStateDir`` and pgwake does not start, as ssh refuses an unprotected private key.

Where it is: ``--state-dir`` or ``PGWAKE_STATE_DIR``, else ``default_path()``, a per-user
directory that does not depend on the current directory (``$XDG_DATA_HOME/pgwake``, or
``~/.local/share/pgwake``; ``/var/lib/pgwake`` for root). Commands that only read (``pgwake
status``, ``endpoint list``) never create it.

Only stdlib imports: ``pgwake.api.client`` reads the admin token through this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_TOKEN",
    "INSTANCE_ID",
    "MOCK_SECRET",
    "SECRET_FILES",
    "SYSTEM_STATE_DIR",
    "LooseMode",
    "StateDir",
    "UnsafeStateDir",
    "configured_path",
    "create_private",
    "default_path",
    "private_dir",
    "write_private",
]

logger = logging.getLogger(__name__)

CATALOG: Final = "catalog.sqlite3"
#: Bearer token of the HTTP API, generated when the ``admin_token`` setting is unset.
ADMIN_TOKEN: Final = "admin-token"  # noqa: S105 (a file name)
#: Password of the computes' management role ``pgwake_admin``.
ADMIN_PASSWORD: Final = "admin-password"  # noqa: S105 (a file name)
#: Key of the mock SCRAM exchange for unknown roles (its salts must not change).
MOCK_SECRET: Final = "mock-secret"  # noqa: S105 (a file name)
#: This server's id on a Docker engine.
INSTANCE_ID: Final = "instance-id"
_LOCK: Final = "server.lock"
_SERVE_LOG: Final = "serve.log"
_TLS: Final = "tls"
_TLS_KEY: Final = f"{_TLS}/server.key"
_TLS_CERT: Final = f"{_TLS}/server.crt"
_COMPUTES: Final = "computes"
#: Files under the state dir that only pgwake's user may read. SQLite names its side
#: files after the database: ``-wal`` and ``-shm`` in WAL mode, ``-journal`` otherwise.
SECRET_FILES: Final = (
    CATALOG,
    f"{CATALOG}-wal",
    f"{CATALOG}-shm",
    f"{CATALOG}-journal",
    ADMIN_TOKEN,
    ADMIN_PASSWORD,
    MOCK_SECRET,
    _TLS_KEY,
    _TLS_CERT,
)

_PRIVATE_FILE_MODE: Final = 0o600
_PRIVATE_DIR_MODE: Final = 0o700
#: Execute (search) only for group and others: the compute user reaches ``computes/``.
_PASS_THROUGH_DIR_MODE: Final = 0o711
#: Bits a secret file or ``tls/`` must not have: any access by group or others.
_GROUP_OTHER: Final = 0o077
#: Bits the state dir must not have: reading (listing) or writing by group or others.
_GROUP_OTHER_READ_WRITE: Final = 0o066


#: The state dir of a pgwake run as root, as a system service (the systemd unit in
#: ``deploy/`` names it too): root's home is no place for computes' data, which the
#: unprivileged compute user must reach.
SYSTEM_STATE_DIR: Final = Path("/var/lib/pgwake")


def default_path(environ: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """The state dir when neither ``--state-dir`` nor ``PGWAKE_STATE_DIR`` names one.

    ``$XDG_DATA_HOME/pgwake`` when that variable holds an absolute path (the XDG Base
    Directory spec ignores a relative one), else ``/var/lib/pgwake`` for root, else
    ``$HOME/.local/share/pgwake``. Never relative: every command finds the same state dir
    from any directory. ``environ`` and ``euid`` default to this process's."""
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    data_home = environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(data_home):
        return Path(data_home) / "pgwake"
    if euid == 0:
        return SYSTEM_STATE_DIR
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "pgwake"


def configured_path(environ: Mapping[str, str] | None = None) -> Path:
    """``PGWAKE_STATE_DIR`` if set, else ``default_path()``: the state dir of a process
    that has no settings (the Python client)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("PGWAKE_STATE_DIR") or default_path(environ))


class UnsafeStateDir(Exception):
    """A secret file or the state dir is open to other users and pgwake cannot fix it."""


@dataclass(frozen=True, slots=True)
class LooseMode:
    """A path under the state dir whose mode is wider than allowed."""

    path: Path
    #: Its permission bits now.
    mode: int
    #: The bits it should have: ``mode`` without the forbidden ones.
    wanted: int


def _write_temporary(path: Path, data: bytes) -> Path:
    """A new 0600 file next to ``path`` holding ``data``, flushed to disk."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def create_private(path: Path, data: bytes) -> bool:
    """Create ``path`` (mode 0600) holding ``data`` unless it exists; return whether this
    call created it.

    The file appears whole: it is written under a temporary name and hard-linked into
    place, which fails when ``path`` exists. Of two processes racing, one creates it and
    the other reads the winner's complete file. The umask cannot widen it."""
    if path.exists():
        return False
    temporary = _write_temporary(path, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    return True


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with a 0600 file holding ``data``."""
    temporary = _write_temporary(path, data)
    try:
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as a 0700 directory unless it exists; return it."""
    try:
        path.mkdir(parents=True, mode=_PRIVATE_DIR_MODE)
    except FileExistsError:
        return path
    path.chmod(_PRIVATE_DIR_MODE)  # mkdir's mode passes through the umask
    return path


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


class StateDir:
    """One pgwake state dir: the paths in it, its secret files, its permissions.

    Building one touches nothing on disk; ``ensure()`` creates or tightens the directory,
    ``secret()`` creates a secret file once. Read-only users (the client, a CLI command
    that talks to a running server) only read and ``server_running()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: The state dir's own mode when pgwake creates it (see the module docstring).
        self.mode = _PASS_THROUGH_DIR_MODE if os.geteuid() == 0 else _PRIVATE_DIR_MODE

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r})"

    # -- paths -----------------------------------------------------------------------------

    @property
    def catalog(self) -> Path:
        """The SQLite catalog: endpoints, their roles' SCRAM verifiers, API token hashes."""
        return self.path / CATALOG

    @property
    def admin_token(self) -> Path:
        return self.path / ADMIN_TOKEN

    @property
    def admin_password(self) -> Path:
        return self.path / ADMIN_PASSWORD

    def exists(self) -> bool:
        """Whether the state dir is there (a directory). Creates nothing."""
        return self.path.is_dir()

    @property
    def lock_file(self) -> Path:
        """Held (``flock``) by the one ``pgwake serve`` using this state dir, which writes
        its pid into it: the server's pid file."""
        return self.path / _LOCK

    @property
    def serve_log(self) -> Path:
        """Where ``pgwake serve --detach`` logs."""
        return self.path / _SERVE_LOG

    @property
    def tls_dir(self) -> Path:
        """Where the self-signed certificate is made when none is configured."""
        return self.path / _TLS

    @property
    def tls_cert(self) -> Path:
        return self.path / _TLS_CERT

    @property
    def tls_key(self) -> Path:
        return self.path / _TLS_KEY

    @property
    def computes(self) -> Path:
        """The local backend's computes (it may fall back elsewhere, see
        ``compute.local_layout``)."""
        return self.path / _COMPUTES

    # -- secrets ---------------------------------------------------------------------------

    def secret(
        self,
        name: str,
        make: Callable[[], bytes],
        *,
        on_create: Callable[[Path], None] | None = None,
    ) -> bytes:
        """The contents of the secret file ``name``, created once (mode 0600) from
        ``make()`` when missing. ``on_create(path)`` runs only in the process whose file
        won a race to create it. Raises ``OSError`` when the state dir is unusable."""
        path = self.path / name
        with contextlib.suppress(FileNotFoundError):
            return path.read_bytes()
        if create_private(path, make()) and on_create is not None:
            on_create(path)
        return path.read_bytes()

    def read_secret(self, name: str) -> str | None:
        """The secret file ``name`` as stripped text; ``None`` when it is missing, empty or
        unreadable. Creates nothing."""
        try:
            return (self.path / name).read_text().strip() or None
        except OSError:
            return None

    # -- the server lock ---------------------------------------------------------------------

    def lock(self) -> IO[bytes] | None:
        """Take the server lock and write this process's pid into it; return the open lock
        file (hold it for the server's lifetime), or ``None`` when another ``pgwake serve``
        holds it."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, _PRIVATE_FILE_MODE)
        lock = os.fdopen(fd, "r+b", buffering=0)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n".encode())
        return lock

    def server_running(self) -> bool:
        """Whether a ``pgwake serve`` holds this state dir. Creates nothing."""
        return self._holder() is not None

    def server_pid(self) -> int | None:
        """The pid of the ``pgwake serve`` holding this state dir; ``None`` when none does,
        or in the instant before it has written its pid. Creates nothing."""
        holder = self._holder()
        return int(holder) if holder and holder.isdigit() else None

    def _holder(self) -> str | None:
        """The lock file's text while a server holds the lock, else ``None``."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:
            return None  # no state dir, or no server ever ran on it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Held: the holder wrote its pid right after taking the lock (empty in
                # the instant between the two).
                return os.read(fd, 64).decode(errors="replace").strip()
            return None
        finally:
            os.close(fd)

    # -- permissions ---------------------------------------------------------------------

    def check(self) -> list[LooseMode]:
        """The paths whose mode is wider than allowed (see the module docstring), the state
        dir first. Changes nothing; a missing path is not a problem."""
        loose = []
        rules = [
            (self.path, _GROUP_OTHER_READ_WRITE),
            (self.tls_dir, _GROUP_OTHER),
            *((self.path / name, _GROUP_OTHER) for name in SECRET_FILES),
        ]
        for path, forbidden in rules:
            mode = _mode(path)
            if mode is not None and mode & forbidden:
                loose.append(LooseMode(path, mode, mode & ~forbidden))
        return loose

    def ensure(self) -> list[LooseMode]:
        """Create the state dir (mode ``self.mode``), or tighten an existing one and its
        secret files; return what was tightened, each also logged as a warning.

        Raises ``UnsafeStateDir`` when a path is too open and cannot be changed, and
        ``OSError`` when the directory cannot be created."""
        try:
            self.path.mkdir(parents=True, mode=self.mode)
        except FileExistsError:
            if not self.path.is_dir():
                raise UnsafeStateDir(f"state dir {self.path} is not a directory") from None
        else:
            self.path.chmod(self.mode)  # mkdir's mode passes through the umask
            return []
        loose = self.check()
        for problem in loose:
            try:
                problem.path.chmod(problem.wanted)
            except OSError as exc:
                raise UnsafeStateDir(
                    f"UNPROTECTED STATE DIR: {problem.path} has mode {problem.mode:04o}, "
                    f"open to other users, and pgwake cannot change it ({exc.strerror}); "
                    f"it must be {problem.wanted:04o} at most: it holds verifiers, tokens "
                    "or keys"
                ) from None
            logger.warning(
                "event=state_dir_permissions_tightened path=%s mode=%04o now=%04o",
                problem.path,
                problem.mode,
                problem.wanted,
            )
        return loose
