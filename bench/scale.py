"""Many clients at once: a burst on a suspended endpoint, and thousands of idle sessions.

Both use asyncpg in this process (on uvloop), so the caller must have raised
``RLIMIT_NOFILE`` (``raise_fd_limit``) before starting pgwake, PgBouncer and the clients:
children inherit it. Memory figures come from ``/proc/<pid>/status`` (VmRSS) and
``/proc/<pid>/smaps_rollup`` (PSS, and USS = private clean + private dirty).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from bench import core

__all__ = [
    "BurstResult",
    "IdleResult",
    "MemorySample",
    "burst",
    "hold_idle",
    "memory",
    "open_sessions",
    "raise_fd_limit",
    "run_async",
    "wake_counts",
]

T = TypeVar("T")

#: What the bench asks for; the kernel's fs.nr_open (1048576 by default) caps it.
FD_LIMIT = 65536


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """Raise this process's open-file limit (soft and, as root, hard) to ``wanted``;
    return the soft limit now in force. Children started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a fresh uvloop loop (asyncio's when uvloop is missing)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(factory())
    result: T = uvloop.run(factory())
    return result


@dataclass(frozen=True)
class MemorySample:
    """One process's memory (KiB) with ``connections`` client sessions open."""

    connections: int
    rss_kib: int
    pss_kib: int
    uss_kib: int


def memory(pid: int, connections: int = 0) -> MemorySample:
    """VmRSS, PSS and USS of ``pid`` now."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return MemorySample(connections, rss, fields.get("Pss", 0), uss)


def wake_counts(metrics_text: str, endpoint: str) -> dict[str, float]:
    """``pgwake_wakes_total`` of ``endpoint`` by outcome."""
    counts: dict[str, float] = {}
    pattern = re.compile(
        r'^pgwake_wakes_total\{endpoint="'
        + re.escape(endpoint)
        + r'",outcome="(\w+)"\} ([0-9.e+]+)$',
        re.MULTILINE,
    )
    for match in pattern.finditer(metrics_text):
        counts[match.group(1)] = float(match.group(2))
    return counts


# -- 500 clients at once on a suspended endpoint -------------------------------------------


@dataclass
class BurstResult:
    clients: int
    #: Per repetition: each client's ms from the common start to its ``SELECT 1`` row.
    first_result_ms: list[list[float]] = field(default_factory=list)
    #: Per repetition: compute starts seen in ``pgwake_wakes_total`` (success, failure).
    starts: list[dict[str, float]] = field(default_factory=list)
    #: Per repetition: client errors (type: message), empty when all succeeded.
    errors: list[list[str]] = field(default_factory=list)
    #: pgwake's own wake duration (ms) per repetition, from its histogram's sum.
    wake_ms: list[float] = field(default_factory=list)
    #: Baselines right after each cold burst, same clients, compute running: through
    #: pgwake (warm) and straight to the compute's unix socket (direct).
    warm_ms: list[list[float]] = field(default_factory=list)
    direct_ms: list[list[float]] = field(default_factory=list)
    baseline_errors: list[str] = field(default_factory=list)

    @property
    def all_ok(self) -> bool:
        return all(not errors for errors in self.errors) and all(
            s.get("success", 0) == 1 and s.get("failure", 0) == 0 for s in self.starts
        )


async def _burst_once(kwargs: dict[str, Any], clients: int) -> tuple[list[float], list[str]]:
    """``clients`` connects + ``SELECT 1`` started together; every connection stays open
    until all have their row (so the compute really holds them all at once)."""
    ready = asyncio.Event()
    started = 0.0
    conns: list[Any] = []

    async def one() -> float:
        await ready.wait()
        conn = await asyncpg.connect(**kwargs, timeout=60)
        conns.append(conn)
        await conn.fetchval("SELECT 1")
        return (time.perf_counter() - started) * 1000

    tasks = [asyncio.create_task(one()) for _ in range(clients)]
    await asyncio.sleep(0.05)  # every task is parked on the event
    started = time.perf_counter()
    ready.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(conn.close(timeout=10) for conn in conns), return_exceptions=True)
    times = [o for o in outcomes if isinstance(o, float)]
    errors = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    return times, errors


def burst(setup: core.Setup, endpoint: str, clients: int, repeats: int) -> BurstResult:
    """``repeats`` times: make sure ``endpoint`` is suspended, then ``clients`` clients
    connect at once; count the compute starts pgwake reports for each repetition. After
    each, the same burst on the running compute, through pgwake and directly (in rotating
    order): how much of the time is the wake, how much is connecting 500 clients at all."""
    result = BurstResult(clients)
    api = core.api(setup)
    kwargs = asyncpg_kwargs(setup, endpoint)
    for repeat in range(repeats):
        api.suspend_endpoint(endpoint)
        setup.wait_suspended(endpoint)
        time.sleep(0.2)
        metrics = setup.metrics_text()
        before = wake_counts(metrics, endpoint)
        wake_sum_before = _wake_sum(metrics)
        times, errors = run_async(lambda: _burst_once(kwargs, clients))
        metrics = setup.metrics_text()
        after = wake_counts(metrics, endpoint)
        starts = {k: after.get(k, 0) - before.get(k, 0) for k in ("success", "failure")}
        result.first_result_ms.append(times)
        result.errors.append(errors[:20])
        result.starts.append(starts)
        result.wake_ms.append((_wake_sum(metrics) - wake_sum_before) * 1000)
        core.log(
            f"burst {repeat + 1}/{repeats}: {len(times)}/{clients} ok, "
            f"p50 {core.percentile(times, 0.5) if times else float('nan'):.0f} ms, "
            f"max {max(times) if times else float('nan'):.0f} ms, starts {starts}"
        )
        if errors:
            core.log(f"burst errors (first): {errors[0]}")
        direct_kwargs = {
            "host": str(setup.compute_socket_dir(endpoint)),
            "port": core.COMPUTE_PORT,
            "user": core.ROLE,
            "password": core.PASSWORD,
            "database": core.DATABASE,
        }
        baselines = [("warm", kwargs, result.warm_ms), ("direct", direct_kwargs, result.direct_ms)]
        for name, target, into in baselines[repeat % 2 :] + baselines[: repeat % 2]:
            times, errors = run_async(lambda target=target: _burst_once(target, clients))
            into.append(times)
            result.baseline_errors += [f"{name}: {error}" for error in errors[:5]]
            core.log(
                f"burst {repeat + 1}/{repeats} {name}: {len(times)}/{clients} ok, "
                f"p50 {core.percentile(times, 0.5) if times else float('nan'):.0f} ms"
            )
    return result


def _wake_sum(metrics_text: str) -> float:
    return core.summed_samples(metrics_text, "pgwake_wake_duration_seconds_sum")


def asyncpg_kwargs(setup: core.Setup, endpoint: str) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": setup.proxy_port,
        "user": core.ROLE,
        "password": core.PASSWORD,
        "database": core.DATABASE,
        "ssl": False,
        "server_settings": {"options": f"endpoint={endpoint}"},
    }


# -- thousands of idle sessions ------------------------------------------------------------


@dataclass
class IdleResult:
    target: str
    connections: int
    samples: list[MemorySample] = field(default_factory=list)
    after_close: MemorySample | None = None
    connect_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def per_connection_bytes(self) -> dict[str, float]:
        """(memory with all sessions - memory with none) / sessions, per measure."""
        if len(self.samples) < 2 or self.samples[-1].connections == 0:
            return {}
        first, last = self.samples[0], self.samples[-1]
        n = last.connections - first.connections
        return {
            "rss": (last.rss_kib - first.rss_kib) * 1024 / n,
            "pss": (last.pss_kib - first.pss_kib) * 1024 / n,
            "uss": (last.uss_kib - first.uss_kib) * 1024 / n,
        }


async def open_sessions(
    targets: list[dict[str, Any]],
    indices: range,
    semaphore: asyncio.Semaphore,
    conns: list[Any],
    errors: list[str],
) -> None:
    """One asyncpg session per index (round-robin over ``targets``), each running
    ``SELECT 1``, ``semaphore`` of them connecting at once. Each session opened goes to
    ``conns`` (to be closed by the caller, even if its query failed), each failure to
    ``errors``."""

    async def open_one(index: int) -> None:
        async with semaphore:
            try:
                conn = await asyncpg.connect(**targets[index % len(targets)], timeout=120)
                conns.append(conn)
                await conn.fetchval("SELECT 1")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(open_one(index) for index in indices))


async def _hold(
    pid: int,
    targets: list[dict[str, Any]],
    total: int,
    step: int,
    concurrency: int,
    result: IdleResult,
) -> None:
    conns: list[Any] = []
    semaphore = asyncio.Semaphore(concurrency)
    await asyncio.sleep(1)
    result.samples.append(memory(pid, 0))
    started = time.perf_counter()
    try:
        opened = 0
        while opened < total:
            batch = min(step, total - opened)
            await open_sessions(
                targets, range(opened, opened + batch), semaphore, conns, result.errors
            )
            opened += batch
            if result.errors:
                raise core.BenchError(
                    f"{result.target}: {len(result.errors)} connects failed, first: "
                    f"{result.errors[0]}"
                )
            await asyncio.sleep(1)  # let the sessions settle (buffers, logs) before sampling
            result.samples.append(memory(pid, len(conns)))
            core.log(
                f"idle via {result.target}: {len(conns)} sessions, "
                f"RSS {result.samples[-1].rss_kib / 1024:.1f} MiB"
            )
        result.connect_seconds = time.perf_counter() - started
        await asyncio.sleep(3)  # all idle: one more sample, same count
        result.samples.append(memory(pid, len(conns)))
    finally:
        await asyncio.gather(*(c.close(timeout=30) for c in conns), return_exceptions=True)
    await asyncio.sleep(2)
    result.after_close = memory(pid, 0)


def hold_idle(
    target: str,
    pid: int,
    targets: list[dict[str, Any]],
    total: int,
    step: int,
    concurrency: int = 32,
) -> IdleResult:
    """Open ``total`` sessions (round-robin over ``targets``, asyncpg connect kwargs),
    each runs ``SELECT 1`` and then stays idle; sample ``pid``'s memory with none open and
    after every ``step`` more. Closes them all at the end. Raises ``BenchError`` when a
    connect fails."""
    result = IdleResult(target, total)
    run_async(lambda: _hold(pid, targets, total, step, concurrency, result))
    return result
