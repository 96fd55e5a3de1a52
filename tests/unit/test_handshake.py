"""The startup negotiation as a sans-IO exchange (``handshake.negotiate``): bytes in, the
bytes and TLS upgrades it asks for out, and every way it refuses."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import pytest

from pgwake.edge.exchange import PeerClosed, TLSInfo
from pgwake.edge.handshake import Handshake, negotiate
from pgwake.edge.tls import TlsMaterial
from pgwake.protocol import encode
from pgwake.protocol.errors import (
    CloseWithoutReply,
    FeatureNotSupported,
    InvalidAuthorizationSpecification,
    ProtocolViolation,
)
from pgwake.protocol.messages import CancelRequest, StartupMessage
from tests.unit.exchanges import Peer, byte_by_byte

STARTUP = encode.startup_message({"user": "alice", "database": "db"})
ALICE = StartupMessage(3, 0, {"user": "alice", "database": "db"})
SSL_REQUEST = encode.ssl_request()
GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
# The first bytes of a TLS record carrying a ClientHello: what direct TLS starts with.
CLIENT_HELLO = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4"
TLS = TlsMaterial(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), b"hash", Path("cert.pem"))
PROXY_NETWORKS = (ipaddress.ip_network("10.0.0.0/8"),)


def _negotiate(
    peer: Peer,
    *,
    tls: TlsMaterial | None = None,
    peer_host: str = "192.0.2.1",
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
) -> Handshake:
    return peer.run(negotiate(peer_host=peer_host, tls=tls, trusted_proxies=trusted))


@pytest.mark.parametrize(
    "chunks", [[STARTUP], byte_by_byte(STARTUP)], ids=["whole", "byte_by_byte"]
)
def test_a_plain_startup(chunks: list[bytes]) -> None:
    peer = Peer(*chunks)
    assert _negotiate(peer) == Handshake(ALICE, "192.0.2.1", None, None)
    assert peer.sent == b""
    assert peer.unread == b""


def test_bytes_after_the_startup_are_left_for_the_authentication() -> None:
    peer = Peer(STARTUP + b"p\x00\x00")
    assert _negotiate(peer).message == ALICE
    assert peer.unread == b"p\x00\x00"


def test_ssl_request_without_tls_is_refused_and_the_startup_follows() -> None:
    peer = Peer(SSL_REQUEST, STARTUP)
    assert _negotiate(peer) == Handshake(ALICE, "192.0.2.1", None, None)
    assert peer.writes == [encode.ENCRYPTION_REFUSED]
    assert peer.tls_started == []


def test_ssl_request_with_tls_upgrades_and_keeps_the_server_name() -> None:
    peer = Peer(SSL_REQUEST, STARTUP, tls=TLSInfo("demo.example.com", None))
    assert _negotiate(peer, tls=TLS) == Handshake(ALICE, "192.0.2.1", "demo.example.com", TLS)
    assert peer.writes == [encode.ENCRYPTION_ACCEPTED]
    assert peer.tls_started == [b""]


def test_plaintext_after_ssl_request_is_refused() -> None:
    # What CVE-2021-23214 was about: those bytes would be read as if they were encrypted.
    peer = Peer(SSL_REQUEST + STARTUP)
    with pytest.raises(ProtocolViolation, match="unencrypted data after SSL request"):
        _negotiate(peer, tls=TLS)
    assert peer.sent == b""


def test_a_second_ssl_request_is_refused() -> None:
    with pytest.raises(ProtocolViolation, match="SSLRequest received on an encrypted"):
        _negotiate(Peer(SSL_REQUEST, SSL_REQUEST), tls=TLS)


def test_gssenc_request_is_refused_once() -> None:
    peer = Peer(GSSENC_REQUEST, STARTUP)
    assert _negotiate(peer).message == ALICE
    assert peer.writes == [encode.ENCRYPTION_REFUSED]
    with pytest.raises(ProtocolViolation, match="unexpected GSSENCRequest"):
        _negotiate(Peer(GSSENC_REQUEST, GSSENC_REQUEST))


def test_direct_tls_hands_the_client_hello_to_the_upgrade() -> None:
    peer = Peer(CLIENT_HELLO, STARTUP, tls=TLSInfo("demo.example.com", "postgresql"))
    assert _negotiate(peer, tls=TLS) == Handshake(ALICE, "192.0.2.1", "demo.example.com", TLS)
    assert peer.tls_started == [CLIENT_HELLO]
    assert peer.sent == b""


def test_direct_tls_without_alpn_is_refused() -> None:
    with pytest.raises(ProtocolViolation, match="without ALPN"):
        _negotiate(Peer(CLIENT_HELLO, tls=TLSInfo(None, None)), tls=TLS)


def test_direct_tls_without_a_certificate_is_refused() -> None:
    with pytest.raises(ProtocolViolation, match="unexpected TLS handshake"):
        _negotiate(Peer(CLIENT_HELLO))


def test_a_cancel_request() -> None:
    cancel = encode.cancel_request(7, 8)
    assert _negotiate(Peer(cancel)).message == CancelRequest(7, 8)
    with pytest.raises(ProtocolViolation, match="unexpected data after cancel request"):
        _negotiate(Peer(cancel + b"x"))


def test_a_trusted_proxy_names_the_client() -> None:
    header = b"PROXY TCP4 198.51.100.7 10.0.0.2 51000 5432\r\n"
    peer = Peer(header + STARTUP)
    handshake = _negotiate(peer, peer_host="10.1.2.3", trusted=PROXY_NETWORKS)
    assert handshake.client_host == "198.51.100.7"
    assert handshake.message == ALICE


def test_a_trusted_proxy_must_send_a_header() -> None:
    with pytest.raises(ProtocolViolation):
        _negotiate(Peer(STARTUP), peer_host="10.1.2.3", trusted=PROXY_NETWORKS)


def test_an_untrusted_peer_cannot_send_a_proxy_header() -> None:
    header = b"PROXY TCP4 198.51.100.7 10.0.0.2 51000 5432\r\n"
    with pytest.raises(CloseWithoutReply, match="invalid length of startup packet"):
        _negotiate(Peer(header + STARTUP), trusted=PROXY_NETWORKS)


def test_an_oversized_startup_packet_is_closed_on_at_its_length_word() -> None:
    peer = Peer(b"\x00\x01\x00\x00")
    with pytest.raises(CloseWithoutReply, match="invalid length"):
        _negotiate(peer)
    assert peer.receives == 1


def test_eof_inside_a_packet_is_an_incomplete_startup_packet() -> None:
    with pytest.raises(CloseWithoutReply, match="incomplete startup packet"):
        _negotiate(Peer(STARTUP[:-1]))


def test_eof_between_packets_is_peer_closed() -> None:
    with pytest.raises(PeerClosed):
        _negotiate(Peer())
    with pytest.raises(PeerClosed):
        _negotiate(Peer(GSSENC_REQUEST))


def test_errors_postgres_answers_are_raised_as_client_errors() -> None:
    with pytest.raises(FeatureNotSupported):
        _negotiate(Peer(encode.startup_message({"user": "alice"}, version=2 << 16)))
    with pytest.raises(InvalidAuthorizationSpecification):
        _negotiate(Peer(encode.startup_message({"database": "db"})))
