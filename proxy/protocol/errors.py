"""Every error a client can be told about, in one place, and the one it is not told.

Rule: no SQLSTATE string appears anywhere else in pgwake. Code that wants to refuse a
client raises one of these classes; ``edge/client_connection.py`` turns it into a FATAL
``ErrorResponse``.
Class names follow PostgreSQL's ``errcodes.txt`` (as psycopg and asyncpg name theirs).
Where Postgres closes a connection without a reply (a broken startup packet), a reader
raises ``CloseWithoutReply`` instead, which is not a ``ClientError``.

Messages must be safe to show to anyone: no secrets, no backend keys, and the same text
for an unknown role as for a bad password.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Final

__all__ = [
    "SUCCESSFUL_COMPLETION",
    "AdminShutdown",
    "CannotConnectNow",
    "ClientError",
    "CloseWithoutReply",
    "ErrorKind",
    "FeatureNotSupported",
    "IdleInTransactionSessionTimeout",
    "IdleSessionTimeout",
    "InternalError",
    "InvalidAuthorizationSpecification",
    "InvalidCatalogName",
    "InvalidPassword",
    "ProtocolViolation",
    "SqlclientUnableToEstablishSqlconnection",
    "TooManyConnections",
    "lookup",
]


class ErrorKind(enum.Enum):
    """Whose fault an error is; doubles as a metric label (closed set)."""

    #: The client sent something we cannot accept (bad packet, unknown endpoint...).
    CLIENT = "client"
    #: The compute failed (did not start, died, refused us).
    COMPUTE = "compute"
    #: pgwake itself is out of capacity or shutting down.
    SERVICE = "service"
    #: A bug in pgwake.
    INTERNAL = "internal"


#: The SQLSTATE of a NoticeResponse that reports no error.
SUCCESSFUL_COMPLETION: Final = "00000"

_REGISTRY: dict[str, type[ClientError]] = {}


class ClientError(Exception):
    """An error to report to the client as a FATAL ``ErrorResponse``, then close."""

    sqlstate: ClassVar[str] = "XX000"
    kind: ClassVar[ErrorKind] = ErrorKind.INTERNAL

    def __init_subclass__(cls, *, code: str, kind: ErrorKind, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.sqlstate = code
        cls.kind = kind
        _REGISTRY[code] = cls

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sqlstate}, {self.message!r})"


class ProtocolViolation(ClientError, code="08P01", kind=ErrorKind.CLIENT):
    """The client broke the wire protocol (malformed or oversized packet)."""


class SqlclientUnableToEstablishSqlconnection(ClientError, code="08004", kind=ErrorKind.CLIENT):
    """No endpoint could be found in the startup (ARCHITECTURE.md)."""


class FeatureNotSupported(ClientError, code="0A000", kind=ErrorKind.CLIENT):
    """The client asked for something pgwake does not speak (e.g. protocol 2.0)."""


class InvalidAuthorizationSpecification(ClientError, code="28000", kind=ErrorKind.CLIENT):
    """The connection is refused before authentication (e.g. TLS required)."""


class InvalidPassword(ClientError, code="28P01", kind=ErrorKind.CLIENT):
    """Bad password or unknown role: one message for both."""


class InvalidCatalogName(ClientError, code="3D000", kind=ErrorKind.CLIENT):
    """The endpoint named by the client does not exist."""


class TooManyConnections(ClientError, code="53300", kind=ErrorKind.SERVICE):
    """A connection cap was reached, or pgwake is draining."""


class CannotConnectNow(ClientError, code="57P03", kind=ErrorKind.COMPUTE):
    """The compute could not be started in time or failed; the reason goes in ``detail``."""


class AdminShutdown(ClientError, code="57P01", kind=ErrorKind.SERVICE):
    """The session is ended for the client: pgwake is shutting down, or the endpoint's
    compute stopped under a relayed session."""


class IdleInTransactionSessionTimeout(ClientError, code="25P03", kind=ErrorKind.CLIENT):
    """A session idle inside a transaction kept its endpoint awake past
    ``pinned_session_timeout`` (Postgres's code for its own such timeout)."""


class IdleSessionTimeout(ClientError, code="57P05", kind=ErrorKind.CLIENT):
    """A session pinned by state pgwake cannot restore (temporary tables, LISTEN...) kept
    its endpoint awake past ``pinned_session_timeout``."""


class InternalError(ClientError, code="XX000", kind=ErrorKind.INTERNAL):
    """A bug in pgwake; the client sees no traceback."""


class CloseWithoutReply(Exception):
    """The peer broke the protocol where Postgres closes the connection without a word and
    only logs why (``ProcessStartupPacket``: "invalid length of startup packet",
    "incomplete startup packet"). The caller closes without writing anything and logs
    ``reason``; answering would tell some clients of something Postgres never says."""

    def __init__(self, reason: str, *, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"


def lookup(sqlstate: str) -> type[ClientError]:
    """Return the class registered for ``sqlstate``; raise ``KeyError`` if there is none."""
    return _REGISTRY[sqlstate]
