"""Authenticate the client at the edge, before anything wakes (ARCHITECTURE.md).

pgwake runs the server side of SCRAM-SHA-256 (``-PLUS`` over TLS) with the role's stored
verifier. A stranger, a wrong password or an unknown role never reaches a compute: all
three fail here with the same 28P01 text (an unknown role runs a mock exchange, as in
Postgres). Success yields the ClientKey that logs pgwake in to the compute.

The exchange is two sans-IO steps (``exchange.py``) with the verifier between them:
``offer_sasl`` (AuthenticationSASL, then the client's SASLInitialResponse) and
``verify_proof`` (server-first-message, then the client's proof, checked). The verifier is
looked up while the client answers the offer; ``authenticate_client`` drives both.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgwake.auth.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    ScramAuthenticationFailed,
    ScramChannelBindingFailed,
    ScramProtocolError,
    ScramServer,
    ScramVerifier,
    parse_verifier,
)
from pgwake.compute.management import ADMIN_ROLE
from pgwake.edge.exchange import PeerClosed, Send, receive_message, unread
from pgwake.edge.packet_stream import drive
from pgwake.protocol import encode
from pgwake.protocol.errors import (
    ClientError,
    InvalidAuthorizationSpecification,
    InvalidPassword,
    ProtocolViolation,
)
from pgwake.protocol.framing import (
    MAX_AUTHENTICATION_MESSAGE_LENGTH,
    MessageReader,
    parse_sasl_initial_response,
    parse_sasl_response,
)
from pgwake.protocol.messages import TERMINATE, AuthenticationRequest, SASLInitialResponse

if TYPE_CHECKING:
    from pgwake.edge.exchange import Exchange
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.edge.throttle import AuthThrottle
    from pgwake.protocol.messages import Frame

__all__ = [
    "EdgeAuthResult",
    "authenticate_client",
    "is_text",
    "offer_sasl",
    "password_failed",
    "throttled",
    "verify_proof",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EdgeAuthResult:
    """A client that proved it knows the password."""

    verifier: ScramVerifier
    client_key: bytes
    #: AuthenticationSASLFinal, sent with the compute's opening (one write, not two).
    sasl_final: bytes

    def __repr__(self) -> str:
        return "EdgeAuthResult(...)"


def offered_mechanisms(channel_binding: bytes | None) -> list[str]:
    """The SASL mechanisms offered, as ``ScramServer.mechanisms`` orders them."""
    return [SCRAM_SHA_256_PLUS, SCRAM_SHA_256] if channel_binding else [SCRAM_SHA_256]


def is_text(name: str) -> bool:
    """Whether a name from the startup packet is valid UTF-8. The codec decodes with
    ``surrogateescape`` so any bytes reach the compute unchanged; a name that is not text
    cannot be a role or an endpoint of ours, so it is looked up nowhere."""
    return name.isascii() or not any("\udc80" <= char <= "\udcff" for char in name)


def throttled(wait: float) -> InvalidAuthorizationSpecification:
    """The refusal while an (address, endpoint) waits out its failed-login delay."""
    return InvalidAuthorizationSpecification(
        "too many failed authentication attempts",
        hint=f"Wait {max(wait, 1.0):.0f} s before trying again.",
    )


def password_failed(role: str) -> InvalidPassword:
    """The one refusal for a wrong password, an unknown role or a role without SCRAM."""
    return InvalidPassword(f'password authentication failed for user "{role}"')


def _client_message(reader: MessageReader) -> Exchange[Frame]:
    frame = yield from receive_message(reader.feed, reader.next_message)
    if frame.type == TERMINATE:
        raise PeerClosed("client ended the authentication")
    return frame


def offer_sasl(channel_binding: bytes | None) -> Exchange[SASLInitialResponse]:
    """Send AuthenticationSASL (SCRAM-SHA-256, and -PLUS with ``channel_binding``);
    return the client's SASLInitialResponse.

    Raises ``ProtocolViolation`` for anything else or a message over
    ``MAX_AUTHENTICATION_MESSAGE_LENGTH``, and ``PeerClosed`` when the client leaves
    (EOF, or Terminate)."""
    yield Send(encode.authentication_sasl(offered_mechanisms(channel_binding)))
    reader = MessageReader(MAX_AUTHENTICATION_MESSAGE_LENGTH)
    initial = parse_sasl_initial_response((yield from _client_message(reader)))
    yield from unread(reader.take_remaining())
    return initial


def verify_proof(
    initial: SASLInitialResponse,
    verifier: ScramVerifier | None,
    *,
    role: str,
    mock_secret: bytes,
    channel_binding: bytes | None,
    throttle: AuthThrottle,
    client_host: str,
    endpoint: str,
    clock: Callable[[], float] = time.monotonic,
    nonce: str | None = None,
) -> Exchange[EdgeAuthResult]:
    """Answer the client-first-message in ``initial`` as the server holding ``verifier``
    (``None``: a mock exchange, which fails), then check the client's proof.

    The throttle is consulted and told the outcome in the same step as the proof is
    verified (no step in between), so that parallel proofs from one (address, endpoint)
    are counted one by one. Returns the client's ClientKey and AuthenticationSASLFinal
    (not sent: it goes out with the compute's opening). Raises ``InvalidPassword`` for a
    wrong proof or an unknown role, ``InvalidAuthorizationSpecification`` while throttled
    or for a channel binding that does not match, ``ProtocolViolation`` for a malformed
    exchange, and ``PeerClosed`` when the client leaves. ``nonce`` fixes the server's
    nonce, for tests."""
    server = ScramServer(
        verifier, role=role, mock_secret=mock_secret, channel_binding=channel_binding, nonce=nonce
    )
    try:
        server_first = server.handle_client_first(initial.mechanism, initial.data)
        yield Send(encode.authentication(AuthenticationRequest.SASL_CONTINUE, server_first))
        reader = MessageReader(MAX_AUTHENTICATION_MESSAGE_LENGTH)
        client_final = parse_sasl_response((yield from _client_message(reader)))
    except ScramProtocolError as exc:
        raise ProtocolViolation(exc.message, detail=exc.detail) from None
    # From here to the verdict there is no step: check, verify, record as one.
    now = clock()
    wait = throttle.wait_seconds(client_host, endpoint, now)
    if wait > 0:
        raise throttled(wait)
    try:
        final = server.handle_client_final(client_final)
    except ScramChannelBindingFailed as exc:
        throttle.failed(client_host, endpoint, now)
        raise InvalidAuthorizationSpecification(exc.message, detail=exc.detail) from None
    except ScramAuthenticationFailed:
        throttle.failed(client_host, endpoint, now)
        raise password_failed(role) from None
    except ScramProtocolError as exc:
        raise ProtocolViolation(exc.message, detail=exc.detail) from None
    throttle.succeeded(client_host, endpoint)
    assert verifier is not None  # a mock exchange always fails above
    yield from unread(reader.take_remaining())
    return EdgeAuthResult(
        verifier,
        final.client_key,
        encode.authentication(AuthenticationRequest.SASL_FINAL, final.message),
    )


def _usable_verifier(text: str | None, role: str) -> ScramVerifier | None:
    if text is None or role == ADMIN_ROLE:
        return None
    try:
        return _parsed(text)
    except ValueError:
        return None  # e.g. an MD5 password: refused like a wrong one


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> ScramVerifier:
    """``parse_verifier``, one frozen object per verifier however many sessions of the
    role there are: each session holds its verifier while it lives (a re-attach logs in
    with it). A ``ValueError`` is not cached."""
    return parse_verifier(text)


async def authenticate_client(
    stream: PacketStream,
    *,
    role: str,
    verifier_lookup: Callable[[], Awaitable[str | None]] | None,
    mock_secret: bytes,
    channel_binding: bytes | None,
    throttle: AuthThrottle,
    client_host: str,
    endpoint: str,
    conn_id: str = "-",
) -> EdgeAuthResult:
    """Run SCRAM with the client (``offer_sasl``, then ``verify_proof``); return its
    ClientKey or raise a ``ClientError`` (or ``PeerClosed``).

    The verifier is looked up while the client answers AuthenticationSASL
    (``verifier_lookup``; ``None``: the role cannot exist, a mock exchange runs)."""
    # A cheap early refusal; the check that bounds parallel guesses runs at the proof.
    wait = throttle.wait_seconds(client_host, endpoint, time.monotonic())
    if wait > 0:
        raise throttled(wait)
    lookup = asyncio.ensure_future(verifier_lookup()) if verifier_lookup is not None else None
    try:
        initial = await drive(stream, offer_sasl(channel_binding))
        verifier_text = await lookup if lookup is not None else None
    finally:
        if lookup is not None:
            if not lookup.done():
                lookup.cancel()
            elif not lookup.cancelled():
                lookup.exception()  # the client left first: the lookup's outcome is moot
    proof = verify_proof(
        initial,
        _usable_verifier(verifier_text, role),
        role=role,
        mock_secret=mock_secret,
        channel_binding=channel_binding,
        throttle=throttle,
        client_host=client_host,
        endpoint=endpoint,
    )
    try:
        return await drive(stream, proof)
    except ClientError as error:
        if error.sqlstate in (InvalidPassword.sqlstate, InvalidAuthorizationSpecification.sqlstate):
            logger.warning(
                "event=auth_failed conn=%s endpoint=%s client=%s retry_in_s=%g",
                conn_id,
                endpoint,
                client_host,
                throttle.wait_seconds(client_host, endpoint, time.monotonic()),
            )
        raise
