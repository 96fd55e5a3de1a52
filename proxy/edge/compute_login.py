"""Open a session on the compute for an authenticated client (ARCHITECTURE.md).

pgwake connects to the compute, sends the client's StartupMessage (role and options
rewritten), and logs in with SCRAM-SHA-256 using the ClientKey recovered at the edge: the
compute's verifier is the catalog's, so the proof is right without any password. It
checks the compute's ServerSignature too. Then it forwards AuthenticationOk, the
ParameterStatus messages and ReadyForQuery to the client, swapping BackendKeyData for
pgwake's own keys.

``log_in`` is that exchange, sans-IO (``exchange.py``); ``open_session`` drives it over the
compute's connection and writes the client its opening. Both run only after the client
has proved its password: a stranger never makes a compute fork a backend
(``warm_sockets.py`` keeps that fork off the critical path instead).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake.auth.scram import SCRAM_SHA_256, ScramAuthenticationFailed, ScramClient, ScramError
from pgwake.edge.cancel_keys import BackendTarget, CancelKey, key_pair
from pgwake.edge.exchange import PeerClosed, Send, receive_message, unread
from pgwake.edge.packet_stream import PacketStream, drive
from pgwake.protocol import encode
from pgwake.protocol.errors import CannotConnectNow, ProtocolViolation
from pgwake.protocol.framing import (
    MAX_STARTUP_PHASE_MESSAGE_LENGTH,
    MessageReader,
    error_sqlstate,
    parse_authentication,
    parse_backend_key_data,
)
from pgwake.protocol.messages import (
    AUTHENTICATION,
    BACKEND_KEY_DATA,
    ERROR_RESPONSE,
    PARAMETER_STATUS,
    READY_FOR_QUERY,
    AuthenticationRequest,
    Frame,
)

if TYPE_CHECKING:
    from pgwake.auth.scram import ScramVerifier
    from pgwake.compute import ComputeAddress
    from pgwake.edge.cancel_keys import CancelMap
    from pgwake.edge.exchange import Exchange

__all__ = [
    "ComputeLogin",
    "ComputeRefused",
    "SessionOpening",
    "StaleVerifier",
    "log_in",
    "open_compute",
    "open_session",
    "shared",
]

_CONNECT_TIMEOUT: Final = 10.0


class ComputeRefused(Exception):
    """The compute answered the login with an ErrorResponse. ``forward`` is what the client
    must get: the messages before it, and the ErrorResponse itself."""

    def __init__(self, sqlstate: str | None, forward: bytes = b"") -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate
        self.forward = forward


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


@dataclass(frozen=True, slots=True)
class ComputeLogin:
    """What ``log_in`` got from the compute."""

    #: The session's opening for the client, from AuthenticationOk to ReadyForQuery,
    #: with pgwake's cancel keys in its BackendKeyData.
    to_client: bytes
    #: The backend's own process id and secret key (``None``: none sent).
    backend_key: tuple[int, int] | None
    #: The ParameterStatus messages of the opening.
    parameter_status: bytes


@dataclass(frozen=True, slots=True)
class SessionOpening:
    """What a finished login gave: the client's cancel keys, and what it takes to hand the
    same backend to another client later (``server_reuse.py``)."""

    #: pgwake's cancel key given to the client (``None``: the compute sent none).
    cancel_key: CancelKey | None
    #: The backend's own process id and secret key (``None``: none sent).
    backend_key: tuple[int, int] | None
    #: The ParameterStatus messages forwarded to the client, encoded.
    parameter_status: bytes


def _offers_scram(frame: Frame) -> bool:
    if frame.type != AUTHENTICATION:
        return False
    try:
        request = parse_authentication(frame)
    except ProtocolViolation:
        return False
    return request.code == AuthenticationRequest.SASL and SCRAM_SHA_256.encode() in (
        request.data.split(b"\0")
    )


def log_in(
    startup: bytes,
    *,
    client_key: bytes,
    verifier: ScramVerifier,
    cancel_key_for: Callable[[int, int], tuple[int, int]],
    nonce: str | None = None,
) -> Exchange[ComputeLogin]:
    """The login on the compute, sans-IO: StartupMessage and client-first-message in one
    write, the server-first-message, the client-final-message made with ``client_key``,
    the ServerSignature checked against ``verifier``; then the session's opening up to
    ReadyForQuery, collected for the client. ``cancel_key_for(process_id, secret_key)``
    gives pgwake's keys for the backend's (the client gets those).

    Computes made by pgwake authenticate every role with SCRAM-SHA-256 (initdb's
    ``--auth-local``/``--auth-host``), so the client-first-message need not wait for the
    compute's AuthenticationSASL: one round trip fewer. Raises ``ComputeRefused`` with the
    client's share when the compute sends an ErrorResponse, ``StaleVerifier`` when its salt
    or ServerSignature is not the catalog verifier's, and ``CannotConnectNow`` when it
    misbehaves (no SCRAM offer, another method, an invalid message, a close). ``nonce``
    fixes the client nonce, for tests."""
    reader = MessageReader(MAX_STARTUP_PHASE_MESSAGE_LENGTH)
    scram = ScramClient.from_client_key(client_key, verifier, nonce=nonce)
    to_client = bytearray()
    backend_key: tuple[int, int] | None = None
    parameter_status = bytearray()
    try:
        yield Send(
            startup + encode.sasl_initial_response(SCRAM_SHA_256, scram.client_first_message())
        )
        frame = yield from receive_message(reader.feed, reader.next_message)
        # A compute that answers with an ErrorResponse first (starting up, shutting down)
        # exits without reading the client-first-message; it is forwarded below.
        if frame.type != ERROR_RESPONSE:
            if not _offers_scram(frame):
                raise CannotConnectNow(
                    "the compute does not ask for SCRAM-SHA-256",
                    detail="pgwake logs in to computes with SCRAM only; "
                    "check the compute's pg_hba.conf",
                )
            frame = yield from receive_message(reader.feed, reader.next_message)
        while True:
            kind = frame.type
            if kind == AUTHENTICATION:
                request = parse_authentication(frame)
                if request.code == AuthenticationRequest.OK:
                    to_client += encode.message(kind, frame.body)
                elif request.code == AuthenticationRequest.SASL_CONTINUE:
                    yield Send(encode.sasl_response(scram.handle_server_first(request.data)))
                elif request.code == AuthenticationRequest.SASL_FINAL:
                    scram.handle_server_final(request.data)
                elif request.code == AuthenticationRequest.SASL:
                    # Answered already: a second offer is one pgwake cannot follow.
                    raise CannotConnectNow("the compute does not offer SCRAM-SHA-256")
                else:
                    raise CannotConnectNow(
                        "the compute asked for an authentication method pgwake cannot use",
                        detail=f"authentication request code {request.code}",
                    )
            elif kind == BACKEND_KEY_DATA:
                keys = parse_backend_key_data(frame)
                backend_key = (keys.process_id, keys.secret_key)
                to_client += encode.backend_key_data(*cancel_key_for(*backend_key))
            elif kind == ERROR_RESPONSE:
                to_client += encode.message(kind, frame.body)
                raise ComputeRefused(error_sqlstate(frame), bytes(to_client))
            else:
                message = encode.message(kind, frame.body)
                to_client += message
                if kind == PARAMETER_STATUS:
                    parameter_status += message
                elif kind == READY_FOR_QUERY:
                    yield from unread(reader.take_remaining())
                    return ComputeLogin(bytes(to_client), backend_key, bytes(parameter_status))
            frame = yield from receive_message(reader.feed, reader.next_message)
    except ScramAuthenticationFailed as exc:
        raise StaleVerifier(exc.message) from None
    except ScramError as exc:
        raise CannotConnectNow("the compute's login failed", detail=exc.message) from None
    except ProtocolViolation:
        raise CannotConnectNow("the compute sent an invalid message") from None
    except PeerClosed:
        raise CannotConnectNow(
            "the compute closed the connection", detail="the compute closed during the login"
        ) from None


async def open_session(
    compute: PacketStream,
    client: PacketStream,
    *,
    startup: bytes,
    preface: bytes,
    client_key: bytes,
    verifier: ScramVerifier,
    endpoint: str,
    address: ComputeAddress,
    cancels: CancelMap,
) -> SessionOpening:
    """Log in on ``compute`` (``log_in``), then send the client ``preface`` (its
    AuthenticationSASLFinal) and the session's opening, in one write: one segment, one
    wake-up for the client.

    Returns the cancel key pair handed to the client and what reusing the backend needs.
    Raises ``ComputeRefused`` after forwarding the compute's ErrorResponse, and what
    ``log_in`` raises; a cancel key it registered is dropped again."""
    registered: list[CancelKey] = []

    def cancel_key_for(process_id: int, secret_key: int) -> tuple[int, int]:
        key = cancels.register(BackendTarget(endpoint, address, process_id, secret_key))
        registered.append(key)
        return key_pair(key)

    exchange = log_in(
        startup, client_key=client_key, verifier=verifier, cancel_key_for=cancel_key_for
    )
    try:
        login = await drive(compute, exchange)
    except ComputeRefused as refused:
        client.write(preface + refused.forward)
        for key in registered:
            cancels.unregister(key)
        raise
    except BaseException:
        for key in registered:
            cancels.unregister(key)
        raise
    client.write(preface + login.to_client)
    cancel_key = registered[-1] if registered else None
    return SessionOpening(cancel_key, login.backend_key, shared(login.parameter_status))


@functools.lru_cache(maxsize=1024)
def shared(blob: bytes) -> bytes:
    """One bytes object for equal ones that many sessions keep while they live: the
    ParameterStatus messages a session was told, the startup message it logs in with
    (most sessions of an endpoint have the same)."""
    return blob
