"""The edge's side of the lifecycle hook: what it keeps per endpoint, and what it closes
when the lifecycle says the compute ticks, looks idle, stops, crashes or is deleted."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pgwake.compute import ComputeAddress
from pgwake.edge import backend
from pgwake.edge.kept_connections import KeptConnections
from pgwake.edge.server_reuse import IdleServer
from pgwake.endpoint.lifecycle import ShuttingDown, WakeFailed
from pgwake.protocol.errors import CannotConnectNow

ADDRESS = ComputeAddress(unix_socket="/nonexistent/.s.PGSQL.5432")


class _Stream:
    """A compute connection: only what the kept sets touch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport = SimpleNamespace(is_closing=lambda: False)
        self.close_calls = 0

    def close(self) -> None:
        self.close_calls += 1


def _kept_backend(stream: _Stream, since: float) -> IdleServer:
    return IdleServer(cast("Any", stream), 1, 2, b"", since)


def test_the_hook_closes_what_it_must_and_nothing_else() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        opened: list[_Stream] = []

        async def connect(address: ComputeAddress) -> Any:
            opened.append(_Stream(loop))
            return opened[-1]

        kept = KeptConnections(300, connect)
        assert kept.reuse_enabled
        assert not KeptConnections(0).reuse_enabled
        # Endpoints nobody used: every call is a no-op and makes nothing.
        kept.expire("none", pinned_timeout=None)
        assert not kept.close_sessions("none")
        kept.compute_gone("none")
        kept.forget("none")

        demo = kept.of("demo")
        assert kept.of("demo") is demo
        backend = _Stream(loop)
        assert demo.idle_servers.put(b"startup", _kept_backend(backend, loop.time()))
        assert demo.warm_sockets.take(ADDRESS) is None  # starts filling
        await asyncio.sleep(0.01)
        assert len(demo.warm_sockets) == 2

        kept.expire("demo", pinned_timeout=None)  # nothing is old yet
        assert (backend.close_calls, len(demo.idle_servers), len(demo.warm_sockets)) == (0, 1, 2)
        # Idle: kept backends go (the compute counts them), warm sockets stay (it doesn't).
        assert kept.close_sessions("demo")
        assert backend.close_calls == 1
        assert len(demo.warm_sockets) == 2
        assert not kept.close_sessions("demo")  # nothing left: the compute may count
        # The compute stops or crashes: everything goes.
        assert demo.idle_servers.put(b"startup", _kept_backend(_Stream(loop), loop.time()))
        kept.compute_gone("demo")
        assert len(demo.idle_servers) == 0
        assert len(demo.warm_sockets) == 0
        assert all(stream.close_calls == 1 for stream in opened)
        # Deleted: dropped, and a later use starts from an empty set.
        kept.forget("demo")
        assert kept.of("demo") is not demo

    asyncio.run(main())


# -- the edge's mapping of the lifecycle's errors ------------------------------------------


class _FailingLifecycle:
    name = "demo"
    address = None

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def wake(self) -> ComputeAddress:
        raise self.error


async def _wake(error: Exception) -> CannotConnectNow:
    with pytest.raises(CannotConnectNow) as info:
        await backend._wake(cast(Any, _FailingLifecycle(error)), 5.0, "conn")
    return info.value


def test_a_failed_start_is_57p03_with_the_reason_and_the_retry_time() -> None:
    error = asyncio.run(_wake(WakeFailed("demo", "out of disk", 3.6)))
    assert error.sqlstate == "57P03"
    assert error.message == 'endpoint "demo" could not start'
    assert error.detail == "out of disk"
    assert error.hint == "pgwake will try to start it again in 4 s."


def test_shutting_down_is_57p03_connect_again() -> None:
    error = asyncio.run(_wake(ShuttingDown()))
    assert error.sqlstate == "57P03"
    assert error.message == "pgwake is shutting down"
    assert error.detail is None
    assert error.hint == "Connect again shortly."
