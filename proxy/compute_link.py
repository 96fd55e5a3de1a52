"""Open a session on the compute for an authenticated client (design §1, §4).

pgwake connects to the compute, sends the client's StartupMessage (role and options
rewritten), and logs in with SCRAM-SHA-256 using the ClientKey recovered at the edge: the
compute's verifier is the catalog's, so the proof is right without any password. It
checks the compute's ServerSignature too. Then it forwards AuthenticationOk, the
ParameterStatus messages and ReadyForQuery to the client, swapping BackendKeyData for
pgwake's own keys.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy.auth.scram import SCRAM_SHA_256, ScramAuthenticationFailed, ScramClient, ScramError
from proxy.cancel import BackendTarget
from proxy.protocol import encode
from proxy.protocol.errors import CannotConnectNow, ProtocolViolation
from proxy.protocol.framing import (
    MessageReader,
    parse_authentication,
    parse_backend_key_data,
    parse_error_fields,
)
from proxy.protocol.messages import AuthenticationRequest, Frame
from proxy.stream import PacketStream, PeerClosed, read_next

if TYPE_CHECKING:
    from proxy.auth.scram import ScramVerifier
    from proxy.cancel import CancelMap
    from proxy.compute import ComputeAddress

__all__ = [
    "ComputeRefused",
    "PendingLogin",
    "StaleVerifier",
    "begin_login",
    "open_compute",
    "open_session",
]

logger = logging.getLogger(__name__)
_CONNECT_TIMEOUT: Final = 10.0


class ComputeRefused(Exception):
    """The compute answered the login with an ErrorResponse (already sent to the client)."""

    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


class StaleVerifier(Exception):
    """The compute's verifier is not the one the client proved (password just changed)."""


async def open_compute(address: ComputeAddress) -> PacketStream:
    """Connect to the compute; raise ``OSError``/``TimeoutError`` if it does not answer."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(_CONNECT_TIMEOUT):
        if address.unix_socket:
            _, stream = await loop.create_unix_connection(PacketStream, address.unix_socket)
        else:
            _, stream = await loop.create_connection(
                PacketStream, address.host or "127.0.0.1", address.port or 5432
            )
    return stream


async def _next_frame(stream: PacketStream, reader: MessageReader) -> Frame:
    try:
        return await read_next(stream, reader.feed, reader.next_message)
    except PeerClosed:
        raise CannotConnectNow(
            "the compute closed the connection", detail="the compute closed during the login"
        ) from None


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """A compute connection that got the startup and answered with its first message."""

    compute: PacketStream
    reader: MessageReader
    first: Frame


async def begin_login(compute: PacketStream, startup: bytes) -> PendingLogin:
    """Send the StartupMessage and wait for the compute's first reply (its auth request).

    Run while the client is still busy with its own SCRAM exchange: the compute forks
    its backend meanwhile, so the client does not wait for that afterwards."""
    reader = MessageReader()
    compute.write(startup)
    return PendingLogin(compute, reader, await _next_frame(compute, reader))


async def open_session(
    login: PendingLogin,
    client: PacketStream,
    *,
    client_key: bytes,
    verifier: ScramVerifier,
    endpoint: str,
    address: ComputeAddress,
    cancels: CancelMap,
) -> tuple[int, int] | None:
    """Log in on ``compute`` and forward the session's opening to ``client``.

    Returns the cancel key pair handed to the client (``None`` if the compute sent none).
    Raises ``ComputeRefused`` after forwarding the compute's ErrorResponse,
    ``StaleVerifier`` when the compute's salt differs from the catalog's, and
    ``CannotConnectNow`` when the compute misbehaves."""
    compute, reader = login.compute, login.reader
    scram: ScramClient | None = None
    cancel_key: tuple[int, int] | None = None
    frame: Frame | None = login.first
    try:
        while True:
            if frame is None:
                frame = await _next_frame(compute, reader)
            kind = frame.type
            if kind == b"R":
                request = parse_authentication(frame)
                if request.code == AuthenticationRequest.OK:
                    client.write(encode.message(kind, frame.body))
                elif request.code == AuthenticationRequest.SASL:
                    if SCRAM_SHA_256.encode() not in request.data.split(b"\0"):
                        raise CannotConnectNow("the compute does not offer SCRAM-SHA-256")
                    scram = ScramClient.from_client_key(client_key, verifier)
                    compute.write(
                        encode.sasl_initial_response(SCRAM_SHA_256, scram.client_first_message())
                    )
                elif request.code == AuthenticationRequest.SASL_CONTINUE and scram:
                    compute.write(encode.sasl_response(scram.handle_server_first(request.data)))
                elif request.code == AuthenticationRequest.SASL_FINAL and scram:
                    scram.handle_server_final(request.data)
                else:
                    raise CannotConnectNow(
                        "the compute asked for an authentication method pgwake cannot use",
                        detail=f"authentication request code {request.code}",
                    )
            elif kind == b"K":
                keys = parse_backend_key_data(frame)
                cancel_key = cancels.register(
                    BackendTarget(endpoint, address, keys.process_id, keys.secret_key)
                )
                client.write(encode.backend_key_data(*cancel_key))
            elif kind == b"E":
                client.write(encode.message(kind, frame.body))
                raise ComputeRefused(parse_error_fields(frame).get("C"))
            else:
                client.write(encode.message(kind, frame.body))
                if kind == b"Z":
                    rest = reader.take_remaining()
                    if rest:
                        compute.unread(rest)
                    return cancel_key
            frame = None
    except ScramAuthenticationFailed as exc:
        if cancel_key is not None:
            cancels.unregister(cancel_key)
        raise StaleVerifier(exc.message) from None
    except ScramError as exc:
        raise CannotConnectNow("the compute's login failed", detail=exc.message) from None
    except ProtocolViolation:
        raise CannotConnectNow("the compute sent an invalid message") from None
    except BaseException:
        if cancel_key is not None:
            cancels.unregister(cancel_key)
        raise
