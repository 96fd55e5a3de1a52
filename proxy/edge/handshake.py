"""The first phase of a connection: PROXY header, encryption negotiation, startup packet.

Reads only what comes before authentication: a PROXY protocol header (only from trusted
proxies, which must send one), SSLRequest (-> TLS, SNI captured), a direct TLS ClientHello
(PostgreSQL 17 ``sslnegotiation=direct``, ALPN ``postgresql`` required), GSSENCRequest
(-> 'N'), then a StartupMessage or CancelRequest. Parsing is the sans-IO readers' job;
this module only waits for bytes and upgrades the transport.

A startup packet Postgres would close on without a reply (an impossible length, a packet
cut short by the client's close) is logged here, once, and raised as ``BadStartupPacket``:
a ``ConnectionError``, which the session ends on without writing anything.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake.edge.packet_stream import PeerClosed, read_next
from pgwake.edge.tls import server_name_of
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
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.edge.tls import TlsMaterial

__all__ = ["BadStartupPacket", "Handshake", "read_handshake"]

logger = logging.getLogger(__name__)

_ALPN: Final = "postgresql"


class BadStartupPacket(ConnectionAbortedError):
    """pgwake closed the connection without a reply, as Postgres does for this startup
    packet; the reason is logged (``event=bad_startup``), the client is told nothing."""


@dataclass(slots=True)
class Handshake:
    """What the client said before authentication."""

    message: StartupMessage | CancelRequest
    #: The client's address (from the PROXY header when a trusted proxy sent one).
    client_host: str
    server_name: str | None
    #: The certificate the session uses when it is encrypted, else ``None``.
    tls: TlsMaterial | None
    #: Bytes already read after the startup packet (the client's next messages).
    trailing: bytes


def _is_trusted(
    host: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


async def _read_proxy_header(stream: PacketStream) -> tuple[str | None, bytes]:
    reader = ProxyHeaderReader()
    header = await read_next(stream, reader.feed, reader.next_header)
    source = header.source[0] if header.source else None
    return source, reader.take_remaining()


def _peer_text(stream: PacketStream) -> str:
    peername = stream.peername
    return f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "local"


async def read_handshake(
    stream: PacketStream,
    *,
    peer_host: str,
    tls: TlsMaterial | None,
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    conn_id: str = "-",
) -> Handshake:
    """Read up to the StartupMessage or CancelRequest.

    Raises ``ClientError`` on input Postgres answers with an ErrorResponse,
    ``BadStartupPacket`` (after logging why) on input Postgres closes on without a word,
    and ``PeerClosed`` when the client leaves between packets."""
    try:
        return await _negotiate(
            stream, peer_host=peer_host, tls=tls, trusted_proxies=trusted_proxies
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


async def _read_packet(stream: PacketStream, reader: StartupReader) -> StartupPacket:
    try:
        return await read_next(stream, reader.feed, reader.next_message)
    except PeerClosed:
        reader.end_of_stream()  # raises CloseWithoutReply if a packet was cut short
        raise


async def _negotiate(
    stream: PacketStream,
    *,
    peer_host: str,
    tls: TlsMaterial | None,
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> Handshake:
    client_host = peer_host
    reader = StartupReader()
    if trusted_proxies and _is_trusted(peer_host, trusted_proxies):
        source, rest = await _read_proxy_header(stream)
        client_host = source or peer_host  # LOCAL: the proxy's own health check
        reader.feed(rest)
    session_tls: TlsMaterial | None = None
    gss_refused = False
    server_name: str | None = None
    while True:
        message = await _read_packet(stream, reader)
        if isinstance(message, SSLRequest):
            if session_tls is not None:
                raise ProtocolViolation("SSLRequest received on an encrypted connection")
            if reader.trailing_data:
                # Bytes after SSLRequest would be read as if encrypted (CVE-2021-23214).
                raise ProtocolViolation("received unencrypted data after SSL request")
            if tls is None:
                stream.write(encode.ENCRYPTION_REFUSED)
                continue
            stream.write(encode.ENCRYPTION_ACCEPTED)
            await stream.start_tls(tls.context)
            session_tls = tls
        elif isinstance(message, DirectTLSHello):
            if session_tls is not None or tls is None:
                raise ProtocolViolation("unexpected TLS handshake")
            initial = reader.trailing_data
            reader = StartupReader()
            await stream.start_tls(tls.context, initial)
            session_tls = tls
            assert stream.transport is not None
            ssl_object = stream.transport.get_extra_info("ssl_object")
            if ssl_object is None or stream.closed.done():
                raise PeerClosed("client closed during the TLS handshake")
            if ssl_object.selected_alpn_protocol() != _ALPN:
                # As Postgres: direct TLS without ALPN could be a confused non-PG client.
                raise ProtocolViolation(
                    "received direct SSL connection request without ALPN protocol "
                    "negotiation extension"
                )
        elif isinstance(message, GSSENCRequest):
            if session_tls is not None or gss_refused:
                raise ProtocolViolation("unexpected GSSENCRequest")
            gss_refused = True
            stream.write(encode.ENCRYPTION_REFUSED)
        else:
            if isinstance(message, CancelRequest) and reader.trailing_data:
                raise ProtocolViolation("unexpected data after cancel request")
            if session_tls is not None:
                assert stream.transport is not None
                server_name = server_name_of(stream.transport.get_extra_info("ssl_object"))
            return Handshake(message, client_host, server_name, session_tls, reader.trailing_data)


def require_tls_error() -> InvalidAuthorizationSpecification:
    """The refusal for a plaintext startup when TLS is required."""
    return InvalidAuthorizationSpecification(
        "TLS is required",
        detail="this pgwake refuses unencrypted connections",
        hint="Connect with sslmode=require (or verify-full), the libpq default 'prefer' "
        "also works.",
    )
