#!/usr/bin/env python3
"""Core performance check of pgwake against its baselines, measured side by side.

    python bench/core.py [--runs 30] [--warm-runs 200] [--pgbench-seconds 10]

Everything runs on loopback in a fresh work directory under /tmp, and everything this
script starts (``pgwake serve`` and its computes, PgBouncer, a raw ``postgres``) is stopped
in ``finally`` blocks, also on Ctrl-C or SIGTERM. Measurements:

1. cold connect: endpoint suspended -> connect through pgwake -> first ``SELECT 1`` row,
   beside a raw ``postgres`` started by hand on a copy of an equivalent data dir
   (spawn -> ``postmaster.pid`` says ready -> connect -> first ``SELECT 1`` row);
2. warm connect: connect + ``SELECT 1`` + close through pgwake, beside the same compute's
   unix socket directly (SCRAM both ways);
3. ``pgbench -S`` TPS through pgwake, directly, and through PgBouncer (session mode), in
   alternating rounds.

Clients use libpq (psycopg's ``pq`` layer, the C library psql uses) with
``gssencmode=disable``; ``sslmode=disable`` unless a row says TLS (``sslmode=require``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pgwake.api.client import ApiError, PgwakeClient

REPO_ROOT = Path(__file__).resolve().parent.parent

ROLE = "app"
PASSWORD = "s3cret-bench"  # throwaway endpoints on loopback (the API wants >= 8 characters)
DATABASE = "app"
WARM_ENDPOINT = "bench"
COLD_ENDPOINT = "cold"
COLD_IDLE_TIMEOUT = 0.3
COMPUTE_USER = "pgwake"
COMPUTE_PORT = 5432


def _newest_debian_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with a ``postgres`` (Debian's layout)."""
    found = [
        path
        for path in Path("/usr/lib/postgresql").glob("*/bin")
        if path.parent.name.isdigit() and (path / "postgres").is_file()
    ]
    if not found:
        return Path("/usr/lib/postgresql/15/bin")
    return max(found, key=lambda path: int(path.parent.name))


DEFAULT_BINDIR = _newest_debian_bindir()

# Targets.
COLD_P50_TARGET_MS = 100.0
COLD_RATIO_TARGET = 2.0
WARM_RATIO_TARGET = 1.3
PGBENCH_VS_PGBOUNCER_TARGET = 1.0


class BenchError(RuntimeError):
    """A step failed; the message says which and why."""


# -- small helpers -----------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile (``fraction`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def conninfo(**params: str | int) -> bytes:
    base: dict[str, str | int] = {
        "user": ROLE,
        "password": PASSWORD,
        "dbname": DATABASE,
        "gssencmode": "disable",
        "sslmode": "disable",
        "connect_timeout": 10,
    }
    base.update(params)
    return " ".join(f"{key}='{value}'" for key, value in base.items()).encode()


def connect(info: bytes) -> pq.PGconn:
    conn = pq.PGconn.connect(info)
    if conn.status != pq.ConnStatus.OK:
        message = conn.error_message.decode(errors="replace").strip()
        conn.finish()
        raise BenchError(f"connect failed: {message}")
    return conn


def select_one(conn: pq.PGconn) -> None:
    result = conn.exec_(b"SELECT 1")
    if result.status != pq.ExecStatus.TUPLES_OK or result.get_value(0, 0) != b"1":
        raise BenchError(f"SELECT 1 failed: {conn.error_message.decode(errors='replace')}")


def timed_connect_select(info: bytes) -> float:
    """Milliseconds from starting the connect until the ``SELECT 1`` row; then close."""
    started = time.perf_counter()
    conn = connect(info)
    try:
        select_one(conn)
        return (time.perf_counter() - started) * 1000
    finally:
        conn.finish()


def timed_connect_select_close(info: bytes) -> float:
    """Milliseconds for connect + ``SELECT 1`` + close (the warm-connect figure)."""
    started = time.perf_counter()
    conn = connect(info)
    try:
        select_one(conn)
    finally:
        conn.finish()
    return (time.perf_counter() - started) * 1000


def read_postmaster_pid(data_dir: Path) -> list[str] | None:
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    return lines if lines and lines[0].strip().isdigit() else None


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def chown_to(path: Path, user: pwd.struct_passwd) -> None:
    os.chown(path, user.pw_uid, user.pw_gid)


# -- process bookkeeping -----------------------------------------------------------------


@dataclass
class Managed:
    name: str
    process: subprocess.Popen[bytes]
    stop_signal: int
    grace: float


class Processes:
    """Every long-running child this script starts, stopped in reverse order."""

    def __init__(self) -> None:
        self._children: list[Managed] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        stop_signal: int = signal.SIGTERM,
        grace: float = 30.0,
        user: pwd.struct_passwd | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        identity: dict[str, Any] = (
            {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        )
        with open(log_path, "ab") as out:
            # Own session: a Ctrl-C in the terminal reaches only this script, which then
            # stops the children in order (pgwake first suspends its computes).
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                **identity,
            )
        self._children.append(Managed(name, process, stop_signal, grace))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        for managed in list(self._children):
            if managed.process is process:
                self._stop(managed)
                self._children.remove(managed)

    def stop_all(self) -> None:
        while self._children:
            self._stop(self._children.pop())

    @staticmethod
    def _stop(managed: Managed) -> None:
        process = managed.process
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(managed.stop_signal)
        try:
            process.wait(managed.grace)
            return
        except subprocess.TimeoutExpired:
            pass
        log(f"{managed.name} (pid {process.pid}) did not stop in {managed.grace:g} s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


def stop_stray_postmasters(data_dirs: list[Path]) -> None:
    """Fast-stop any postmaster still running on one of our own data directories."""
    for data_dir in data_dirs:
        lines = read_postmaster_pid(data_dir)
        if lines is None:
            continue
        pid = int(lines[0])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(data_dir).encode() not in cmdline:
            continue  # a stale pid file; the pid now belongs to someone else
        log(f"stopping stray postgres pid {pid} on {data_dir}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.02)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)


# -- the environment under test ----------------------------------------------------------


@dataclass
class Setup:
    workdir: Path
    bindir: Path
    user: pwd.struct_passwd
    procs: Processes
    proxy_port: int = 0
    metrics_port: int = 0
    api_port: int = 0
    pgbouncer_port: int = 0
    metrics_errors: int = 0
    admin_token: str = field(default_factory=lambda: secrets.token_hex(24))
    pgwake_process: subprocess.Popen[bytes] | None = None
    pgbouncer_process: subprocess.Popen[bytes] | None = None
    raw_data: Path = field(init=False)
    raw_run: Path = field(init=False)

    def __post_init__(self) -> None:
        self.raw_data = self.workdir / "raw" / "data"
        self.raw_run = self.workdir / "raw" / "run"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def endpoint_data(self, endpoint: str) -> Path:
        return self.state_dir / "computes" / "endpoints" / endpoint / "data"

    def pgwake_env(self) -> dict[str, str]:
        return {
            **os.environ,
            # ``bench`` from this checkout; pgwake is the installed package, checked by
            # ``preflight`` to be this checkout's.
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "PGWAKE_STATE_DIR": str(self.state_dir),
            "PGWAKE_PG_BINDIR": str(self.bindir),
            "PGWAKE_ADMIN_TOKEN": self.admin_token,
        }

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def verifier(self, endpoint: str, role: str = ROLE) -> str:
        """The SCRAM verifier pgwake's catalog holds for ``role`` (the compute has the same)."""
        with contextlib.closing(sqlite3.connect(self.state_dir / "catalog.sqlite3")) as db:
            row = db.execute(
                "SELECT verifier FROM roles WHERE endpoint = ? AND role = ?", (endpoint, role)
            ).fetchone()
        if row is None:
            raise BenchError(f"no verifier for role {role} of endpoint {endpoint} in the catalog")
        return str(row[0])

    def pgwake_argv(self) -> list[str]:
        return [sys.executable, "-m", "pgwake.cli"]

    def via_pgwake(self, endpoint: str, **extra: str | int) -> bytes:
        return conninfo(
            host="127.0.0.1", port=self.proxy_port, options=f"endpoint={endpoint}", **extra
        )

    def compute_socket_dir(self, endpoint: str) -> Path:
        lines = read_postmaster_pid(self.endpoint_data(endpoint))
        if lines is None or len(lines) < 8 or lines[7].strip() != "ready":
            raise BenchError(f"compute of endpoint {endpoint} is not running")
        return Path(lines[4].strip())

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        for attempt in range(5):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return str(response.read().decode())
            except OSError as exc:  # seen: ConnectionResetError under frequent polling
                self.metrics_errors += 1
                log(f"GET /metrics failed ({exc!r}); retrying")
                if attempt == 4:
                    raise BenchError(f"metrics endpoint unusable: {exc!r}") from exc
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def endpoint_state(self, endpoint: str) -> str | None:
        """The state pgwake's metrics give, or None when it exports none for ``endpoint``."""
        pattern = re.compile(
            r'^pgwake_endpoint_state\{endpoint="'
            + re.escape(endpoint)
            + r'",state="(\w+)"\} 1\.0$',
            re.MULTILINE,
        )
        match = pattern.search(self.metrics_text())
        return match.group(1) if match else None

    def wait_suspended(self, endpoint: str, timeout: float = 30.0) -> None:
        """Wait until no postmaster runs on the data dir and pgwake says suspended.

        The pid file is checked first (cheap); /metrics only once it is gone. An endpoint
        never woken since pgwake started has no state line: that counts as suspended.
        """
        data_dir = self.endpoint_data(endpoint)
        wait_for(
            lambda: (
                read_postmaster_pid(data_dir) is None
                and self.endpoint_state(endpoint) in ("suspended", None)
            ),
            timeout,
            f"endpoint {endpoint} to suspend",
            step=0.02,
        )

    def all_data_dirs(self) -> list[Path]:
        endpoints = self.state_dir / "computes" / "endpoints"
        dirs = [self.raw_data]
        if endpoints.is_dir():
            dirs += [child / "data" for child in endpoints.iterdir()]
        return dirs


def api(setup: Setup) -> PgwakeClient:
    """A client of the running pgwake's HTTP API, with the admin token."""
    return PgwakeClient(setup.api_url, setup.admin_token)


def create_endpoint(setup: Setup, name: str, idle_timeout: float) -> None:
    """Create ``name`` (role ``app``, password ``PASSWORD``) through the API."""
    started = time.monotonic()
    try:
        api(setup).create_endpoint(name, password=PASSWORD, idle_timeout_seconds=idle_timeout)
    except (ApiError, OSError) as exc:
        raise BenchError(f"creating endpoint {name} failed: {exc}") from exc
    log(f"created endpoint {name} in {(time.monotonic() - started) * 1000:.0f} ms")


def create_endpoints(setup: Setup) -> None:
    for name, idle in ((WARM_ENDPOINT, 600.0), (COLD_ENDPOINT, COLD_IDLE_TIMEOUT)):
        create_endpoint(setup, name, idle)


def make_raw_copy(setup: Setup) -> None:
    """Copy the (never started by pgwake serve) cold endpoint's data dir for the raw runs."""
    source = setup.endpoint_data(COLD_ENDPOINT)
    if read_postmaster_pid(source) is not None:
        raise BenchError("the cold endpoint's data dir is in use; cannot copy it")
    raw_root = setup.raw_data.parent
    raw_root.mkdir(mode=0o711)
    subprocess.run(["cp", "-a", str(source), str(setup.raw_data)], check=True)
    setup.raw_run.mkdir(mode=0o700)
    chown_to(setup.raw_run, setup.user)


def start_pgwake(setup: Setup, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``pgwake serve`` on free loopback ports (proxy, metrics, API); wait until it
    listens. ``extra_args`` are more ``serve`` flags."""
    setup.proxy_port = free_port()
    setup.metrics_port = free_port()
    setup.api_port = free_port()
    if not setup.state_dir.exists():
        setup.state_dir.mkdir(mode=0o711)
        setup.state_dir.chmod(0o711)
    log_path = setup.workdir / "pgwake-serve.log"
    process = setup.procs.start(
        "pgwake serve",
        [
            *setup.pgwake_argv(),
            "serve",
            "--listen",
            f"127.0.0.1:{setup.proxy_port}",
            "--metrics-listen",
            f"127.0.0.1:{setup.metrics_port}",
            "--api-listen",
            f"127.0.0.1:{setup.api_port}",
            *(extra_args or []),
        ],
        log_path=log_path,
        env=setup.pgwake_env(),
        cwd=setup.workdir,
        grace=45.0,
    )
    setup.pgwake_process = process

    def up() -> bool:
        if process.poll() is not None:
            raise BenchError(f"pgwake serve exited ({process.returncode}):\n{tail(log_path)}")
        return tcp_open(setup.proxy_port) and tcp_open(setup.metrics_port) and _ready(setup)

    wait_for(up, 60, "pgwake serve to listen", step=0.05)
    log(f"pgwake serve (pid {process.pid}) listening on 127.0.0.1:{setup.proxy_port}")
    return process


def _ready(setup: Setup) -> bool:
    try:
        with urllib.request.urlopen(f"{setup.api_url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_pgbouncer(
    setup: Setup,
    socket_dir: Path | None = None,
    pool_size: int = 20,
    *,
    databases: dict[str, Path] | None = None,
    secret: str = PASSWORD,
    max_client_conn: int = 200,
    name: str = "pgbouncer",
) -> subprocess.Popen[bytes]:
    """Start PgBouncer (session mode, SCRAM) in front of compute sockets; wait until it
    answers a ``SELECT 1``.

    ``databases`` maps a PgBouncer database name to a compute's socket directory (each
    forwards to that compute's database ``app``); ``socket_dir`` alone means ``{"app":
    socket_dir}``. ``secret`` goes into the auth_file: the role's SCRAM verifier (the
    same one the compute holds, so PgBouncer logs into the compute with the client's
    SCRAM keys and never sees a password) or the plaintext password (needed when the
    computes' verifiers differ, as each endpoint salts its own).
    """
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if databases is None:
        if socket_dir is None:
            raise ValueError("start_pgbouncer needs socket_dir or databases")
        databases = {DATABASE: socket_dir}
    directory = setup.workdir / name
    directory.mkdir(mode=0o700)
    port = free_port()
    (directory / "userlist.txt").write_text(f'"{ROLE}" "{secret}"\n')
    entries = "\n".join(
        f"{db} = host={sock} port={COMPUTE_PORT} dbname={DATABASE}"
        for db, sock in databases.items()
    )
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
{entries}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
listen_backlog = 2048
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {directory}/userlist.txt
pool_mode = session
max_client_conn = {max_client_conn}
default_pool_size = {pool_size}
ignore_startup_parameters = extra_float_digits
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""
    )
    for path in (directory, directory / "userlist.txt", directory / "pgbouncer.ini"):
        chown_to(path, setup.user)
    log_path = setup.workdir / f"{name}.stdout.log"
    process = setup.procs.start(
        name,
        [exe, str(directory / "pgbouncer.ini")],
        log_path=log_path,
        user=setup.user,
        cwd=directory,
        grace=15.0,
    )

    def up() -> bool:
        if process.poll() is not None:
            raise BenchError(
                f"pgbouncer exited ({process.returncode}):\n{tail(log_path)}\n"
                f"{tail(directory / 'pgbouncer.log')}"
            )
        return tcp_open(port)

    wait_for(up, 15, "pgbouncer to listen")
    first = next(iter(databases))
    timed_connect_select_close(conninfo(host="127.0.0.1", port=port, dbname=first))
    setup.pgbouncer_port = port
    setup.pgbouncer_process = process
    log(f"{name} (pid {process.pid}) listening on 127.0.0.1:{port}")
    return process


# -- measurement 1: cold connect vs raw start --------------------------------------------


def raw_start(setup: Setup) -> tuple[float, float]:
    """Spawn postgres, poll ``postmaster.pid`` for ready, connect + ``SELECT 1``; stop it.

    Returns (start -> first row ms, fast shutdown ms). Polling the pid file (not connect
    attempts, which make the postmaster fork a child each) is the fastest honest readiness
    check, the same one pgwake uses.
    """
    info = conninfo(host=str(setup.raw_run), port=COMPUTE_PORT)
    log_path = setup.raw_data.parent / "postgres.log"
    started = time.perf_counter()
    process = setup.procs.start(
        "raw postgres",
        [
            str(setup.bindir / "postgres"),
            "-D",
            str(setup.raw_data),
            "-k",
            str(setup.raw_run),
            "-p",
            str(COMPUTE_PORT),
        ],
        log_path=log_path,
        stop_signal=signal.SIGINT,
        grace=30.0,
        user=setup.user,
        env={"PATH": f"{setup.bindir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "TZ": "UTC"},
        cwd=setup.raw_data.parent,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            lines = read_postmaster_pid(setup.raw_data)
            if lines is not None and len(lines) >= 8 and lines[7].strip() == "ready":
                try:
                    conn = connect(info)
                except BenchError:
                    if time.monotonic() > deadline:
                        raise
                else:
                    try:
                        select_one(conn)
                        elapsed = (time.perf_counter() - started) * 1000
                    finally:
                        conn.finish()
                    break
            if process.poll() is not None:
                raise BenchError(f"raw postgres exited ({process.returncode}):\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError("raw postgres did not become ready in 30 s")
            time.sleep(0.001)
    finally:
        stop_started = time.perf_counter()
        setup.procs.stop(process)
        stop_ms = (time.perf_counter() - stop_started) * 1000
    return elapsed, stop_ms


@dataclass
class ColdResults:
    cold: list[float] = field(default_factory=list)
    cold_tls: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    raw_stop: list[float] = field(default_factory=list)


def measure_cold(setup: Setup, runs: int, settle: float) -> ColdResults:
    plain = setup.via_pgwake(COLD_ENDPOINT)
    tls = setup.via_pgwake(COLD_ENDPOINT, sslmode="require")

    def cold_plain(results: ColdResults) -> None:
        results.cold.append(timed_connect_select(plain))

    def cold_tls(results: ColdResults) -> None:
        results.cold_tls.append(timed_connect_select(tls))

    def raw(results: ColdResults) -> None:
        elapsed, stop_ms = raw_start(setup)
        results.raw.append(elapsed)
        results.raw_stop.append(stop_ms)

    steps = [cold_plain, raw, cold_tls]
    # One unmeasured round first: page cache, pgwake's first-wake code paths.
    warmup = ColdResults()
    for step in steps:
        setup.wait_suspended(COLD_ENDPOINT)
        time.sleep(settle)
        step(warmup)
    results = ColdResults()
    for run in range(runs):
        # Rotate the order so neither side always runs right after the other.
        shift = run % len(steps)
        for step in steps[shift:] + steps[:shift]:
            setup.wait_suspended(COLD_ENDPOINT)
            time.sleep(settle)
            step(results)
        log(
            f"cold run {run + 1}/{runs}: pgwake {results.cold[-1]:.1f} ms, "
            f"tls {results.cold_tls[-1]:.1f} ms, raw {results.raw[-1]:.1f} ms"
        )
    return results


# -- measurement 2: warm connect ---------------------------------------------------------


@dataclass
class WarmResults:
    pgwake: list[float] = field(default_factory=list)
    pgwake_tls: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)


def measure_warm(setup: Setup, runs: int) -> WarmResults:
    socket_dir = setup.compute_socket_dir(WARM_ENDPOINT)
    targets = {
        "pgwake": setup.via_pgwake(WARM_ENDPOINT),
        "direct": conninfo(host=str(socket_dir), port=COMPUTE_PORT),
        "pgwake_tls": setup.via_pgwake(WARM_ENDPOINT, sslmode="require"),
    }
    for info in targets.values():  # warm-up, unmeasured
        for _ in range(10):
            timed_connect_select_close(info)
    results = WarmResults()
    names = list(targets)
    for run in range(runs):
        shift = run % len(names)
        for name in names[shift:] + names[:shift]:
            getattr(results, name).append(timed_connect_select_close(targets[name]))
    return results


# -- measurement 3: pgbench --------------------------------------------------------------

# "without initial connection time" (pgbench 14+) or "excluding ..." (older); with -C,
# "including reconnection times" (connecting is what -C measures).
_TPS = re.compile(
    r"^tps = ([0-9.]+) \((?:without initial connection time|excluding|including reconnection)",
    re.M,
)


def pgbench_env(host: str, port: int, options: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PGHOST": host,
        "PGPORT": str(port),
        "PGUSER": ROLE,
        "PGPASSWORD": PASSWORD,
        "PGDATABASE": DATABASE,
        "PGSSLMODE": "disable",
        "PGGSSENCMODE": "disable",
    }
    env.pop("PGOPTIONS", None)
    if options:
        env["PGOPTIONS"] = options
    return env


def run_pgbench(args: list[str], env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        ["pgbench", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"pgbench {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def measure_pgbench(
    setup: Setup,
    seconds: int,
    rounds: int,
    clients: int,
    threads: int,
    extra: list[str] | None = None,
    *,
    initialise: bool = True,
) -> dict[str, list[float]]:
    """TPS per round of ``pgbench -S`` (plus ``extra``, e.g. ``-C``) through pgwake,
    directly and through PgBouncer, rounds alternated and their order rotated."""
    socket_dir = setup.compute_socket_dir(WARM_ENDPOINT)
    envs = {
        "pgwake": pgbench_env("127.0.0.1", setup.proxy_port, f"endpoint={WARM_ENDPOINT}"),
        "direct": pgbench_env(str(socket_dir), COMPUTE_PORT),
        "pgbouncer": pgbench_env("127.0.0.1", setup.pgbouncer_port),
    }
    if initialise:
        log("pgbench -i -s 1 (direct)")
        run_pgbench(["-i", "-s", "1", "-q"], envs["direct"], timeout=300)
    base = ["-S", "-n", "-c", str(clients), "-j", str(threads), *(extra or [])]
    label = " ".join(["pgbench -S", *(extra or [])])
    for env in envs.values():  # warm-up: pools filled, caches hot
        run_pgbench([*base, "-T", "1"], env, timeout=60)
    tps: dict[str, list[float]] = {name: [] for name in envs}
    names = list(envs)
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            out = run_pgbench([*base, "-T", str(seconds)], envs[name], timeout=seconds + 120)
            match = _TPS.search(out)
            if match is None:
                raise BenchError(f"no tps line in pgbench output:\n{out}")
            tps[name].append(float(match.group(1)))
        log(
            f"{label} round {round_no + 1}/{rounds}: "
            + ", ".join(f"{name} {values[-1]:.0f}" for name, values in tps.items())
        )
    return tps


# -- report ------------------------------------------------------------------------------


def machine_info(bindir: Path) -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    pgbouncer = subprocess.run(
        [shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", "--version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "postgres": version,
        "pgbouncer": pgbouncer[0] if pgbouncer else "unknown",
        "libpq (client)": str(pq.version()),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**no**"


def summarise(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5):7.2f}  p90 {percentile(values, 0.9):7.2f}  "
        f"min {min(values):7.2f}  max {max(values):7.2f}  (n={len(values)})"
    )


def report(
    info: dict[str, str],
    cold: ColdResults | None,
    warm: WarmResults | None,
    tps: dict[str, list[float]] | None,
    params: dict[str, Any],
    wake_ms: float | None,
) -> tuple[str, dict[str, Any]]:
    out: list[str] = []
    data: dict[str, Any] = {"machine": info, "params": params}
    out.append("## Machine")
    out += [f"- {key}: {value}" for key, value in info.items()]
    out.append("")
    out.append("## Details (ms unless noted)")
    rows: list[tuple[str, str, str, str, str, str]] = []
    if cold is not None:
        out.append(f"cold connect via pgwake, sslmode=disable : {summarise(cold.cold)}")
        out.append(f"cold connect via pgwake, sslmode=require : {summarise(cold.cold_tls)}")
        out.append(f"raw postgres start -> first SELECT 1    : {summarise(cold.raw)}")
        out.append(f"raw postgres fast shutdown (SIGINT)      : {summarise(cold.raw_stop)}")
        if wake_ms is not None:
            out.append(f"pgwake's own mean wake time (metrics)    : {wake_ms:.2f}")
        c50, c90 = percentile(cold.cold, 0.5), percentile(cold.cold, 0.9)
        t50 = percentile(cold.cold_tls, 0.5)
        r50, r90 = percentile(cold.raw, 0.5), percentile(cold.raw, 0.9)
        ratio = c50 / r50
        rows.append(
            (
                "cold connect p50, ms (vs raw postgres start)",
                fmt(c50),
                fmt(r50),
                fmt(ratio, 2),
                f"p50 <= {COLD_P50_TARGET_MS:g} ms, ratio <= {COLD_RATIO_TARGET:g}",
                yes_no(c50 <= COLD_P50_TARGET_MS and ratio <= COLD_RATIO_TARGET),
            )
        )
        rows.append(("cold connect p90, ms", fmt(c90), fmt(r90), fmt(c90 / r90, 2), "(info)", "-"))
        rows.append(
            (
                "cold connect p50 with TLS (sslmode=require), ms",
                fmt(t50),
                fmt(r50),
                fmt(t50 / r50, 2),
                "(info; baseline has no TLS)",
                "-",
            )
        )
        data["cold"] = vars(cold)
    if warm is not None:
        out.append(f"warm connect+SELECT 1+close via pgwake   : {summarise(warm.pgwake)}")
        out.append(f"warm ... via pgwake, sslmode=require     : {summarise(warm.pgwake_tls)}")
        out.append(f"warm ... direct to the compute's socket  : {summarise(warm.direct)}")
        w50, d50 = statistics.median(warm.pgwake), statistics.median(warm.direct)
        wt50 = statistics.median(warm.pgwake_tls)
        rows.append(
            (
                "warm connect+SELECT 1+close median, ms (vs direct unix socket)",
                fmt(w50, 2),
                fmt(d50, 2),
                fmt(w50 / d50, 2),
                f"ratio <= {WARM_RATIO_TARGET:g}",
                yes_no(w50 / d50 <= WARM_RATIO_TARGET),
            )
        )
        rows.append(
            (
                "warm connect with TLS median, ms (vs direct, no TLS)",
                fmt(wt50, 2),
                fmt(d50, 2),
                fmt(wt50 / d50, 2),
                "(info)",
                "-",
            )
        )
        data["warm"] = vars(warm)
    if tps is not None:
        for name, values in tps.items():
            rounds = ", ".join(f"{v:.0f}" for v in values)
            out.append(
                f"pgbench -S TPS {name:<9}: median {statistics.median(values):9.1f}  [{rounds}]"
            )
        med = {name: statistics.median(values) for name, values in tps.items()}
        label = f"pgbench -S -c {params['clients']} -j {params['threads']} TPS"
        rows.append(
            (
                f"{label} (vs direct)",
                fmt(med["pgwake"], 0),
                fmt(med["direct"], 0),
                fmt(med["pgwake"] / med["direct"], 2),
                "(info)",
                "-",
            )
        )
        rows.append(
            (
                f"{label}: PgBouncer session mode (vs direct)",
                fmt(med["pgbouncer"], 0) + " (pgbouncer)",
                fmt(med["direct"], 0),
                fmt(med["pgbouncer"] / med["direct"], 2),
                "(info; budgeted: ~0.55-0.6)",
                "-",
            )
        )
        ratio = med["pgwake"] / med["pgbouncer"]
        rows.append(
            (
                f"{label} (vs PgBouncer)",
                fmt(med["pgwake"], 0),
                fmt(med["pgbouncer"], 0),
                fmt(ratio, 2),
                f"ratio >= {PGBENCH_VS_PGBOUNCER_TARGET:g}",
                yes_no(ratio >= PGBENCH_VS_PGBOUNCER_TARGET),
            )
        )
        data["pgbench_tps"] = tps
    out.append("")
    out.append("## Summary")
    header = ("metric", "pgwake", "baseline", "ratio", "target", "met?")
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---"] * len(header)) + "|")
    out += ["| " + " | ".join(row) + " |" for row in rows]
    data["summary"] = [dict(zip(header, row, strict=True)) for row in rows]
    return "\n".join(out), data


def mean_wake_ms(metrics_text: str) -> float | None:
    # Summed over the backend label (the bench runs local computes only).
    total = summed_samples(metrics_text, "pgwake_wake_duration_seconds_sum")
    count = summed_samples(metrics_text, "pgwake_wake_duration_seconds_count")
    if not count:
        return None
    return total / count * 1000


def summed_samples(metrics_text: str, name: str) -> float:
    pattern = rf"^{name}(?:\{{[^}}]*\}})? (\S+)$"
    return sum(float(value) for value in re.findall(pattern, metrics_text, re.M))


# -- main --------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="cold-connect runs (default 30)")
    parser.add_argument(
        "--warm-runs", type=int, default=200, help="warm-connect runs per target (default 200)"
    )
    parser.add_argument(
        "--pgbench-seconds", type=int, default=10, help="-T of each pgbench run (default 10)"
    )
    parser.add_argument(
        "--pgbench-rounds", type=int, default=3, help="alternating pgbench rounds (default 3)"
    )
    parser.add_argument("--clients", type=int, default=8, help="pgbench -c (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.1,
        help="seconds to wait after a suspend before a cold measurement (default 0.1)",
    )
    parser.add_argument(
        "--pg-bindir",
        type=Path,
        default=DEFAULT_BINDIR if DEFAULT_BINDIR.is_dir() else None,
        help=f"Postgres binaries for pgwake and the raw baseline (default {DEFAULT_BINDIR})",
    )
    parser.add_argument("--skip", action="append", default=[], choices=["cold", "warm", "pgbench"])
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, so the ``finally`` cleanup runs.

    SIGINT is set explicitly: a shell starts background jobs with it ignored.
    """

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def _installed_pgwake() -> Path | None:
    """Where the ``pgwake`` package this Python imports really lives (an editable install
    links to a checkout's proxy/)."""
    spec = importlib.util.find_spec("pgwake")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent


def preflight(bindir: Path | None, *, need_pgbouncer: bool = True) -> str | None:
    """None when this machine can run the bench; otherwise what is missing, and how to
    get it."""
    if os.geteuid() != 0:
        return "the bench runs as root (computes and PgBouncer run as user pgwake)"
    installed = _installed_pgwake()
    if installed != REPO_ROOT / "proxy":
        return (
            f"the pgwake this Python imports is {installed}, not this checkout's proxy/; "
            "install it with bench/install.sh"
        )
    if bindir is None or not (bindir / "postgres").is_file():
        return f"no postgres in {bindir}; pass --pg-bindir (Debian: apt-get install postgresql)"
    if shutil.which("pgbench") is None:
        return "pgbench is not on PATH (Debian: apt-get install postgresql-client)"
    if (
        need_pgbouncer
        and shutil.which("pgbouncer") is None
        and not Path("/usr/sbin/pgbouncer").is_file()
    ):
        return "PgBouncer is missing: apt-get install pgbouncer (or run bench/install.sh)"
    return None


def compute_user() -> pwd.struct_passwd:
    """The OS user computes run as; made the way ``pgwake serve`` makes it when missing."""
    try:
        return pwd.getpwnam(COMPUTE_USER)
    except KeyError:
        from pgwake.compute.osuser import resolve_compute_user  # noqa: PLC0415

        resolve_compute_user(COMPUTE_USER)
        return pwd.getpwnam(COMPUTE_USER)


@contextlib.contextmanager
def environment(bindir: Path, *, keep: bool = False) -> Iterator[Setup]:
    """A fresh work directory under /tmp and the bookkeeping of what runs in it.

    On the way out everything started is stopped (pgwake first suspends its computes),
    with Ctrl-C and SIGTERM ignored meanwhile; the directory is removed unless ``keep``
    or the block failed (its logs tell why), but kept for a Ctrl-C only with ``keep``.
    """
    user = compute_user()
    workdir = Path(tempfile.mkdtemp(prefix="pgwake-bench-", dir="/tmp"))
    workdir.chmod(0o711)
    setup = Setup(workdir, bindir, user, Processes())
    log(f"work directory {workdir}")
    failed = False
    try:
        yield setup
    except KeyboardInterrupt:
        raise
    except BaseException:
        failed = True
        raise
    finally:
        # No second Ctrl-C or SIGTERM may cut the cleanup short.
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            log("stopping everything started here")
            setup.procs.stop_all()
            stop_stray_postmasters(setup.all_data_dirs())
            if keep or failed:
                log(f"work directory kept: {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            for sig, action in previous.items():
                signal.signal(sig, action)


def prepare_core(setup: Setup, serve_args: list[str] | None = None) -> None:
    """Create the warm and cold endpoints, start pgwake, give the cold endpoint its
    first start (and let it suspend) before copying it for the raw baseline, and leave
    the warm endpoint running."""
    start_pgwake(setup, serve_args)
    create_endpoints(setup)
    # A new endpoint's role gets its password on the first start: make that happen
    # (and let it suspend) before copying the data dir for the raw runs.
    timed_connect_select(setup.via_pgwake(COLD_ENDPOINT))
    setup.wait_suspended(COLD_ENDPOINT)
    make_raw_copy(setup)
    timed_connect_select(setup.via_pgwake(WARM_ENDPOINT))  # wake the warm endpoint


def main() -> int:
    args = _parse_args()
    problem = preflight(args.pg_bindir, need_pgbouncer="pgbench" not in args.skip)
    if problem:
        print(problem)
        return 2
    info = machine_info(args.pg_bindir)
    cold = warm = None
    tps = None
    wake_ms = None
    metrics_errors = 0
    with interruptible():
        try:
            with environment(args.pg_bindir, keep=args.keep) as setup:
                prepare_core(setup)
                if "cold" not in args.skip:
                    log(f"cold connect: {args.runs} runs")
                    cold = measure_cold(setup, args.runs, args.settle)
                    wake_ms = mean_wake_ms(setup.metrics_text())
                if "warm" not in args.skip:
                    log(f"warm connect: {args.warm_runs} alternated runs")
                    warm = measure_warm(setup, args.warm_runs)
                if "pgbench" not in args.skip:
                    start_pgbouncer(
                        setup,
                        setup.compute_socket_dir(WARM_ENDPOINT),
                        pool_size=args.clients + 4,
                        secret=setup.verifier(WARM_ENDPOINT),
                    )
                    tps = measure_pgbench(
                        setup, args.pgbench_seconds, args.pgbench_rounds, args.clients, args.threads
                    )
                metrics_errors = setup.metrics_errors
        except KeyboardInterrupt:
            log("interrupted; cleaned up")
            return 1
        except BenchError as exc:
            log(f"FAILED: {exc}")
            return 1
    params = {
        "runs": args.runs,
        "warm_runs": args.warm_runs,
        "pgbench_seconds": args.pgbench_seconds,
        "pgbench_rounds": args.pgbench_rounds,
        "clients": args.clients,
        "threads": args.threads,
    }
    info["loadavg at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if metrics_errors:
        info["GET /metrics failures (retried)"] = str(metrics_errors)
    text, data = report(info, cold, warm, tps, params, wake_ms)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
