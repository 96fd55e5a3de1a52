"""The first phase of a connection: PROXY header, encryption negotiation, startup packet.

Reads only what comes before authentication: a PROXY protocol header (only from trusted
proxies, which must send one), SSLRequest (-> TLS, SNI captured), a direct TLS ClientHello
(PostgreSQL 17 ``sslnegotiation=direct``, ALPN ``postgresql`` required), GSSENCRequest
(-> 'N'), then a StartupMessage or CancelRequest. ``negotiate`` is that exchange, sans-IO
(``exchange.py``): the codec's readers parse, and TLS is a step the driver carries out.

A startup packet Postgres would close on without a reply (an impossible length, a packet
cut short by the client's close) is logged by ``read_handshake``, once, and raised as
``BadStartupPacket``: a ``ConnectionError``, which the session ends on without writing
anything.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from pgwake.edge.exchange import PeerClosed, Send, StartTLS, TLSInfo, receive_message, unread
from pgwake.edge.packet_stream import drive
from pgwake.protocol import encode
from pgwake.protocol.errors import (
    CloseWithoutReply,
    InvalidAuthorizationSpecification,
    ProtocolViolation,
)
from pgwake.protocol.messages import (
    CancelRequest,
    DirectTLSHello,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
)
from pgwake.protocol.proxy_header import ProxyHeaderReader
from pgwake.protocol.startup import StartupReader

if TYPE_CHECKING:
    from pgwake.edge.exchange import Exchange
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.edge.tls import TlsMaterial

__all__ = ["BadStartupPacket", "Handshake", "negotiate", "read_handshake", "require_tls_error"]

logger = logging.getLogger(__name__)

_ALPN: Final = "postgresql"

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class BadStartupPacket(ConnectionAbortedError):
    """pgwake closed the connection without a reply, as Postgres does for this startup
    packet; the reason is logged (``event=bad_startup``), the client is told nothing."""


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the client said before authentication. The bytes it sent after the startup
    packet stay in the stream, for the authentication."""

    message: StartupMessage | CancelRequest
    #: The client's address (from the PROXY header when a trusted proxy sent one).
    client_host: str
    server_name: str | None
    #: The certificate the session uses when it is encrypted, else ``None``.
    tls: TlsMaterial | None


def _is_trusted(host: str, networks: Networks) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _peer_text(stream: PacketStream) -> str:
    peername = stream.peername
    return f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "local"


async def read_handshake(
    stream: PacketStream,
    *,
    peer_host: str,
    tls: TlsMaterial | None,
    trusted_proxies: Networks,
    conn_id: str = "-",
) -> Handshake:
    """Run ``negotiate`` over ``stream``: read up to the StartupMessage or CancelRequest.

    Raises ``ClientError`` on input Postgres answers with an ErrorResponse,
    ``BadStartupPacket`` (after logging why) on input Postgres closes on without a word,
    and ``PeerClosed`` when the client leaves between packets."""
    try:
        return await drive(
            stream, negotiate(peer_host=peer_host, tls=tls, trusted_proxies=trusted_proxies)
        )
    except CloseWithoutReply as refusal:
        logger.warning(
            "event=bad_startup conn=%s peer=%s reason=%s detail=%s",
            conn_id,
            _peer_text(stream),
            refusal.reason,
            refusal.detail or "",
        )
        raise BadStartupPacket(refusal.reason) from None


def _next_packet(reader: StartupReader) -> Exchange[StartupPacket]:
    try:
        packet = yield from receive_message(reader.feed, reader.next_message)
    except PeerClosed:
        reader.end_of_stream()  # raises CloseWithoutReply if a packet was cut short
        raise
    # mypy cannot take NeedData out of the StartupPacket union by itself.
    return cast("StartupPacket", packet)


def _start_tls(tls: TlsMaterial, initial: bytes = b"") -> Exchange[TLSInfo]:
    info = yield StartTLS(tls.context, initial)
    if not isinstance(info, TLSInfo):
        raise TypeError(f"StartTLS answered with {type(info).__name__}")
    return info


def negotiate(
    *, peer_host: str, tls: TlsMaterial | None, trusted_proxies: Networks
) -> Exchange[Handshake]:
    """The startup negotiation, sans-IO: the PROXY header if ``peer_host`` is a trusted
    proxy, then encryption requests (TLS with ``tls``, else refused), up to the
    StartupMessage or CancelRequest. Bytes after it are handed back (``Unread``).

    Raises ``ProtocolViolation`` and the codec's other ``ClientError``s on input Postgres
    answers with an ErrorResponse, ``CloseWithoutReply`` on input it closes on without a
    word, and ``PeerClosed`` when the client leaves between packets."""
    client_host = peer_host
    reader = StartupReader()
    if trusted_proxies and _is_trusted(peer_host, trusted_proxies):
        proxy_reader = ProxyHeaderReader()
        header = yield from receive_message(proxy_reader.feed, proxy_reader.next_header)
        # No source: LOCAL, the proxy's own health check.
        client_host = (header.source[0] if header.source else None) or peer_host
        reader.feed(proxy_reader.take_remaining())
    session_tls: TlsMaterial | None = None
    gss_refused = False
    server_name: str | None = None
    while True:
        message = yield from _next_packet(reader)
        if isinstance(message, SSLRequest):
            if session_tls is not None:
                raise ProtocolViolation("SSLRequest received on an encrypted connection")
            if reader.trailing_data:
                # Bytes after SSLRequest would be read as if encrypted (CVE-2021-23214).
                raise ProtocolViolation("received unencrypted data after SSL request")
            if tls is None:
                yield Send(encode.ENCRYPTION_REFUSED)
                continue
            yield Send(encode.ENCRYPTION_ACCEPTED)
            server_name = (yield from _start_tls(tls)).server_name
            session_tls = tls
        elif isinstance(message, DirectTLSHello):
            if session_tls is not None or tls is None:
                raise ProtocolViolation("unexpected TLS handshake")
            initial = reader.trailing_data
            reader = StartupReader()
            info = yield from _start_tls(tls, initial)
            server_name = info.server_name
            session_tls = tls
            if info.alpn_protocol != _ALPN:
                # As Postgres: direct TLS without ALPN could be a confused non-PG client.
                raise ProtocolViolation(
                    "received direct SSL connection request without ALPN protocol "
                    "negotiation extension"
                )
        elif isinstance(message, GSSENCRequest):
            if session_tls is not None or gss_refused:
                raise ProtocolViolation("unexpected GSSENCRequest")
            gss_refused = True
            yield Send(encode.ENCRYPTION_REFUSED)
        else:
            if isinstance(message, CancelRequest) and reader.trailing_data:
                raise ProtocolViolation("unexpected data after cancel request")
            yield from unread(reader.trailing_data)
            return Handshake(message, client_host, server_name, session_tls)


def require_tls_error() -> InvalidAuthorizationSpecification:
    """The refusal for a plaintext startup when TLS is required."""
    return InvalidAuthorizationSpecification(
        "TLS is required",
        detail="this pgwake refuses unencrypted connections",
        hint="Connect with sslmode=require (or verify-full), the libpq default 'prefer' "
        "also works.",
    )
