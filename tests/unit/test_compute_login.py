"""The login on the compute as a sans-IO exchange (``compute_login.log_in``), against a
scripted compute that runs the server side of SCRAM with the catalog's verifier."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable

import pytest

from pgwake.auth.scram import (
    SCRAM_SHA_256,
    ScramClient,
    ScramServer,
    make_verifier,
    parse_verifier,
)
from pgwake.compute import ComputeAddress
from pgwake.edge.cancel_keys import CancelMap
from pgwake.edge.compute_login import (
    ComputeLogin,
    ComputeRefused,
    StaleVerifier,
    log_in,
    open_session,
)
from pgwake.edge.exchange import Exchange
from pgwake.edge.packet_stream import PacketStream
from pgwake.protocol import encode
from pgwake.protocol.errors import CannotConnectNow
from pgwake.protocol.framing import (
    MAX_STARTUP_PHASE_MESSAGE_LENGTH,
    MessageReader,
    parse_sasl_initial_response,
    parse_sasl_response,
)
from pgwake.protocol.messages import AuthenticationRequest, Frame
from tests.unit.exchanges import Chunk, Peer, byte_by_byte

PASSWORD = "correct horse"
VERIFIER_TEXT = make_verifier(PASSWORD, salt=b"0123456789abcdef", iterations=64)
VERIFIER = parse_verifier(VERIFIER_TEXT)
STARTUP = encode.startup_message({"user": "alice", "database": "db"})
OFFER = encode.authentication_sasl([SCRAM_SHA_256])
OK = encode.authentication(AuthenticationRequest.OK)
STATUS = encode.message(b"S", b"TimeZone\0UTC\0")
BACKEND_KEYS = encode.backend_key_data(4242, 99)
READY = encode.message(b"Z", b"I")
OUR_KEYS = (7, 8)
STARTING_UP = encode.message(
    b"E", b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
)


def _client_key() -> bytes:
    """What the edge recovered from the client's proof for PASSWORD."""
    client = ScramClient.from_password(PASSWORD, nonce="edge")
    server = ScramServer(VERIFIER, role="alice", mock_secret=b"s", nonce="srv")
    first = server.handle_client_first(SCRAM_SHA_256, client.client_first_message())
    return server.handle_client_final(client.handle_server_first(first)).client_key


CLIENT_KEY = _client_key()


def _frames(data: bytes) -> list[Frame]:
    reader = MessageReader(MAX_STARTUP_PHASE_MESSAGE_LENGTH)
    reader.feed(data)
    frames = []
    while isinstance(frame := reader.next_message(), Frame):
        frames.append(frame)
    assert reader.take_remaining() == b""
    return frames


class _Compute:
    """The compute's side of the login: SCRAM-SHA-256 with ``verifier``."""

    def __init__(self, verifier_text: str = VERIFIER_TEXT) -> None:
        self.scram = ScramServer(
            parse_verifier(verifier_text), role="alice", mock_secret=b"s", nonce="compute"
        )

    def server_first(self, sent: bytes) -> bytes:
        """Answer the startup and client-first-message (one write)."""
        (length,) = struct.unpack_from("!i", sent)
        assert sent[:length] == STARTUP
        (initial,) = _frames(sent[length:])
        first = parse_sasl_initial_response(initial)
        data = self.scram.handle_client_first(first.mechanism, first.data)
        return encode.authentication(AuthenticationRequest.SASL_CONTINUE, data)

    def server_final(self, sent: bytes) -> bytes:
        """Answer the client-final-message."""
        (response,) = _frames(sent)
        final = self.scram.handle_client_final(parse_sasl_response(response))
        return encode.authentication(AuthenticationRequest.SASL_FINAL, final.message)

    def answers(self, *after_final: bytes) -> list[Chunk]:
        """The script up to AuthenticationSASLFinal, then ``after_final``."""
        return [
            OFFER,
            self.server_first,
            lambda sent: self.server_final(sent) + b"".join(after_final),
        ]


def _log_in(nonce: str = "pgwake") -> Exchange[ComputeLogin]:
    return log_in(
        STARTUP,
        client_key=CLIENT_KEY,
        verifier=VERIFIER,
        cancel_key_for=lambda process_id, secret_key: OUR_KEYS,
        nonce=nonce,
    )


def test_a_login_collects_the_opening_for_the_client() -> None:
    compute = _Compute()
    peer = Peer(*compute.answers(OK + STATUS + BACKEND_KEYS + READY))
    login = peer.run(_log_in())
    opening = OK + STATUS + encode.backend_key_data(*OUR_KEYS) + READY
    assert login == ComputeLogin(opening, (4242, 99), STATUS)
    first, second = peer.writes
    assert first == STARTUP + encode.sasl_initial_response(SCRAM_SHA_256, b"n,,n=,r=pgwake")
    assert _frames(second)[0].type == b"p"
    assert peer.unread == b""


def test_the_opening_may_come_in_any_split_and_bytes_after_it_are_handed_back() -> None:
    compute = _Compute()
    offer, first, final = compute.answers()
    opening = OK + STATUS + BACKEND_KEYS + READY
    assert offer == OFFER
    peer = Peer(*byte_by_byte(OFFER), first, final, *byte_by_byte(opening))
    assert peer.run(_log_in()).backend_key == (4242, 99)
    peer = Peer(*_Compute().answers(opening + b"N..."))
    peer.run(_log_in())
    assert peer.unread == b"N..."


def test_an_error_first_is_forwarded() -> None:
    peer = Peer(STARTING_UP)
    with pytest.raises(ComputeRefused) as refused:
        peer.run(_log_in())
    assert refused.value.sqlstate == "57P03"
    assert refused.value.forward == STARTING_UP


def test_an_error_after_the_login_is_forwarded_with_what_came_before() -> None:
    error = encode.message(b"E", b"SFATAL\0VFATAL\0C3D000\0Mdatabase does not exist\0\0")
    peer = Peer(*_Compute().answers(OK + STATUS + error))
    with pytest.raises(ComputeRefused) as refused:
        peer.run(_log_in())
    assert refused.value.sqlstate == "3D000"
    assert refused.value.forward == OK + STATUS + error


def test_a_compute_that_does_not_offer_scram_is_refused() -> None:
    md5 = encode.authentication(5, b"salt")
    with pytest.raises(CannotConnectNow, match="does not ask for SCRAM-SHA-256"):
        Peer(md5).run(_log_in())
    plus_only = encode.authentication_sasl(["SCRAM-SHA-256-PLUS"])
    with pytest.raises(CannotConnectNow, match="does not ask for SCRAM-SHA-256"):
        Peer(plus_only).run(_log_in())


def test_another_method_asked_later_is_refused() -> None:
    with pytest.raises(CannotConnectNow, match="authentication method pgwake cannot use"):
        Peer(OFFER, encode.authentication(3)).run(_log_in())
    with pytest.raises(CannotConnectNow, match="does not offer SCRAM-SHA-256"):
        Peer(OFFER, OFFER).run(_log_in())


def test_another_salt_on_the_compute_is_a_stale_verifier() -> None:
    other = make_verifier(PASSWORD, salt=b"fedcba9876543210", iterations=64)
    with pytest.raises(StaleVerifier):
        Peer(*_Compute(other).answers()).run(_log_in())


def test_a_wrong_server_signature_is_a_stale_verifier() -> None:
    compute = _Compute()
    offer, first, _ = compute.answers()
    wrong = encode.authentication(
        AuthenticationRequest.SASL_FINAL, b"v=" + base64.b64encode(bytes(32))
    )
    with pytest.raises(StaleVerifier):
        Peer(offer, first, wrong).run(_log_in())


def test_a_close_during_the_login_is_the_compute_failing() -> None:
    with pytest.raises(CannotConnectNow, match="closed the connection"):
        Peer(OFFER).run(_log_in())
    with pytest.raises(CannotConnectNow, match="closed the connection"):
        Peer(OFFER[:3]).run(_log_in())


def test_an_invalid_or_oversized_message_is_the_compute_failing() -> None:
    oversized = b"S" + (MAX_STARTUP_PHASE_MESSAGE_LENGTH + 1).to_bytes(4, "big")
    with pytest.raises(CannotConnectNow, match="invalid message"):
        Peer(*_Compute().answers(OK + oversized)).run(_log_in())
    bad_keys = encode.message(b"K", b"\0\0\0\1")
    with pytest.raises(CannotConnectNow, match="invalid message"):
        Peer(*_Compute().answers(OK + bad_keys)).run(_log_in())


def test_a_malformed_server_first_message_is_the_compute_failing() -> None:
    garbage = encode.authentication(AuthenticationRequest.SASL_CONTINUE, b"garbage")
    with pytest.raises(CannotConnectNow, match="login failed"):
        Peer(OFFER, garbage).run(_log_in())


def test_the_cancel_key_is_asked_for_the_backends_keys() -> None:
    asked = []

    def cancel_key_for(process_id: int, secret_key: int) -> tuple[int, int]:
        asked.append((process_id, secret_key))
        return OUR_KEYS

    exchange = log_in(
        STARTUP, client_key=CLIENT_KEY, verifier=VERIFIER, cancel_key_for=cancel_key_for
    )
    Peer(*_Compute().answers(OK + BACKEND_KEYS + READY)).run(exchange)
    assert asked == [(4242, 99)]


# -- open_session: the driver over the compute's connection --------------------------------


class _Transport:
    """A connection end: what was written to it, and a scripted peer answering writes."""

    def __init__(
        self, answers: list[Callable[[bytes], bytes]] | None = None, *, then_close: bool = False
    ) -> None:
        self.written = bytearray()
        self.answers = answers or []
        #: Close (EOF) once the last answer is sent.
        self.then_close = then_close
        self.stream: PacketStream | None = None

    def write(self, data: bytes) -> None:
        self.written += data
        if self.answers and self.stream is not None:
            loop = asyncio.get_running_loop()
            loop.call_soon(self.stream.data_received, self.answers.pop(0)(bytes(data)))
            if not self.answers and self.then_close:
                loop.call_soon(self.stream.eof_received)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _stream(transport: _Transport) -> PacketStream:
    stream = PacketStream()
    stream.connection_made(transport)  # type: ignore[arg-type]
    transport.stream = stream
    return stream


def _open_session(
    after_final: bytes, *, then_close: bool = False
) -> tuple[_Transport, CancelMap, BaseException | None]:
    compute = _Compute()
    compute_transport = _Transport(
        [
            lambda sent: OFFER + compute.server_first(sent),
            lambda sent: compute.server_final(sent) + after_final,
        ],
        then_close=then_close,
    )
    client_transport = _Transport()
    cancels = CancelMap()

    async def scenario() -> BaseException | None:
        try:
            await open_session(
                _stream(compute_transport),
                _stream(client_transport),
                startup=STARTUP,
                preface=b"<final>",
                client_key=CLIENT_KEY,
                verifier=VERIFIER,
                endpoint="demo",
                address=ComputeAddress(unix_socket="/tmp/.s.PGSQL.5432"),
                cancels=cancels,
            )
        except (ComputeRefused, CannotConnectNow) as exc:
            return exc
        return None

    return client_transport, cancels, asyncio.run(scenario())


def test_open_session_writes_the_preface_and_opening_once_with_its_own_keys() -> None:
    client, cancels, error = _open_session(OK + STATUS + BACKEND_KEYS + READY)
    assert error is None
    assert len(cancels) == 1
    written = bytes(client.written)
    assert written.startswith(b"<final>")
    ok, status, keys, ready = _frames(written[len(b"<final>") :])
    assert [ok.type, status.type, keys.type, ready.type] == [b"R", b"S", b"K", b"Z"]
    assert keys.body != BACKEND_KEYS[5:]  # pgwake's keys, never the backend's


def test_open_session_forwards_a_refusal_and_drops_the_cancel_key() -> None:
    error_message = encode.message(b"E", b"SFATAL\0VFATAL\0C53300\0Mtoo many\0\0")
    client, cancels, error = _open_session(OK + BACKEND_KEYS + error_message)
    assert isinstance(error, ComputeRefused)
    assert bytes(client.written).startswith(b"<final>" + OK)
    assert bytes(client.written).endswith(error_message)
    assert len(cancels) == 0


def test_open_session_drops_the_cancel_key_when_the_compute_fails_after_it() -> None:
    client, cancels, error = _open_session(OK + BACKEND_KEYS, then_close=True)
    assert isinstance(error, CannotConnectNow)
    assert len(cancels) == 0
    assert client.written == b""  # the client hears of it from the session, not from here
