"""Authenticate the client at the edge, before anything wakes (ARCHITECTURE.md).

pgwake runs the server side of SCRAM-SHA-256 (``-PLUS`` over TLS) with the role's stored
verifier. A stranger, a wrong password or an unknown role never reaches a compute: all
three fail here with the same 28P01 text (an unknown role runs a mock exchange, as in
Postgres). Success yields the ClientKey that logs pgwake in to the compute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

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
from pgwake.edge.packet_stream import PeerClosed, read_next
from pgwake.protocol import encode
from pgwake.protocol.errors import (
    InvalidAuthorizationSpecification,
    InvalidPassword,
    ProtocolViolation,
)
from pgwake.protocol.framing import parse_sasl_initial_response, parse_sasl_response
from pgwake.protocol.messages import AuthenticationRequest

if TYPE_CHECKING:
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.edge.throttle import AuthThrottle
    from pgwake.protocol.framing import MessageReader
    from pgwake.protocol.messages import Frame

__all__ = ["EdgeAuthResult", "authenticate_client", "is_text", "throttled"]

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
    verifier_lookup: Awaitable[str | None] | None,
    mock_secret: bytes,
    channel_binding: bytes | None,
    throttle: AuthThrottle,
    client_host: str,
    endpoint: str,
) -> EdgeAuthResult:
    """Run SCRAM with the client; return its ClientKey or raise a ``ClientError``.

    The verifier is looked up while the client answers AuthenticationSASL (``None``: the
    role cannot exist, a mock exchange runs). The throttle is consulted and told the
    outcome in the same step as the proof is verified, so that parallel proofs from one
    (address, endpoint) are counted one by one."""
    stream.write(encode.authentication_sasl(offered_mechanisms(channel_binding)))
    lookup = asyncio.ensure_future(verifier_lookup) if verifier_lookup is not None else None
    try:
        first_frame = await _next_client_frame(stream, reader)
        verifier_text = await lookup if lookup is not None else None
    finally:
        if lookup is not None:
            if not lookup.done():
                lookup.cancel()
            elif not lookup.cancelled():
                lookup.exception()  # the client left first: the lookup's outcome is moot
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
        stream.write(encode.authentication(AuthenticationRequest.SASL_CONTINUE, server_first))
        client_final = parse_sasl_response(await _next_client_frame(stream, reader))
    except ScramProtocolError as exc:
        raise ProtocolViolation(exc.message, detail=exc.detail) from None
    # From here to the verdict there is no await: check, verify, record as one step.
    now = time.monotonic()
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
    return EdgeAuthResult(
        verifier,
        final.client_key,
        encode.authentication(AuthenticationRequest.SASL_FINAL, final.message),
    )
