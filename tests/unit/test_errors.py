"""Every error a client can see (ARCHITECTURE.md) has one class with the right SQLSTATE."""

from __future__ import annotations

import pytest

from pgwake.protocol import encode
from pgwake.protocol.errors import (
    AdminShutdown,
    CannotConnectNow,
    ClientError,
    ErrorKind,
    FeatureNotSupported,
    IdleInTransactionSessionTimeout,
    IdleSessionTimeout,
    InternalError,
    InvalidAuthorizationSpecification,
    InvalidCatalogName,
    InvalidPassword,
    ProtocolViolation,
    SqlclientUnableToEstablishSqlconnection,
    TooManyConnections,
    lookup,
)
from pgwake.protocol.framing import MessageReader, parse_error_fields
from pgwake.protocol.messages import Frame

#: ARCHITECTURE.md, one row per line: what went wrong, the class, its SQLSTATE.
DESIGN_ERRORS = [
    ("no endpoint given", SqlclientUnableToEstablishSqlconnection, "08004"),
    ("unknown endpoint", InvalidCatalogName, "3D000"),
    ("bad password or role", InvalidPassword, "28P01"),
    ("compute could not start in time or failed", CannotConnectNow, "57P03"),
    ("too many connections", TooManyConnections, "53300"),
    ("malformed startup", ProtocolViolation, "08P01"),
]

#: The other classes: errcodes.txt names and codes.
OTHER_ERRORS = [
    ("unsupported protocol", FeatureNotSupported, "0A000"),
    ("no user in the startup", InvalidAuthorizationSpecification, "28000"),
    ("pgwake shuts down", AdminShutdown, "57P01"),
    ("a pgwake bug", InternalError, "XX000"),
    ("pinned inside a transaction too long", IdleInTransactionSessionTimeout, "25P03"),
    ("pinned too long", IdleSessionTimeout, "57P05"),
]

ALL_ERRORS = DESIGN_ERRORS + OTHER_ERRORS


@pytest.mark.parametrize(
    ("case", "error_class", "sqlstate"), ALL_ERRORS, ids=[row[0] for row in ALL_ERRORS]
)
def test_class_has_the_sqlstate(case: str, error_class: type[ClientError], sqlstate: str) -> None:
    assert issubclass(error_class, ClientError)
    assert error_class.sqlstate == sqlstate
    assert lookup(sqlstate) is error_class
    error = error_class(case, detail="why", hint="what to do")
    assert error.sqlstate == sqlstate
    assert isinstance(error.kind, ErrorKind)


@pytest.mark.parametrize(
    ("case", "error_class", "sqlstate"), DESIGN_ERRORS, ids=[row[0] for row in DESIGN_ERRORS]
)
def test_client_sees_fatal_error_response(
    case: str, error_class: type[ClientError], sqlstate: str
) -> None:
    # ARCHITECTURE.md: always an ErrorResponse with severity FATAL, a SQLSTATE and the message.
    reader = MessageReader()
    reader.feed(encode.error_response(error_class(case, hint="a hint")))
    frame = reader.next_message()
    assert isinstance(frame, Frame)
    assert frame.type == b"E"
    fields = parse_error_fields(frame)
    assert (fields["S"], fields["C"], fields["M"], fields["H"]) == (
        "FATAL",
        sqlstate,
        case,
        "a hint",
    )


def _subclasses(cls: type[ClientError]) -> list[type[ClientError]]:
    return [sub for child in cls.__subclasses__() for sub in (child, *_subclasses(child))]


def test_every_error_class_is_listed_and_owns_its_sqlstate() -> None:
    classes = _subclasses(ClientError)
    # A new class must be listed above (with the case it covers) ...
    assert sorted(cls.__name__ for cls in classes) == sorted(row[1].__name__ for row in ALL_ERRORS)
    # ... and two classes sharing a SQLSTATE would make lookup() return only one of them.
    assert all(lookup(cls.sqlstate) is cls for cls in classes)


@pytest.mark.parametrize("sqlstate", ["00000", "99999", "08P0", "", "57p03"])
def test_lookup_unknown_code(sqlstate: str) -> None:
    with pytest.raises(KeyError):
        lookup(sqlstate)


def test_error_kinds() -> None:
    # The kind is a metric label: whose fault it was.
    assert ProtocolViolation.kind is ErrorKind.CLIENT
    assert InvalidPassword.kind is ErrorKind.CLIENT
    assert CannotConnectNow.kind is ErrorKind.COMPUTE
    assert TooManyConnections.kind is ErrorKind.SERVICE
    assert InternalError.kind is ErrorKind.INTERNAL
