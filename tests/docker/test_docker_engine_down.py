"""The engine goes away mid-run and comes back.

pgwake reaches the real engine through a socket that this test owns (a byte relay to the
engine's own socket, given to pgwake as ``DOCKER_HOST``). Closing the relay makes the
engine unreachable for pgwake exactly as a stopped ``dockerd`` does (connections refused
on its socket) without stopping the engine that other tests and CI share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import docker
import pytest

from tests.docker.conftest import DEFAULT_IMAGE, DockerPgwake, docker_pgwake

pytestmark = pytest.mark.docker


class EngineRelay:
    """Relays a unix socket to the engine's socket; ``stop`` refuses and cuts everything."""

    def __init__(self, target: str, path: Path) -> None:
        self.target = target
        self.path = path
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.path.unlink(missing_ok=True)
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()


@pytest.fixture
def relay(engine: docker.DockerClient) -> Iterator[EngineRelay]:
    target = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not target.startswith("unix://"):
        pytest.skip("the relay only speaks to an engine on a unix socket")
    directory = Path(tempfile.mkdtemp(prefix="pgwake-engine-"))
    relay = EngineRelay(target.removeprefix("unix://"), directory / "docker.sock")
    relay.start()
    yield relay
    relay.stop()
    directory.rmdir()


def _sqlstate(server: DockerPgwake, endpoint: str) -> asyncpg.PostgresError | None:
    """Connect and query; the server's error if it refused (asyncpg keeps its fields)."""

    async def attempt() -> None:
        conn = await asyncpg.connect(**server.asyncpg_kwargs(endpoint), timeout=30)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    try:
        asyncio.run(attempt())
    except asyncpg.PostgresError as exc:
        return exc
    return None


def test_engine_unreachable_gives_57p03_and_recovers(
    relay: EngineRelay, engine: docker.DockerClient
) -> None:
    boat = {"backend": "docker", "image": DEFAULT_IMAGE}
    with docker_pgwake(
        engine, {"DOCKER_HOST": f"unix://{relay.path}"}, endpoints={"boat": boat, "plain": {}}
    ) as server:
        assert _sqlstate(server, "boat") is None  # works through the relay
        server.cli("endpoint", "suspend", "boat")

        relay.stop()
        failure = _sqlstate(server, "boat")
        assert isinstance(failure, asyncpg.CannotConnectNowError)
        assert failure.sqlstate == "57P03"
        assert "Docker engine is unreachable" in (failure.detail or "")
        assert failure.hint
        # Local endpoints do not care.
        assert _sqlstate(server, "plain") is None
        # No retry storm: a burst of connects shares the failure and its backoff.
        for _ in range(20):
            again = _sqlstate(server, "boat")
            assert again is not None
            assert again.sqlstate == "57P03"
        failures = server.metric("pgwake_wakes_total", endpoint="boat", outcome="failure")
        assert 1 <= failures <= 2

        relay.start()
        deadline = time.monotonic() + 60
        while (error := _sqlstate(server, "boat")) is not None:
            assert error.sqlstate == "57P03"
            assert time.monotonic() < deadline, "the endpoint did not recover"
            time.sleep(0.5)
