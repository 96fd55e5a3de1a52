"""Sans-IO framing of typed protocol messages (a type byte, an int32 length, a body).

The same reader serves both directions, with a different cap on a message's length: the
client's authentication responses (``MAX_AUTHENTICATION_MESSAGE_LENGTH``, the default:
whoever is not authenticated yet gets the smallest buffer), and the compute's replies
during the startup (``MAX_STARTUP_PHASE_MESSAGE_LENGTH``). A header declaring more is
refused as soon as its five bytes are in, before any of the body is waited for. After
``ReadyForQuery`` the codec steps aside and ``relay.py`` copies bytes without parsing them.
"""

from __future__ import annotations

import struct
from typing import Final, Literal

from pgwake.protocol.buffer import ReceiveBuffer
from pgwake.protocol.errors import ProtocolViolation
from pgwake.protocol.messages import (
    ERROR_FIELD_SQLSTATE,
    NEED_DATA,
    SASL_RESPONSE,
    TRANSACTION_FAILED,
    TRANSACTION_IDLE,
    TRANSACTION_IN_BLOCK,
    AuthenticationRequest,
    BackendKeyData,
    Frame,
    NeedData,
    ReadyForQuery,
    SASLInitialResponse,
)

__all__ = [
    "MAX_AUTHENTICATION_MESSAGE_LENGTH",
    "MAX_STARTUP_PHASE_MESSAGE_LENGTH",
    "MessageReader",
    "error_sqlstate",
    "parse_authentication",
    "parse_backend_key_data",
    "parse_data_row",
    "parse_error_fields",
    "parse_ready_for_query",
    "parse_sasl_initial_response",
    "parse_sasl_response",
]

# What a client may send before it is authenticated: Postgres reads authentication
# messages with PG_MAX_AUTH_TOKEN_LENGTH (libpq/auth.h) as pq_getmessage's cap, which
# counts the length word too. SCRAM messages are a few hundred bytes.
MAX_AUTHENTICATION_MESSAGE_LENGTH: Final = 65_535
# The compute's replies before ReadyForQuery are small (authentication, ParameterStatus),
# but an ErrorResponse can be long; 1 MiB is generous.
MAX_STARTUP_PHASE_MESSAGE_LENGTH: Final = 1 << 20
_HEADER = struct.Struct("!ci")
_INT32 = struct.Struct("!i")
_INT16 = struct.Struct("!h")


class MessageReader(ReceiveBuffer):
    """Splits a byte stream into ``Frame`` objects of at most ``max_length`` bytes (the
    length word included, as the protocol counts it). The default suits a client that is
    not authenticated yet; a reader of the compute's replies passes
    ``MAX_STARTUP_PHASE_MESSAGE_LENGTH``."""

    def __init__(self, max_length: int = MAX_AUTHENTICATION_MESSAGE_LENGTH) -> None:
        super().__init__()
        self._max_length = max_length

    def next_message(self) -> Frame | NeedData:
        """Return the next whole message, or ``NEED_DATA``; raise ``ProtocolViolation``
        once a header declares a length below 4 or above the cap."""
        buffer = self._buffer
        if len(buffer) < _HEADER.size:
            return NEED_DATA
        message_type, length = _HEADER.unpack_from(buffer)
        if length < 4 or length > self._max_length:
            raise ProtocolViolation(
                "invalid message length",
                detail=f"message {message_type!r} declares {length} bytes",
            )
        end = 1 + length
        if len(buffer) < end:
            return NEED_DATA
        frame = Frame(message_type, bytes(buffer[_HEADER.size : end]))
        del buffer[:end]
        return frame


def parse_authentication(frame: Frame) -> AuthenticationRequest:
    """Decode an 'R' message body."""
    if len(frame.body) < 4:
        raise ProtocolViolation("invalid authentication request")
    (code,) = _INT32.unpack_from(frame.body)
    return AuthenticationRequest(code, frame.body[4:])


def parse_sasl_initial_response(frame: Frame) -> SASLInitialResponse:
    """Decode a 'p' message that opens a SASL exchange (mechanism, int32 length, data)."""
    body = frame.body
    end = body.find(b"\0")
    if frame.type != SASL_RESPONSE or end < 1 or len(body) < end + 5:
        raise ProtocolViolation("invalid SASLInitialResponse message")
    mechanism = body[:end].decode("ascii", "replace")
    (length,) = _INT32.unpack_from(body, end + 1)
    data = body[end + 5 :]
    # -1 means "no initial response"; SCRAM always sends one.
    if length != len(data):
        raise ProtocolViolation(
            "invalid SASLInitialResponse message", detail="declared and actual data lengths differ"
        )
    return SASLInitialResponse(mechanism, data)


def parse_sasl_response(frame: Frame) -> bytes:
    """Decode a 'p' message that continues a SASL exchange: its body is the data."""
    if frame.type != SASL_RESPONSE:
        raise ProtocolViolation("expected a SASLResponse message")
    return frame.body


def parse_backend_key_data(frame: Frame) -> BackendKeyData:
    """Decode a 'K' message body (protocol 3.0: two int32)."""
    if len(frame.body) != 8:
        raise ProtocolViolation("invalid BackendKeyData message")
    process_id, secret_key = struct.unpack("!II", frame.body)
    return BackendKeyData(process_id, secret_key)


def parse_data_row(frame: Frame) -> tuple[bytes | None, ...]:
    """Decode a 'D' message body: its column values, ``None`` for NULL (length -1)."""
    body = frame.body
    if len(body) < 2:
        raise ProtocolViolation("invalid DataRow message")
    (count,) = _INT16.unpack_from(body)
    values: list[bytes | None] = []
    offset = 2
    for _ in range(count):
        if len(body) < offset + 4:
            raise ProtocolViolation("invalid DataRow message")
        (length,) = _INT32.unpack_from(body, offset)
        offset += 4
        if length == -1:
            values.append(None)
            continue
        if length < 0 or len(body) < offset + length:
            raise ProtocolViolation("invalid DataRow message")
        values.append(body[offset : offset + length])
        offset += length
    if offset != len(body) or count < 0:
        raise ProtocolViolation("invalid DataRow message")
    return tuple(values)


def parse_ready_for_query(frame: Frame) -> ReadyForQuery:
    """Decode a 'Z' message body."""
    body = frame.body
    if body not in (TRANSACTION_IDLE, TRANSACTION_IN_BLOCK, TRANSACTION_FAILED):
        raise ProtocolViolation("invalid ReadyForQuery message")
    status: Literal["I", "T", "E"] = (
        "I" if body == TRANSACTION_IDLE else "T" if body == TRANSACTION_IN_BLOCK else "E"
    )
    return ReadyForQuery(status)


def parse_error_fields(frame: Frame) -> dict[str, str]:
    """Decode an 'E' or 'N' body into {field code: value}, e.g. {'C': '28P01', 'M': ...}."""
    fields: dict[str, str] = {}
    for part in frame.body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def error_sqlstate(frame: Frame) -> str | None:
    """The SQLSTATE of an 'E' or 'N' message, ``None`` if it has none."""
    return parse_error_fields(frame).get(ERROR_FIELD_SQLSTATE.decode())
