"""The pure parts of server reuse: the ParameterStatus merge and the per-endpoint keep."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from pgwake.edge.server_reuse import IdleServer, IdleServers, _merge_parameter_status
from pgwake.protocol import encode


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
