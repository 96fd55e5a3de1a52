"""StartupReader and parse_startup_packet: the untyped packets a client sends first."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwake.protocol import encode
from pgwake.protocol.errors import (
    ClientError,
    CloseWithoutReply,
    FeatureNotSupported,
    InvalidAuthorizationSpecification,
    ProtocolViolation,
)
from pgwake.protocol.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    NEED_DATA,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    CancelRequest,
    DirectTLSHello,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)
from pgwake.protocol.startup import MAX_STARTUP_PACKET_LENGTH, StartupReader, parse_startup_packet

PROTOCOL_3_2 = (3 << 16) | 2
PROTOCOL_2_0 = 2 << 16


def packet(code: int, body: bytes = b"") -> bytes:
    """An untyped startup-phase packet: int32 length (itself included), int32 code, body."""
    return struct.pack("!iI", 8 + len(body), code) + body


def params(*pairs: bytes) -> bytes:
    """NUL-terminated name/value strings followed by the final NUL."""
    return b"".join(part + b"\0" for part in pairs) + b"\0"


def read_one(data: bytes) -> object:
    reader = StartupReader()
    reader.feed(data)
    return reader.next_message()


# -- well-formed packets, h11 style --------------------------------------------------------


def test_ssl_request(tr: Callable[..., None]) -> None:
    tr(StartupReader, packet(SSL_REQUEST_CODE), SSLRequest())


def test_gssenc_request(tr: Callable[..., None]) -> None:
    tr(StartupReader, packet(GSSENC_REQUEST_CODE), GSSENCRequest())


def test_cancel_request(tr: Callable[..., None]) -> None:
    data = packet(CANCEL_REQUEST_CODE, struct.pack("!II", 4242, 0xDEADBEEF))
    tr(StartupReader, data, CancelRequest(4242, 0xDEADBEEF))


def test_cancel_request_repr_hides_the_keys() -> None:
    assert "4242" not in repr(CancelRequest(4242, 99))


def test_startup_message_3_0_with_parameters(tr: Callable[..., None]) -> None:
    body = params(
        b"user",
        b"alice",
        b"database",
        b"shop",
        b"options",
        b"-c search_path=a\\ b endpoint=demo",
        b"_pq_.x",
        b"1",
    )
    expected = StartupMessage(
        3,
        0,
        {
            "user": "alice",
            "database": "shop",
            "options": "-c search_path=a\\ b endpoint=demo",
            "_pq_.x": "1",
        },
    )
    tr(StartupReader, packet(PROTOCOL_3_0, body), expected)


def test_startup_message_3_2(tr: Callable[..., None]) -> None:
    data = packet(PROTOCOL_3_2, params(b"user", b"alice"))
    tr(StartupReader, data, StartupMessage(3, 2, {"user": "alice"}))


def test_startup_message_database_defaults_to_user() -> None:
    message = parse_startup_packet(packet(PROTOCOL_3_0, params(b"user", b"alice")))
    assert isinstance(message, StartupMessage)
    assert message.user == "alice"
    assert message.database == "alice"


def test_startup_message_empty_value_is_kept() -> None:
    body = params(b"user", b"alice", b"application_name", b"")
    message = parse_startup_packet(packet(PROTOCOL_3_0, body))
    assert message == StartupMessage(3, 0, {"user": "alice", "application_name": ""})


def test_startup_message_non_utf8_bytes_round_trip() -> None:
    # surrogateescape: whatever bytes the client sent reach the compute unchanged.
    message = parse_startup_packet(packet(PROTOCOL_3_0, params(b"user", b"\xff\xfe")))
    assert isinstance(message, StartupMessage)
    assert message.user.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_startup_message_repr_hides_values() -> None:
    message = StartupMessage(3, 0, {"user": "alice", "options": "-c password=hunter2"})
    assert "hunter2" not in repr(message)
    assert "alice" not in repr(message)


def test_largest_allowed_length_waits_for_data() -> None:
    reader = StartupReader()
    reader.feed(struct.pack("!iI", MAX_STARTUP_PACKET_LENGTH, PROTOCOL_3_0))
    assert reader.next_message() is NEED_DATA


# -- several packets in one stream ---------------------------------------------------------


def test_ssl_request_then_startup_in_one_feed() -> None:
    startup = packet(PROTOCOL_3_0, params(b"user", b"alice"))
    reader = StartupReader()
    reader.feed(packet(SSL_REQUEST_CODE) + startup)
    assert reader.next_message() == SSLRequest()
    assert reader.trailing_data == startup
    assert reader.next_message() == StartupMessage(3, 0, {"user": "alice"})
    assert reader.next_message() is NEED_DATA
    assert reader.trailing_data == b""


def test_trailing_data_after_ssl_request() -> None:
    # Bytes sent before our 'S' (e.g. a ClientHello piggy-backed on the SSLRequest) must be
    # visible so the session can refuse them: they were not protected by TLS.
    extra = b"\x16\x03\x01\x00\x05hello"
    reader = StartupReader()
    reader.feed(packet(SSL_REQUEST_CODE) + extra)
    assert reader.next_message() == SSLRequest()
    assert reader.trailing_data == extra


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 12])
def test_partial_input_needs_data_and_consumes_nothing(size: int) -> None:
    data = packet(PROTOCOL_3_0, params(b"user", b"alice"))[:size]
    reader = StartupReader()
    reader.feed(data)
    assert reader.next_message() is NEED_DATA
    assert reader.next_message() is NEED_DATA
    assert reader.trailing_data == data


def test_empty_reader_needs_data() -> None:
    assert StartupReader().next_message() is NEED_DATA


# -- direct TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x16", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"])
def test_tls_client_hello_is_direct_tls(data: bytes) -> None:
    reader = StartupReader()
    reader.feed(data)
    assert reader.next_message() == DirectTLSHello()
    # The ClientHello is handed to TLS whole: the reader consumes none of it.
    assert reader.trailing_data == data


# -- malformed packets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "length",
    [0, 4, 7, MAX_STARTUP_PACKET_LENGTH + 1, 10_001, 2**31 - 1, -1, -8, -(2**31)],
)
def test_impossible_length_closes_without_reply(length: int) -> None:
    # Refused as soon as the length is known, before any body arrives; Postgres logs
    # "invalid length of startup packet" and closes without a word.
    with pytest.raises(CloseWithoutReply) as info:
        read_one(struct.pack("!i", length))
    assert info.value.reason == "invalid length of startup packet"
    assert str(length) in (info.value.detail or "")


def test_terminate_before_the_startup_closes_without_reply() -> None:
    # A client that ends while still connecting (node-postgres: connect() then end())
    # queues Terminate before its StartupMessage: 'X\0\0\0' reads as 1,476,395,008.
    data = b"X\0\0\0\x04" + packet(PROTOCOL_3_0, params(b"user", b"alice"))
    for size in (4, 5, len(data)):
        with pytest.raises(CloseWithoutReply) as info:
            read_one(data[:size])
        assert info.value.reason == "invalid length of startup packet"
        assert "1476395008" in (info.value.detail or "")
    for size in range(4):
        assert read_one(data[:size]) is NEED_DATA


@pytest.mark.parametrize(
    ("code", "body"),
    [(SSL_REQUEST_CODE, b"\0\0\0\0"), (GSSENC_REQUEST_CODE, b"\0")],
    ids=["ssl-long", "gssenc-long"],
)
def test_encryption_request_with_wrong_length(code: int, body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        read_one(packet(code, body))


@pytest.mark.parametrize("body", [b"\0\0\0\1", b"\0" * 12], ids=["short", "long"])
def test_cancel_request_with_wrong_length_closes_without_reply(body: bytes) -> None:
    # Postgres never answers a cancel request, a malformed one neither.
    with pytest.raises(CloseWithoutReply) as info:
        read_one(packet(CANCEL_REQUEST_CODE, body))
    assert info.value.reason == "invalid length of cancel request packet"


# -- the client closes ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 4, 8, 19])
def test_end_of_stream_inside_a_packet_closes_without_reply(size: int) -> None:
    # A partial length word or a partial body: Postgres logs "incomplete startup packet".
    reader = StartupReader()
    reader.feed(packet(PROTOCOL_3_0, params(b"user", b"alice"))[:size])
    assert reader.next_message() is NEED_DATA
    with pytest.raises(CloseWithoutReply) as info:
        reader.end_of_stream()
    assert info.value.reason == "incomplete startup packet"
    assert f"{size} bytes" in (info.value.detail or "")


def test_end_of_stream_between_packets_is_not_worth_a_word() -> None:
    # Nothing at all (a port scanner, a monitor), or after a whole packet ('N' refused
    # TLS and the client gave up): no complaint, as in Postgres.
    StartupReader().end_of_stream()
    reader = StartupReader()
    reader.feed(packet(SSL_REQUEST_CODE))
    assert reader.next_message() == SSLRequest()
    reader.end_of_stream()


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no parameters, no terminator
        b"user\0alice\0",  # last pair without the final NUL
        b"user\0alice",  # value not terminated
        b"user\0alice\0\0\0",  # bytes after the terminator
    ],
    ids=["empty", "no-terminator", "unterminated-value", "after-terminator"],
)
def test_missing_terminator_is_protocol_violation(body: bytes) -> None:
    with pytest.raises(ProtocolViolation) as info:
        read_one(packet(PROTOCOL_3_0, body))
    assert info.value.sqlstate == "08P01"


def test_odd_number_of_fields_is_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        read_one(packet(PROTOCOL_3_0, b"user\0alice\0database\0\0"))


def test_empty_parameter_name_is_protocol_violation() -> None:
    # An empty name is the terminator, so more pairs after it break the layout.
    with pytest.raises(ProtocolViolation):
        read_one(packet(PROTOCOL_3_0, b"user\0alice\0\0database\0shop\0\0"))


@pytest.mark.parametrize(
    "body",
    [b"\0", params(b"database", b"shop"), params(b"user", b"")],
    ids=["no-parameters", "no-user", "empty-user"],
)
def test_missing_user_is_invalid_authorization_specification(body: bytes) -> None:
    with pytest.raises(InvalidAuthorizationSpecification) as info:
        read_one(packet(PROTOCOL_3_0, body))
    assert info.value.sqlstate == "28000"


@pytest.mark.parametrize(
    "code",
    [PROTOCOL_2_0, 1 << 16, 4 << 16, (1234 << 16) | 5681],
    ids=["2.0", "1.0", "4.0", "1234.5681"],
)
def test_other_protocol_versions_are_not_supported(code: int) -> None:
    with pytest.raises(FeatureNotSupported) as info:
        read_one(packet(code, params(b"user", b"alice")))
    assert info.value.sqlstate == "0A000"
    assert "unsupported frontend protocol" in info.value.message


def test_every_refusal_is_a_client_error() -> None:
    for error in (ProtocolViolation, FeatureNotSupported, InvalidAuthorizationSpecification):
        assert issubclass(error, ClientError)


def test_a_silent_close_is_not_a_client_error() -> None:
    # The session answers every ClientError with an ErrorResponse: this one must not be.
    assert not issubclass(CloseWithoutReply, ClientError)


# -- encode -> decode round trips -----------------------------------------------------------

_names = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=12
)
_values = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=40)


@given(
    user=_names,
    extra=st.dictionaries(_names.filter(lambda name: name != "user"), _values, max_size=6),
)
def test_startup_message_round_trip(user: str, extra: dict[str, str]) -> None:
    parameters = {"user": user, **extra}
    data = encode.startup_message(parameters)
    assert read_one(data) == StartupMessage(3, 0, parameters)


def test_startup_message_round_trip_3_2(tr: Callable[..., None]) -> None:
    parameters = {"user": "alice", "database": "shop", "_pq_.protocol_managed_params": ""}
    data = encode.startup_message(parameters, version=PROTOCOL_3_2)
    tr(StartupReader, data, StartupMessage(3, 2, parameters))


@given(
    process_id=st.integers(0, 2**32 - 1),
    secret_key=st.integers(0, 2**32 - 1),
)
def test_cancel_request_round_trip(process_id: int, secret_key: int) -> None:
    assert read_one(encode.cancel_request(process_id, secret_key)) == CancelRequest(
        process_id, secret_key
    )


def test_cancel_request_round_trip_h11_style(tr: Callable[..., None]) -> None:
    tr(StartupReader, encode.cancel_request(7, 0xFFFFFFFF), CancelRequest(7, 0xFFFFFFFF))


def test_ssl_request_round_trip(tr: Callable[..., None]) -> None:
    assert encode.ssl_request() == packet(SSL_REQUEST_CODE)
    tr(StartupReader, encode.ssl_request(), SSLRequest())
