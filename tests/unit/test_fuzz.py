"""h11's fuzz invariant as hypothesis tests: whatever bytes arrive, in whatever chunks, a
reader returns a message, returns ``NEED_DATA`` having consumed nothing, or raises a
``ClientError`` the session can send back (or, for the startup reader, ``CloseWithoutReply``
where Postgres sends nothing back). Never any other exception."""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pgwake.protocol import encode
from pgwake.protocol.errors import (
    CloseWithoutReply,
    FeatureNotSupported,
    InvalidAuthorizationSpecification,
    ProtocolViolation,
)
from pgwake.protocol.framing import MessageReader
from pgwake.protocol.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    NEED_DATA,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    CancelRequest,
    DirectTLSHello,
    Frame,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)
from pgwake.protocol.startup import StartupReader

FUZZ = settings(max_examples=300, deadline=None)

# Pure random bytes almost never get past the length check, so most examples are built
# from plausible pieces: a small length, a real or nearly real code, parameter-like bodies.
_codes = st.sampled_from(
    [
        SSL_REQUEST_CODE,
        GSSENC_REQUEST_CODE,
        CANCEL_REQUEST_CODE,
        PROTOCOL_3_0,
        PROTOCOL_3_0 | 2,
        2 << 16,
        (1234 << 16) | 5681,
    ]
) | st.integers(0, 2**32 - 1)
_name_value_pairs = st.lists(
    st.tuples(
        st.sampled_from([b"user", b"database", b"options", b"_pq_.x", b""]),
        st.binary(max_size=8).map(lambda value: value.replace(b"\0", b"")),
    ),
    max_size=4,
)
_parameter_bodies = st.builds(
    lambda pairs, tail: b"".join(name + b"\0" + value + b"\0" for name, value in pairs) + tail,
    _name_value_pairs,
    st.sampled_from([b"\0", b"", b"\0\0", b"x\0"]),
)
_startup_bodies = (
    st.binary(max_size=40)
    | _parameter_bodies
    | st.lists(
        st.sampled_from([b"user", b"database", b"alice", b"\0", b"\xff", b"_pq_.x"]),
        max_size=12,
    ).map(b"".join)
)


@st.composite
def _startup_packets(draw: st.DrawFn) -> bytes:
    code = draw(_codes)
    body = draw(_startup_bodies)
    length = draw(st.just(8 + len(body)) | st.integers(-10, 80))
    return struct.pack("!iI", length, code) + body


# Well-formed packets, so that the streams reach the states after a valid packet too.
_good_packets = st.one_of(
    st.builds(
        lambda user, pairs, minor: encode.startup_message(
            {"user": user, **dict(pairs)}, version=PROTOCOL_3_0 | minor
        ),
        st.text(min_size=1, max_size=6).map(lambda user: user.replace("\0", "") or "u"),
        st.lists(
            st.tuples(st.sampled_from(["database", "options", "_pq_.x"]), st.text(max_size=6))
        ),
        st.sampled_from([0, 2]),
    ),
    st.builds(encode.cancel_request, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.just(encode.ssl_request()),
    st.just(struct.pack("!iI", 8, GSSENC_REQUEST_CODE)),
)

_startup_streams = st.lists(
    _good_packets | _startup_packets() | st.binary(max_size=24), max_size=4
).map(b"".join)


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    message_type = draw(st.binary(min_size=1, max_size=1))
    body = draw(st.binary(max_size=40))
    length = draw(st.just(4 + len(body)) | st.integers(-10, 60))
    return message_type + struct.pack("!i", length) + body


_frame_streams = st.lists(_frames() | st.binary(max_size=24), max_size=5).map(b"".join)


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


_STARTUP_PACKETS = (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage)


@FUZZ
@given(data=_startup_streams, cuts=st.lists(st.integers(0, 1000), max_size=6))
def test_startup_reader_never_raises_anything_else(data: bytes, cuts: list[int]) -> None:
    reader = StartupReader()
    try:
        for chunk in _chunked(data, cuts):
            reader.feed(chunk)
            while True:
                before = reader.trailing_data
                message = reader.next_message()
                if message is NEED_DATA:
                    assert reader.trailing_data == before
                    break
                if isinstance(message, DirectTLSHello):
                    # Handed to TLS with every byte intact; the reader is done.
                    assert reader.trailing_data == before
                    return
                assert isinstance(message, _STARTUP_PACKETS)
                assert len(reader.trailing_data) < len(before)
    except (
        ProtocolViolation,
        FeatureNotSupported,
        InvalidAuthorizationSpecification,
        CloseWithoutReply,
    ):
        pass


@FUZZ
@given(data=st.binary(max_size=200))
def test_startup_reader_random_bytes(data: bytes) -> None:
    reader = StartupReader()
    reader.feed(data)
    try:
        message = reader.next_message()
    except (
        ProtocolViolation,
        FeatureNotSupported,
        InvalidAuthorizationSpecification,
        CloseWithoutReply,
    ):
        return
    assert message is NEED_DATA or isinstance(message, (*_STARTUP_PACKETS, DirectTLSHello))


@FUZZ
@given(
    data=_frame_streams | st.binary(max_size=200), cuts=st.lists(st.integers(0, 1000), max_size=6)
)
def test_message_reader_never_raises_anything_else(data: bytes, cuts: list[int]) -> None:
    reader = MessageReader()
    consumed = 0
    try:
        for chunk in _chunked(data, cuts):
            reader.feed(chunk)
            while (message := reader.next_message()) is not NEED_DATA:
                assert isinstance(message, Frame)
                assert len(message.type) == 1
                consumed += 5 + len(message.body)
    except ProtocolViolation:
        return
    # No error: every byte is either in a frame or still buffered.
    assert data[consumed:] == reader.take_remaining()
