#!/usr/bin/env python3
"""Docker cold connect: a stopped container -> first ``SELECT 1`` answered, through pgwake
and raw, alternated in one run; and the memory of one idle running compute container.

    python bench/docker_cold.py [--runs 30] [--image pgwake-postgres:17]

"Raw" starts a second endpoint's container (the same image, sandbox and limits, made by
the same pgwake) with the engine API and polls it with direct logins until ``SELECT 1``
answers: what any orchestrator would pay, without pgwake. Needs a Docker engine and the
image (``deploy/docker/build-images.sh``). Loopback only; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.core import free_port, percentile
from pgwake.api.client import PgwakeClient

PASSWORD = "bench-" + secrets.token_hex(8)
DEFAULT_IMAGE = "pgwake-postgres:17"
TARGET_P50_MS = 250.0
TARGET_RATIO = 1.3


@dataclasses.dataclass
class DockerColdResults:
    image: str
    pgwake_ms: list[float]
    raw_ms: list[float]
    idle_container_bytes: int
    idle_container_rss_bytes: int

    def summary(self) -> dict[str, float]:
        p50, raw50 = statistics.median(self.pgwake_ms), statistics.median(self.raw_ms)
        return {
            "pgwake_p50_ms": p50,
            "pgwake_p90_ms": percentile(self.pgwake_ms, 0.9),
            "raw_p50_ms": raw50,
            "raw_p90_ms": percentile(self.raw_ms, 0.9),
            "ratio_p50": p50 / raw50,
            "idle_container_mib": self.idle_container_bytes / 2**20,
            "idle_container_rss_mib": self.idle_container_rss_bytes / 2**20,
        }


class Server:
    """A ``pgwake serve`` on free loopback ports with a throwaway state dir."""

    def __init__(self) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix="pgwake-bench-docker-", dir="/tmp"))
        self.state_dir.chmod(0o711)
        self.port, self.api_port = free_port(), free_port()
        self.token = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PGWAKE_STATE_DIR": str(self.state_dir),
            "PGWAKE_LISTEN": f"127.0.0.1:{self.port}",
            "PGWAKE_API_LISTEN": f"127.0.0.1:{self.api_port}",
            "PGWAKE_METRICS_LISTEN": "",
            "PGWAKE_ADMIN_TOKEN": self.token,
            "PGWAKE_IDLE_TIMEOUT": "3600",
            "PGWAKE_LOG_LEVEL": "warning",
        }
        log = open(self.state_dir / "serve.log", "ab")  # noqa: SIM115 (the child's)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgwake.cli", "serve"], env=env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.client.list_endpoints()
                return
            time.sleep(0.05)
        raise RuntimeError("pgwake did not start")

    @property
    def client(self) -> PgwakeClient:
        return PgwakeClient(f"http://127.0.0.1:{self.api_port}", self.token)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(120)

    @property
    def instance(self) -> str:
        return (self.state_dir / "instance-id").read_text().strip()


async def _select_one(**connect: object) -> None:
    conn = await asyncpg.connect(**connect, ssl=False, timeout=30)  # type: ignore[arg-type]
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def time_pgwake(server: Server, endpoint: str) -> float:
    started = time.perf_counter()
    asyncio.run(
        _select_one(
            host="127.0.0.1",
            port=server.port,
            user="app",
            password=PASSWORD,
            database="app",
            server_settings={"options": f"endpoint={endpoint}"},
        )
    )
    return (time.perf_counter() - started) * 1000


def time_raw(container: docker.models.containers.Container, port: int) -> float:
    async def until_answered() -> None:
        while True:
            try:
                await _select_one(
                    host="127.0.0.1", port=port, user="app", password=PASSWORD, database="app"
                )
                return
            except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError):
                await asyncio.sleep(0.005)

    started = time.perf_counter()
    container.start()
    asyncio.run(until_answered())
    elapsed = (time.perf_counter() - started) * 1000
    container.kill(signal="SIGINT")  # the same fast shutdown pgwake uses
    container.wait(timeout=60)
    return elapsed


def idle_memory(engine: docker.DockerClient, name: str) -> tuple[int, int]:
    """The container's memory charge (cgroup usage) and its resident set (rss) in bytes."""
    stats = engine.containers.get(name).stats(stream=False)["memory_stats"]
    usage = int(stats.get("usage", 0))
    inner = stats.get("stats", {})
    rss = int(inner.get("rss", inner.get("anon", 0)))
    return usage, rss


@contextlib.contextmanager
def pgwake_with_endpoints(image: str) -> Iterator[Server]:
    server = Server()
    server.start()
    try:
        for name in ("dk", "dkraw"):
            server.client.create_endpoint(name, password=PASSWORD, backend="docker", image=image)
        yield server
    finally:
        server.stop()
        engine = docker.from_env()
        with contextlib.suppress(FileNotFoundError):
            label = f"pgwake.instance={server.instance}"
            for container in engine.containers.list(all=True, filters={"label": label}):
                container.remove(force=True, v=True)
            for volume in engine.volumes.list(filters={"label": label}):
                volume.remove(force=True)
        engine.close()
        subprocess.run(["rm", "-rf", str(server.state_dir)], check=False)


def measure(runs: int, image: str, settle: float = 0.3) -> DockerColdResults:
    engine = docker.from_env()
    engine.images.get(image)  # fails early and clearly when the image is missing
    with pgwake_with_endpoints(image) as server:
        client = server.client
        client.wake_endpoint("dkraw")  # makes its container; raw runs start that one
        client.suspend_endpoint("dkraw")
        raw = engine.containers.get(f"pgwake-{server.instance}-dkraw")
        raw_port = int(raw.labels["pgwake.port"])
        time_pgwake(server, "dk")  # the first wake creates the container: not a cold start
        pgwake_ms: list[float] = []
        raw_ms: list[float] = []
        for run in range(runs):
            client.suspend_endpoint("dk")
            time.sleep(settle)
            pgwake_ms.append(time_pgwake(server, "dk"))
            time.sleep(settle)
            raw_ms.append(time_raw(raw, raw_port))
            print(
                f"run {run + 1}/{runs}: pgwake {pgwake_ms[-1]:.1f} ms, raw {raw_ms[-1]:.1f} ms",
                file=sys.stderr,
            )
        time.sleep(2)  # let the idle compute settle before its memory is read
        usage, rss = idle_memory(engine, f"pgwake-{server.instance}-dk")
    engine.close()
    return DockerColdResults(image, pgwake_ms, raw_ms, usage, rss)


def table(results: DockerColdResults) -> str:
    s = results.summary()
    met_p50 = "met" if s["pgwake_p50_ms"] <= TARGET_P50_MS else "NOT met"
    met_ratio = "met" if s["ratio_p50"] <= TARGET_RATIO else "NOT met"
    return "\n".join(
        [
            f"Docker cold connect, {len(results.pgwake_ms)} runs alternated, image {results.image}",
            "",
            "| metric | pgwake | raw docker start | ratio | target |",
            "|---|---|---|---|---|",
            f"| stopped container -> first SELECT 1, p50 | {s['pgwake_p50_ms']:.1f} ms"
            f" | {s['raw_p50_ms']:.1f} ms | {s['ratio_p50']:.2f}"
            f" | p50 <= {TARGET_P50_MS:.0f} ms: {met_p50}; <= {TARGET_RATIO}x: {met_ratio} |",
            f"| same, p90 | {s['pgwake_p90_ms']:.1f} ms | {s['raw_p90_ms']:.1f} ms | | |",
            f"| one idle running compute container: memory charge / rss"
            f" | {s['idle_container_mib']:.1f} MiB / {s['idle_container_rss_mib']:.1f} MiB"
            " | | | info |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    args = parser.parse_args()
    print(table(measure(args.runs, args.image)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
