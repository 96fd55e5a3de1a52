"""SCRAM with the client at the edge as sans-IO exchanges (``client_auth.offer_sasl`` and
``client_auth.verify_proof``): the bytes each sends, what each returns, every refusal, and
the throttle's step."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from pgwake.auth.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    ScramClient,
    make_verifier,
    parse_verifier,
)
from pgwake.edge.client_auth import EdgeAuthResult, _usable_verifier, offer_sasl, verify_proof
from pgwake.edge.exchange import RECEIVE, PeerClosed, Send
from pgwake.edge.throttle import FREE_FAILURES, AuthThrottle
from pgwake.protocol import encode
from pgwake.protocol.errors import (
    InvalidAuthorizationSpecification,
    InvalidPassword,
    ProtocolViolation,
)
from pgwake.protocol.framing import (
    MAX_AUTHENTICATION_MESSAGE_LENGTH,
    MessageReader,
    parse_authentication,
)
from pgwake.protocol.messages import AuthenticationRequest, Frame, SASLInitialResponse
from tests.unit.exchanges import Peer, byte_by_byte

PASSWORD = "correct horse"
VERIFIER = parse_verifier(make_verifier(PASSWORD, salt=b"0123456789abcdef", iterations=64))
SERVER_NONCE = "server-nonce"
ADDRESS, ENDPOINT = "192.0.2.1", "demo"


def _client(password: str = PASSWORD) -> ScramClient:
    return ScramClient.from_password(password, nonce="client-nonce")


def _initial(client: ScramClient) -> SASLInitialResponse:
    return SASLInitialResponse(SCRAM_SHA_256, client.client_first_message())


def _request(message: bytes) -> AuthenticationRequest:
    reader = MessageReader()
    reader.feed(message)
    frame = reader.next_message()
    assert isinstance(frame, Frame)
    assert reader.take_remaining() == b""
    return parse_authentication(frame)


def _client_final(client: ScramClient) -> Callable[[bytes], bytes]:
    """The peer's answer to AuthenticationSASLContinue (all it was sent): its
    SASLResponse."""
    return lambda sent: encode.sasl_response(client.handle_server_first(_request(sent).data))


def _verify(
    peer: Peer,
    initial: SASLInitialResponse,
    *,
    throttle: AuthThrottle | None = None,
    verifier: object = VERIFIER,
    now: float = 100.0,
) -> EdgeAuthResult:
    return peer.run(
        verify_proof(
            initial,
            verifier,  # type: ignore[arg-type]
            role="alice",
            mock_secret=b"secret",
            channel_binding=None,
            throttle=throttle if throttle is not None else AuthThrottle(),
            client_host=ADDRESS,
            endpoint=ENDPOINT,
            clock=lambda: now,
            nonce=SERVER_NONCE,
        )
    )


# -- offer_sasl ---------------------------------------------------------------------------


def test_offer_sasl_sends_the_mechanisms() -> None:
    client = _client()
    message = encode.sasl_initial_response(SCRAM_SHA_256, client.client_first_message())
    peer = Peer(message)
    assert peer.run(offer_sasl(None)) == SASLInitialResponse(SCRAM_SHA_256, b"n,,n=,r=client-nonce")
    assert peer.writes == [encode.authentication_sasl([SCRAM_SHA_256])]
    peer = Peer(message)
    peer.run(offer_sasl(b"end-point-hash"))
    assert peer.writes == [encode.authentication_sasl([SCRAM_SHA_256_PLUS, SCRAM_SHA_256])]


def test_offer_sasl_reads_its_answer_in_any_split_and_leaves_the_rest() -> None:
    message = encode.sasl_initial_response(SCRAM_SHA_256, b"n,,n=,r=abc")
    assert Peer(*byte_by_byte(message)).run(offer_sasl(None)).data == b"n,,n=,r=abc"
    peer = Peer(message + b"more")
    peer.run(offer_sasl(None))
    assert peer.unread == b"more"


def test_offer_sasl_refuses_an_unexpected_message() -> None:
    with pytest.raises(ProtocolViolation, match="invalid SASLInitialResponse"):
        Peer(encode.message(b"Q", b"SELECT 1\0")).run(offer_sasl(None))


def test_offer_sasl_refuses_an_oversized_message_at_its_header() -> None:
    header = b"p" + (MAX_AUTHENTICATION_MESSAGE_LENGTH + 1).to_bytes(4, "big")
    peer = Peer(header)
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        peer.run(offer_sasl(None))
    assert peer.receives == 1


@pytest.mark.parametrize(
    "script",
    [[], [b"p\x00\x00"], [encode.message(b"X")]],
    ids=["eof", "short_read", "terminate"],
)
def test_offer_sasl_the_client_leaves(script: list[bytes]) -> None:
    with pytest.raises(PeerClosed):
        Peer(*script).run(offer_sasl(None))


# -- verify_proof -------------------------------------------------------------------------


def test_a_right_proof_gives_the_client_key_and_the_final_message() -> None:
    client = _client()
    throttle = AuthThrottle()
    throttle.failed(ADDRESS, ENDPOINT, 99.0)
    peer = Peer(_client_final(client))
    result = _verify(peer, _initial(client), throttle=throttle)
    (server_first,) = peer.writes
    continue_request = _request(server_first)
    assert continue_request.code == AuthenticationRequest.SASL_CONTINUE
    assert continue_request.data.startswith(b"r=client-nonce" + SERVER_NONCE.encode() + b",s=")
    assert hashlib.sha256(result.client_key).digest() == VERIFIER.stored_key
    assert result.verifier == VERIFIER
    final_request = _request(result.sasl_final)
    assert final_request.code == AuthenticationRequest.SASL_FINAL
    client.handle_server_final(final_request.data)  # the server's signature checks out
    assert throttle.wait_seconds(ADDRESS, ENDPOINT, 100.0) == 0
    assert len(throttle) == 0  # a success clears the record


def test_a_wrong_proof_is_a_wrong_password_and_counted() -> None:
    client = _client("wrong")
    throttle = AuthThrottle()
    with pytest.raises(InvalidPassword, match='password authentication failed for user "alice"'):
        _verify(Peer(_client_final(client)), _initial(client), throttle=throttle)
    assert len(throttle) == 1


def test_an_unknown_role_fails_like_a_wrong_password() -> None:
    client = _client()
    with pytest.raises(InvalidPassword, match='password authentication failed for user "alice"'):
        _verify(Peer(_client_final(client)), _initial(client), verifier=None)


def test_a_throttled_address_is_refused_at_the_proof_without_a_verdict() -> None:
    client = _client()  # the right password: refused all the same
    throttle = AuthThrottle()
    for _ in range(FREE_FAILURES + 1):
        throttle.failed(ADDRESS, ENDPOINT, 100.0)
    with pytest.raises(InvalidAuthorizationSpecification, match="too many failed"):
        _verify(Peer(_client_final(client)), _initial(client), throttle=throttle)


def test_the_throttle_is_checked_and_told_in_the_step_that_delivers_the_proof() -> None:
    """No step (so no await in the driver) between the client's proof arriving and the
    throttle learning the verdict: parallel guesses are counted one by one."""
    client = _client("wrong")
    throttle = AuthThrottle()
    exchange = verify_proof(
        _initial(client),
        VERIFIER,
        role="alice",
        mock_secret=b"secret",
        channel_binding=None,
        throttle=throttle,
        client_host=ADDRESS,
        endpoint=ENDPOINT,
        clock=lambda: 100.0,
        nonce=SERVER_NONCE,
    )
    step = next(exchange)
    assert isinstance(step, Send)
    assert exchange.send(None) is RECEIVE
    answer = _client_final(client)(step.data)
    with pytest.raises(InvalidPassword):
        exchange.send(answer)  # this one call reads, checks, verifies and records
    assert len(throttle) == 1


def test_a_malformed_client_final_message_is_a_protocol_violation() -> None:
    client = _client()
    with pytest.raises(ProtocolViolation):
        _verify(Peer(encode.sasl_response(b"garbage")), _initial(client))


def test_a_malformed_client_first_message_is_a_protocol_violation() -> None:
    peer = Peer()
    with pytest.raises(ProtocolViolation):
        _verify(peer, SASLInitialResponse(SCRAM_SHA_256, b"x,,n=,r=abc"))
    assert peer.sent == b""


def test_verify_proof_refuses_an_unexpected_message() -> None:
    with pytest.raises(ProtocolViolation, match="expected a SASLResponse"):
        _verify(Peer(encode.message(b"Q", b"SELECT 1\0")), _initial(_client()))


@pytest.mark.parametrize(
    "script",
    [[], [b"p\x00"], [encode.message(b"X")]],
    ids=["eof", "short_read", "terminate"],
)
def test_verify_proof_the_client_leaves(script: list[bytes]) -> None:
    throttle = AuthThrottle()
    with pytest.raises(PeerClosed):
        _verify(Peer(*script), _initial(_client()), throttle=throttle)
    assert len(throttle) == 0  # leaving is no failed login


def test_bytes_after_the_proof_are_left_for_the_relay() -> None:
    client = _client()

    peer = Peer(lambda sent: _client_final(client)(sent) + b"Qmore")
    _verify(peer, _initial(client))
    assert peer.unread == b"Qmore"


def test_sessions_of_a_role_share_one_verifier_object() -> None:
    # Every session holds its verifier while it lives (a parked one logs in again with
    # it): a thousand sessions of one role hold one object, not a thousand.
    text = make_verifier(PASSWORD, salt=b"fedcba9876543210", iterations=64)
    first = _usable_verifier(text, "app")
    assert first is not None
    assert _usable_verifier(text, "app") is first
    assert _usable_verifier("md5" + "0" * 32, "app") is None  # refused, and not cached
    other = _usable_verifier(make_verifier("another-pw", iterations=64), "app")
    assert other is not None
    assert other is not first
