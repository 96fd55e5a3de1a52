"""SQLite catalog. Calls are short and synchronous (microseconds on a local file)."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pgwake.state_dir import create_private

__all__ = ["Catalog", "EndpointExists", "EndpointRecord"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS endpoints (
    name          TEXT PRIMARY KEY,
    backend       TEXT NOT NULL,
    idle_timeout  REAL,             -- seconds; NULL = the server's default
    created_at    REAL NOT NULL,
    last_active   REAL,             -- unix time of the last session end or state change
    state         TEXT NOT NULL DEFAULT 'suspended',
    state_reason  TEXT,
    allowed_cidrs TEXT,             -- comma-separated networks; NULL = any address
    owner         TEXT,             -- id of the API token that created it; NULL = admin
    expires_at    REAL,             -- unix time after which the reaper deletes it
    delete_after_idle REAL,         -- seconds suspended/unused before the reaper deletes it
    compute_options TEXT,           -- JSON object of backend choices (docker: image, memory, cpus)
    disk_bytes    INTEGER,          -- storage measured at create and after each suspend
    last_session_end REAL,          -- unix time the last client session ended
    park_sessions INTEGER,          -- 0: idle sessions keep the compute awake; NULL = 1
    pinned_session_timeout REAL     -- seconds a pinned session may idle; NULL = forever
);
CREATE TABLE IF NOT EXISTS tokens (
    id            TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL UNIQUE,  -- hex SHA-256 of the secret; never the secret
    label         TEXT,
    max_endpoints INTEGER,
    max_ttl_seconds REAL,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS roles (
    endpoint  TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
    role      TEXT NOT NULL,
    verifier  TEXT NOT NULL,         -- SCRAM-SHA-256 verifier, never a plaintext
    pending   INTEGER NOT NULL DEFAULT 0,  -- 1: set while the compute was down; the next
                                     -- start writes it to the compute
    PRIMARY KEY (endpoint, role)
);
"""


class EndpointExists(Exception):
    """An endpoint of that name is already in the catalog."""


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """One endpoint as the catalog stores it."""

    name: str
    backend: str
    idle_timeout: float | None
    created_at: float
    last_active: float | None
    state: str
    state_reason: str | None
    #: Networks clients may connect from; empty means any.
    allowed_cidrs: tuple[str, ...] = ()
    #: The API token that created it (``None``: the admin or the CLI).
    owner: str | None = None
    #: Unix time after which the reaper deletes it.
    expires_at: float | None = None
    #: Seconds without use after which the reaper deletes it.
    delete_after_idle: float | None = None
    #: The backend's choices for this endpoint (docker: ``image``, ``memory``, ``cpus``).
    compute_options: dict[str, str] = field(default_factory=dict)
    #: Bytes of storage, measured at create and after each suspend (``None``: not yet).
    disk_bytes: int | None = None
    #: Unix time the last client session ended (``None``: none has yet).
    last_session_end: float | None = None
    #: Park idle sessions when the compute suspends (``False``: they keep it awake).
    park_sessions: bool = True
    #: Seconds a pinned session may stay idle before it is closed (``None``: forever).
    pinned_session_timeout: float | None = None


_COLUMNS: Final = (
    "name, backend, idle_timeout, created_at, last_active, state, state_reason, "
    "allowed_cidrs, owner, expires_at, delete_after_idle, compute_options, disk_bytes, "
    "last_session_end, park_sessions, pinned_session_timeout"
)


def _record(row: tuple[Any, ...]) -> EndpointRecord:
    name, backend, idle_timeout, created_at, last_active, state, reason, cidrs, *rest = row
    allowed = tuple(c for c in str(cidrs).split(",") if c) if cidrs else ()
    owner, expires_at, delete_after_idle, options, disk_bytes, last_session_end, *rest = rest
    park_sessions, pinned_session_timeout = rest
    return EndpointRecord(
        name,
        backend,
        idle_timeout,
        created_at,
        last_active,
        state,
        reason,
        allowed,
        owner,
        expires_at,
        delete_after_idle,
        json.loads(options) if options else {},
        disk_bytes,
        last_session_end,
        park_sessions is None or bool(park_sessions),  # NULL: the default, on
        pinned_session_timeout,
    )


class Catalog:
    """Endpoint records in ``<state_dir>/catalog.sqlite3``."""

    def __init__(self, path: Path) -> None:
        """Open the catalog at ``path``, creating it; its directory must exist."""
        # SQLite would create the file with the process umask (0644 under the usual 022)
        # and gives its -wal, -shm and -journal files the database's mode: made 0600
        # first, all of them stay private.
        create_private(path, b"")
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(endpoints)")}
        for column, kind in (
            ("allowed_cidrs", "TEXT"),
            ("owner", "TEXT"),
            ("expires_at", "REAL"),
            ("delete_after_idle", "REAL"),
            ("compute_options", "TEXT"),
            ("disk_bytes", "INTEGER"),
            ("last_session_end", "REAL"),
            ("park_sessions", "INTEGER"),
            ("pinned_session_timeout", "REAL"),
        ):
            if column not in columns:
                self._db.execute(f"ALTER TABLE endpoints ADD COLUMN {column} {kind}")
        if "pending" not in {row[1] for row in self._db.execute("PRAGMA table_info(roles)")}:
            self._db.execute("ALTER TABLE roles ADD COLUMN pending INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        self._db.close()

    def add_endpoint(  # noqa: PLR0917 (one row's columns)
        self,
        name: str,
        backend: str,
        idle_timeout: float | None,
        role: str,
        verifier: str,
        allowed_cidrs: tuple[str, ...] = (),
        *,
        owner: str | None = None,
        expires_at: float | None = None,
        delete_after_idle: float | None = None,
        roles: dict[str, str] | None = None,
        compute_options: dict[str, str] | None = None,
        park_sessions: bool = True,
        pinned_session_timeout: float | None = None,
    ) -> EndpointRecord:
        """Insert a new endpoint with its first role; raise ``EndpointExists``."""
        now = time.time()
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO endpoints (name, backend, idle_timeout, created_at, "
                    "allowed_cidrs, owner, expires_at, delete_after_idle, compute_options, "
                    "park_sessions, pinned_session_timeout) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        backend,
                        idle_timeout,
                        now,
                        ",".join(allowed_cidrs) or None,
                        owner,
                        expires_at,
                        delete_after_idle,
                        json.dumps(compute_options) if compute_options else None,
                        None if park_sessions else 0,  # NULL: the default
                        pinned_session_timeout,
                    ),
                )
                all_roles = {role: verifier, **(roles or {})}
                self._db.executemany(
                    "INSERT INTO roles (endpoint, role, verifier) VALUES (?, ?, ?)",
                    [(name, r, v) for r, v in all_roles.items()],
                )
        except sqlite3.IntegrityError:
            raise EndpointExists(name) from None
        record = self.get(name)
        assert record is not None
        return record

    def get(self, name: str) -> EndpointRecord | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM endpoints WHERE name = ?",  # noqa: S608 (constant)
            (name,),
        ).fetchone()
        return _record(row) if row else None

    def exists(self, name: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone()
            is not None
        )

    def list(self) -> list[EndpointRecord]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM endpoints ORDER BY name"  # noqa: S608 (constant)
        ).fetchall()
        return [_record(row) for row in rows]

    def delete(self, name: str) -> bool:
        """Remove the endpoint and its roles; return False if it was not there."""
        with self._db:
            cursor = self._db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
        return cursor.rowcount > 0

    def verifier(self, endpoint: str, role: str) -> str | None:
        """The SCRAM verifier last known for ``role`` on ``endpoint``."""
        row = self._db.execute(
            "SELECT verifier FROM roles WHERE endpoint = ? AND role = ?", (endpoint, role)
        ).fetchone()
        return str(row[0]) if row else None

    def replace_verifiers(self, endpoint: str, verifiers: dict[str, str]) -> None:
        """Make the endpoint's stored roles exactly ``verifiers`` (read from the compute),
        but for pending ones: a password set while the compute was down stays until the
        compute has it (``clear_pending``)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM roles WHERE endpoint = ? AND NOT pending", (endpoint,))
            self._db.executemany(
                "INSERT OR IGNORE INTO roles (endpoint, role, verifier) VALUES (?, ?, ?)",
                [(endpoint, role, verifier) for role, verifier in verifiers.items()],
            )

    def set_verifier(self, endpoint: str, role: str, verifier: str, *, pending: bool) -> None:
        """Store ``role``'s new verifier; ``pending`` when the compute does not have it yet
        (it is down), so that its next start writes it there."""
        self._db.execute(
            "INSERT INTO roles (endpoint, role, verifier, pending) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (endpoint, role) DO UPDATE SET verifier = excluded.verifier, "
            "pending = excluded.pending",
            (endpoint, role, verifier, int(pending)),
        )

    def pending_verifiers(self, endpoint: str) -> dict[str, str]:
        """The verifiers set while the compute was down, by role (``set_verifier``)."""
        rows = self._db.execute(
            "SELECT role, verifier FROM roles WHERE endpoint = ? AND pending", (endpoint,)
        ).fetchall()
        return {str(role): str(verifier) for role, verifier in rows}

    def clear_pending(self, endpoint: str, applied: dict[str, str]) -> None:
        """The compute now has the ``applied`` verifiers; one set again meanwhile stays
        pending."""
        self._db.executemany(
            "UPDATE roles SET pending = 0 WHERE endpoint = ? AND role = ? AND verifier = ?",
            [(endpoint, role, verifier) for role, verifier in applied.items()],
        )

    def set_session_settings(
        self,
        endpoint: str,
        *,
        idle_timeout: float | None,
        park_sessions: bool,
        pinned_session_timeout: float | None,
    ) -> None:
        """Replace the endpoint's idle and session settings (``None``: the default)."""
        self._db.execute(
            "UPDATE endpoints SET idle_timeout = ?, park_sessions = ?, "
            "pinned_session_timeout = ? WHERE name = ?",
            (idle_timeout, None if park_sessions else 0, pinned_session_timeout, endpoint),
        )

    def set_allowed_cidrs(self, endpoint: str, cidrs: tuple[str, ...]) -> None:
        self._db.execute(
            "UPDATE endpoints SET allowed_cidrs = ? WHERE name = ?",
            (",".join(cidrs) or None, endpoint),
        )

    def verifiers(self, endpoint: str) -> dict[str, str]:
        """Every stored role verifier of ``endpoint``."""
        rows = self._db.execute(
            "SELECT role, verifier FROM roles WHERE endpoint = ?", (endpoint,)
        ).fetchall()
        return {str(role): str(verifier) for role, verifier in rows}

    def count_owned(self, owner: str) -> int:
        row = self._db.execute("SELECT count(*) FROM endpoints WHERE owner = ?", (owner,))
        return int(row.fetchone()[0])

    # -- API tokens (only hashes are stored) ---------------------------------------------

    def add_token(
        self,
        token_id: str,
        secret_sha256: str,
        label: str | None,
        max_endpoints: int | None,
        max_ttl_seconds: float | None,
    ) -> None:
        self._db.execute(
            "INSERT INTO tokens (id, secret_sha256, label, max_endpoints, max_ttl_seconds, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (token_id, secret_sha256, label, max_endpoints, max_ttl_seconds, time.time()),
        )

    def token_by_hash(
        self, secret_sha256: str
    ) -> tuple[str, str | None, int | None, float | None] | None:
        """(id, label, max_endpoints, max_ttl_seconds) of the token with that hash."""
        row = self._db.execute(
            "SELECT id, label, max_endpoints, max_ttl_seconds FROM tokens WHERE secret_sha256 = ?",
            (secret_sha256,),
        ).fetchone()
        return (str(row[0]), row[1], row[2], row[3]) if row else None

    def delete_token(self, token_id: str) -> bool:
        with self._db:
            cursor = self._db.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
        return cursor.rowcount > 0

    def touch(self, name: str, last_active: float) -> None:
        """Record that a client session of the endpoint ended at ``last_active`` (unix
        time)."""
        self._db.execute(
            "UPDATE endpoints SET last_active = ?, last_session_end = ? WHERE name = ?",
            (last_active, last_active, name),
        )

    def set_disk_bytes(self, name: str, disk_bytes: int) -> None:
        self._db.execute("UPDATE endpoints SET disk_bytes = ? WHERE name = ?", (disk_bytes, name))

    def set_state(
        self, name: str, state: str, reason: str | None = None, last_active: float | None = None
    ) -> None:
        self._db.execute(
            "UPDATE endpoints SET state = ?, state_reason = ?, "
            "last_active = COALESCE(?, last_active) WHERE name = ?",
            (state, reason, last_active, name),
        )
