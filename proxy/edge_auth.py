"""Authenticate the client at the edge, before anything wakes (design §4).

pgwake runs the server side of SCRAM-SHA-256 (``-PLUS`` over TLS) with the role's stored
verifier. A stranger, a wrong password or an unknown role never reaches a compute: all
three fail here with the same 28P01 text (an unknown role runs a mock exchange, as in
Postgres). Success yields the ClientKey that logs pgwake in to the compute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy.auth.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    ScramAuthenticationFailed,
    ScramChannelBindingFailed,
    ScramProtocolError,
    ScramServer,
    ScramVerifier,
    parse_verifier,
)
from proxy.compute.management import ADMIN_ROLE
from proxy.protocol import encode
from proxy.protocol.errors import (
    InvalidAuthorizationSpecification,
    InvalidPassword,
    ProtocolViolation,
)
from proxy.protocol.framing import parse_sasl_initial_response, parse_sasl_response
from proxy.protocol.messages import AuthenticationRequest
from proxy.stream import PeerClosed, read_next

if TYPE_CHECKING:
    from proxy.protocol.framing import MessageReader
    from proxy.protocol.messages import Frame
    from proxy.stream import PacketStream

__all__ = ["EdgeAuthResult", "authenticate_client"]

# Frontend 'X': the client gives up (libpq sends it before closing).
_TERMINATE: Final = b"X"


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


def password_failed(role: str) -> InvalidPassword:
    """The one refusal for a wrong password, an unknown role or a role without SCRAM."""
    return InvalidPassword(f'password authentication failed for user "{role}"')


async def _next_client_frame(stream: PacketStream, reader: MessageReader) -> Frame:
    frame = await read_next(stream, reader.feed, reader.next_message)
    if frame.type == _TERMINATE:
        raise PeerClosed("client ended the authentication")
    return frame


async def authenticate_client(
    stream: PacketStream,
    reader: MessageReader,
    *,
    role: str,
    verifier_lookup: Awaitable[str | None],
    mock_secret: bytes,
    channel_binding: bytes | None,
    on_client_first: Callable[[], None] | None = None,
) -> EdgeAuthResult:
    """Run SCRAM with the client; return its ClientKey or raise a ``ClientError``.

    The verifier is looked up while the client answers AuthenticationSASL, and
    ``on_client_first`` runs once a well-formed client-first-message has arrived (the
    session uses it to start the compute's login in parallel)."""
    stream.write(encode.authentication_sasl(offered_mechanisms(channel_binding)))
    lookup = asyncio.ensure_future(verifier_lookup)
    try:
        first_frame = await _next_client_frame(stream, reader)
        verifier_text = await lookup
    finally:
        if not lookup.done():
            lookup.cancel()
    verifier: ScramVerifier | None = None
    if verifier_text is not None and role != ADMIN_ROLE:
        try:
            verifier = parse_verifier(verifier_text)
        except ValueError:
            verifier = None  # e.g. an MD5 password: refused like a wrong one
    server = ScramServer(
        verifier, role=role, mock_secret=mock_secret, channel_binding=channel_binding
    )
    try:
        initial = parse_sasl_initial_response(first_frame)
        server_first = server.handle_client_first(initial.mechanism, initial.data)
        if on_client_first is not None and verifier is not None:
            on_client_first()
        stream.write(encode.authentication(AuthenticationRequest.SASL_CONTINUE, server_first))
        final = server.handle_client_final(
            parse_sasl_response(await _next_client_frame(stream, reader))
        )
    except ScramChannelBindingFailed as exc:
        raise InvalidAuthorizationSpecification(exc.message, detail=exc.detail) from None
    except ScramAuthenticationFailed:
        raise password_failed(role) from None
    except ScramProtocolError as exc:
        raise ProtocolViolation(exc.message, detail=exc.detail) from None
    assert verifier is not None  # a mock exchange always fails above
    return EdgeAuthResult(
        verifier,
        final.client_key,
        encode.authentication(AuthenticationRequest.SASL_FINAL, final.message),
    )
