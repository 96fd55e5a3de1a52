"""The proxy's own SQL connections to a compute (asyncpg), for setup and idle checks.

These connect as the management superuser ``pgwake_admin`` with a secret kept in the
state directory; client sessions never use this role's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Final

import asyncpg

from pgwake.compute import ComputeStartError
from pgwake.state_dir import ADMIN_PASSWORD

if TYPE_CHECKING:
    from pgwake.catalog import Catalog
    from pgwake.compute import ComputeAddress, ComputeBackend, EndpointSpec
    from pgwake.state_dir import StateDir

__all__ = [
    "ADMIN_ROLE",
    "QUERY_TIMEOUT",
    "ManagementConnection",
    "admin_password",
    "apply_pending_verifiers",
    "quote_ident",
    "quote_literal",
    "setup_endpoint",
]

logger = logging.getLogger(__name__)

ADMIN_ROLE: Final = "pgwake_admin"
_CONNECT_TIMEOUT: Final = 10.0
#: Each call of ``ManagementConnection`` (waiting its turn, connecting, the query) ends
#: within this: a compute slower than that is dying, and the idle timer must keep ticking.
QUERY_TIMEOUT: Final = 5.0

# Setting the passwords changed while a compute was down is part of its start.
_APPLY_TIMEOUT: Final = 10.0

# Our own connection is excluded by pid; background workers have another backend_type.
_COUNT_SESSIONS_SQL: Final = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


def admin_password(state: StateDir) -> str:
    """The management role's password, made once per state dir (every backend's computes
    share it; it never leaves pgwake and its computes)."""
    return state.secret(ADMIN_PASSWORD, lambda: secrets.token_urlsafe(32).encode()).decode().strip()


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (as Postgres's ``quote_ident`` does, always quoting)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """Quote an SQL string literal (standard_conforming_strings is on since 9.1)."""
    return "'" + text.replace("'", "''") + "'"


async def _connect(address: ComputeAddress, password: str) -> asyncpg.Connection:
    host = address.unix_socket.rsplit("/", 1)[0] if address.unix_socket else address.host
    return await asyncpg.connect(
        host=host,
        port=address.port or 5432,
        user=ADMIN_ROLE,
        password=password,
        database="postgres",
        timeout=_CONNECT_TIMEOUT,
        ssl=False,
        server_settings={"application_name": "pgwake"},
    )


# Login roles with a SCRAM verifier; pgwake's own role never reaches the edge.
_VERIFIERS_SQL: Final = (
    "SELECT rolname, rolpassword FROM pg_authid "
    "WHERE rolcanlogin AND rolpassword LIKE 'SCRAM-SHA-256$%' "
    "AND (rolvaliduntil IS NULL OR rolvaliduntil > now()) AND rolname <> $1"
)


class ManagementConnection:
    """One persistent admin connection to a running compute, opened on first use.

    Used for the idle check and to read SCRAM verifiers; queries are serialised (an
    asyncpg connection runs one at a time). Its own backend is excluded from the session
    count by pid. Every query raises ``TimeoutError`` after ``QUERY_TIMEOUT``."""

    def __init__(self, address: ComputeAddress, password: str) -> None:
        self._address = address
        self._password = password
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        #: The read of every verifier that callers arriving now will share.
        self._next_read: asyncio.Future[dict[str, str]] | None = None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await _connect(self._address, self._password)
        return self._conn

    async def count_client_sessions(self) -> int:
        """Client sessions the compute has besides this one."""
        async with asyncio.timeout(QUERY_TIMEOUT), self._lock:
            count: int = await (await self._connection()).fetchval(_COUNT_SESSIONS_SQL)
            return count

    async def verifiers(self) -> dict[str, str]:
        """Every login role's SCRAM verifier, by role name."""
        async with asyncio.timeout(QUERY_TIMEOUT), self._lock:
            rows = await (await self._connection()).fetch(_VERIFIERS_SQL, ADMIN_ROLE)
        return {row["rolname"]: row["rolpassword"] for row in rows}

    async def verifier(self, role: str) -> str | None:
        """``role``'s current SCRAM verifier, or ``None`` if it cannot log in with one.

        Every connection that starts to authenticate asks, strangers included, so callers
        share reads: each read of every verifier starts after the callers it serves
        asked (an ``ALTER ROLE ... PASSWORD`` is seen at once), and there is never more
        than one read in flight and one waiting, however many connections ask."""
        read = self._next_read
        if read is None:
            read = self._next_read = asyncio.ensure_future(self._read_for_waiters())
            read.add_done_callback(_retrieve)  # every waiter may have gone
        async with asyncio.timeout(QUERY_TIMEOUT):
            return (await asyncio.shield(read)).get(role)

    async def _read_for_waiters(self) -> dict[str, str]:
        async with self._lock:
            self._next_read = None  # callers from now on need a read that starts later
            rows = await (await self._connection()).fetch(_VERIFIERS_SQL, ADMIN_ROLE)
        return {row["rolname"]: row["rolpassword"] for row in rows}

    async def is_login_role(self, role: str) -> bool:
        """True when ``role`` exists and may log in (pgwake's own role never counts)."""
        if role == ADMIN_ROLE:
            return False
        async with self._lock:
            found = await (await self._connection()).fetchval(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", role
            )
        return bool(found)

    async def set_verifier(self, role: str, verifier: str) -> None:
        """Give ``role`` the SCRAM ``verifier`` (``ALTER ROLE ... PASSWORD``): Postgres
        stores a verifier as it is, so no plaintext ever reaches the compute."""
        async with self._lock:
            await (await self._connection()).execute(
                f"ALTER ROLE {quote_ident(role)} PASSWORD {quote_literal(verifier)}"
            )

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except Exception:  # the compute may be gone already
                conn.terminate()


def _retrieve(read: asyncio.Future[dict[str, str]]) -> None:
    if not read.cancelled():
        read.exception()


async def setup_endpoint(address: ComputeAddress, password: str, spec: EndpointSpec) -> None:
    """Give the endpoint's login role its SCRAM verifier, creating the role and database
    when the template does not already hold them. Idempotent."""
    conn = await _connect(address, password)
    try:
        role = quote_ident(spec.role)
        verifier = quote_literal(spec.verifier)
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", spec.role)
        if exists:
            await conn.execute(f"ALTER ROLE {role} LOGIN PASSWORD {verifier}")
        else:
            await conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB CREATEROLE PASSWORD {verifier}")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", spec.database):
            await conn.execute(f"CREATE DATABASE {quote_ident(spec.database)} OWNER {role}")
    finally:
        await conn.close(timeout=_CONNECT_TIMEOUT)


async def apply_pending_verifiers(backend: ComputeBackend, catalog: Catalog, endpoint: str) -> None:
    """Write the passwords set while the compute was down (the catalog's pending
    verifiers) to the compute that just started, before any client logs in to it; a role
    dropped meanwhile is skipped. Raises ``ComputeStartError`` (having stopped the compute)
    when they cannot be written: clients would be refused by the compute."""
    pending = catalog.pending_verifiers(endpoint)
    if not pending:
        return
    management = backend.management(endpoint)
    if management is None:
        raise ComputeStartError("the compute stopped while its new passwords were being set")
    try:
        async with asyncio.timeout(_APPLY_TIMEOUT):
            for role, verifier in pending.items():
                if await management.is_login_role(role):
                    await management.set_verifier(role, verifier)
                else:
                    logger.warning(
                        "event=pending_password_dropped endpoint=%s role=%s", endpoint, role
                    )
    except Exception as exc:
        logger.warning(
            "event=pending_password_failed endpoint=%s error=%s", endpoint, type(exc).__name__
        )
        with contextlib.suppress(Exception):
            await backend.stop(endpoint)
        raise ComputeStartError(
            "could not set the passwords changed while it was suspended"
        ) from exc
    finally:
        await management.close()
    catalog.clear_pending(endpoint, pending)
    logger.info("event=pending_passwords_applied endpoint=%s roles=%d", endpoint, len(pending))
