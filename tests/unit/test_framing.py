"""MessageReader and the decoders of the typed messages read before ReadyForQuery."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from pgwake.protocol import encode
from pgwake.protocol.errors import InvalidPassword, ProtocolViolation
from pgwake.protocol.framing import (
    MAX_AUTHENTICATION_MESSAGE_LENGTH,
    MAX_STARTUP_PHASE_MESSAGE_LENGTH,
    MessageReader,
    parse_authentication,
    parse_backend_key_data,
    parse_error_fields,
    parse_ready_for_query,
)
from pgwake.protocol.messages import (
    NEED_DATA,
    AuthenticationRequest,
    BackendKeyData,
    Frame,
    ReadyForQuery,
)

AUTH_OK = b"R\0\0\0\x08\0\0\0\0"
SASL = b"R" + struct.pack("!ii", 4 + 4 + 15, 10) + b"SCRAM-SHA-256\0\0"
PARAMETER_STATUS = encode.message(b"S", b"server_version\x0016.2\0")
READY = b"Z\0\0\0\x05I"
#: Postgres's cap on a client's authentication message (libpq/auth.h), the length word
#: included (pq_getmessage's maxlen).
PG_MAX_AUTH_TOKEN_LENGTH = 65_535


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (AUTH_OK, Frame(b"R", b"\0\0\0\0")),
        (SASL, Frame(b"R", b"\0\0\0\x0aSCRAM-SHA-256\0\0")),
        (PARAMETER_STATUS, Frame(b"S", b"server_version\x0016.2\0")),
        (READY, Frame(b"Z", b"I")),
        (b"X\0\0\0\x04", Frame(b"X", b"")),  # Terminate: an empty body
    ],
    ids=["auth-ok", "sasl", "parameter-status", "ready", "empty-body"],
)
def test_single_frame(tr: Callable[..., None], data: bytes, expected: Frame) -> None:
    tr(MessageReader, data, expected)


def test_several_frames_in_one_feed() -> None:
    reader = MessageReader()
    reader.feed(AUTH_OK + PARAMETER_STATUS + READY)
    assert reader.next_message() == Frame(b"R", b"\0\0\0\0")
    assert reader.next_message() == Frame(b"S", b"server_version\x0016.2\0")
    assert reader.next_message() == Frame(b"Z", b"I")
    assert reader.next_message() is NEED_DATA


def test_several_frames_byte_by_byte() -> None:
    stream = AUTH_OK + PARAMETER_STATUS + READY
    reader = MessageReader()
    frames = []
    for index in range(len(stream)):
        reader.feed(stream[index : index + 1])
        message = reader.next_message()
        if message is not NEED_DATA:
            frames.append(message)
    assert [frame.type for frame in frames] == [b"R", b"S", b"Z"]


def test_take_remaining_hands_over_the_unparsed_bytes() -> None:
    # After ReadyForQuery the relay takes whatever followed it, parsed or not.
    reader = MessageReader()
    reader.feed(READY + b"D\0\0\0\x0a\0\x01")
    assert reader.next_message() == Frame(b"Z", b"I")
    assert reader.take_remaining() == b"D\0\0\0\x0a\0\x01"
    assert reader.take_remaining() == b""
    assert reader.next_message() is NEED_DATA


@pytest.mark.parametrize("size", [0, 1, 4, 5, 8])
def test_partial_frame_needs_data(size: int) -> None:
    reader = MessageReader()
    reader.feed(PARAMETER_STATUS[:size])
    assert reader.next_message() is NEED_DATA
    assert reader.take_remaining() == PARAMETER_STATUS[:size]


@pytest.mark.parametrize(
    "length", [3, 0, -1, -(2**31), MAX_STARTUP_PHASE_MESSAGE_LENGTH + 1, 2**31 - 1]
)
@pytest.mark.parametrize(
    "max_length", [MAX_AUTHENTICATION_MESSAGE_LENGTH, MAX_STARTUP_PHASE_MESSAGE_LENGTH]
)
def test_bad_length_is_protocol_violation(length: int, max_length: int) -> None:
    reader = MessageReader(max_length)
    reader.feed(b"R" + struct.pack("!i", length))
    with pytest.raises(ProtocolViolation) as info:
        reader.next_message()
    assert info.value.sqlstate == "08P01"


def test_compute_replies_may_be_as_long_as_the_startup_phase_cap() -> None:
    reader = MessageReader(MAX_STARTUP_PHASE_MESSAGE_LENGTH)
    reader.feed(b"E" + struct.pack("!i", MAX_STARTUP_PHASE_MESSAGE_LENGTH))
    assert reader.next_message() is NEED_DATA


# -- what a client may send before it is authenticated ---------------------------------------


def test_a_client_message_may_be_as_long_as_postgres_allows() -> None:
    body = b"\x01" * (PG_MAX_AUTH_TOKEN_LENGTH - 4)
    reader = MessageReader()
    reader.feed(encode.message(b"p", body))
    assert reader.next_message() == Frame(b"p", body)


@pytest.mark.parametrize(
    "length", [PG_MAX_AUTH_TOKEN_LENGTH + 1, 1 << 20, MAX_STARTUP_PHASE_MESSAGE_LENGTH]
)
def test_a_longer_client_message_is_refused_on_its_header_alone(length: int) -> None:
    # The default reader is the client's: five bytes decide, no body is waited for.
    reader = MessageReader()
    reader.feed(b"p" + struct.pack("!i", length))
    with pytest.raises(ProtocolViolation) as info:
        reader.next_message()
    assert info.value.sqlstate == "08P01"
    assert info.value.message == "invalid message length"


def test_a_longer_client_message_is_refused_byte_by_byte() -> None:
    header = b"p" + struct.pack("!i", 1 << 20)
    reader = MessageReader()
    for index in range(len(header) - 1):
        reader.feed(header[index : index + 1])
        assert reader.next_message() is NEED_DATA
    reader.feed(header[-1:])
    with pytest.raises(ProtocolViolation):
        reader.next_message()


def test_custom_max_length() -> None:
    reader = MessageReader(max_length=8)
    reader.feed(AUTH_OK)
    assert reader.next_message() == Frame(b"R", b"\0\0\0\0")
    reader.feed(READY[:1] + struct.pack("!i", 9))
    with pytest.raises(ProtocolViolation):
        reader.next_message()


# -- decoders ------------------------------------------------------------------------------


def test_parse_authentication_ok() -> None:
    request = parse_authentication(Frame(b"R", b"\0\0\0\0"))
    assert request == AuthenticationRequest(0, b"")
    assert request.code == AuthenticationRequest.OK


def test_parse_authentication_sasl() -> None:
    request = parse_authentication(Frame(b"R", SASL[5:]))
    assert request == AuthenticationRequest(10, b"SCRAM-SHA-256\0\0")
    assert request.code == AuthenticationRequest.SASL


@pytest.mark.parametrize("body", [b"", b"\0\0\0"])
def test_parse_authentication_short(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_authentication(Frame(b"R", body))


@pytest.mark.parametrize(
    ("process_id", "secret_key"), [(0, 0), (4242, 0xDEADBEEF), (2**32 - 1, 2**32 - 1)]
)
def test_parse_backend_key_data_round_trip(process_id: int, secret_key: int) -> None:
    reader = MessageReader()
    reader.feed(encode.backend_key_data(process_id, secret_key))
    frame = reader.next_message()
    assert isinstance(frame, Frame)
    assert frame.type == b"K"
    assert parse_backend_key_data(frame) == BackendKeyData(process_id, secret_key)


@pytest.mark.parametrize("size", [0, 4, 7, 9, 12])
def test_parse_backend_key_data_bad_length(size: int) -> None:
    with pytest.raises(ProtocolViolation):
        parse_backend_key_data(Frame(b"K", b"\x01" * size))


def test_backend_key_data_repr_hides_the_keys() -> None:
    assert "4242" not in repr(BackendKeyData(4242, 77))


@pytest.mark.parametrize("status", ["I", "T", "E"])
def test_parse_ready_for_query(status: str) -> None:
    assert parse_ready_for_query(Frame(b"Z", status.encode())) == ReadyForQuery(status)  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [b"", b"X", b"II", b"i"])
def test_parse_ready_for_query_bad_status(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_ready_for_query(Frame(b"Z", body))


def test_parse_error_fields_of_encoded_error_response() -> None:
    error = InvalidPassword('password authentication failed for user "alice"', hint="retry")
    reader = MessageReader()
    reader.feed(encode.error_response(error))
    frame = reader.next_message()
    assert isinstance(frame, Frame)
    assert frame.type == b"E"
    assert parse_error_fields(frame) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28P01",
        "M": 'password authentication failed for user "alice"',
        "H": "retry",
    }


def test_parse_error_fields_of_a_real_postgres_error() -> None:
    # An ErrorResponse as Postgres 16 sends it for a bad database name.
    body = (
        b'SFATAL\0VFATAL\0C3D000\0Mdatabase "nope" does not exist\0'
        b"Fpostinit.c\0L1035\0RInitPostgres\0\0"
    )
    fields = parse_error_fields(Frame(b"E", body))
    assert fields["C"] == "3D000"
    assert fields["M"] == 'database "nope" does not exist'
    assert fields["R"] == "InitPostgres"
    assert len(fields) == 7


def test_frame_repr_shows_no_body() -> None:
    assert "secret" not in repr(Frame(b"p", b"secret"))
