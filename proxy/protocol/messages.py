"""The PostgreSQL messages pgwake reads or writes, as frozen dataclasses.

Names follow the protocol documentation ("Message Formats"). Fields hold decoded values;
encoding lives in ``encode.py`` and decoding in ``startup.py`` / ``framing.py``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

__all__ = [
    "AUTHENTICATION",
    "BACKEND_KEY_DATA",
    "BIND",
    "BIND_COMPLETE",
    "CANCEL_REQUEST_CODE",
    "CLOSE",
    "COMMAND_COMPLETE",
    "COPY_DATA",
    "COPY_DONE",
    "COPY_FAIL",
    "DATA_ROW",
    "DESCRIBE",
    "ERROR_FIELD_DETAIL",
    "ERROR_FIELD_HINT",
    "ERROR_FIELD_MESSAGE",
    "ERROR_FIELD_SEVERITY",
    "ERROR_FIELD_SEVERITY_NONLOCALIZED",
    "ERROR_FIELD_SQLSTATE",
    "ERROR_RESPONSE",
    "EXECUTE",
    "FLUSH",
    "FUNCTION_CALL",
    "GSSENC_REQUEST_CODE",
    "NEED_DATA",
    "NEGOTIATE_PROTOCOL_VERSION",
    "NOTICE_RESPONSE",
    "NOTIFICATION_RESPONSE",
    "PARAMETER_STATUS",
    "PARSE",
    "PARSE_COMPLETE",
    "PROTOCOL_3_0",
    "QUERY",
    "READY_FOR_QUERY",
    "ROW_DESCRIPTION",
    "SASL_RESPONSE",
    "SSL_REQUEST_CODE",
    "SYNC",
    "TERMINATE",
    "TRANSACTION_FAILED",
    "TRANSACTION_IDLE",
    "TRANSACTION_IN_BLOCK",
    "AuthenticationRequest",
    "BackendKeyData",
    "CancelRequest",
    "DirectTLSHello",
    "Frame",
    "GSSENCRequest",
    "NeedData",
    "ReadyForQuery",
    "SASLInitialResponse",
    "SSLRequest",
    "StartupMessage",
    "StartupPacket",
]

# Request codes from PostgreSQL's pqcomm.h: a major version of 1234 marks a special packet.
CANCEL_REQUEST_CODE: Final = (1234 << 16) | 5678
SSL_REQUEST_CODE: Final = (1234 << 16) | 5679
GSSENC_REQUEST_CODE: Final = (1234 << 16) | 5680
PROTOCOL_3_0: Final = (3 << 16) | 0

# The type byte of each typed message pgwake reads or writes ("Message Formats"). One
# letter can name a frontend and a backend message: each constant is named after the one
# pgwake means, the direction in its comment.

#: Backend: AuthenticationOk, AuthenticationSASL, ...SASLContinue, ...SASLFinal.
AUTHENTICATION: Final = b"R"
#: Backend: the keys a client needs to cancel a query.
BACKEND_KEY_DATA: Final = b"K"
#: Backend: a Bind completed.
BIND_COMPLETE: Final = b"2"
#: Backend: a command finished (its tag in the body).
COMMAND_COMPLETE: Final = b"C"
#: Backend: one row of a result, in the format asked for.
DATA_ROW: Final = b"D"
#: Backend: an error, fatal or not.
ERROR_RESPONSE: Final = b"E"
#: Backend: the newest protocol minor version and the options the server declined.
NEGOTIATE_PROTOCOL_VERSION: Final = b"v"
#: Backend: a notice.
NOTICE_RESPONSE: Final = b"N"
#: Backend: a NOTIFY on a channel the session listens on.
NOTIFICATION_RESPONSE: Final = b"A"
#: Backend: a Parse completed.
PARSE_COMPLETE: Final = b"1"
#: Backend: a run-time parameter's value (``name\0value\0``).
PARAMETER_STATUS: Final = b"S"
#: Backend: ready for a new query; the body is the transaction status.
READY_FOR_QUERY: Final = b"Z"
#: Backend: the columns of the rows that follow.
ROW_DESCRIPTION: Final = b"T"
#: Frontend: bind parameters to a prepared statement, making a portal (extended protocol).
BIND: Final = b"B"
#: Frontend: close a prepared statement or a portal (extended protocol).
CLOSE: Final = b"C"
#: Frontend: COPY FROM STDIN data; ignored outside a COPY.
COPY_DATA: Final = b"d"
#: Frontend: the end of COPY FROM STDIN data; ignored outside a COPY.
COPY_DONE: Final = b"c"
#: Frontend: COPY FROM STDIN failed; ignored outside a COPY.
COPY_FAIL: Final = b"f"
#: Frontend: describe a prepared statement or a portal (extended protocol).
DESCRIBE: Final = b"D"
#: Frontend: run a portal (extended protocol).
EXECUTE: Final = b"E"
#: Frontend: send what is pending (extended protocol).
FLUSH: Final = b"H"
#: Frontend: a function call (the old fast-path interface).
FUNCTION_CALL: Final = b"F"
#: Frontend: prepare a statement (extended protocol).
PARSE: Final = b"P"
#: Frontend: a simple query.
QUERY: Final = b"Q"
#: Frontend: SASLInitialResponse and SASLResponse (and PasswordMessage) share this byte.
SASL_RESPONSE: Final = b"p"
#: Frontend: end an extended-protocol batch; answered with ReadyForQuery.
SYNC: Final = b"S"
#: Frontend: the client ends the session.
TERMINATE: Final = b"X"

# ReadyForQuery's transaction status byte.
#: Not in a transaction block.
TRANSACTION_IDLE: Final = b"I"
#: In a transaction block.
TRANSACTION_IN_BLOCK: Final = b"T"
#: In a failed transaction block (queries are rejected until it ends).
TRANSACTION_FAILED: Final = b"E"

# The field codes of ErrorResponse and NoticeResponse that pgwake writes or reads
# ("Error and Notice Message Fields").
#: Severity, possibly localized.
ERROR_FIELD_SEVERITY: Final = b"S"
#: Severity, never localized.
ERROR_FIELD_SEVERITY_NONLOCALIZED: Final = b"V"
#: The SQLSTATE code.
ERROR_FIELD_SQLSTATE: Final = b"C"
#: The primary message.
ERROR_FIELD_MESSAGE: Final = b"M"
#: An optional detail.
ERROR_FIELD_DETAIL: Final = b"D"
#: An optional hint.
ERROR_FIELD_HINT: Final = b"H"


class NeedData(enum.Enum):
    """Sentinel returned by readers that need more bytes (h11's ``NEED_DATA``)."""

    #: The buffer holds an incomplete message; feed more bytes.
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks to switch to TLS before the startup packet."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; pgwake always answers 'N'."""


@dataclass(frozen=True, slots=True)
class DirectTLSHello:
    """A TLS ClientHello arrived where a startup packet was expected (PG17 direct TLS)."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query running on the backend identified by ``process_id``/``secret_key``."""

    process_id: int
    secret_key: int

    def __repr__(self) -> str:  # keys are secrets: never show them in logs
        return "CancelRequest(...)"


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The startup packet: protocol version plus parameters (user, database, options...)."""

    protocol_major: int
    protocol_minor: int
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return self.parameters.get("user", "")

    @property
    def database(self) -> str:
        # Postgres defaults the database to the user name.
        return self.parameters.get("database") or self.user

    def __repr__(self) -> str:  # options may carry secrets (e.g. passwords in -c)
        keys = ",".join(sorted(self.parameters))
        return f"StartupMessage({self.protocol_major}.{self.protocol_minor}, keys={keys})"


StartupPacket = SSLRequest | GSSENCRequest | DirectTLSHello | CancelRequest | StartupMessage


@dataclass(frozen=True, slots=True)
class Frame:
    """One typed protocol message: a type byte and its body, undecoded."""

    type: bytes
    body: bytes

    def __repr__(self) -> str:
        return f"Frame({self.type!r}, {len(self.body)} bytes)"


@dataclass(frozen=True, slots=True)
class AuthenticationRequest:
    """Backend 'R' message; ``code`` 0 is AuthenticationOk."""

    code: int
    data: bytes

    #: The ``code`` of AuthenticationOk.
    OK: ClassVar[int] = 0
    #: AuthenticationSASL, AuthenticationSASLContinue, AuthenticationSASLFinal.
    SASL: ClassVar[int] = 10
    SASL_CONTINUE: ClassVar[int] = 11
    SASL_FINAL: ClassVar[int] = 12


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """Frontend 'p' message opening a SASL exchange: the chosen mechanism and its data."""

    mechanism: str
    data: bytes

    def __repr__(self) -> str:  # the data is the client-first-message
        return f"SASLInitialResponse({self.mechanism})"


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """Backend 'K' message: the keys a client needs to cancel a query."""

    process_id: int
    secret_key: int

    def __repr__(self) -> str:
        return "BackendKeyData(...)"


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """Backend 'Z' message: the startup is over; ``status`` is I, T or E."""

    status: Literal["I", "T", "E"]
