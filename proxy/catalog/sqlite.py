"""SQLite catalog. Calls are short and synchronous (microseconds on a local file)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["Catalog", "EndpointExists", "EndpointRecord"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS endpoints (
    name          TEXT PRIMARY KEY,
    backend       TEXT NOT NULL,
    idle_timeout  REAL,             -- seconds; NULL = the server's default
    created_at    REAL NOT NULL,
    last_active   REAL,             -- unix time of the last session end or wake
    state         TEXT NOT NULL DEFAULT 'suspended',
    state_reason  TEXT,
    allowed_cidrs TEXT              -- comma-separated networks; NULL = any address
);
CREATE TABLE IF NOT EXISTS roles (
    endpoint  TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
    role      TEXT NOT NULL,
    verifier  TEXT NOT NULL,         -- SCRAM-SHA-256 verifier, never a plaintext
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


def _record(row: tuple[Any, ...]) -> EndpointRecord:
    name, backend, idle_timeout, created_at, last_active, state, reason, cidrs = row
    allowed = tuple(c for c in str(cidrs).split(",") if c) if cidrs else ()
    return EndpointRecord(
        name, backend, idle_timeout, created_at, last_active, state, reason, allowed
    )


class Catalog:
    """Endpoint records in ``<state_dir>/catalog.sqlite3``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(endpoints)")}
        if "allowed_cidrs" not in columns:
            self._db.execute("ALTER TABLE endpoints ADD COLUMN allowed_cidrs TEXT")

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
    ) -> EndpointRecord:
        """Insert a new endpoint with its first role; raise ``EndpointExists``."""
        now = time.time()
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO endpoints (name, backend, idle_timeout, created_at, "
                    "allowed_cidrs) VALUES (?, ?, ?, ?, ?)",
                    (name, backend, idle_timeout, now, ",".join(allowed_cidrs) or None),
                )
                self._db.execute(
                    "INSERT INTO roles (endpoint, role, verifier) VALUES (?, ?, ?)",
                    (name, role, verifier),
                )
        except sqlite3.IntegrityError:
            raise EndpointExists(name) from None
        record = self.get(name)
        assert record is not None
        return record

    def get(self, name: str) -> EndpointRecord | None:
        row = self._db.execute(
            "SELECT name, backend, idle_timeout, created_at, last_active, state, state_reason, "
            "allowed_cidrs "
            "FROM endpoints WHERE name = ?",
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
            "SELECT name, backend, idle_timeout, created_at, last_active, state, state_reason, "
            "allowed_cidrs "
            "FROM endpoints ORDER BY name"
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
        """Make the endpoint's stored roles exactly ``verifiers`` (read from the compute)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM roles WHERE endpoint = ?", (endpoint,))
            self._db.executemany(
                "INSERT INTO roles (endpoint, role, verifier) VALUES (?, ?, ?)",
                [(endpoint, role, verifier) for role, verifier in verifiers.items()],
            )

    def set_allowed_cidrs(self, endpoint: str, cidrs: tuple[str, ...]) -> None:
        self._db.execute(
            "UPDATE endpoints SET allowed_cidrs = ? WHERE name = ?",
            (",".join(cidrs) or None, endpoint),
        )

    def touch(self, name: str, last_active: float) -> None:
        """Record that a session used the endpoint at ``last_active`` (unix time)."""
        self._db.execute("UPDATE endpoints SET last_active = ? WHERE name = ?", (last_active, name))

    def set_state(
        self, name: str, state: str, reason: str | None = None, last_active: float | None = None
    ) -> None:
        self._db.execute(
            "UPDATE endpoints SET state = ?, state_reason = ?, "
            "last_active = COALESCE(?, last_active) WHERE name = ?",
            (state, reason, last_active, name),
        )
