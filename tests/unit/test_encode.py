"""Pure encoders: exact layouts, and decoding what they encode gives the original back."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwake.protocol import encode
from pgwake.protocol.errors import (
    CannotConnectNow,
    ClientError,
    InvalidCatalogName,
    SqlclientUnableToEstablishSqlconnection,
)
from pgwake.protocol.framing import MessageReader, parse_error_fields
from pgwake.protocol.messages import NEED_DATA, Frame


def decode_one(data: bytes) -> Frame:
    """Frame ``data``, which must be exactly one message."""
    reader = MessageReader()
    reader.feed(data)
    frame = reader.next_message()
    assert isinstance(frame, Frame)
    assert reader.next_message() is NEED_DATA
    assert reader.take_remaining() == b""
    return frame


@pytest.mark.parametrize("body", [b"", b"I", b"x" * 300])
def test_message_framing_length_counts_itself(body: bytes) -> None:
    data = encode.message(b"Z", body)
    assert data[:1] == b"Z"
    assert struct.unpack("!i", data[1:5]) == (len(body) + 4,)
    assert data[5:] == body
    assert decode_one(data) == Frame(b"Z", body)


def test_error_response_exact_bytes() -> None:
    error = CannotConnectNow(
        'endpoint "demo" could not start', detail="out of disk", hint="try later"
    )
    body = b'SFATAL\0VFATAL\0C57P03\0Mendpoint "demo" could not start\0Dout of disk\0Htry later\0\0'
    assert encode.error_response(error) == b"E" + struct.pack("!i", len(body) + 4) + body


def test_error_response_fields() -> None:
    error = SqlclientUnableToEstablishSqlconnection(
        "no endpoint specified", detail="some detail", hint="name one"
    )
    frame = decode_one(encode.error_response(error))
    assert frame.type == b"E"
    # Each field is NUL-terminated and the body ends with one more NUL.
    assert frame.body.endswith(b"name one\0\0")
    assert parse_error_fields(frame) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "08004",
        "M": "no endpoint specified",
        "D": "some detail",
        "H": "name one",
    }


def test_error_response_without_detail_or_hint() -> None:
    frame = decode_one(encode.error_response(InvalidCatalogName("no such endpoint")))
    fields = parse_error_fields(frame)
    assert set(fields) == {"S", "V", "C", "M"}
    assert fields["C"] == "3D000"
    assert frame.body == b"SFATAL\0VFATAL\0C3D000\0Mno such endpoint\0\0"


def test_error_response_severity() -> None:
    frame = decode_one(encode.error_response(InvalidCatalogName("x"), severity="ERROR"))
    assert parse_error_fields(frame)["S"] == "ERROR"
    assert parse_error_fields(frame)["V"] == "ERROR"


def test_error_response_strips_nul_from_text() -> None:
    # A NUL inside a field would end it early and let the rest pose as other fields.
    frame = decode_one(encode.error_response(InvalidCatalogName("a\0Cxxxxx", detail="d\0")))
    assert parse_error_fields(frame) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "3D000",
        "M": "aCxxxxx",
        "D": "d",
    }


@given(
    message=st.text(max_size=60),
    detail=st.none() | st.text(min_size=1, max_size=60),
    hint=st.none() | st.text(min_size=1, max_size=60),
)
def test_error_response_round_trip(message: str, detail: str | None, hint: str | None) -> None:
    error = CannotConnectNow(message, detail=detail, hint=hint)
    fields = parse_error_fields(decode_one(encode.error_response(error)))
    expected = {"S": "FATAL", "V": "FATAL", "C": "57P03", "M": message.replace("\0", "")}
    if detail:
        expected["D"] = detail.replace("\0", "")
    if hint:
        expected["H"] = hint.replace("\0", "")
    assert fields == expected


def test_notice_response() -> None:
    frame = decode_one(encode.notice_response("waking endpoint", detail="d"))
    assert frame.type == b"N"
    assert parse_error_fields(frame) == {
        "S": "NOTICE",
        "V": "NOTICE",
        "C": "00000",
        "M": "waking endpoint",
        "D": "d",
    }


def test_negotiate_protocol_version_layout() -> None:
    data = encode.negotiate_protocol_version(2, ["_pq_.a", "_pq_.bb"])
    body = struct.pack("!ii", 2, 2) + b"_pq_.a\0_pq_.bb\0"
    assert data == b"v" + struct.pack("!i", len(body) + 4) + body
    assert decode_one(data) == Frame(b"v", body)


def test_negotiate_protocol_version_without_options() -> None:
    data = encode.negotiate_protocol_version(0, iter(()))
    assert data == b"v\0\0\0\x0c\0\0\0\0\0\0\0\0"


def test_backend_key_data_layout() -> None:
    data = encode.backend_key_data(0x01020304, 0xFFFFFFFE)
    assert data == b"K\0\0\0\x0c\x01\x02\x03\x04\xff\xff\xff\xfe"


def test_startup_message_layout() -> None:
    data = encode.startup_message({"user": "alice", "database": "shop"})
    body = b"\0\x03\0\0user\0alice\0database\0shop\0\0"
    assert data == struct.pack("!i", len(body) + 4) + body


def test_cancel_request_layout() -> None:
    assert encode.cancel_request(1, 2) == struct.pack("!iiII", 16, 80877102, 1, 2)


def test_ssl_request_layout() -> None:
    # The bytes every libpq sends first with sslmode != disable.
    assert encode.ssl_request() == b"\0\0\0\x08\x04\xd2\x16\x2f"


def test_client_error_defaults() -> None:
    error = InvalidCatalogName("x")
    assert isinstance(error, ClientError)
    assert (error.message, error.detail, error.hint) == ("x", None, None)
    assert str(error) == "x"
    assert repr(error) == "InvalidCatalogName(3D000, 'x')"
