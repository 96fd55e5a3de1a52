"""Sans-IO reader for the untyped packets a client sends before the session starts.

Contract (h11's readers): ``feed(data)`` stores bytes; ``next_message()`` returns one
packet and consumes its bytes, returns ``NEED_DATA`` and consumes nothing, or raises
``ProtocolViolation`` / ``FeatureNotSupported``. After ``ProtocolViolation`` the reader is
broken and the connection must be closed.
"""

from __future__ import annotations

import struct
from typing import Final

from proxy.protocol.buffer import ReceiveBuffer
from proxy.protocol.errors import (
    FeatureNotSupported,
    InvalidAuthorizationSpecification,
    ProtocolViolation,
)
from proxy.protocol.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    NEED_DATA,
    SSL_REQUEST_CODE,
    CancelRequest,
    DirectTLSHello,
    GSSENCRequest,
    NeedData,
    SSLRequest,
    StartupMessage,
    StartupPacket,
)

__all__ = ["MAX_STARTUP_PACKET_LENGTH", "StartupReader", "parse_startup_packet"]

# PostgreSQL's pqcomm.h: MAX_STARTUP_PACKET_LENGTH 10000. Larger is an attack or a bug.
MAX_STARTUP_PACKET_LENGTH: Final = 10_000
# The smallest packet is the 4-byte length plus the 4-byte code.
_MIN_PACKET_LENGTH: Final = 8
# A TLS record starts with content type 22 (handshake); no sane length starts with 0x16.
_TLS_HANDSHAKE_RECORD: Final = 0x16
_INT32 = struct.Struct("!i")
_CANCEL = struct.Struct("!iII")


class StartupReader(ReceiveBuffer):
    """Reads SSLRequest, GSSENCRequest, CancelRequest and StartupMessage packets."""

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the last packet returned (must be empty before TLS)."""
        return bytes(self._buffer)

    def next_message(self) -> StartupPacket | NeedData:
        """Return the next packet, or ``NEED_DATA``; raise on malformed input."""
        buffer = self._buffer
        if buffer and buffer[0] == _TLS_HANDSHAKE_RECORD:
            return DirectTLSHello()
        if len(buffer) < 4:
            return NEED_DATA
        (length,) = _INT32.unpack_from(buffer)
        if length < _MIN_PACKET_LENGTH or length > MAX_STARTUP_PACKET_LENGTH:
            raise ProtocolViolation(
                "invalid length of startup packet",
                detail=f"length {length} is outside {_MIN_PACKET_LENGTH}..."
                f"{MAX_STARTUP_PACKET_LENGTH} bytes",
            )
        if len(buffer) < length:
            return NEED_DATA
        packet = bytes(buffer[:length])
        del buffer[:length]
        return parse_startup_packet(packet)


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode one whole startup-phase packet (length prefix included)."""
    (code,) = _INT32.unpack_from(packet, 4)
    code &= 0xFFFFFFFF
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if len(packet) != 8:
            raise ProtocolViolation("invalid length of encryption request packet")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != _CANCEL.size + 4:
            raise ProtocolViolation("invalid length of cancel request packet")
        _, process_id, secret_key = _CANCEL.unpack_from(packet, 4)
        return CancelRequest(process_id, secret_key)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise FeatureNotSupported(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
        )
    return StartupMessage(major, minor, _parse_parameters(packet[8:]))


def _parse_parameters(body: bytes) -> dict[str, str]:
    # Name/value pairs of NUL-terminated strings, then one more NUL.
    if not body.endswith(b"\0"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    fields = body[:-1].split(b"\0")
    if fields == [b""]:
        fields = []
    elif fields[-1] == b"":
        fields.pop()
    else:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    if len(fields) % 2:
        raise ProtocolViolation("invalid startup packet layout: a parameter has no value")
    parameters: dict[str, str] = {}
    for index in range(0, len(fields), 2):
        # surrogateescape: any byte string round-trips to the compute unchanged.
        name = fields[index].decode("utf-8", "surrogateescape")
        if not name:
            raise ProtocolViolation("invalid startup packet layout: empty parameter name")
        parameters[name] = fields[index + 1].decode("utf-8", "surrogateescape")
    if not parameters.get("user"):
        # Postgres sends 28000 here; a startup without a user is not a protocol error.
        raise InvalidAuthorizationSpecification(
            "no PostgreSQL user name specified in startup packet"
        )
    return parameters
