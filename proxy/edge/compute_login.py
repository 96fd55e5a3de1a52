"""Open a session on the compute for an authenticated client (ARCHITECTURE.md).

pgwake connects to the compute, sends the client's StartupMessage (role and options
rewritten), and logs in with SCRAM-SHA-256 using the ClientKey recovered at the edge: the
compute's verifier is the catalog's, so the proof is right without any password. It
checks the compute's ServerSignature too. Then it forwards AuthenticationOk, the
ParameterStatus messages and ReadyForQuery to the client, swapping BackendKeyData for
pgwake's own keys.

The login runs in two halves: ``begin_login`` (startup and client-first-message in one
write, up to the compute's server-first) needs no key; ``open_session`` finishes with
the ClientKey. Both run only after the client has proved its password: a stranger never
makes a compute fork a backend (``warm_sockets.py`` keeps that fork off the critical
path instead).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake.auth.scram import SCRAM_SHA_256, ScramAuthenticationFailed, ScramClient, ScramError
from pgwake.edge.cancel_keys import BackendTarget
from pgwake.edge.packet_stream import PacketStream, PeerClosed, read_next
from pgwake.protocol import encode
from pgwake.protocol.errors import CannotConnectNow, ProtocolViolation
from pgwake.protocol.framing import (
    MAX_STARTUP_PHASE_MESSAGE_LENGTH,
    MessageReader,
    parse_authentication,
    parse_backend_key_data,
    parse_error_fields,
)
from pgwake.protocol.messages import AuthenticationRequest, Frame

if TYPE_CHECKING:
    from pgwake.auth.scram import ScramVerifier
    from pgwake.compute import ComputeAddress
    from pgwake.edge.cancel_keys import CancelMap

__all__ = [
    "ComputeRefused",
    "PendingLogin",
    "SessionOpening",
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
    """A compute connection that got the startup, and as much of the login as can run
    before the client's proof is known: the compute's next message, unhandled."""

    compute: PacketStream
    reader: MessageReader
    #: The SCRAM client that sent the client-first-message (it waits for the ClientKey).
    scram: ScramClient | None
    pending: Frame


@dataclass(frozen=True, slots=True)
class SessionOpening:
    """What a finished login gave: the client's cancel keys, and what it takes to hand the
    same backend to another client later (``server_reuse.py``)."""

    #: pgwake's cancel key pair given to the client (``None``: the compute sent none).
    cancel_key: tuple[int, int] | None
    #: The backend's own process id and secret key (``None``: none sent).
    backend_key: tuple[int, int] | None
    #: The ParameterStatus messages forwarded to the client, encoded.
    parameter_status: bytes


def _offers_scram(frame: Frame) -> bool:
    if frame.type != b"R":
        return False
    try:
        request = parse_authentication(frame)
    except ProtocolViolation:
        return False
    return request.code == AuthenticationRequest.SASL and SCRAM_SHA_256.encode() in (
        request.data.split(b"\0")
    )


async def begin_login(compute: PacketStream, startup: bytes) -> PendingLogin:
    """Send the StartupMessage and the SCRAM client-first-message together; return with
    the compute's answer (its server-first-message) unhandled.

    Computes made by pgwake authenticate every role with SCRAM-SHA-256 (initdb's
    ``--auth-local``/``--auth-host``), so the client-first-message need not wait for the
    compute's AuthenticationSASL: one round trip instead of two. A compute that answers
    with an ErrorResponse first (starting up, shutting down) exits without reading it; one
    that asks for anything else is refused."""
    reader = MessageReader(MAX_STARTUP_PHASE_MESSAGE_LENGTH)
    scram = ScramClient.awaiting_client_key()
    compute.write(
        startup + encode.sasl_initial_response(SCRAM_SHA_256, scram.client_first_message())
    )
    first = await _next_frame(compute, reader)
    if first.type == b"E":
        return PendingLogin(compute, reader, None, first)  # open_session forwards it
    if not _offers_scram(first):
        raise CannotConnectNow(
            "the compute does not ask for SCRAM-SHA-256",
            detail="pgwake logs in to computes with SCRAM only; check the compute's pg_hba.conf",
        )
    return PendingLogin(compute, reader, scram, await _next_frame(compute, reader))


async def open_session(
    login: PendingLogin,
    client: PacketStream,
    *,
    preface: bytes,
    client_key: bytes,
    verifier: ScramVerifier,
    endpoint: str,
    address: ComputeAddress,
    cancels: CancelMap,
) -> SessionOpening:
    """Finish the login on the compute and send the client ``preface`` (its
    AuthenticationSASLFinal) and the session's opening, in one write.

    Returns the cancel key pair handed to the client and what reusing the backend needs.
    Raises ``ComputeRefused`` after forwarding the compute's ErrorResponse,
    ``StaleVerifier`` when the compute's salt differs from the catalog's, and
    ``CannotConnectNow`` when the compute misbehaves."""
    compute, reader, scram = login.compute, login.reader, login.scram
    # Everything for the client goes out at once: one segment, one wake-up for it.
    to_client = bytearray(preface)
    cancel_key: tuple[int, int] | None = None
    backend_key: tuple[int, int] | None = None
    parameter_status = bytearray()
    frame: Frame | None = login.pending
    try:
        if scram is not None:
            scram.use_client_key(client_key, verifier)
        while True:
            if frame is None:
                frame = await _next_frame(compute, reader)
            kind = frame.type
            if kind == b"R":
                request = parse_authentication(frame)
                if request.code == AuthenticationRequest.OK:
                    to_client += encode.message(kind, frame.body)
                elif request.code == AuthenticationRequest.SASL:
                    # begin_login answered an offer of SCRAM-SHA-256: this one has none.
                    raise CannotConnectNow("the compute does not offer SCRAM-SHA-256")
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
                backend_key = (keys.process_id, keys.secret_key)
                cancel_key = cancels.register(
                    BackendTarget(endpoint, address, keys.process_id, keys.secret_key)
                )
                to_client += encode.backend_key_data(*cancel_key)
            elif kind == b"E":
                to_client += encode.message(kind, frame.body)
                client.write(bytes(to_client))
                raise ComputeRefused(parse_error_fields(frame).get("C"))
            else:
                message = encode.message(kind, frame.body)
                to_client += message
                if kind == b"S":
                    parameter_status += message
                elif kind == b"Z":
                    client.write(bytes(to_client))
                    rest = reader.take_remaining()
                    if rest:
                        compute.unread(rest)
                    return SessionOpening(cancel_key, backend_key, bytes(parameter_status))
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
