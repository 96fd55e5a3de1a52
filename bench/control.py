#!/usr/bin/env python3
"""Control-plane figures: create latency, create -> first query, and density.

    python bench/control.py [--creates 100] [--density 200] [--wakes 50]

Starts its own ``pgwake serve`` on loopback in a fresh state dir under /tmp and stops it
(and every compute) in ``finally``. Prints a Markdown table:

1. create latency p50/p90 over ``--creates`` sequential API creates;
2. create -> first ``SELECT 1`` result through pgwake (a new endpoint's first, cold,
   connect), p50 over 20;
3. density: ``--density`` endpoints created (all suspended): pgwake's RSS, catalog size
   and disk per endpoint; then ``--wakes`` of them woken one after another (a connect and
   ``SELECT 1`` each) and suspended again (via the API), with per-wake latency.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pgwake.api.client import PgwakeClient

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


@dataclass
class ControlResults:
    """What ``run_control`` measured; times in ms, sizes in bytes unless named."""

    create_ms: list[float] = field(default_factory=list)
    first_query_ms: list[float] = field(default_factory=list)
    #: One sample per density create: (endpoints existing, create ms, pgwake RSS KiB or 0
    #: when not sampled at that point); the first is the start (no create, RSS sampled).
    density: list[tuple[int, float, int]] = field(default_factory=list)
    endpoints_total: int = 0
    density_rss_kib: int = 0
    catalog_bytes: int = 0
    disk_per_endpoint_bytes: float = 0.0
    wake_ms: list[float] = field(default_factory=list)
    rss_after_wakes_kib: int = 0
    baseline_rss_kib: int = 0
    not_suspended_at_end: int = 0

    def rows(self) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        if self.create_ms:
            rows.append(
                (
                    "create latency p50 / p90 (ms)",
                    f"{statistics.median(self.create_ms):.1f} / {pct(self.create_ms, 0.9):.1f}",
                )
            )
        if self.first_query_ms:
            rows.append(
                (
                    "create -> first SELECT 1 p50 / p90 (ms)",
                    f"{statistics.median(self.first_query_ms):.1f}"
                    f" / {pct(self.first_query_ms, 0.9):.1f}",
                )
            )
        rows.append(("endpoints created (all suspended)", str(self.endpoints_total)))
        rows.append(("pgwake RSS at start (MiB)", f"{self.baseline_rss_kib / 1024:.1f}"))
        rows.append(("pgwake RSS with them (MiB)", f"{self.density_rss_kib / 1024:.1f}"))
        rows.append(("catalog size (KiB)", f"{self.catalog_bytes / 1024:.0f}"))
        rows.append(
            ("disk per suspended endpoint (MiB)", f"{self.disk_per_endpoint_bytes / 2**20:.1f}")
        )
        if self.wake_ms:
            rows.append(
                (
                    f"{len(self.wake_ms)} woken one after another: wake p50 / p90 (ms)",
                    f"{statistics.median(self.wake_ms):.1f} / {pct(self.wake_ms, 0.9):.1f}",
                )
            )
        rows.append(("pgwake RSS after the wakes (MiB)", f"{self.rss_after_wakes_kib / 1024:.1f}"))
        rows.append(("endpoints not suspended at the end", str(self.not_suspended_at_end)))
        return rows


def run_control(
    creates: int = 100,
    density: int = 1000,
    wakes: int = 100,
    *,
    first_queries: int = 20,
    rss_every: int = 50,
    progress: Callable[[str], None] | None = None,
) -> ControlResults:
    """Start a ``pgwake serve`` of its own, measure, stop it and remove its state dir.

    ``density`` counts every endpoint made (the ``creates`` and ``first_queries`` ones
    too); pgwake's RSS is sampled every ``rss_every`` endpoints while they are made.
    Raises ``RuntimeError`` when pgwake does not come up.
    """
    say = progress or (lambda message: None)
    work = Path(tempfile.mkdtemp(prefix="pgwake-bench-control-", dir="/tmp"))
    work.chmod(0o711)
    port, api_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PGWAKE_STATE_DIR": str(work / "state"),
        "PGWAKE_LISTEN": f"127.0.0.1:{port}",
        "PGWAKE_API_LISTEN": f"127.0.0.1:{api_port}",
        "PGWAKE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "PGWAKE_ADMIN_TOKEN": TOKEN,
        "PGWAKE_LOG_LEVEL": "warning",
        "PGWAKE_IDLE_TIMEOUT": "600",
    }
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "pgwake.cli", "serve"],
        env=env,
        stdout=log,
        stderr=log,
        cwd=work,
        start_new_session=True,
    )
    results = ControlResults()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("pgwake did not become ready") from None
                time.sleep(0.1)
        client = PgwakeClient(f"http://127.0.0.1:{api_port}", TOKEN)
        time.sleep(2)  # let the spare template copies be made
        results.baseline_rss_kib = rss_kib(server.pid)

        say(f"control: {creates} sequential creates")
        for _ in range(creates):
            started = time.perf_counter()
            client.create_endpoint()
            results.create_ms.append((time.perf_counter() - started) * 1000)

        say(f"control: {first_queries} x create -> first SELECT 1")
        for _ in range(first_queries):
            started = time.perf_counter()
            created = client.create_endpoint()
            with psycopg.connect(
                created.connection_uri, sslmode="disable", connect_timeout=60
            ) as conn:
                conn.execute("select 1").fetchone()
            results.first_query_ms.append((time.perf_counter() - started) * 1000)
            client.suspend_endpoint(created.name)

        names = [e.name for e in client.list_endpoints()]
        say(f"control: density, {len(names)} -> {density} endpoints")
        results.endpoints_total = len(names)
        results.density.append((len(names), 0.0, rss_kib(server.pid)))
        while len(names) < density:
            started = time.perf_counter()
            names.append(client.create_endpoint(password="bench-password").name)
            elapsed = (time.perf_counter() - started) * 1000
            sample = rss_kib(server.pid) if len(names) % rss_every == 0 else 0
            results.density.append((len(names), elapsed, sample))
            results.endpoints_total = len(names)
            if len(names) % 200 == 0:
                say(f"control: {len(names)} endpoints")
        dense = names[:density]
        computes = work / "state" / "computes" / "endpoints"
        disk = [du_bytes(computes / name) for name in dense[:20]]
        results.density_rss_kib = rss_kib(server.pid)
        results.catalog_bytes = (work / "state" / "catalog.sqlite3").stat().st_size
        results.disk_per_endpoint_bytes = statistics.median(disk)

        woken = dense[-wakes:] if wakes else []
        say(f"control: {len(woken)} wakes one after another")
        for name in woken:
            started = time.perf_counter()
            client.wake_endpoint(name)
            results.wake_ms.append((time.perf_counter() - started) * 1000)
            client.suspend_endpoint(name)
        results.rss_after_wakes_kib = rss_kib(server.pid)
        results.not_suspended_at_end = sum(
            1 for e in client.list_endpoints() if e.state != "suspended"
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=100)
    parser.add_argument("--density", type=int, default=200)
    parser.add_argument("--wakes", type=int, default=50)
    args = parser.parse_args()
    results = run_control(
        args.creates,
        args.density,
        args.wakes,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print("| metric | value |")
    print("|---|---|")
    for metric, value in results.rows():
        print(f"| {metric} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
