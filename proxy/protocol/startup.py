"""Sans-IO reader for the untyped packets a client sends before the session starts.

Contract (h11's readers): ``feed(data)`` stores bytes; ``next_message()`` returns one
packet and consumes its bytes, returns ``NEED_DATA`` and consumes nothing, or raises
``ProtocolViolation`` / ``FeatureNotSupported`` / ``InvalidAuthorizationSpecification``
(answered with an ErrorResponse) or ``CloseWithoutReply`` (closed without a word). After
any of them the reader is broken and the connection must be closed.

Postgres (``ProcessStartupPacket``) answers nothing to a packet whose length is impossible
or that the client cut short: it logs the reason and closes. A client that ends while it
is still connecting (node-postgres queues Terminate before its StartupMessage) sends
``X\0\0\0``, a length of 1,476,395,008; an ErrorResponse there is surfaced by such a
client as an error of its own. So those cases raise ``CloseWithoutReply``, as does a
cancel request of the wrong length (Postgres never replies to a cancel).
"""

from __future__ import annotations

import struct
from typing import Final

from pgwake.protocol.buffer import ReceiveBuffer
from pgwake.protocol.errors import (
    CloseWithoutReply,
    FeatureNotSupported,
    InvalidAuthorizationSpecification,
    ProtocolViolation,
)
from pgwake.protocol.messages import (
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
# (Postgres compares it with the length less its own 4 bytes; pgwake counts them too.)
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
        """Return the next packet, or ``NEED_DATA``; raise on malformed input.

        An impossible length raises ``CloseWithoutReply`` as soon as the length word is
        in, before any of the body is waited for."""
        buffer = self._buffer
        if buffer and buffer[0] == _TLS_HANDSHAKE_RECORD:
            return DirectTLSHello()
        if len(buffer) < 4:
            return NEED_DATA
        (length,) = _INT32.unpack_from(buffer)
        if length < _MIN_PACKET_LENGTH or length > MAX_STARTUP_PACKET_LENGTH:
            raise CloseWithoutReply(
                "invalid length of startup packet",
                detail=f"length {length} is outside {_MIN_PACKET_LENGTH}..."
                f"{MAX_STARTUP_PACKET_LENGTH} bytes",
            )
        if len(buffer) < length:
            return NEED_DATA
        packet = bytes(buffer[:length])
        del buffer[:length]
        return parse_startup_packet(packet)

    def end_of_stream(self) -> None:
        """The client closed its side. Raise ``CloseWithoutReply`` when it left part of a
        packet behind ("incomplete startup packet"); return when it left nothing, which
        Postgres does not even log (monitors and port scanners do it all the time)."""
        if self._buffer:
            raise CloseWithoutReply(
                "incomplete startup packet",
                detail=f"the connection closed after {len(self._buffer)} bytes of a packet",
            )


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
            raise CloseWithoutReply(
                "invalid length of cancel request packet",
                detail=f"length {len(packet)}, expected {_CANCEL.size + 4}",
            )
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
