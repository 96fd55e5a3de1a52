"""ProxyHeaderReader: the PROXY protocol header (HAProxy proxy-protocol.txt, v1 and v2).

Valid headers go through ``tr`` (h11's ``tests/test_io.py``): whole, byte by byte and with
trailing bytes. Invalid ones must fail at the first byte that rules a header out. The v2
vectors are built with ``struct`` by the small encoder below, not by the code under test.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwake.protocol.errors import ProtocolViolation
from pgwake.protocol.messages import NEED_DATA, SSL_REQUEST_CODE
from pgwake.protocol.proxy_header import (
    MAX_V1_LINE_LENGTH,
    MAX_V2_LENGTH,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderReader,
)

FUZZ = settings(max_examples=300, deadline=None)

# What a client sends right after the PROXY header when it wants TLS.
SSL_REQUEST = struct.pack("!iI", 8, SSL_REQUEST_CODE)

# -- a small v2 encoder (spec section 2.2) ---------------------------------------------------

LOCAL, PROXY = 0x0, 0x1
UNSPEC, TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM = 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
AWS_VPCE_TLV = 0xEA


def tlv(kind: int, value: bytes) -> bytes:
    """One TLV: type (1 byte), length (2 bytes, big-endian), value."""
    return struct.pack("!BH", kind, len(value)) + value


def v2(
    command: int,
    family: int,
    payload: bytes = b"",
    *,
    version: int = 2,
    length: int | None = None,
) -> bytes:
    """A v2 header: signature, version/command, family/protocol, length, payload."""
    if length is None:
        length = len(payload)
    return struct.pack("!12sBBH", V2_SIGNATURE, version << 4 | command, family, length) + payload


def inet_block(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The AF_INET / AF_INET6 address block: src addr, dst addr, src port, dst port."""
    src = ipaddress.ip_address(source[0]).packed
    dst = ipaddress.ip_address(destination[0]).packed
    return src + dst + struct.pack("!HH", source[1], destination[1])


def unix_block(source: bytes, destination: bytes) -> bytes:
    """The AF_UNIX address block: two NUL-padded 108-byte paths."""
    return source.ljust(108, b"\0") + destination.ljust(108, b"\0")


def ssl_tlv_value(client: int, verify: int, *subtlvs: bytes) -> bytes:
    """The value of a PP2_TYPE_SSL TLV: client flags, verify result, sub-TLVs."""
    return struct.pack("!BI", client, verify) + b"".join(subtlvs)


# -- h11's tr(): whole, byte by byte, with trailing bytes ------------------------------------


def tr(data: bytes, expected: ProxyHeader, **kwargs: int) -> None:
    """Assert that ``data`` reads as ``expected`` whole, byte by byte and with trailing
    bytes, that every strict prefix gives ``NEED_DATA``, and that nothing after the header
    is consumed."""
    reader = ProxyHeaderReader(**kwargs)
    reader.feed(data)
    assert reader.next_header() == expected
    assert reader.take_remaining() == b""

    reader = ProxyHeaderReader(**kwargs)
    for index in range(len(data) - 1):
        reader.feed(data[index : index + 1])
        assert reader.next_header() is NEED_DATA, f"after {index + 1} bytes"
    reader.feed(data[-1:])
    assert reader.next_header() == expected
    assert reader.take_remaining() == b""

    # The Postgres bytes that follow (an SSLRequest, even another PROXY header) are not
    # the reader's business: they come back untouched.
    for trailing in (SSL_REQUEST, b"PROXY UNKNOWN\r\n", V2_SIGNATURE, b"\r\n"):
        reader = ProxyHeaderReader(**kwargs)
        reader.feed(data + trailing)
        assert reader.next_header() == expected
        assert reader.take_remaining() == trailing


# For ``fails_at``: errors that can only be seen once the whole header is in.
LAST = -1


def fails_at(data: bytes, index: int, match: str, **kwargs: int) -> ProtocolViolation:
    """Feed ``data`` byte by byte: ``NEED_DATA`` up to byte ``index`` (``LAST``: the last
    byte), which must raise. The same error must come from the whole input at once."""
    if index == LAST:
        index = len(data) - 1
    reader = ProxyHeaderReader(**kwargs)
    for position in range(index):
        reader.feed(data[position : position + 1])
        assert reader.next_header() is NEED_DATA, f"after {position + 1} bytes"
    reader.feed(data[index : index + 1])
    with pytest.raises(ProtocolViolation) as early:
        reader.next_header()
    reader = ProxyHeaderReader(**kwargs)
    reader.feed(data)
    with pytest.raises(ProtocolViolation) as whole:
        reader.next_header()
    for error in (early.value, whole.value):
        assert error.sqlstate == "08P01"
        assert match in f"{error.message}: {error.detail}"
    return whole.value


# -- version 1 -------------------------------------------------------------------------------

V1_VALID = [
    pytest.param(
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(1, "PROXY", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
        id="tcp4-spec-example",
    ),
    pytest.param(
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        ProxyHeader(1, "PROXY", ("255.255.255.255", 65535), ("255.255.255.255", 65535)),
        id="tcp4-longest",
    ),
    pytest.param(
        b"PROXY TCP4 0.0.0.0 10.0.0.1 0 5432\r\n",
        ProxyHeader(1, "PROXY", ("0.0.0.0", 0), ("10.0.0.1", 5432)),
        id="tcp4-port-zero",
    ),
    pytest.param(
        b"PROXY TCP6 2001:db8::1 2001:db8::2 50000 5432\r\n",
        ProxyHeader(1, "PROXY", ("2001:db8::1", 50000), ("2001:db8::2", 5432)),
        id="tcp6",
    ),
    pytest.param(
        b"PROXY TCP6 FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF"
        b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        ProxyHeader(
            1,
            "PROXY",
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ),
        id="tcp6-longest-104-bytes",
    ),
    pytest.param(
        b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
        ProxyHeader(1, "PROXY", (str(ipaddress.ip_address("::ffff:192.0.2.1")), 1), ("::1", 2)),
        id="tcp6-ipv4-mapped-as-inet_ntop-writes-it",
    ),
    pytest.param(b"PROXY UNKNOWN\r\n", ProxyHeader(1, "LOCAL"), id="unknown-short"),
    pytest.param(
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        ProxyHeader(1, "LOCAL"),
        id="unknown-worst-case-107-bytes",
    ),
    pytest.param(
        b"PROXY UNKNOWN anything at all, \x00\xff even\r\n",
        ProxyHeader(1, "LOCAL"),
        id="unknown-ignores-the-rest",
    ),
]


@pytest.mark.parametrize(("data", "expected"), V1_VALID)
def test_v1_valid(data: bytes, expected: ProxyHeader) -> None:
    tr(data, expected)


def test_v1_worst_case_is_exactly_the_limit() -> None:
    line = V1_VALID[7].values[0]
    assert isinstance(line, bytes)
    assert len(line) == MAX_V1_LINE_LENGTH == 107


V1_INVALID = [
    # (data, index of the byte that must raise, text in the error)
    pytest.param(b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", 9, "unknown protocol", id="tcp5"),
    pytest.param(b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", 7, "unknown protocol", id="udp4"),
    pytest.param(b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", 6, "unknown protocol", id="lowercase"),
    pytest.param(b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n", 6, "unknown protocol", id="two-spaces"),
    pytest.param(b"PROXY UNKNOWNX\r\n", 13, "unknown protocol", id="unknownx"),
    pytest.param(b"PROXY TCP4\r\n", 10, "unknown protocol", id="tcp4-alone"),
    pytest.param(b"PROXY \r\n", 6, "unknown protocol", id="no-protocol"),
    pytest.param(b"PROXY TCP4 ::1 ::1 1 2\r\n", LAST, "invalid IPv4", id="tcp4-ipv6"),
    pytest.param(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", LAST, "invalid IPv6", id="tcp6-ipv4"),
    pytest.param(b"PROXY TCP4 1.2.3.04 1.2.3.4 1 2\r\n", LAST, "invalid IPv4", id="leading-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n", LAST, "invalid IPv4", id="octet-256"),
    pytest.param(b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", LAST, "invalid IPv4", id="three-octets"),
    pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", LAST, "invalid IPv6", id="scope-id"),
    pytest.param(b"PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", LAST, "invalid IPv6", id="seven-groups"),
    pytest.param(
        b"PROXY TCP4 \xc2\xb9.2.3.4 1.2.3.4 1 2\r\n", LAST, "invalid IPv4", id="non-ascii"
    ),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", LAST, "invalid port", id="port-65536"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n", LAST, "invalid port", id="port-plus"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", LAST, "invalid port", id="port-minus"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n", LAST, "invalid port", id="port-zero-pad"),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1_0 2\r\n", LAST, "invalid port", id="port-underscore"
    ),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \r\n", LAST, "invalid port", id="port-empty"),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", LAST, "2 addresses and 2 ports", id="5-fields"
    ),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", LAST, "2 addresses", id="trailing-space"),
    pytest.param(b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", LAST, "2 addresses", id="double-space"),
    pytest.param(b"PROXY TCP4 1.2.3.4\t1.2.3.4 1 2\r\n", LAST, "2 addresses", id="tab"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", 30, "CRLF", id="lf-only"),
    pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX", 31, "CRLF", id="cr-then-x"),
    pytest.param(b"PROXY UNKNOWN\n", 13, "unknown protocol", id="unknown-lf-only"),
    pytest.param(b"PROXY UNKNOWN \n\r\n", 14, "CRLF", id="unknown-stray-lf"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 200, 106, "107", id="no-crlf-in-107"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", 106, "107", id="crlf-at-108"),
    pytest.param(b"PROXY TCP6 " + b"0000:" * 20 + b"\r\n", 106, "107", id="tcp6-too-long"),
]


@pytest.mark.parametrize(("data", "index", "match"), V1_INVALID)
def test_v1_invalid(data: bytes, index: int, match: str) -> None:
    fails_at(data, index, match)


# -- version 2 -------------------------------------------------------------------------------

SRC4, DST4 = ("203.0.113.7", 50123), ("10.0.0.5", 5432)
SRC6, DST6 = ("2001:db8::7", 50123), ("fd00::5", 5432)
SSL_VALUE = ssl_tlv_value(
    0x01 | 0x02,
    0,
    tlv(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),
    tlv(PP2_SUBTYPE_SSL_CN, b"client.example"),
)

V2_VALID = [
    pytest.param(v2(LOCAL, UNSPEC), ProxyHeader(2, "LOCAL"), id="local-health-check"),
    pytest.param(
        v2(LOCAL, TCP4, inet_block(SRC4, DST4)),
        ProxyHeader(2, "LOCAL"),
        id="local-discards-addresses",
    ),
    pytest.param(
        v2(LOCAL, UNSPEC, tlv(PP2_TYPE_AUTHORITY, b"demo.example")),
        ProxyHeader(2, "LOCAL", tlvs={PP2_TYPE_AUTHORITY: b"demo.example"}),
        id="local-with-tlv",
    ),
    pytest.param(
        v2(PROXY, TCP4, inet_block(SRC4, DST4)),
        ProxyHeader(2, "PROXY", SRC4, DST4),
        id="tcp4",
    ),
    pytest.param(
        v2(PROXY, UDP4, inet_block(SRC4, DST4)),
        ProxyHeader(2, "PROXY", SRC4, DST4),
        id="udp4",
    ),
    pytest.param(
        v2(PROXY, TCP4, inet_block(("0.0.0.0", 0), ("255.255.255.255", 65535))),
        ProxyHeader(2, "PROXY", ("0.0.0.0", 0), ("255.255.255.255", 65535)),
        id="tcp4-extremes",
    ),
    pytest.param(
        v2(PROXY, TCP6, inet_block(SRC6, DST6)),
        ProxyHeader(2, "PROXY", SRC6, DST6),
        id="tcp6",
    ),
    pytest.param(
        v2(PROXY, UDP6, inet_block(SRC6, DST6)),
        ProxyHeader(2, "PROXY", SRC6, DST6),
        id="udp6",
    ),
    pytest.param(
        v2(PROXY, UNIX_STREAM, unix_block(b"/run/client.sock", b"/run/pgwake.sock")),
        ProxyHeader(2, "PROXY"),
        id="unix-stream",
    ),
    pytest.param(
        v2(PROXY, UNIX_DGRAM, unix_block(b"", b"")),
        ProxyHeader(2, "PROXY"),
        id="unix-dgram",
    ),
    pytest.param(v2(PROXY, UNSPEC), ProxyHeader(2, "PROXY"), id="unspec"),
    pytest.param(
        v2(
            PROXY,
            TCP4,
            inet_block(SRC4, DST4)
            + tlv(PP2_TYPE_SSL, SSL_VALUE)
            + tlv(PP2_TYPE_AUTHORITY, b"demo.pgwake.example"),
        ),
        ProxyHeader(
            2,
            "PROXY",
            SRC4,
            DST4,
            {PP2_TYPE_SSL: SSL_VALUE, PP2_TYPE_AUTHORITY: b"demo.pgwake.example"},
        ),
        id="tcp4-ssl-and-authority",
    ),
    pytest.param(
        v2(
            PROXY,
            TCP6,
            inet_block(SRC6, DST6)
            + tlv(PP2_TYPE_ALPN, b"postgresql")
            + tlv(AWS_VPCE_TLV, b"\x01vpce-0123456789abcdef0"),
        ),
        ProxyHeader(
            2,
            "PROXY",
            SRC6,
            DST6,
            {PP2_TYPE_ALPN: b"postgresql", AWS_VPCE_TLV: b"\x01vpce-0123456789abcdef0"},
        ),
        id="tcp6-alpn-and-custom",
    ),
    pytest.param(
        v2(PROXY, UNIX_STREAM, unix_block(b"/a", b"/b") + tlv(PP2_TYPE_AUTHORITY, b"")),
        ProxyHeader(2, "PROXY", tlvs={PP2_TYPE_AUTHORITY: b""}),
        id="unix-empty-tlv-value",
    ),
    pytest.param(
        v2(
            PROXY,
            TCP4,
            inet_block(SRC4, DST4)
            + tlv(PP2_TYPE_NOOP, b"")
            + tlv(PP2_TYPE_AUTHORITY, b"x")
            + tlv(PP2_TYPE_NOOP, b"\0" * 5),
        ),
        ProxyHeader(2, "PROXY", SRC4, DST4, {PP2_TYPE_AUTHORITY: b"x"}),
        id="noop-padding-dropped",
    ),
]


@pytest.mark.parametrize(("data", "expected"), V2_VALID)
def test_v2_valid(data: bytes, expected: ProxyHeader) -> None:
    tr(data, expected)


def test_v2_largest_length_is_accepted() -> None:
    value = b"v" * (MAX_V2_LENGTH - 12 - 3)
    data = v2(PROXY, TCP4, inet_block(SRC4, DST4) + tlv(0xE0, value))
    assert len(data) == 16 + 0xFFFF
    reader = ProxyHeaderReader()
    reader.feed(data[:-1])
    assert reader.next_header() is NEED_DATA
    reader.feed(data[-1:] + SSL_REQUEST)
    assert reader.next_header() == ProxyHeader(2, "PROXY", SRC4, DST4, {0xE0: value})
    assert reader.take_remaining() == SSL_REQUEST


def test_v2_cap_is_configurable() -> None:
    data = v2(PROXY, TCP4, inet_block(SRC4, DST4) + tlv(0xE0, b"x" * 100))
    tr(data, ProxyHeader(2, "PROXY", SRC4, DST4, {0xE0: b"x" * 100}), max_v2_length=115)


V2_INVALID = [
    # (data, index of the byte that must raise, text in the error)
    pytest.param(v2(PROXY, TCP4, inet_block(SRC4, DST4), version=1), 12, "version 1", id="v1"),
    pytest.param(v2(PROXY, TCP4, inet_block(SRC4, DST4), version=3), 12, "version 3", id="v3"),
    pytest.param(v2(PROXY, TCP4, version=0, length=12), 12, "version 0", id="v0"),
    pytest.param(v2(0x2, TCP4, inet_block(SRC4, DST4)), 12, "command 2", id="command-2"),
    pytest.param(v2(0xF, UNSPEC), 12, "command 15", id="command-15"),
    pytest.param(v2(PROXY, 0x13, length=12), 13, "0x13", id="inet-transport-3"),
    pytest.param(v2(PROXY, 0x41, length=12), 13, "0x41", id="family-4"),
    pytest.param(v2(PROXY, 0x10, length=12), 13, "0x10", id="inet-unspec-transport"),
    pytest.param(v2(PROXY, 0x01), 13, "0x01", id="unspec-stream"),
    pytest.param(v2(LOCAL, 0xFF), 13, "0xff", id="local-family-ff"),
    pytest.param(v2(PROXY, TCP4, b"\0" * 11), 15, "shorter than the 12-byte", id="inet-11"),
    pytest.param(v2(PROXY, TCP6, b"\0" * 35), 15, "shorter than the 36-byte", id="inet6-35"),
    pytest.param(v2(PROXY, UNIX_STREAM, b"\0" * 215), 15, "216-byte", id="unix-215"),
    pytest.param(v2(LOCAL, TCP4), 15, "shorter than the 12-byte", id="local-inet-no-block"),
    pytest.param(
        v2(PROXY, TCP4, inet_block(SRC4, DST4) + b"\x02"), LAST, "truncated TLV", id="tlv-1-byte"
    ),
    pytest.param(
        v2(PROXY, TCP4, inet_block(SRC4, DST4) + b"\x02\x00"),
        LAST,
        "truncated TLV",
        id="tlv-2-bytes",
    ),
    pytest.param(
        v2(PROXY, TCP4, inet_block(SRC4, DST4) + tlv(PP2_TYPE_AUTHORITY, b"abc")[:-1]),
        LAST,
        "TLV 0x02 runs past",
        id="tlv-value-truncated",
    ),
    pytest.param(
        v2(PROXY, UNSPEC, tlv(PP2_TYPE_SSL, SSL_VALUE)[:-1]),
        LAST,
        "TLV 0x20 runs past",
        id="unspec-tlv-truncated",
    ),
    pytest.param(
        v2(PROXY, TCP4, inet_block(SRC4, DST4) + tlv(2, b"a") + tlv(2, b"b")),
        LAST,
        "TLV 0x02 appears twice",
        id="duplicate-tlv",
    ),
]


@pytest.mark.parametrize(("data", "index", "match"), V2_INVALID)
def test_v2_invalid(data: bytes, index: int, match: str) -> None:
    fails_at(data, index, match)


def test_v2_length_above_cap_fails_before_the_payload() -> None:
    data = v2(PROXY, TCP4, inet_block(SRC4, DST4) + tlv(0xE0, b"x" * 101))
    fails_at(data, 15, "length 116 is above the limit of 115", max_v2_length=115)


# -- not a PROXY header at all ---------------------------------------------------------------

NOT_A_HEADER = [
    pytest.param(SSL_REQUEST, 0, id="postgres-ssl-request"),
    pytest.param(struct.pack("!iI", 9, 196608) + b"u\0", 0, id="postgres-startup"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01", 0, id="tls-client-hello"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 0, id="http"),
    pytest.param(b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", 0, id="lowercase-proxy"),
    pytest.param(b"PROXYTCP4 1.2.3.4 1.2.3.4 1 2\r\n", 5, id="no-space"),
    pytest.param(b"PROX\r\n", 4, id="short-prefix"),
    pytest.param(b"PROXY\r\n", 5, id="proxy-crlf"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c", 10, id="v2-signature-typo"),
    pytest.param(b"\r\n\r\n\r\n", 4, id="v2-signature-no-nul"),
    pytest.param(b"\rX", 1, id="cr-then-x"),
]


@pytest.mark.parametrize(("data", "index"), NOT_A_HEADER)
def test_not_a_proxy_header(data: bytes, index: int) -> None:
    error = fails_at(data, index, "expected a PROXY protocol header")
    assert error.message == "expected a PROXY protocol header"
    assert error.detail is None


def test_empty_input_needs_data() -> None:
    reader = ProxyHeaderReader()
    assert reader.next_header() is NEED_DATA
    reader.feed(b"")
    assert reader.next_header() is NEED_DATA


def test_errors_do_not_echo_client_bytes() -> None:
    error = fails_at(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 secret\r\n", LAST, "invalid port")
    assert b"secret".decode() not in f"{error.message} {error.detail}"


def test_reader_is_spent_after_the_header() -> None:
    reader = ProxyHeaderReader()
    reader.feed(b"PROXY UNKNOWN\r\n" + SSL_REQUEST)
    assert reader.next_header() == ProxyHeader(1, "LOCAL")
    with pytest.raises(RuntimeError):
        reader.next_header()
    reader.feed(b"more")
    assert reader.take_remaining() == SSL_REQUEST + b"more"
    assert reader.take_remaining() == b""


def test_failed_reader_keeps_failing() -> None:
    reader = ProxyHeaderReader()
    reader.feed(b"PROXY UDP4 ")
    for _ in range(2):
        with pytest.raises(ProtocolViolation):
            reader.next_header()


# -- hypothesis: h11's fuzz invariant, and encode -> parse round trips -----------------------


def outcome(chunks: list[bytes], max_v2_length: int) -> tuple[object, bytes]:
    """Feed ``chunks`` one at a time, calling ``next_header()`` after each; return the
    header, ``NEED_DATA`` or the error (class, SQLSTATE, text), and the unconsumed bytes."""
    reader = ProxyHeaderReader(max_v2_length=max_v2_length)
    result: object = NEED_DATA
    for index, chunk in enumerate(chunks):
        reader.feed(chunk)
        try:
            result = reader.next_header()
        except ProtocolViolation as error:
            return (ProtocolViolation, error.sqlstate, error.message, error.detail), b""
        assert result is NEED_DATA or isinstance(result, ProxyHeader)
        if isinstance(result, ProxyHeader):
            reader.feed(b"".join(chunks[index + 1 :]))
            break
    return result, reader.take_remaining()


# Pure random bytes rarely get past the first byte, so most examples are built from
# plausible pieces: real or nearly real fields, lengths close to the payload's, TLVs.
_tlv_soup = st.lists(
    st.builds(tlv, st.integers(0, 255), st.binary(max_size=8))
    | st.builds(tlv, st.sampled_from([PP2_TYPE_AUTHORITY, PP2_TYPE_NOOP]), st.binary(max_size=8))
    | st.binary(max_size=4),
    max_size=6,
).map(b"".join)
_v2_streams = st.builds(
    lambda ver_cmd, family, block, tlvs, delta, tail: (
        struct.pack("!12sBBH", V2_SIGNATURE, ver_cmd, family, max(0, len(block + tlvs) + delta))
        + block
        + tlvs
        + tail
    ),
    st.sampled_from([0x21, 0x21, 0x20, 0x22, 0x11, 0x31, 0x2F]),
    st.sampled_from([UNSPEC, TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM, 0x10, 0x13, 0x41]),
    st.sampled_from([0, 12, 36, 216, 11, 35]).flatmap(
        lambda size: st.binary(min_size=size, max_size=size)
    ),
    _tlv_soup,
    st.sampled_from([0, 0, 0, 0, 0, -1, 1, -2, 3, 300]),
    st.binary(max_size=8),
)
_v1_token = st.sampled_from(
    [
        b"1.2.3.4",
        b"255.255.255.255",
        b"01.2.3.4",
        b"::1",
        b"fe80::1%1",
        b"2001:db8::",
        b"0",
        b"65535",
        b"65536",
        b"080",
        b"+1",
        b"",
        b"\r",
        b"\n",
        b"\r\n",
    ]
) | st.binary(max_size=6)
_v1_streams = st.builds(
    lambda protocol, tokens, end, tail: b"PROXY " + b" ".join([protocol, *tokens]) + end + tail,
    st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"TCP", b"UNKNOWNX", b""]),
    st.lists(_v1_token, max_size=6),
    st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
    st.binary(max_size=8),
)
_streams = st.one_of(
    st.binary(max_size=64),
    st.tuples(st.sampled_from([b"PROXY ", b"PROXY", b"\r\n\r\n\x00"]), st.binary(max_size=40)).map(
        b"".join
    ),
    # Repeated so that half of the examples are nearly valid headers.
    _v1_streams,
    _v1_streams,
    _v2_streams,
    _v2_streams,
)


@st.composite
def _chunked(draw: st.DrawFn) -> list[bytes]:
    data = draw(_streams)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


@FUZZ
@given(_chunked(), st.sampled_from([MAX_V2_LENGTH, 64]))
def test_any_bytes_parse_need_data_or_protocol_violation(
    chunks: list[bytes], max_v2_length: int
) -> None:
    result = outcome(chunks, max_v2_length)
    if isinstance(result[0], tuple):
        assert result[0][:2] == (ProtocolViolation, "08P01")
    # Chunking must not change the result: NEED_DATA consumed nothing, a header takes
    # exactly its own bytes, and an error is the same error.
    assert result == outcome([b"".join(chunks)], max_v2_length)


_addresses_v4 = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 0xFFFF))
_addresses_v6 = st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 0xFFFF))
_tlv_maps = st.dictionaries(
    st.integers(0, 255).filter(lambda kind: kind != PP2_TYPE_NOOP), st.binary(max_size=40)
)


@FUZZ
@given(
    st.sampled_from([LOCAL, PROXY]),
    st.sampled_from([TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM, UNSPEC]),
    _addresses_v4,
    _addresses_v4,
    _addresses_v6,
    _addresses_v6,
    _tlv_maps,
    st.binary(max_size=16),
)
def test_v2_round_trip(
    command: int,
    family: int,
    src4: tuple[str, int],
    dst4: tuple[str, int],
    src6: tuple[str, int],
    dst6: tuple[str, int],
    tlvs: dict[int, bytes],
    trailing: bytes,
) -> None:
    addresses: tuple[tuple[str, int], tuple[str, int]] | None = None
    if family in (TCP4, UDP4):
        block, addresses = inet_block(src4, dst4), (src4, dst4)
    elif family in (TCP6, UDP6):
        block, addresses = inet_block(src6, dst6), (src6, dst6)
    elif family in (UNIX_STREAM, UNIX_DGRAM):
        block = unix_block(b"/tmp/a", b"/tmp/b")
    else:
        block = b""
    data = v2(command, family, block + b"".join(tlv(k, v) for k, v in tlvs.items()))
    if command == LOCAL or addresses is None:
        source = destination = None
    else:
        source, destination = addresses
    expected = ProxyHeader(2, "PROXY" if command else "LOCAL", source, destination, tlvs)
    reader = ProxyHeaderReader()
    reader.feed(data + trailing)
    assert reader.next_header() == expected
    assert reader.take_remaining() == trailing


@FUZZ
@given(
    st.booleans(),
    _addresses_v4,
    _addresses_v4,
    _addresses_v6,
    _addresses_v6,
    st.binary(max_size=16),
)
def test_v1_round_trip(
    ipv6: bool,
    src4: tuple[str, int],
    dst4: tuple[str, int],
    src6: tuple[str, int],
    dst6: tuple[str, int],
    trailing: bytes,
) -> None:
    source, destination = (src6, dst6) if ipv6 else (src4, dst4)
    line = f"PROXY TCP{6 if ipv6 else 4} {source[0]} {destination[0]} {source[1]} {destination[1]}"
    data = line.encode("ascii") + b"\r\n"
    assert len(data) <= MAX_V1_LINE_LENGTH
    reader = ProxyHeaderReader()
    reader.feed(data + trailing)
    assert reader.next_header() == ProxyHeader(1, "PROXY", source, destination)
    assert reader.take_remaining() == trailing
