"""The PostgreSQL messages pgwake reads or writes, as frozen dataclasses.

Names follow the protocol documentation ("Message Formats"). Fields hold decoded values;
encoding lives in ``encode.py`` and decoding in ``startup.py`` / ``framing.py``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "NEED_DATA",
    "PROTOCOL_3_0",
    "SSL_REQUEST_CODE",
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
