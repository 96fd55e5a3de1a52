"""Pure encoders: message in, ``bytes`` out. Nothing here touches a socket."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from pgwake.protocol.errors import SUCCESSFUL_COMPLETION, ClientError
from pgwake.protocol.messages import (
    AUTHENTICATION,
    BACKEND_KEY_DATA,
    BIND,
    CANCEL_REQUEST_CODE,
    ERROR_FIELD_DETAIL,
    ERROR_FIELD_HINT,
    ERROR_FIELD_MESSAGE,
    ERROR_FIELD_SEVERITY,
    ERROR_FIELD_SEVERITY_NONLOCALIZED,
    ERROR_FIELD_SQLSTATE,
    ERROR_RESPONSE,
    EXECUTE,
    NEGOTIATE_PROTOCOL_VERSION,
    NOTICE_RESPONSE,
    PARSE,
    PROTOCOL_3_0,
    QUERY,
    READY_FOR_QUERY,
    SASL_RESPONSE,
    SSL_REQUEST_CODE,
    SYNC,
    AuthenticationRequest,
)

__all__ = [
    "ENCRYPTION_ACCEPTED",
    "ENCRYPTION_REFUSED",
    "authentication",
    "authentication_sasl",
    "backend_key_data",
    "bind",
    "cancel_request",
    "error_response",
    "execute",
    "message",
    "negotiate_protocol_version",
    "notice_response",
    "parse",
    "query",
    "ready_for_query",
    "sasl_initial_response",
    "sasl_response",
    "ssl_request",
    "startup_message",
    "sync",
]

#: The one-byte answers to SSLRequest / GSSENCRequest.
ENCRYPTION_ACCEPTED: Final = b"S"
ENCRYPTION_REFUSED: Final = b"N"

_INT32 = struct.Struct("!i")
_INT16 = struct.Struct("!h")


def message(message_type: bytes, body: bytes = b"") -> bytes:
    """Frame ``body`` as a typed message (type byte, int32 length including itself)."""
    return message_type + _INT32.pack(len(body) + 4) + body


def _cstring(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").replace(b"\0", b"") + b"\0"


def _text_cstring(text: str) -> bytes:
    """Like ``_cstring``, but always valid UTF-8: a client's bytes that were not (a user
    name quoted in an error) are shown as U+FFFD, so strict decoders can read the error."""
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return raw.encode("utf-8").replace(b"\0", b"") + b"\0"


def _notice_fields(
    severity: str, sqlstate: str, text: str, detail: str | None, hint: str | None
) -> bytes:
    parts = [
        ERROR_FIELD_SEVERITY,
        _cstring(severity),
        ERROR_FIELD_SEVERITY_NONLOCALIZED,
        _cstring(severity),
        ERROR_FIELD_SQLSTATE,
        _cstring(sqlstate),
        ERROR_FIELD_MESSAGE,
        _text_cstring(text),
    ]
    if detail:
        parts += [ERROR_FIELD_DETAIL, _text_cstring(detail)]
    if hint:
        parts += [ERROR_FIELD_HINT, _text_cstring(hint)]
    return b"".join(parts) + b"\0"


def error_response(error: ClientError, severity: str = "FATAL") -> bytes:
    """Encode ``error`` as an ``ErrorResponse`` ('E')."""
    body = _notice_fields(severity, error.sqlstate, error.message, error.detail, error.hint)
    return message(ERROR_RESPONSE, body)


def notice_response(
    text: str,
    *,
    sqlstate: str = SUCCESSFUL_COMPLETION,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """Encode a ``NoticeResponse`` ('N') with severity NOTICE."""
    return message(NOTICE_RESPONSE, _notice_fields("NOTICE", sqlstate, text, detail, hint))


def negotiate_protocol_version(newest_minor: int, unsupported: Iterable[str]) -> bytes:
    """Encode ``NegotiateProtocolVersion`` ('v'): the newest 3.x minor we speak, and the
    ``_pq_.`` options we did not recognise, as Postgres sends it."""
    names = list(unsupported)
    body = _INT32.pack(newest_minor) + _INT32.pack(len(names))
    body += b"".join(_cstring(name) for name in names)
    return message(NEGOTIATE_PROTOCOL_VERSION, body)


def authentication(code: int, data: bytes = b"") -> bytes:
    """Encode an Authentication* ('R') message: AuthenticationOk is code 0."""
    return message(AUTHENTICATION, _INT32.pack(code) + data)


def authentication_sasl(mechanisms: Iterable[str]) -> bytes:
    """Encode AuthenticationSASL: the mechanisms offered, most preferred first."""
    names = b"".join(_cstring(name) for name in mechanisms) + b"\0"
    return authentication(AuthenticationRequest.SASL, names)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    """Encode SASLInitialResponse ('p'): mechanism, int32 length, data."""
    return message(SASL_RESPONSE, _cstring(mechanism) + _INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """Encode SASLResponse ('p')."""
    return message(SASL_RESPONSE, data)


def backend_key_data(process_id: int, secret_key: int) -> bytes:
    """Encode ``BackendKeyData`` ('K')."""
    return message(BACKEND_KEY_DATA, struct.pack("!II", process_id, secret_key))


def startup_message(parameters: Mapping[str, str], version: int = PROTOCOL_3_0) -> bytes:
    """Encode a ``StartupMessage`` (untyped: int32 length, int32 version, pairs, NUL)."""
    body = _INT32.pack(version)
    body += b"".join(_cstring(k) + _cstring(v) for k, v in parameters.items()) + b"\0"
    return _INT32.pack(len(body) + 4) + body


def cancel_request(process_id: int, secret_key: int) -> bytes:
    """Encode a ``CancelRequest`` packet."""
    return struct.pack("!iIII", 16, CANCEL_REQUEST_CODE, process_id, secret_key)


def ssl_request() -> bytes:
    """Encode an ``SSLRequest`` packet (used by tests and the cancel forwarder)."""
    return struct.pack("!iI", 8, SSL_REQUEST_CODE)


def query(text: str) -> bytes:
    """Encode a simple ``Query`` ('Q')."""
    return message(QUERY, _cstring(text))


def parse(name: str, text: str, parameter_types: Sequence[int] = ()) -> bytes:
    """Encode ``Parse`` ('P'): prepare ``text`` as the statement ``name`` ("" is the unnamed
    one), with these parameter type OIDs (0 leaves one to the server)."""
    body = _cstring(name) + _cstring(text) + _INT16.pack(len(parameter_types))
    body += b"".join(struct.pack("!I", oid) for oid in parameter_types)
    return message(PARSE, body)


def bind(statement: str, parameters: Sequence[bytes | None], portal: str = "") -> bytes:
    """Encode ``Bind`` ('B'): ``parameters`` in text format (``None`` is NULL), every result
    column in text format."""
    body = _cstring(portal) + _cstring(statement) + _INT16.pack(0) + _INT16.pack(len(parameters))
    for value in parameters:
        body += _INT32.pack(-1) if value is None else _INT32.pack(len(value)) + value
    return message(BIND, body + _INT16.pack(0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    """Encode ``Execute`` ('E'): run ``portal``, all its rows when ``max_rows`` is 0."""
    return message(EXECUTE, _cstring(portal) + _INT32.pack(max_rows))


def sync() -> bytes:
    """Encode ``Sync`` ('S')."""
    return message(SYNC)


def ready_for_query(status: bytes) -> bytes:
    """Encode ``ReadyForQuery`` ('Z') with the transaction status byte ``status``."""
    return message(READY_FOR_QUERY, status)
