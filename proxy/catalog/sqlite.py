"""SQLite catalog. Calls are short and synchronous (microseconds on a local file)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["Catalog", "EndpointExists", "EndpointRecord"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS endpoints (
    name          TEXT PRIMARY KEY,
    backend       TEXT NOT NULL,
    idle_timeout  REAL,             -- seconds; NULL = the server's default
    created_at    REAL NOT NULL,
    last_active   REAL,             -- unix time of the last session end or wake
    state         TEXT NOT NULL DEFAULT 'suspended',
    state_reason  TEXT
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


class Catalog:
    """Endpoint records in ``<state_dir>/catalog.sqlite3``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add_endpoint(
        self, name: str, backend: str, idle_timeout: float | None, role: str, verifier: str
    ) -> EndpointRecord:
        """Insert a new endpoint with its first role; raise ``EndpointExists``."""
        now = time.time()
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO endpoints (name, backend, idle_timeout, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (name, backend, idle_timeout, now),
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
            "SELECT name, backend, idle_timeout, created_at, last_active, state, state_reason "
            "FROM endpoints WHERE name = ?",
            (name,),
        ).fetchone()
        return EndpointRecord(*row) if row else None

    def exists(self, name: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone()
            is not None
        )

    def list(self) -> list[EndpointRecord]:
        rows = self._db.execute(
            "SELECT name, backend, idle_timeout, created_at, last_active, state, state_reason "
            "FROM endpoints ORDER BY name"
        ).fetchall()
        return [EndpointRecord(*row) for row in rows]

    def delete(self, name: str) -> bool:
        """Remove the endpoint and its roles; return False if it was not there."""
        with self._db:
            cursor = self._db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
        return cursor.rowcount > 0

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
