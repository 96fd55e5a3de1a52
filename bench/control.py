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
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy.client import PgwakeClient

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=100)
    parser.add_argument("--density", type=int, default=200)
    parser.add_argument("--wakes", type=int, default=50)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pgwake-bench-control-", dir="/tmp"))
    work.chmod(0o711)
    port, api_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
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
        [sys.executable, "-m", "proxy.cli", "serve"],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    rows: list[tuple[str, str]] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("pgwake did not become ready") from None
                time.sleep(0.1)
        client = PgwakeClient(f"http://127.0.0.1:{api_port}", TOKEN)
        time.sleep(2)  # let the spare template copies be made

        create_ms = []
        for _ in range(args.creates):
            started = time.perf_counter()
            client.create_endpoint()
            create_ms.append((time.perf_counter() - started) * 1000)
        rows.append(
            (
                "create latency p50 / p90 (ms)",
                f"{statistics.median(create_ms):.1f} / {pct(create_ms, 0.9):.1f}",
            )
        )

        first_query_ms = []
        for _ in range(20):
            started = time.perf_counter()
            created = client.create_endpoint()
            uri = created.connection_uri.replace("?", "?sslmode=disable&", 1)
            with psycopg.connect(uri, connect_timeout=60) as conn:
                conn.execute("select 1").fetchone()
            first_query_ms.append((time.perf_counter() - started) * 1000)
            client.suspend_endpoint(created.name)
        rows.append(
            (
                "create -> first SELECT 1 p50 / p90 (ms)",
                f"{statistics.median(first_query_ms):.1f} / {pct(first_query_ms, 0.9):.1f}",
            )
        )

        names = [e.name for e in client.list_endpoints()]
        while len(names) < args.density:
            names.append(client.create_endpoint(password="bench-password").name)
        dense = names[: args.density]
        computes = work / "state" / "computes" / "endpoints"
        disk = [du_bytes(computes / name) for name in dense[:20]]
        rows.append(("endpoints created (all suspended)", str(len(names))))
        rows.append(("pgwake RSS with them (MiB)", f"{rss_kib(server.pid) / 1024:.1f}"))
        rows.append(
            (
                "catalog size (KiB)",
                f"{(work / 'state' / 'catalog.sqlite3').stat().st_size / 1024:.0f}",
            )
        )
        rows.append(("disk per suspended endpoint (MiB)", f"{statistics.median(disk) / 2**20:.1f}"))

        wake_ms = []
        woken = [n for n in dense if n not in {e.name for e in []}][-args.wakes :]
        for name in woken:
            started = time.perf_counter()
            client.wake_endpoint(name)
            wake_ms.append((time.perf_counter() - started) * 1000)
            client.suspend_endpoint(name)
        rows.append(
            (
                f"{len(woken)} woken one after another: wake p50 / p90 (ms)",
                f"{statistics.median(wake_ms):.1f} / {pct(wake_ms, 0.9):.1f}",
            )
        )
        rows.append(("pgwake RSS after the wakes (MiB)", f"{rss_kib(server.pid) / 1024:.1f}"))
        running = [e.name for e in client.list_endpoints() if e.state != "suspended"]
        rows.append(("endpoints not suspended at the end", str(len(running))))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(work, ignore_errors=True)

    print("| metric | value |")
    print("|---|---|")
    for metric, value in rows:
        print(f"| {metric} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
