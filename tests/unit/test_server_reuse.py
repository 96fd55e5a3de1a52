"""The pure parts of server reuse: the ParameterStatus merge, the per-endpoint keep, and
the reset as a sans-IO exchange."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from pgwake.edge.exchange import PeerClosed
from pgwake.edge.packet_stream import PacketStream
from pgwake.edge.server_reuse import (
    IdleServer,
    IdleServers,
    _merge_parameter_status,
    reset,
    reset_for_reuse,
)
from pgwake.protocol import encode
from pgwake.protocol.errors import ProtocolViolation
from pgwake.protocol.framing import MAX_STARTUP_PHASE_MESSAGE_LENGTH
from tests.unit.exchanges import Peer, byte_by_byte


def _status(name: str, value: str) -> bytes:
    return encode.message(b"S", f"{name}\0{value}\0".encode())


def test_reported_parameters_replace_and_extend_the_logins() -> None:
    opening = _status("application_name", "") + _status("DateStyle", "ISO, MDY")
    reported = {
        b"DateStyle": b"DateStyle\0ISO, DMY\0",
        b"TimeZone": b"TimeZone\0UTC\0",
    }
    assert _merge_parameter_status(opening, reported) == (
        _status("application_name", "")
        + _status("DateStyle", "ISO, DMY")
        + _status("TimeZone", "UTC")
    )


class _Stream:
    """Stands in for a compute connection: only what IdleServers touches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_calls = 0

    def close(self) -> None:
        self.close_calls += 1


def _server(stream: _Stream, since: float) -> IdleServer:
    return IdleServer(cast("Any", stream), 1, 2, b"", since)


def test_keep_take_expire_and_limits() -> None:
    loop = asyncio.new_event_loop()
    try:
        off = IdleServers("e", 0)
        assert not off.put(b"startup", _server(_Stream(loop), 0))

        servers = IdleServers("e", 10)
        old, new, closed = _Stream(loop), _Stream(loop), _Stream(loop)
        assert servers.put(b"a", _server(old, 0))
        assert servers.put(b"a", _server(new, 5))
        assert servers.has(b"a")
        assert not servers.has(b"b")
        assert servers.take(b"b") is None
        taken = servers.take(b"a")
        assert taken is not None
        assert taken.stream is cast("Any", new)  # the most recent first
        assert len(servers) == 1

        servers.expire(now=9.9)
        assert len(servers) == 1
        servers.expire(now=10)
        assert len(servers) == 0
        assert old.close_calls == 1

        closed.closed.set_result(None)  # the compute ended it while it was kept
        assert servers.put(b"a", _server(closed, 20))
        assert servers.take(b"a") is None
        assert len(servers) == 0

        for index in range(16):
            assert servers.put(b"a", _server(_Stream(loop), 30 + index))
        assert not servers.put(b"a", _server(_Stream(loop), 50))  # the limit per endpoint
        servers.close_all("compute_stopped")
        assert len(servers) == 0
        assert not servers.has(b"a")
    finally:
        loop.close()


# -- reset: the backend's reset before it is kept, as a sans-IO exchange ---------------------

DISCARD = encode.message(b"Q", b"DISCARD ALL\0")
ROLLBACK = encode.message(b"Q", b"ROLLBACK\0")
DISCARDED = encode.message(b"C", b"DISCARD ALL\0")
ROLLED_BACK = encode.message(b"C", b"ROLLBACK\0")
IDLE = encode.message(b"Z", b"I")
OPENING = _status("application_name", "") + _status("TimeZone", "UTC")


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte_by_byte"])
def test_an_idle_backend_is_discarded(split: bool) -> None:
    answer = DISCARDED + IDLE
    peer = Peer(*(byte_by_byte(answer) if split else [answer]))
    assert peer.run(reset(OPENING, b"I")) == OPENING
    assert peer.writes == [DISCARD]


def test_an_open_transaction_is_rolled_back_first_in_the_same_write() -> None:
    peer = Peer(ROLLED_BACK + IDLE + DISCARDED + IDLE)
    assert peer.run(reset(OPENING, b"T")) == OPENING
    assert peer.writes == [ROLLBACK + DISCARD]
    peer = Peer(ROLLED_BACK + IDLE, DISCARDED + IDLE)
    assert peer.run(reset(OPENING, b"E")) == OPENING


def test_parameters_the_reset_reports_update_the_opening() -> None:
    peer = Peer(DISCARDED + _status("TimeZone", "Europe/Paris") + IDLE)
    assert peer.run(reset(OPENING, b"I")) == _status("application_name", "") + _status(
        "TimeZone", "Europe/Paris"
    )


@pytest.mark.parametrize(
    "answer",
    [
        encode.message(b"E", b"SERROR\0VERROR\0C25001\0Mno\0\0") + IDLE,  # ErrorResponse
        encode.message(b"C", b"ROLLBACK\0") + IDLE,  # not the command sent
        DISCARDED + encode.message(b"Z", b"T"),  # not idle afterwards
        DISCARDED + encode.message(b"N", b"SNOTICE\0\0") + IDLE,  # anything else
        DISCARDED + IDLE + encode.message(b"A", b"\0\0\0\1x\0\0"),  # more than the answer
    ],
    ids=["error", "other_command", "in_transaction", "notice", "trailing"],
)
def test_an_unexpected_answer_means_the_backend_is_not_kept(answer: bytes) -> None:
    assert Peer(answer).run(reset(OPENING, b"I")) is None


def test_eof_or_a_short_read_is_peer_closed() -> None:
    with pytest.raises(PeerClosed):
        Peer().run(reset(OPENING, b"I"))
    with pytest.raises(PeerClosed):
        Peer(DISCARDED[:4]).run(reset(OPENING, b"I"))


def test_an_oversized_message_is_a_protocol_violation() -> None:
    header = b"C" + (MAX_STARTUP_PHASE_MESSAGE_LENGTH + 1).to_bytes(4, "big")
    with pytest.raises(ProtocolViolation):
        Peer(header).run(reset(OPENING, b"I"))


def test_reset_for_reuse_turns_every_failure_into_none() -> None:
    class _Transport:
        def write(self, data: bytes) -> None:
            pass

        def is_closing(self) -> bool:
            return False

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

    async def scenario() -> list[bytes | None]:
        results = []
        for data, eof in (
            (DISCARDED + IDLE, False),
            (DISCARDED[:3], True),
            (b"C\xff\0\0\0", False),
        ):
            stream = PacketStream()
            stream.connection_made(cast("Any", _Transport()))
            stream.data_received(data)
            if eof:
                stream.eof_received()
            results.append(await reset_for_reuse(stream, OPENING, b"I"))
        return results

    assert asyncio.run(scenario()) == [OPENING, None, None]
