"""Sans-IO reader for the PROXY protocol header (HAProxy's proxy-protocol.txt, v1 and v2).

A trusted load balancer prepends one PROXY header to the connection to tell pgwake who the
real client is. The spec forbids guessing (section 2: "The receiver MUST be configured to
only receive the protocol ... and MUST not try to guess whether the protocol header is
present or not"), so pgwake only runs this reader on connections from trusted proxies and
anything that is not a PROXY header is refused.

Contract (h11's readers): ``feed(data)`` stores bytes; ``next_header()`` returns the header
and consumes exactly its bytes, returns ``NEED_DATA`` and consumes nothing, or raises
``ProtocolViolation``. Errors are raised as soon as the buffered prefix cannot start a
valid header (spec section 2.1: "abort the connection as soon as possible"). Bytes after
the header belong to the Postgres protocol and are handed on by ``take_remaining()``.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field
from typing import Final, Literal

from pgwake.protocol.buffer import ReceiveBuffer
from pgwake.protocol.errors import ProtocolViolation
from pgwake.protocol.messages import NEED_DATA, NeedData

__all__ = [
    "MAX_V1_LINE_LENGTH",
    "MAX_V2_LENGTH",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V1_PREFIX",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderReader",
]

#: Every v1 header starts with "PROXY" and exactly one space (spec section 2.1).
V1_PREFIX: Final = b"PROXY "
#: The 12-byte v2 signature (spec section 2.2); note the NUL at the 5th position.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

# Spec section 2.1: the worst case, "PROXY UNKNOWN <ipv6> <ipv6> 65535 65535\r\n", is 107
# characters including the CRLF; "If the CRLF sequence is not found in the first 107
# characters, the receiver should declare the line invalid."
MAX_V1_LINE_LENGTH: Final = 107
# Spec section 2.2: the 15th and 16th bytes are the length of what follows the 16-byte
# fixed part, a 16-bit big-endian field, so no valid header exceeds 16 + 0xFFFF bytes.
# This is the default cap on that field; ``ProxyHeaderReader(max_v2_length=...)`` lowers it.
MAX_V2_LENGTH: Final = 0xFFFF

# TLV types registered by the spec (section 2.2); the values stay undecoded bytes.
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02  # the client's SNI host name, UTF-8
PP2_TYPE_CRC32C: Final = 0x03  # passed through, not verified
PP2_TYPE_NOOP: Final = 0x04  # padding: "should be ignored when parsed", so it is dropped
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20  # client flags, verify result, then sub-TLVs
PP2_TYPE_NETNS: Final = 0x30

_V2_FIXED = struct.Struct("!12sBBH")  # signature, version/command, family/protocol, length
_TLV_HEADER = struct.Struct("!BH")  # type, length of the value
_IPV4_BLOCK = struct.Struct("!4s4sHH")  # src, dst, src port, dst port: 12 bytes
_IPV6_BLOCK = struct.Struct("!16s16sHH")  # 36 bytes
_UNIX_BLOCK_LENGTH: Final = 2 * 108  # two sun_path buffers: 216 bytes

_V2_VERSION: Final = 0x2
# Spec section 2.2, 13th byte low nibble: "other values are unassigned ... Receivers must
# drop connections presenting unexpected values here."
_V2_COMMANDS: Final[dict[int, Literal["PROXY", "LOCAL"]]] = {0x0: "LOCAL", 0x1: "PROXY"}
# Spec section 2.2, 14th byte: the protocol bytes it lists, mapped to the length of their
# address block. The receiver falls back to UNSPEC only "for the valid combinations
# above", so any other byte (e.g. AF_INET with an UNSPEC transport, 0x10) is refused.
_V2_FAMILIES: Final[dict[int, int]] = {
    0x00: 0,  # UNSPEC: no address block
    0x11: _IPV4_BLOCK.size,  # TCP over IPv4
    0x12: _IPV4_BLOCK.size,  # UDP over IPv4
    0x21: _IPV6_BLOCK.size,  # TCP over IPv6
    0x22: _IPV6_BLOCK.size,  # UDP over IPv6
    0x31: _UNIX_BLOCK_LENGTH,  # UNIX stream
    0x32: _UNIX_BLOCK_LENGTH,  # UNIX datagram
}
_AF_INET: Final = 0x1
_AF_INET6: Final = 0x2

# Spec section 2.1: the protocol names a v1 line may carry after "PROXY ", with what must
# follow each. "UNKNOWN" may end the line at once.
_V1_PROTOCOLS: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN ", b"UNKNOWN\r")
# Ports are decimal in 0..65535 and "Heading zeroes are not permitted" (spec section 2.1).
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One PROXY protocol header.

    ``command`` is ``"LOCAL"`` for a v2 LOCAL command and for a v1 ``UNKNOWN`` line: both
    mean "use the real connection endpoints". ``source`` and ``destination`` are
    ``(address, port)`` with the address in Python's normal text form; they are ``None``
    for LOCAL and UNKNOWN, and for the v2 families AF_UNSPEC and AF_UNIX. ``tlvs`` maps the
    v2 TLV types to their raw values (empty for v1).
    """

    version: Literal[1, 2]
    command: Literal["PROXY", "LOCAL"]
    source: Address | None = None
    destination: Address | None = None
    tlvs: dict[int, bytes] = field(default_factory=dict)


class ProxyHeaderReader(ReceiveBuffer):
    """Reads the single PROXY protocol header that starts a connection; the bytes after
    it (``take_remaining``) are Postgres protocol."""

    def __init__(self, max_v2_length: int = MAX_V2_LENGTH) -> None:
        super().__init__()
        self._max_v2_length = max_v2_length
        self._done = False

    def next_header(self) -> ProxyHeader | NeedData:
        """Return the header once it is complete, or ``NEED_DATA`` while the buffer is a
        strict prefix of a possible header.

        Raises ``ProtocolViolation`` as soon as the buffered bytes cannot be a valid header,
        and ``RuntimeError`` if called again after a header was returned.
        """
        if self._done:
            raise RuntimeError("the PROXY protocol header was already read")
        buffer = self._buffer
        if buffer[:1] == V1_PREFIX[:1]:
            result = self._next_v1()
        elif buffer[:1] == V2_SIGNATURE[:1]:
            result = self._next_v2()
        elif not buffer:
            return NEED_DATA
        else:
            raise _not_a_header()
        if result is not NEED_DATA:
            self._done = True
        return result

    # -- version 1: one line of US-ASCII text ------------------------------------------

    def _next_v1(self) -> ProxyHeader | NeedData:
        buffer = self._buffer
        if not buffer.startswith(V1_PREFIX):
            if V1_PREFIX.startswith(buffer):
                return NEED_DATA
            raise _not_a_header()
        protocol = bytes(buffer[len(V1_PREFIX) : len(V1_PREFIX) + 8])
        if not any(name.startswith(protocol[: len(name)]) for name in _V1_PROTOCOLS):
            raise _invalid_v1("unknown protocol: expected TCP4, TCP6 or UNKNOWN")
        # The line ends at the first CR, which must be followed by LF: the spec forbids
        # tolerating "a single CR or LF character to end the line".
        end = _first_line_break(buffer)
        if end < 0:
            if len(buffer) >= MAX_V1_LINE_LENGTH:
                raise _invalid_v1(f"no CRLF in the first {MAX_V1_LINE_LENGTH} bytes")
            return NEED_DATA
        if end + 2 > MAX_V1_LINE_LENGTH:
            raise _invalid_v1(f"no CRLF in the first {MAX_V1_LINE_LENGTH} bytes")
        if buffer[end : end + 1] == b"\n":
            raise _invalid_v1("the line must end with CRLF")
        if len(buffer) == end + 1:
            return NEED_DATA  # a CR; its LF may be on the way
        if buffer[end + 1] != ord("\n"):
            raise _invalid_v1("the line must end with CRLF")
        header = _parse_v1_line(bytes(buffer[:end]))
        del buffer[: end + 2]
        return header

    # -- version 2: binary ---------------------------------------------------------------

    def _next_v2(self) -> ProxyHeader | NeedData:
        buffer = self._buffer
        signature = bytes(buffer[: len(V2_SIGNATURE)])
        if not V2_SIGNATURE.startswith(signature):
            raise _not_a_header()
        # Check each fixed byte as soon as it arrives.
        if len(buffer) > 12:
            version, command = buffer[12] >> 4, buffer[12] & 0x0F
            if version != _V2_VERSION:
                raise _invalid_v2(f"unsupported version {version}")
            if command not in _V2_COMMANDS:
                raise _invalid_v2(f"unknown command {command}")
        if len(buffer) > 13 and buffer[13] not in _V2_FAMILIES:
            raise _invalid_v2(f"unknown address family and protocol 0x{buffer[13]:02x}")
        if len(buffer) < _V2_FIXED.size:
            return NEED_DATA
        _, version_command, family, length = _V2_FIXED.unpack_from(buffer)
        if length > self._max_v2_length:
            raise _invalid_v2(f"length {length} is above the limit of {self._max_v2_length}")
        address_length = _V2_FAMILIES[family]
        if length < address_length:
            raise _invalid_v2(
                f"length {length} is shorter than the {address_length}-byte address block"
            )
        total = _V2_FIXED.size + length
        if len(buffer) < total:
            return NEED_DATA
        payload = bytes(buffer[_V2_FIXED.size : total])
        header = _parse_v2_payload(_V2_COMMANDS[version_command & 0x0F], family, payload)
        del buffer[:total]
        return header


def _first_line_break(buffer: bytearray) -> int:
    """Index of the first CR or LF in the first ``MAX_V1_LINE_LENGTH`` bytes, or -1."""
    window = buffer[:MAX_V1_LINE_LENGTH]
    found = [index for index in (window.find(b"\r"), window.find(b"\n")) if index >= 0]
    return min(found, default=-1)


def _parse_v1_line(line: bytes) -> ProxyHeader:
    """Decode one v1 line, CRLF excluded (the ``PROXY `` prefix and protocol are checked)."""
    fields = line.split(b" ")
    if fields[1] == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF is found".
        return ProxyHeader(version=1, command="LOCAL")
    if len(fields) != 6:
        raise _invalid_v1("expected PROXY, protocol, 2 addresses and 2 ports")
    _, protocol, source, destination, source_port, destination_port = fields
    parse = _ipv4_text if protocol == b"TCP4" else _ipv6_text
    return ProxyHeader(
        version=1,
        command="PROXY",
        source=(parse(source), _v1_port(source_port)),
        destination=(parse(destination), _v1_port(destination_port)),
    )


def _ipv4_text(text: bytes) -> str:
    # ipaddress refuses leading zeros, as the spec does ("avoid any possible confusion
    # with octal numbers").
    try:
        return str(ipaddress.IPv4Address(text.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise _invalid_v1("invalid IPv4 address") from None


def _ipv6_text(text: bytes) -> str:
    # A scope id ("fe80::1%eth0") names an interface of the sender, not an address.
    try:
        if b"%" in text:
            raise ValueError(text)
        return str(ipaddress.IPv6Address(text.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise _invalid_v1("invalid IPv6 address") from None


def _v1_port(text: bytes) -> int:
    if _V1_PORT.fullmatch(text) is None or int(text) > 0xFFFF:
        raise _invalid_v1("invalid port")
    return int(text)


def _parse_v2_payload(
    command: Literal["PROXY", "LOCAL"], family: int, payload: bytes
) -> ProxyHeader:
    """Decode the bytes after the 16-byte fixed part: the address block, then TLVs."""
    address_length = _V2_FAMILIES[family]
    source: Address | None = None
    destination: Address | None = None
    # LOCAL: "use the real connection endpoints and discard the protocol block"; the
    # addresses of AF_UNSPEC and AF_UNIX are of no use to pgwake either.
    if command == "PROXY" and family >> 4 == _AF_INET:
        src, dst, src_port, dst_port = _IPV4_BLOCK.unpack_from(payload)
        source = (str(ipaddress.IPv4Address(src)), src_port)
        destination = (str(ipaddress.IPv4Address(dst)), dst_port)
    elif command == "PROXY" and family >> 4 == _AF_INET6:
        src, dst, src_port, dst_port = _IPV6_BLOCK.unpack_from(payload)
        source = (str(ipaddress.IPv6Address(src)), src_port)
        destination = (str(ipaddress.IPv6Address(dst)), dst_port)
    return ProxyHeader(
        version=2,
        command=command,
        source=source,
        destination=destination,
        tlvs=_parse_tlvs(payload, address_length),
    )


def _parse_tlvs(payload: bytes, offset: int) -> dict[int, bytes]:
    """Decode the TLVs from ``offset`` to the end of ``payload``; they must fill it exactly."""
    tlvs: dict[int, bytes] = {}
    while offset < len(payload):
        if offset + _TLV_HEADER.size > len(payload):
            raise _invalid_v2("truncated TLV header")
        kind, length = _TLV_HEADER.unpack_from(payload, offset)
        offset += _TLV_HEADER.size
        if offset + length > len(payload):
            raise _invalid_v2(f"TLV 0x{kind:02x} runs past the end of the header")
        value = payload[offset : offset + length]
        offset += length
        if kind == PP2_TYPE_NOOP:
            continue
        # A dict holds one value per type, and no registered type repeats: refuse to pick one.
        if kind in tlvs:
            raise _invalid_v2(f"TLV 0x{kind:02x} appears twice")
        tlvs[kind] = value
    return tlvs


def _not_a_header() -> ProtocolViolation:
    return ProtocolViolation("expected a PROXY protocol header")


def _invalid_v1(detail: str) -> ProtocolViolation:
    return ProtocolViolation("invalid PROXY protocol v1 header", detail=detail)


def _invalid_v2(detail: str) -> ProtocolViolation:
    return ProtocolViolation("invalid PROXY protocol v2 header", detail=detail)
