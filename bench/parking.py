#!/usr/bin/env python3
"""Parking: what a parked session costs pgwake, how fast it comes back, an ORM pool
across suspends, and what the relay's message tracking costs ``pgbench -S``.

    python bench/parking.py [--sessions 1000] [--endpoints 20] [--runs 30] [--cycles 20]
                            [--pgbench-seconds 10] [--pgbench-rounds 3] [--json FILE]

When an endpoint has run nothing for its ``idle_timeout``, pgwake parks each idle
client session (its settings and prepared statements captured, its backend ended, the
client's socket kept open) and suspends the compute; the client's next message wakes the
compute, logs in again, restores the session and forwards the message. Measured side by
side in one work directory (as root, loopback only, everything stopped and removed at the
end, like ``core.py``):

1. **memory**: ``--sessions`` asyncpg sessions (each ran ``SELECT 1``) spread over
   ``--endpoints`` endpoints with ``idle_timeout`` 1 s, through a freshly started
   ``pgwake serve``, until every endpoint is suspended and
   ``pgwake_client_sessions{state="parked"}`` sums to all of them: no compute process
   left, pgwake's VmRSS and USS per parked session over its idle baseline (target
   <= 4 KiB). Beside it, the same count on endpoints created with ``park_sessions:
   false`` (relayed idle sessions, each with a backend), through another fresh pgwake;
2. **re-attach**: a libpq connection parked on a suspended endpoint sends ``SELECT 1``:
   time to the row, beside a cold connect (new connection + ``SELECT 1``) on the same
   suspended endpoint, runs interleaved (target: p50 <= cold p50 + 10 ms);
3. **ORM loop**: SQLAlchemy (psycopg driver), a ``QueuePool`` of 5 on an endpoint with
   ``idle_timeout`` 0.5 s; each cycle checks out the 5 connections, runs ``SELECT 1`` on
   each, returns them, then waits until the endpoint has suspended and the 5 are parked
   (target: no error, and a real suspend per cycle);
4. **pgbench**: ``pgbench -S`` through this checkout's pgwake (HEAD) and through the
   last commit before parking (``BASE_COMMIT``, its ``proxy/`` exported with ``git
   archive`` and imported as ``pgwake`` through a symlink first on ``PYTHONPATH``), each
   with its own state dir and an equivalent compute, rounds alternated, plus the HEAD
   compute's unix socket directly (target: HEAD within 5% of the base).

``run_parking`` does the same from Python (``bench/run.py``'s ``parking`` part).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import core, scale

__all__ = [
    "BASE_COMMIT",
    "PARKED_KIB_TARGET",
    "PGBENCH_TOLERANCE",
    "REATTACH_MARGIN_MS",
    "MemoryResult",
    "OrmResult",
    "ParkingResult",
    "ReattachResult",
    "run_parking",
    "state_dir_processes",
]

#: The last commit before parking (and the relay's message tracking).
BASE_COMMIT = "f86c4d1"
#: Idle timeouts: the memory part's endpoints, the re-attach endpoint, the ORM endpoint.
MEMORY_IDLE_TIMEOUT = 1.0
REATTACH_IDLE_TIMEOUT = 0.3
ORM_IDLE_TIMEOUT = 0.5
ORM_POOL_SIZE = 5
#: Targets.
PARKED_KIB_TARGET = 4.0
REATTACH_MARGIN_MS = 10.0
PGBENCH_TOLERANCE = 0.05
#: Endpoint names.
PARKED_PREFIX = "park"
RELAYED_PREFIX = "relay"
REATTACH_ENDPOINT = "reattach"
ORM_ENDPOINT = "orm"
PGBENCH_ENDPOINT = core.WARM_ENDPOINT
PGBENCH_NAMES = ("head", "base", "direct")

_REATTACHED_LOG = re.compile(r"event=reattached .*?\bms=(\d+)")
_PARKED_LOG = re.compile(r"event=parked conn=\S+ endpoint=(\S+)")
_SUSPENDED_LOG = re.compile(r"event=transition endpoint=(\S+) from=\S+ to=suspended ")


# -- helpers -------------------------------------------------------------------------------


def _by_endpoint(metrics_text: str, name: str, label: str, value: str) -> dict[str, float]:
    """``name{endpoint=E,<label>=value}`` samples by endpoint."""
    pattern = re.compile(
        rf'^{name}\{{endpoint="([^"]+)",{label}="{re.escape(value)}"\}} ([0-9.e+-]+)$', re.M
    )
    return {m.group(1): float(m.group(2)) for m in pattern.finditer(metrics_text)}


def parked_counts(metrics_text: str) -> dict[str, float]:
    return _by_endpoint(metrics_text, "pgwake_client_sessions", "state", "parked")


def endpoint_states(metrics_text: str) -> dict[str, str]:
    pattern = re.compile(r'^pgwake_endpoint_state\{endpoint="([^"]+)",state="(\w+)"\} 1\.0$', re.M)
    return {m.group(1): m.group(2) for m in pattern.finditer(metrics_text)}


def wave_seen(log_path: Path, offset: int) -> tuple[dict[str, int], set[str]]:
    """In pgwake's log from ``offset`` on: sessions parked by endpoint, and the endpoints
    that suspended."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    parked: dict[str, int] = {}
    for match in _PARKED_LOG.finditer(text):
        parked[match.group(1)] = parked.get(match.group(1), 0) + 1
    return parked, {match.group(1) for match in _SUSPENDED_LOG.finditer(text)}


def state_dir_processes(state_dir: Path) -> list[int]:
    """Pids of every process working in ``state_dir`` (a compute's postmaster and its
    children all run with their data dir as working directory)."""
    root = str(state_dir.resolve())
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd").startswith(root + "/"):
                found.append(int(entry.name))
    return found


def running_computes(setup: core.Setup, names: list[str]) -> list[str]:
    """The endpoints among ``names`` whose data dir has a ``postmaster.pid``."""
    return [n for n in names if core.read_postmaster_pid(setup.endpoint_data(n)) is not None]


def _restart_pgwake(setup: core.Setup, serve_args: list[str]) -> None:
    if setup.pgwake_process is not None:
        setup.procs.stop(setup.pgwake_process)
        setup.pgwake_process = None
    core.start_pgwake(setup, serve_args)


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


# -- 1. memory -----------------------------------------------------------------------------


@dataclass
class MemoryResult:
    """``sessions`` idle sessions over ``endpoints`` endpoints through a fresh pgwake."""

    mode: str  # "parked" or "relayed"
    sessions: int
    endpoints: int
    idle: scale.MemorySample | None = None
    #: Parked mode: every session open and still on its backend (the endpoints' idle
    #: timeout long), right before they are let park.
    attached: scale.MemorySample | None = None
    held: scale.MemorySample | None = None
    after_close: scale.MemorySample | None = None
    connect_seconds: float = 0.0
    #: Seconds from the last session's ``SELECT 1`` until all were parked and every
    #: compute stopped (parked mode).
    settle_seconds: float = 0.0
    #: ``pgwake_client_sessions{state="parked"}`` summed, with the sessions held.
    parked_gauge: float = 0.0
    #: Endpoint states from the metrics, with the sessions held.
    states: dict[str, int] = field(default_factory=dict)
    #: Processes working in the state dir (computes) and data dirs with a postmaster.pid.
    compute_processes: int = 0
    running_computes: int = 0
    errors: list[str] = field(default_factory=list)

    def per_session_kib(self, measure: str) -> float:
        assert self.idle is not None
        assert self.held is not None
        before = getattr(self.idle, f"{measure}_kib")
        after = getattr(self.held, f"{measure}_kib")
        return float(after - before) / self.sessions


async def _open_sessions(
    targets: list[dict[str, Any]], total: int, concurrency: int, result: MemoryResult
) -> list[Any]:
    conns: list[Any] = []
    started = time.perf_counter()
    await scale.open_sessions(
        targets, range(total), asyncio.Semaphore(concurrency), conns, result.errors
    )
    result.connect_seconds = time.perf_counter() - started
    return conns


async def _hold(
    setup: core.Setup, names: list[str], total: int, result: MemoryResult, wait: float
) -> None:
    assert setup.pgwake_process is not None
    pid = setup.pgwake_process.pid
    targets = [scale.asyncpg_kwargs(setup, name) for name in names]
    await asyncio.sleep(1)
    result.idle = scale.memory(pid, 0)
    conns = await _open_sessions(targets, total, 32, result)
    try:
        if result.errors:
            raise core.BenchError(
                f"{result.mode}: {len(result.errors)} of {total} sessions failed, first:"
                f" {result.errors[0]}"
            )
        started = time.monotonic()
        if result.mode == "parked":
            await asyncio.sleep(1)
            result.attached = scale.memory(pid, len(conns))
            log_path = setup.workdir / "pgwake-serve.log"
            offset = log_path.stat().st_size
            api = core.api(setup)
            for name in names:  # now let them suspend, and park their sessions
                await asyncio.to_thread(
                    api.update_endpoint, name, idle_timeout_seconds=MEMORY_IDLE_TIMEOUT
                )
            started = time.monotonic()
            deadline = started + wait
            while True:
                # pgwake's log, not its /metrics: a scrape (every series' objects and the
                # text, short-lived) during the wave raises the heap pgwake keeps, and
                # with it the figure measured (~0.2 KiB per session at 2 scrapes a
                # second). The observer must not weigh on what it measures.
                by_endpoint, suspended = await asyncio.to_thread(wave_seen, log_path, offset)
                parked = sum(by_endpoint.get(n, 0) for n in names)
                down = all(n in suspended for n in names)
                if parked >= total and down and not running_computes(setup, names):
                    break
                if time.monotonic() > deadline:
                    raise core.BenchError(
                        f"after {wait:g} s only {parked} of {total} sessions parked,"
                        f" {len(suspended & set(names))} of {len(names)} endpoints suspended"
                    )
                await asyncio.sleep(0.5)
        result.settle_seconds = time.monotonic() - started
        await asyncio.sleep(1)  # buffers and logs settle before the sample
        result.held = scale.memory(pid, len(conns))
        text = await asyncio.to_thread(setup.metrics_text)
        result.parked_gauge = sum(parked_counts(text).get(n, 0.0) for n in names)
        states = endpoint_states(text)
        for name in names:
            state = states.get(name, "none")
            result.states[state] = result.states.get(state, 0) + 1
        result.compute_processes = len(state_dir_processes(setup.state_dir))
        result.running_computes = len(running_computes(setup, names))
        attached = f" (attached {result.attached.rss_kib / 1024:.1f})" if result.attached else ""
        core.log(
            f"{result.mode}: {len(conns)} sessions, pgwake RSS"
            f" {result.idle.rss_kib / 1024:.1f} -> {result.held.rss_kib / 1024:.1f} MiB"
            f"{attached}"
            f" ({result.per_session_kib('rss'):.2f} KiB per session, USS"
            f" {result.per_session_kib('uss'):.2f}); parked gauge {result.parked_gauge:.0f},"
            f" states {result.states}, compute processes {result.compute_processes}"
        )
    finally:
        await asyncio.gather(*(c.close(timeout=30) for c in conns), return_exceptions=True)
    await asyncio.sleep(2)
    result.after_close = scale.memory(pid, 0)


async def _park_once(setup: core.Setup, names: list[str]) -> None:
    """Warm-up: one session per endpoint, parked, then closed."""
    conns = [await asyncpg.connect(**scale.asyncpg_kwargs(setup, n), timeout=60) for n in names]
    try:
        for conn in conns:
            await conn.fetchval("SELECT 1")
        deadline = time.monotonic() + 60
        while sum(parked_counts(await asyncio.to_thread(setup.metrics_text)).values()) < len(names):
            if time.monotonic() > deadline:
                raise core.BenchError("warm-up sessions were not parked in 60 s")
            await asyncio.sleep(0.1)
    finally:
        await asyncio.gather(*(c.close(timeout=30) for c in conns), return_exceptions=True)


def measure_memory(
    setup: core.Setup, sessions: int, endpoints: int, serve_args: list[str]
) -> dict[str, MemoryResult]:
    """Parked, then relayed (park_sessions false), each through a freshly started pgwake."""
    parked = [f"{PARKED_PREFIX}{i:02d}" for i in range(endpoints)]
    relayed = [f"{RELAYED_PREFIX}{i:02d}" for i in range(endpoints)]
    api = core.api(setup)
    for name in parked:
        core.create_endpoint(setup, name, MEMORY_IDLE_TIMEOUT)
    for name in relayed:
        api.create_endpoint(
            name,
            password=core.PASSWORD,
            idle_timeout_seconds=MEMORY_IDLE_TIMEOUT,
            park_sessions=False,
        )
    needed = 2 * sessions + 1000
    if (limit := scale.raise_fd_limit()) < needed:
        raise core.BenchError(f"{sessions} sessions need {needed} open files, the limit is {limit}")
    results: dict[str, MemoryResult] = {}
    for mode, names in (("parked", parked), ("relayed", relayed)):
        # A fresh pgwake for each, so neither is charged for the other's heap.
        _restart_pgwake(setup, serve_args)
        for name in names:  # code paths warm (and the role's first login done)
            core.timed_connect_select_close(setup.via_pgwake(name))
        if mode == "parked":
            scale.run_async(functools.partial(_park_once, setup, names))
            for name in names:
                setup.wait_suspended(name, timeout=60)
                # Until every session is open: then the idle timeout goes back to
                # MEMORY_IDLE_TIMEOUT (``_hold``), and they all park at once.
                core.api(setup).update_endpoint(name, idle_timeout_seconds=600.0)
        result = MemoryResult(mode, sessions, endpoints)
        results[mode] = result
        scale.run_async(
            functools.partial(_hold, setup, names, sessions, result, wait=120 + sessions / 10)
        )
    return results


# -- 2. re-attach latency ------------------------------------------------------------------


@dataclass
class ReattachResult:
    #: ms from sending ``SELECT 1`` on the parked connection to its row.
    reattach: list[float] = field(default_factory=list)
    #: ms from a new connection's start to its ``SELECT 1`` row, endpoint suspended.
    cold: list[float] = field(default_factory=list)
    #: pgwake's own figure per re-attach (its log's ``event=reattached ... ms=``).
    server_ms: list[float] = field(default_factory=list)
    #: ``pgwake_reattaches_total`` of the endpoint by outcome, at the end.
    outcomes: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return statistics.median(self.reattach) <= statistics.median(self.cold) + (
            REATTACH_MARGIN_MS
        )


def _wait_parked(setup: core.Setup, endpoint: str, count: int, timeout: float = 30.0) -> None:
    def parked() -> bool:
        text = setup.metrics_text()
        return (
            parked_counts(text).get(endpoint, 0.0) >= count
            and endpoint_states(text).get(endpoint) == "suspended"
            and core.read_postmaster_pid(setup.endpoint_data(endpoint)) is None
        )

    core.wait_for(parked, timeout, f"{count} parked session(s) on {endpoint}", step=0.02)


def measure_reattach(setup: core.Setup, runs: int, settle: float = 0.1) -> ReattachResult:
    core.create_endpoint(setup, REATTACH_ENDPOINT, REATTACH_IDLE_TIMEOUT)
    info = setup.via_pgwake(REATTACH_ENDPOINT)
    log_path = setup.workdir / "pgwake-serve.log"
    conn = core.connect(info)
    try:
        core.select_one(conn)
        result = ReattachResult()

        def reattach(into: ReattachResult) -> None:
            _wait_parked(setup, REATTACH_ENDPOINT, 1)
            time.sleep(settle)
            started = time.perf_counter()
            core.select_one(conn)
            into.reattach.append((time.perf_counter() - started) * 1000)

        def cold(into: ReattachResult) -> None:
            setup.wait_suspended(REATTACH_ENDPOINT)
            time.sleep(settle)
            into.cold.append(core.timed_connect_select(info))

        steps = [reattach, cold]
        warmup = ReattachResult()
        for step in steps:
            step(warmup)
        seen = len(_REATTACHED_LOG.findall(log_path.read_text(errors="replace")))
        for run in range(runs):
            shift = run % len(steps)
            for step in steps[shift:] + steps[:shift]:
                step(result)
            core.log(
                f"re-attach run {run + 1}/{runs}: re-attach {result.reattach[-1]:.1f} ms,"
                f" cold connect {result.cold[-1]:.1f} ms"
            )
        result.server_ms = [
            float(ms) for ms in _REATTACHED_LOG.findall(log_path.read_text(errors="replace"))
        ][seen:]
        text = setup.metrics_text()
        for outcome in ("ok", "wake_failed", "restore_failed", "login_failed"):
            value = _by_endpoint(text, "pgwake_reattaches_total", "outcome", outcome)
            result.outcomes[outcome] = value.get(REATTACH_ENDPOINT, 0.0)
        return result
    finally:
        conn.finish()


# -- 3. an ORM loop ------------------------------------------------------------------------


@dataclass
class OrmResult:
    cycles: int
    pool_size: int
    idle_timeout: float
    #: Per cycle: ms for the pool's queries (the first re-attaches and wakes).
    query_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Deltas over the loop, from pgwake's metrics.
    idle_suspends: float = 0.0
    compute_starts: float = 0.0
    reattaches_ok: float = 0.0
    reattaches_failed: float = 0.0
    parks: float = 0.0
    #: The pool's connections at the end (SQLAlchemy's view).
    pool_status: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and self.idle_suspends >= self.cycles


def _orm_counters(setup: core.Setup) -> dict[str, float]:
    text = setup.metrics_text()
    e = ORM_ENDPOINT
    failed = sum(
        _by_endpoint(text, "pgwake_reattaches_total", "outcome", o).get(e, 0.0)
        for o in ("wake_failed", "restore_failed", "login_failed")
    )
    return {
        "suspends": _by_endpoint(text, "pgwake_suspends_total", "reason", "idle").get(e, 0.0),
        "starts": _by_endpoint(text, "pgwake_wakes_total", "outcome", "success").get(e, 0.0),
        "ok": _by_endpoint(text, "pgwake_reattaches_total", "outcome", "ok").get(e, 0.0),
        "failed": failed,
        "parks": _by_endpoint(text, "pgwake_parks_total", "outcome", "parked").get(e, 0.0),
    }


def measure_orm(setup: core.Setup, cycles: int) -> OrmResult:
    import sqlalchemy  # noqa: PLC0415 (only this part needs it)

    core.create_endpoint(setup, ORM_ENDPOINT, ORM_IDLE_TIMEOUT)
    engine = sqlalchemy.create_engine(
        f"postgresql+psycopg://{core.ROLE}:{core.PASSWORD}@127.0.0.1:{setup.proxy_port}"
        f"/{core.DATABASE}",
        connect_args={
            "options": f"endpoint={ORM_ENDPOINT}",
            "sslmode": "disable",
            "gssencmode": "disable",
            "connect_timeout": 10,
        },
        poolclass=sqlalchemy.QueuePool,
        pool_size=ORM_POOL_SIZE,
        max_overflow=0,
    )
    result = OrmResult(cycles, ORM_POOL_SIZE, ORM_IDLE_TIMEOUT)
    query = sqlalchemy.text("SELECT 1")
    try:
        before = _orm_counters(setup)
        for cycle in range(cycles):
            started = time.perf_counter()
            try:
                with contextlib.ExitStack() as stack:
                    conns = [stack.enter_context(engine.connect()) for _ in range(ORM_POOL_SIZE)]
                    for conn in conns:
                        if conn.execute(query).scalar_one() != 1:
                            raise core.BenchError("SELECT 1 did not return 1")
                result.query_ms.append((time.perf_counter() - started) * 1000)
            except Exception as exc:
                result.errors.append(f"cycle {cycle + 1}: {type(exc).__name__}: {exc}")
                core.log(f"orm cycle {cycle + 1}: {type(exc).__name__}: {exc}")
            # "A query every ~2 x idle_timeout": wait for the suspend (all 5 parked), then
            # a margin, instead of a fixed sleep.
            _wait_parked(setup, ORM_ENDPOINT, ORM_POOL_SIZE)
            time.sleep(ORM_IDLE_TIMEOUT / 5)
            if result.query_ms:
                core.log(f"orm cycle {cycle + 1}/{cycles}: {result.query_ms[-1]:.1f} ms")
        after = _orm_counters(setup)
        result.idle_suspends = after["suspends"] - before["suspends"]
        result.compute_starts = after["starts"] - before["starts"]
        result.reattaches_ok = after["ok"] - before["ok"]
        result.reattaches_failed = after["failed"] - before["failed"]
        result.parks = after["parks"] - before["parks"]
        result.pool_status = engine.pool.status()
    finally:
        engine.dispose()
    return result


# -- 4. pgbench: HEAD vs the commit before parking -----------------------------------------


@dataclass
class BaseSetup(core.Setup):
    """A ``core.Setup`` whose pgwake is ``BASE_COMMIT``'s: its ``proxy/`` exported under
    ``source`` and imported as ``pgwake`` through ``shim/pgwake`` (a symlink), first on
    ``PYTHONPATH`` (before the editable install's path entry)."""

    source: Path = Path()
    shim: Path = Path()

    def pgwake_env(self) -> dict[str, str]:
        env = super().pgwake_env()
        env["PYTHONPATH"] = os.pathsep.join([str(self.shim), str(self.source)])
        return env


def export_base(workdir: Path, commit: str = BASE_COMMIT) -> tuple[Path, Path]:
    """``git archive`` of ``commit`` into ``workdir/src`` and the ``shim/pgwake`` link;
    returns (source, shim). No worktree is registered, so nothing is left to prune."""
    source, shim = workdir / "src", workdir / "shim"
    source.mkdir(parents=True)
    shim.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(core.REPO_ROOT), "archive", commit, "proxy"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise core.BenchError(f"git archive {commit} failed: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    (shim / "pgwake").symlink_to(source / "proxy")
    return source, shim


def _imported_from(env: dict[str, str], cwd: Path) -> Path:
    out = subprocess.run(
        [sys.executable, "-c", "import pgwake; print(pgwake.__file__)"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip()).resolve()


@dataclass
class PgbenchResult:
    tps: dict[str, list[float]] = field(default_factory=dict)
    base_commit: str = BASE_COMMIT
    #: Where each pgwake process imported ``pgwake`` from.
    imported: dict[str, str] = field(default_factory=dict)

    @property
    def ratios(self) -> list[float]:
        return [h / b for h, b in zip(self.tps["head"], self.tps["base"], strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def ok(self) -> bool:
        return self.ratio >= 1 - PGBENCH_TOLERANCE


def measure_pgbench(
    setup: core.Setup,
    seconds: int,
    rounds: int,
    clients: int = 8,
    threads: int = 2,
    serve_args: list[str] | None = None,
) -> PgbenchResult:
    """HEAD's pgwake (``setup``'s, running) and the base's (its own state dir and pgwake,
    started here), each on an endpoint of its own; HEAD and the base back to back in each
    round (which goes first alternates), then the HEAD compute's socket directly."""
    base_dir = setup.workdir / "base"
    base_dir.mkdir(mode=0o711)
    source, shim = export_base(base_dir)
    base = BaseSetup(base_dir, setup.bindir, setup.user, setup.procs, source=source, shim=shim)
    result = PgbenchResult()
    result.imported["head"] = str(_imported_from(setup.pgwake_env(), setup.workdir))
    result.imported["base"] = str(_imported_from(base.pgwake_env(), base_dir))
    if not result.imported["base"].startswith(str(source.resolve())):
        raise core.BenchError(f"the base pgwake imports {result.imported['base']}")
    try:
        core.start_pgwake(base, serve_args)
        if "pgwake_client_sessions" in base.metrics_text():
            raise core.BenchError("the base pgwake exports parking metrics: not the base")
        for which in (setup, base):
            core.create_endpoint(which, PGBENCH_ENDPOINT, 600.0)
            core.timed_connect_select(which.via_pgwake(PGBENCH_ENDPOINT))
            socket_dir = str(which.compute_socket_dir(PGBENCH_ENDPOINT))
            core.run_pgbench(
                ["-i", "-s", "1", "-q"],
                core.pgbench_env(socket_dir, core.COMPUTE_PORT),
                timeout=300,
            )
        envs = {
            "head": core.pgbench_env("127.0.0.1", setup.proxy_port, f"endpoint={PGBENCH_ENDPOINT}"),
            "base": core.pgbench_env("127.0.0.1", base.proxy_port, f"endpoint={PGBENCH_ENDPOINT}"),
            "direct": core.pgbench_env(
                str(setup.compute_socket_dir(PGBENCH_ENDPOINT)), core.COMPUTE_PORT
            ),
        }
        argv = ["-S", "-n", "-c", str(clients), "-j", str(threads)]
        for env in envs.values():  # warm-up
            core.run_pgbench([*argv, "-T", "1"], env, timeout=60)
        result.tps = {name: [] for name in envs}
        for round_no in range(rounds):
            # HEAD and the base back to back, which first alternating; direct after them.
            pair = ["head", "base"] if round_no % 2 == 0 else ["base", "head"]
            for name in [*pair, "direct"]:
                out = core.run_pgbench([*argv, "-T", str(seconds)], envs[name], seconds + 120)
                match = core._TPS.search(out)
                if match is None:
                    raise core.BenchError(f"no tps line in pgbench output:\n{out}")
                result.tps[name].append(float(match.group(1)))
            core.log(
                f"pgbench -S round {round_no + 1}/{rounds}: "
                + ", ".join(f"{n} {v[-1]:.0f}" for n, v in result.tps.items())
            )
    finally:
        if base.pgwake_process is not None:
            setup.procs.stop(base.pgwake_process)
        core.stop_stray_postmasters(base.all_data_dirs())
    return result


# -- the whole part ------------------------------------------------------------------------


@dataclass
class ParkingResult:
    sessions: int
    endpoints: int
    memory: dict[str, MemoryResult] = field(default_factory=dict)
    reattach: ReattachResult | None = None
    orm: OrmResult | None = None
    pgbench: PgbenchResult | None = None
    #: Sub-part name to what went wrong.
    errors: dict[str, str] = field(default_factory=dict)

    def targets(self) -> list[tuple[str, str, str]]:
        """(target, measured, met?), for the suite's targets table."""
        rows: list[tuple[str, str, str]] = []
        parked = self.memory.get("parked")
        if parked is not None and parked.held is not None:
            per = parked.per_session_kib("rss")
            down = parked.compute_processes == 0 and parked.running_computes == 0
            rows.append(
                (
                    f"{parked.sessions:,} parked sessions: pgwake RSS <= {PARKED_KIB_TARGET:g}"
                    " KiB per session, no compute running",
                    f"{per:.2f} KiB per session (USS {parked.per_session_kib('uss'):.2f});"
                    f" {parked.compute_processes} compute processes",
                    _met(per <= PARKED_KIB_TARGET and down),
                )
            )
        else:
            rows.append(("parked sessions: <= 4 KiB each", "not measured", "n/a"))
        r = self.reattach
        if r is not None and r.reattach and r.cold:
            r50, c50 = statistics.median(r.reattach), statistics.median(r.cold)
            rows.append(
                (
                    f"re-attach p50 <= cold connect p50 + {REATTACH_MARGIN_MS:g} ms",
                    f"{r50:.1f} vs {c50:.1f} ms",
                    _met(r.ok),
                )
            )
        else:
            rows.append(("re-attach p50 <= cold connect p50 + 10 ms", "not measured", "n/a"))
        o = self.orm
        if o is not None:
            rows.append(
                (
                    f"ORM pool across {o.cycles} suspends: no error, a suspend each cycle",
                    f"{len(o.errors)} errors, {o.idle_suspends:.0f} idle suspends",
                    _met(o.ok),
                )
            )
        else:
            rows.append(("ORM pool across suspends: no error", "not measured", "n/a"))
        p = self.pgbench
        if p is not None and p.tps.get("head"):
            rows.append(
                (
                    f"`pgbench -S` TPS through HEAD within {PGBENCH_TOLERANCE:.0%} of"
                    f" {p.base_commit} (median of per-round ratios)",
                    f"{p.ratio:.3f} ({statistics.median(p.tps['head']):.0f} vs"
                    f" {statistics.median(p.tps['base']):.0f})",
                    _met(p.ok),
                )
            )
        else:
            rows.append(("`pgbench -S` HEAD within 5% of the base", "not measured", "n/a"))
        return rows

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """(metric, measured, baseline, ratio, target, met?) rows."""
        rows: list[tuple[str, str, str, str, str, str]] = []
        parked, relayed = self.memory.get("parked"), self.memory.get("relayed")
        if parked is not None and parked.held is not None and parked.idle is not None:
            n = f"{parked.sessions:,}"
            base = (
                relayed.per_session_kib("rss")
                if relayed is not None and relayed.held is not None
                else None
            )
            per = parked.per_session_kib("rss")
            rows.append(
                (
                    f"pgwake RSS per parked session, KiB ({n} over {parked.endpoints}"
                    " endpoints; vs relayed idle sessions, parking off)",
                    f"{per:.2f}",
                    "-" if base is None else f"{base:.2f}",
                    "-" if not base else f"{per / base:.2f}",
                    f"<= {PARKED_KIB_TARGET:g}",
                    _met(per <= PARKED_KIB_TARGET),
                )
            )
            ubase = (
                relayed.per_session_kib("uss")
                if relayed is not None and relayed.held is not None
                else None
            )
            uper = parked.per_session_kib("uss")
            rows.append(
                (
                    "pgwake USS per parked session, KiB (vs relayed)",
                    f"{uper:.2f}",
                    "-" if ubase is None else f"{ubase:.2f}",
                    "-" if not ubase else f"{uper / ubase:.2f}",
                    "(info)",
                    "-",
                )
            )
            if parked.attached is not None:
                before_kib = (parked.attached.rss_kib - parked.idle.rss_kib) / parked.sessions
                rows.append(
                    (
                        "pgwake RSS per session, KiB, the same sessions right before they park"
                        " (all on their backends; vs relayed)",
                        f"{before_kib:.2f}",
                        "-" if base is None else f"{base:.2f}",
                        "-" if not base else f"{before_kib / base:.2f}",
                        "(info)",
                        "-",
                    )
                )
            rows.append(
                (
                    f"pgwake RSS idle -> {n} parked, MiB",
                    f"{parked.idle.rss_kib / 1024:.1f} -> {parked.held.rss_kib / 1024:.1f}",
                    "-"
                    if relayed is None or relayed.held is None or relayed.idle is None
                    else f"{relayed.idle.rss_kib / 1024:.1f} -> {relayed.held.rss_kib / 1024:.1f}",
                    "-",
                    "(info)",
                    "-",
                )
            )
            rows.append(
                (
                    f"with {n} parked: compute processes, data dirs with a postmaster,"
                    " endpoint states",
                    f"{parked.compute_processes}, {parked.running_computes},"
                    f" {_states_text(parked.states)}",
                    "-"
                    if relayed is None
                    else f"{relayed.compute_processes}, {relayed.running_computes},"
                    f" {_states_text(relayed.states)}",
                    "-",
                    "0, 0, all suspended",
                    _met(
                        parked.compute_processes == 0
                        and parked.running_computes == 0
                        and parked.states == {"suspended": parked.endpoints}
                    ),
                )
            )
            rows.append(
                (
                    '`pgwake_client_sessions{state="parked"}` summed',
                    f"{parked.parked_gauge:.0f}",
                    "-",
                    "-",
                    f"{parked.sessions}",
                    _met(parked.parked_gauge == parked.sessions),
                )
            )
            rows.append(
                (
                    "seconds from the last `SELECT 1` to all parked and stopped",
                    f"{parked.settle_seconds:.1f}",
                    "-",
                    "-",
                    "(info)",
                    "-",
                )
            )
        r = self.reattach
        if r is not None and r.reattach and r.cold:
            r50, c50 = statistics.median(r.reattach), statistics.median(r.cold)
            r90, c90 = core.percentile(r.reattach, 0.9), core.percentile(r.cold, 0.9)
            rows.append(
                (
                    f"re-attach: parked connection's `SELECT 1` p50, ms (vs cold connect p50;"
                    f" {len(r.reattach)} runs each, interleaved)",
                    f"{r50:.1f}",
                    f"{c50:.1f}",
                    f"{r50 / c50:.2f}",
                    f"<= cold + {REATTACH_MARGIN_MS:g} ms",
                    _met(r.ok),
                )
            )
            rows.append(
                (
                    "re-attach p90, ms (vs cold connect p90)",
                    f"{r90:.1f}",
                    f"{c90:.1f}",
                    f"{r90 / c90:.2f}",
                    "(info)",
                    "-",
                )
            )
            if r.server_ms:
                rows.append(
                    (
                        "re-attach p50 by pgwake's log (`event=reattached ms=`), ms",
                        f"{statistics.median(r.server_ms):.0f}",
                        "-",
                        "-",
                        "(info)",
                        "-",
                    )
                )
            rows.append(
                (
                    "`pgwake_reattaches_total` of the endpoint, by outcome",
                    ", ".join(f"{k} {v:.0f}" for k, v in r.outcomes.items() if v) or "none",
                    "-",
                    "-",
                    "all ok",
                    _met(sum(r.outcomes.values()) == r.outcomes.get("ok", 0)),
                )
            )
        o = self.orm
        if o is not None:
            rows.append(
                (
                    f"ORM (SQLAlchemy QueuePool of {o.pool_size}, idle timeout"
                    f" {o.idle_timeout:g} s): errors in {o.cycles} cycles",
                    str(len(o.errors)),
                    "-",
                    "-",
                    "0",
                    _met(not o.errors),
                )
            )
            rows.append(
                (
                    "ORM: idle suspends / compute starts / re-attaches ok (failed) / parks",
                    f"{o.idle_suspends:.0f} / {o.compute_starts:.0f} /"
                    f" {o.reattaches_ok:.0f} ({o.reattaches_failed:.0f}) / {o.parks:.0f}",
                    "-",
                    "-",
                    f">= {o.cycles} suspends",
                    _met(o.idle_suspends >= o.cycles),
                )
            )
            if o.query_ms:
                rows.append(
                    (
                        f"ORM: a cycle's {o.pool_size} queries (wake + re-attaches) p50 / max, ms",
                        f"{statistics.median(o.query_ms):.0f} / {max(o.query_ms):.0f}",
                        "-",
                        "-",
                        "(info)",
                        "-",
                    )
                )
        p = self.pgbench
        if p is not None and p.tps.get("head"):
            med = {k: statistics.median(v) for k, v in p.tps.items()}
            rows.append(
                (
                    f"`pgbench -S -c 8 -j 2` TPS through HEAD (vs {p.base_commit}, before the"
                    " message tracking; median of per-round ratios)",
                    f"{med['head']:.0f}",
                    f"{med['base']:.0f}",
                    f"{p.ratio:.3f} (" + ", ".join(f"{x:.3f}" for x in p.ratios) + ")",
                    f">= {1 - PGBENCH_TOLERANCE:.2f}",
                    _met(p.ok),
                )
            )
            rows.append(
                (
                    "`pgbench -S` TPS direct to HEAD's compute socket (reference; HEAD vs it)",
                    f"{med['head']:.0f}",
                    f"{med['direct']:.0f}",
                    f"{med['head'] / med['direct']:.2f}",
                    "(info)",
                    "-",
                )
            )
        return rows

    def table(self) -> str:
        header = ("metric", "measured", "baseline", "ratio", "target", "met?")
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in self.rows()]
        if self.pgbench is not None and self.pgbench.tps.get("head"):
            round_header = "| round | " + " | ".join(PGBENCH_NAMES) + " | head/base |"
            out += ["", round_header, "|---" * 5 + "|"]
            tps = self.pgbench.tps
            for i, ratio in enumerate(self.pgbench.ratios):
                cells = " | ".join(f"{tps[n][i]:.0f}" for n in PGBENCH_NAMES)
                out.append(f"| {i + 1} | {cells} | {ratio:.3f} |")
        for name, message in self.errors.items():
            out.append(f"\n**{name} failed**: {message}")
        return "\n".join(out)


def _states_text(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "-"


def run_parking(
    bindir: Path,
    *,
    sessions: int,
    endpoints: int,
    runs: int,
    cycles: int,
    pgbench_seconds: int,
    pgbench_rounds: int,
    keep: bool = False,
    skip: frozenset[str] = frozenset(),
    serve_args: list[str] | None = None,
) -> ParkingResult:
    """The four measurements in one work directory; a sub-part that fails is recorded in
    ``errors`` and the others still run. ``skip``: memory, reattach, orm, pgbench."""
    args = list(serve_args or [])
    result = ParkingResult(sessions, endpoints)
    with core.environment(bindir, keep=keep) as setup:
        core.start_pgwake(setup, args)

        def sub(name: str, action: Any) -> Any:
            if name in skip:
                return None
            core.log(f"-- parking: {name}")
            try:
                return action()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                result.errors[name] = f"{type(exc).__name__}: {exc}".strip()
                core.log(f"parking {name} FAILED: {exc}")
                return None

        result.memory = sub("memory", lambda: measure_memory(setup, sessions, endpoints, args))
        result.memory = result.memory or {}
        # The memory part leaves its relayed endpoints' computes running: stop them.
        for name in [f"{RELAYED_PREFIX}{i:02d}" for i in range(endpoints)]:
            with contextlib.suppress(Exception):
                core.api(setup).suspend_endpoint(name)
        result.reattach = sub("reattach", lambda: measure_reattach(setup, runs))
        result.orm = sub("orm", lambda: measure_orm(setup, cycles))
        result.pgbench = sub(
            "pgbench",
            lambda: measure_pgbench(setup, pgbench_seconds, pgbench_rounds, serve_args=args),
        )
        if result.errors:
            log_dir = Path(f"/tmp/pgwake-bench-logs-parking-{time.strftime('%Y%m%d-%H%M%S')}")
            log_dir.mkdir()
            for path in setup.workdir.glob("**/pgwake-serve.log"):
                target = log_dir / f"{path.parent.name}-{path.name}"
                target.write_bytes(path.read_bytes())
            core.log(f"parking: a sub-part failed, logs kept in {log_dir}")
    return result


# -- main ----------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000, help="parked sessions (1000)")
    parser.add_argument("--endpoints", type=int, default=20, help="spread over (20)")
    parser.add_argument("--runs", type=int, default=30, help="re-attach and cold runs (30)")
    parser.add_argument("--cycles", type=int, default=20, help="ORM loop cycles (20)")
    parser.add_argument("--pgbench-seconds", type=int, default=10, help="-T per round (10)")
    parser.add_argument("--pgbench-rounds", type=int, default=3, help="alternated rounds (3)")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["memory", "reattach", "orm", "pgbench"],
        help="leave a measurement out (repeatable)",
    )
    parser.add_argument(
        "--pg-bindir",
        type=Path,
        default=core.DEFAULT_BINDIR,
        help=f"Postgres binaries (default {core.DEFAULT_BINDIR})",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    problem = core.preflight(args.pg_bindir, need_pgbouncer=False)
    if problem:
        print(f"bench/parking.py cannot run here: {problem}", file=sys.stderr)
        return 2
    scale.raise_fd_limit()
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with core.interruptible():
        try:
            result = run_parking(
                args.pg_bindir,
                sessions=args.sessions,
                endpoints=args.endpoints,
                runs=args.runs,
                cycles=args.cycles,
                pgbench_seconds=args.pgbench_seconds,
                pgbench_rounds=args.pgbench_rounds,
                keep=args.keep,
                skip=frozenset(args.skip),
            )
        except KeyboardInterrupt:
            core.log("interrupted; everything started here was stopped")
            return 130
    print(
        f"load average at start / end: {loadavg} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=1) + "\n")
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
