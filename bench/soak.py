#!/usr/bin/env python3
"""Soak: suspend/wake churn over many endpoints, with injected faults, bounded in time.

    python bench/soak.py [--duration 60] [--endpoints 50] [--clients 16] [--json FILE]

Starts its own ``pgwake serve`` on loopback in a fresh state dir under /tmp (mode 0711, so
the compute user ``pgwake`` can reach it), creates ``--endpoints`` endpoints with idle
timeouts between 1 and 2 s, and runs ``--clients`` asyncpg clients for ``--duration``
seconds. Each client loops: pick an endpoint, connect through pgwake, run 1-4 transactions
that insert rows with unique ids, sometimes read back rows committed earlier, sometimes hold
the connection idle past the idle timeout (pgwake parks it, the compute suspends under it,
and the next query re-attaches it), then pause (often longer than the idle timeout, so
computes suspend and wake all the time). ``--pooled`` more clients never disconnect: each
keeps one connection to one endpoint (the broken ones among them) and runs a transaction
on it every 0.5-3 s, so its session is parked and re-attached again and again; a failed
re-attach must leave its connection usable. Meanwhile:

* every ``--kill-interval`` seconds (randomised) the postmaster of a running compute gets
  SIGKILL; the sessions open on that endpoint at that moment may fail (expected);
* ``--broken`` endpoints get a broken ``postgresql.conf`` for a while: their starts fail,
  clients get 57P03 (expected); then the file is repaired and the endpoint must recover.

At the end pgwake is stopped with SIGTERM, no postgres process of the state dir may
survive, and a second ``pgwake serve`` on the same state dir reads every endpoint's rows
back: every row whose COMMIT returned must be there, no row of a transaction that never
sent COMMIT may be, and a transaction whose COMMIT got no answer is all there or all gone.

Exit status 0 only when there were no unexpected client errors, no lost (or phantom, or
torn) rows, no orphaned postgres process, and pgwake stopped cleanly both times.
Progress goes to stderr, the report to stdout; ``--json FILE`` writes it for the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from prometheus_client.parser import text_string_to_metric_families

# The repository root, for bench.core when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core import Processes, free_port, log, percentile, read_postmaster_pid, tail
from pgwake.api.client import PgwakeClient
from pgwake.logs import parse_logfmt

__all__ = ["SoakReport", "run_soak"]

REPO = Path(__file__).resolve().parent.parent

TOKEN = "soak-admin-token-0123456789abcdef"
PASSWORD = "soak-s3cret"  # throwaway endpoints on loopback
ROLE = DATABASE = "app"
BROKEN_LINE = "\nthis is not a setting  # injected by bench/soak.py\n"

#: A client gives up on one step after this long (wake_timeout is 30 s): a hang, not a wait.
STEP_TIMEOUT = 45.0
#: Clients finishing their last session after the load deadline get this long.
DRAIN_GRACE = 60.0
#: pgwake gets this long for a graceful stop (drain 5 s, then every compute's fast shutdown).
STOP_GRACE = 60.0
#: Postgres processes of the state dir still alive this long after pgwake exited are orphans
#: (backends of a killed postmaster exit on their own once they notice its death).
ORPHAN_GRACE = 10.0
#: A broken endpoint that has not recovered by the end of the load gets this long (the
#: start back-off is at most 30 s).
RECOVERY_GRACE = 35.0
#: The hot endpoints get this share of the picks (the rest is uniform over all).
HOT_ENDPOINTS = 5
HOT_SHARE = 0.25


# -- the report --------------------------------------------------------------------------


@dataclass
class SessionError:
    """One failed client session: when, where, in which step, and what it got."""

    t: float  # seconds since the load started
    endpoint: str
    session: int
    phase: str  # connect, transaction, commit, read, hold, close
    error_class: str  # SQLSTATE, or the exception's type
    message: str
    verdict: str  # expected-killed, expected-broken, unexpected
    since_kill_ms: int | None  # time since the last kill on this endpoint, if any (<10 s)
    started: float = 0.0  # when the session began (seconds since the load started)
    #: The endpoint's state in pgwake's log when the session began (filled in at the end).
    pgwake_state: str | None = None


@dataclass
class Kill:
    t: float
    endpoint: str
    pid: int
    sessions: int  # client sessions open on the endpoint at that moment


@dataclass
class BrokenEndpoint:
    endpoint: str
    broken_at: float | None = None
    repaired_at: float | None = None
    recovered_at: float | None = None  # first successful session after the repair
    failed_starts: int = 0  # sessions refused with 57P03 "could not start"
    reason: str | None = None  # the detail of the first such refusal
    recovered: bool = False


@dataclass
class SoakReport:
    """Everything one soak run measured; ``ok`` says whether it passed."""

    duration: float
    endpoints: int
    clients: int
    seed: int
    work_dir: str
    sessions: int = 0
    sessions_ok: int = 0
    transactions_committed: int = 0
    rows_committed: int = 0
    transactions_aborted: int = 0
    transactions_in_doubt: int = 0
    in_doubt_present: int = 0
    rows_verified: int = 0
    lost_rows: int = 0
    phantom_rows: int = 0  # rows of transactions that never sent COMMIT
    torn_transactions: int = 0  # in-doubt transactions only partly present
    unknown_rows: int = 0
    read_misses: int = 0  # committed rows a later read during the load did not see
    killed_sessions: int = 0  # sessions open on an endpoint when its postmaster was killed
    unverified_endpoints: list[str] = field(default_factory=list)
    connect_ms_p50: float = 0.0
    connect_ms_p99: float = 0.0
    connect_ms_max: float = 0.0
    wakes: dict[str, float] = field(default_factory=dict)
    suspends: dict[str, float] = field(default_factory=dict)
    #: Transactions of the clients that never disconnect, and errors after which their
    #: connection was still usable (a failed re-attach).
    pooled_cycles: int = 0
    pooled_errors_survived: int = 0
    #: Sessions parked at a suspend, and parked sessions re-attached, by outcome.
    parks: dict[str, float] = field(default_factory=dict)
    reattaches: dict[str, float] = field(default_factory=dict)
    pgwake_errors: dict[str, float] = field(default_factory=dict)
    wake_ms_mean: float = 0.0
    max_running: int = 0
    loadavg: str = ""
    kills: list[Kill] = field(default_factory=list)
    broken: list[BrokenEndpoint] = field(default_factory=list)
    errors: list[SessionError] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    slow_exits: int = 0  # postgres processes that outlived pgwake briefly, then exited
    stops: list[dict[str, Any]] = field(default_factory=list)
    pgwake_log: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def unexpected_errors(self) -> list[SessionError]:
        return [e for e in self.errors if e.verdict == "unexpected"]

    @property
    def ok(self) -> bool:
        return not self.problems

    def judge(self) -> None:
        """Fill ``problems`` from the figures (idempotent)."""
        problems = [p for p in self.problems if p.startswith("run:")]
        if self.unexpected_errors:
            problems.append(f"{len(self.unexpected_errors)} unexpected client errors")
        for name, count in (
            ("lost rows", self.lost_rows),
            ("phantom rows", self.phantom_rows),
            ("torn transactions", self.torn_transactions),
            ("unknown rows", self.unknown_rows),
            ("committed rows missing from a later read", self.read_misses),
            ("orphaned postgres processes", len(self.orphans)),
        ):
            if count:
                problems.append(f"{count} {name}")
        if self.unverified_endpoints:
            problems.append(f"endpoints not verified: {', '.join(self.unverified_endpoints)}")
        for stop in self.stops:
            if stop.get("returncode") != 0:
                problems.append(f"pgwake ({stop['which']}) stop: exit {stop.get('returncode')}")
        for item in self.broken:
            if not item.recovered:
                problems.append(f"broken endpoint {item.endpoint} did not recover")
        if self.pgwake_log.get("tracebacks"):
            problems.append(f"{self.pgwake_log['tracebacks']} tracebacks in pgwake's log")
        self.problems = problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["error_classes"] = [list(row) for row in self.error_table()]
        return data

    def error_table(self) -> list[tuple[str, str, int, int, int]]:
        """(class, phase, expected-killed, expected-broken, unexpected) per class and phase."""
        counts: Counter[tuple[str, str, str]] = Counter(
            (e.error_class, e.phase, e.verdict) for e in self.errors
        )
        keys = sorted({(c, p) for c, p, _ in counts})
        return [
            (
                c,
                p,
                counts[c, p, "expected-killed"],
                counts[c, p, "expected-broken"],
                counts[c, p, "unexpected"],
            )
            for c, p in keys
        ]

    def table(self) -> str:
        """The report as Markdown."""

        def fmt(values: dict[str, float]) -> str:
            return ", ".join(f"{k} {v:.0f}" for k, v in sorted(values.items())) or "-"

        expected = len(self.errors) - len(self.unexpected_errors)
        crashed = self.suspends.get("crashed", 0)
        killed_failed = sum(e.verdict == "expected-killed" for e in self.errors)
        rows = [
            (
                "duration / endpoints / clients / seed",
                f"{self.duration:g} s / {self.endpoints} / {self.clients} / {self.seed}",
            ),
            (
                "sessions (ok / failed)",
                f"{self.sessions} ({self.sessions_ok} / {self.sessions - self.sessions_ok})",
            ),
            (
                "transactions committed (rows)",
                f"{self.transactions_committed} ({self.rows_committed})",
            ),
            (
                "transactions aborted / in doubt (of which present)",
                f"{self.transactions_aborted} / {self.transactions_in_doubt} "
                f"({self.in_doubt_present})",
            ),
            ("rows read back after restart", str(self.rows_verified)),
            ("lost rows", str(self.lost_rows)),
            (
                "phantom rows / torn transactions / unknown rows",
                f"{self.phantom_rows} / {self.torn_transactions} / {self.unknown_rows}",
            ),
            ("committed rows missing from a later read", str(self.read_misses)),
            (
                "connect ms p50 / p99 / max",
                f"{self.connect_ms_p50:.1f} / "
                f"{self.connect_ms_p99:.1f} / {self.connect_ms_max:.1f}",
            ),
            ("wakes (pgwake metrics; mean ms)", f"{fmt(self.wakes)}; {self.wake_ms_mean:.0f}"),
            ("suspends (pgwake metrics)", fmt(self.suspends)),
            ("idle sessions at a suspend (parked, pinned...)", fmt(self.parks)),
            ("re-attaches of parked sessions", fmt(self.reattaches)),
            (
                "pooled clients: transactions / errors the connection survived",
                f"{self.pooled_cycles} / {self.pooled_errors_survived}",
            ),
            ("computes running at once (max seen)", str(self.max_running)),
            ("load average at the end of the load", self.loadavg),
            ("kills injected (pgwake saw crashed)", f"{len(self.kills)} ({crashed:.0f})"),
            (
                "sessions open on a killed compute (failed)",
                f"{self.killed_sessions} ({killed_failed})",
            ),
            ("errors pgwake sent (metrics)", fmt(self.pgwake_errors)),
            ("client errors: expected / unexpected", f"{expected} / {len(self.unexpected_errors)}"),
            (
                "orphaned postgres processes",
                f"{len(self.orphans)}"
                + (f" ({self.slow_exits} exited late)" if self.slow_exits else ""),
            ),
        ]
        for item in self.broken:
            recovery = (
                f"recovered {item.recovered_at - item.repaired_at:.1f} s after repair"
                if item.recovered_at is not None and item.repaired_at is not None
                else ("recovered after the load" if item.recovered else "NOT recovered")
            )
            window = (
                f"broken {item.broken_at:.1f}-{item.repaired_at:.1f} s"
                if item.broken_at is not None and item.repaired_at is not None
                else "broken"
            )
            rows.append(
                (
                    f"broken endpoint {item.endpoint}",
                    f"{window}, {item.failed_starts} x 57P03 ({item.reason}), {recovery}"
                    if item.failed_starts
                    else f"{window}, fault not exercised (no start while broken)",
                )
            )
        for stop in self.stops:
            rows.append(
                (
                    f"pgwake stop ({stop['which']})",
                    f"exit {stop.get('returncode')} in {stop.get('seconds', 0):.1f} s",
                )
            )
        logged = self.pgwake_log
        rows.append(
            (
                "pgwake log: warnings / errors / tracebacks",
                f"{logged.get('warnings', 0)} / {logged.get('errors', 0)} / "
                f"{logged.get('tracebacks', 0)}",
            )
        )
        out = ["## pgwake soak", "", "| figure | value |", "|---|---|"]
        out += [f"| {name} | {value} |" for name, value in rows]
        out += ["", "## Client errors by class", ""]
        table = self.error_table()
        if table:
            out.append("| class | phase | expected (killed) | expected (broken) | unexpected |")
            out.append("|---|---|---|---|---|")
            out += [f"| {c} | {p} | {k} | {b} | {u} |" for c, p, k, b, u in table]
        else:
            out.append("(none)")
        if self.unexpected_errors:
            out += ["", "Unexpected errors (first 15):", ""]
            for e in self.unexpected_errors[:15]:
                since = f" {e.since_kill_ms} ms after a kill" if e.since_kill_ms is not None else ""
                state = f" [pgwake: {e.pgwake_state} at connect]" if e.pgwake_state else ""
                out.append(
                    f"- t={e.t:.2f} s {e.endpoint} session {e.session} {e.phase}:"
                    f" {e.error_class}{since}: {e.message}{state}"
                )
        if self.orphans:
            out += ["", "Orphans:", *[f"- {o}" for o in self.orphans]]
        if logged.get("samples"):
            out += ["", "ERROR lines in pgwake's log (first 10):", ""]
            out += [f"    {line}" for line in logged["samples"]]
        out += ["", "PASS" if self.ok else "FAIL: " + "; ".join(self.problems)]
        return "\n".join(out)


# -- pgwake serve ------------------------------------------------------------------------


class Server:
    """One ``pgwake serve`` on free loopback ports, over ``state_dir``."""

    def __init__(self, procs: Processes, work: Path, which: str) -> None:
        self.procs = procs
        self.work = work
        self.which = which
        self.state_dir = work / "state"
        self.port = free_port()
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.log_path = work / f"pgwake-{which}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PGWAKE_STATE_DIR": str(self.state_dir),
            "PGWAKE_LISTEN": f"127.0.0.1:{self.port}",
            "PGWAKE_API_LISTEN": f"127.0.0.1:{self.api_port}",
            "PGWAKE_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
            "PGWAKE_ADMIN_TOKEN": TOKEN,
            "PGWAKE_DRAIN_TIMEOUT": "5",
            "PGWAKE_LOG_LEVEL": "info",
        }

    def start(self) -> None:
        self.process = self.procs.start(
            f"pgwake serve ({self.which})",
            [sys.executable, "-m", "pgwake.cli", "serve"],
            log_path=self.log_path,
            env=self.env(),
            cwd=REPO,
            grace=STOP_GRACE,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                url = f"http://127.0.0.1:{self.api_port}/readyz"
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"pgwake exited ({self.process.returncode}):\n{tail(self.log_path)}"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgwake not ready:\n{tail(self.log_path)}") from None
                time.sleep(0.1)

    def client(self) -> PgwakeClient:
        return PgwakeClient(f"http://127.0.0.1:{self.api_port}", TOKEN)

    def connect_kwargs(self, endpoint: str) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": ROLE,
            "password": PASSWORD,
            "database": DATABASE,
            "ssl": False,
            "server_settings": {"options": f"endpoint={endpoint}"},
            "timeout": STEP_TIMEOUT,
        }

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples

    def stop(self) -> dict[str, Any]:
        """SIGTERM and wait; returns what happened (``returncode`` None: it was killed)."""
        result: dict[str, Any] = {"which": self.which}
        process = self.process
        if process is None:
            return result
        started = time.monotonic()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                result["hung"] = True
        result["seconds"] = time.monotonic() - started
        result["returncode"] = process.poll()
        self.procs.stop(process)  # SIGKILLs it if it hung
        self.process = None
        return result


def summed(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, label: str
) -> dict[str, float]:
    """Sum a metric's samples by one label."""
    out: dict[str, float] = {}
    for labels, value in samples.get(name, []):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return {k: v for k, v in out.items() if v}


def postgres_processes(state_dir: Path) -> dict[int, str]:
    """Live postgres processes of ``state_dir``: the postmasters name it on their command
    line, their backends run with a data dir under it as working directory."""
    found: dict[int, str] = {}
    needle = str(state_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if state == "Z" or "postgres" not in cmdline:
            continue
        if needle in cmdline or cwd.startswith(needle + "/"):
            found[int(entry.name)] = f"pid {entry.name} cwd {cwd}: {cmdline.strip()}"
    return found


def annotate_states(errors: list[SessionError], log_path: Path, t0_wall: float) -> None:
    """Set each error's ``pgwake_state``: the endpoint's state, per pgwake's transition
    log lines (logfmt, UTC timestamps), when the session began."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return
    history: dict[str, list[tuple[float, str]]] = {}
    for line in text.splitlines():
        if "event=transition" not in line:
            continue
        fields = parse_logfmt(line)
        when = datetime.fromisoformat(fields["ts"].replace("Z", "+00:00")).timestamp()
        history.setdefault(fields["endpoint"], []).append((when, fields["to"]))
    for error in errors:
        began = t0_wall + error.started
        state = "suspended"
        for when, to in history.get(error.endpoint, []):
            if when > began:
                break
            state = to
        error.pgwake_state = state


def scan_log(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    lines = text.splitlines()
    errors = [line for line in lines if " level=error " in line or " level=critical " in line]
    return {
        "warnings": sum(" level=warning " in line for line in lines),
        "errors": len(errors),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "samples": errors[:10],
    }


# -- the load ----------------------------------------------------------------------------


@dataclass
class Endpoint:
    name: str
    idle_timeout: float
    data_dir: Path
    active: set[int] = field(default_factory=set)
    killed_at: float | None = None
    broken: BrokenEndpoint | None = None
    committed: list[int] = field(default_factory=list)  # row ids, in commit order
    #: Clients leave it alone (just broken, its compute still running: let it suspend).
    avoid: bool = False


@dataclass
class Txn:
    endpoint: str
    ids: list[int]
    state: str = "open"  # open -> aborted | in_doubt -> committed


class Soak:
    """The load, the fault injectors, and the bookkeeping they share."""

    def __init__(self, server: Server, report: SoakReport, rng: random.Random) -> None:
        self.server = server
        self.report = report
        self.rng = rng
        self.endpoints: dict[str, Endpoint] = {}
        self.names: list[str] = []
        self.txns: dict[int, Txn] = {}
        self.killed_sessions: set[int] = set()
        self.connect_ms: list[float] = []
        self._session_ids = itertools.count(1)
        self._txn_ids = itertools.count(1)
        self._row_ids = itertools.count(1)
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.deadline = self.t0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def pick(self) -> Endpoint:
        for _ in range(100):  # bounded: with every endpoint avoided, take one anyway
            if self.rng.random() < HOT_SHARE:
                ep = self.endpoints[self.rng.choice(self.names[:HOT_ENDPOINTS])]
            else:
                ep = self.endpoints[self.rng.choice(self.names)]
            if not ep.avoid:
                break
        return ep

    # -- one client ----------------------------------------------------------------------

    async def client(self) -> None:
        while time.monotonic() < self.deadline:
            await self.session(self.pick())

    async def pooled_client(self, ep: Endpoint) -> None:
        """A client that never disconnects (an ORM pool's connection): one transaction,
        then idle, often past the idle timeout (parked, the compute suspends under it),
        again and again on the same connection. A failed re-attach (57P03 while the
        endpoint is broken) must leave the connection usable; only a compute killed
        under it while attached may end it, and then it connects again."""
        conn: asyncpg.Connection | None = None
        while time.monotonic() < self.deadline:
            sid = next(self._session_ids)
            started = self.now()
            ep.active.add(sid)
            phase = "connect"
            txn: Txn | None = None
            try:
                if conn is None or conn.is_closed():
                    async with asyncio.timeout(STEP_TIMEOUT):
                        conn = await asyncpg.connect(**self.server.connect_kwargs(ep.name))
                    self.report.sessions += 1
                phase = "transaction"
                tid = next(self._txn_ids)
                txn = Txn(ep.name, [next(self._row_ids)])
                self.txns[tid] = txn
                # Plain BEGIN/COMMIT: asyncpg's Transaction object remembers a BEGIN that
                # failed and would answer the next one with a SAVEPOINT.
                async with asyncio.timeout(STEP_TIMEOUT):
                    await conn.execute("BEGIN")
                    await conn.execute(
                        "INSERT INTO soak (id, txn, session) SELECT unnest($1::bigint[]), $2, $3",
                        txn.ids,
                        tid,
                        sid,
                    )
                    phase = "commit"
                    txn.state = "in_doubt"
                    await conn.execute("COMMIT")
                txn.state = "committed"
                ep.committed.extend(txn.ids)
                self.report.transactions_committed += 1
                self.report.rows_committed += len(txn.ids)
                self.report.pooled_cycles += 1
                phase = "hold"
                await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if txn is not None and txn.state == "open":
                    txn.state = "aborted"
                self.record_error(ep, sid, started, phase, exc)
                if conn is not None and not conn.is_closed() and txn is not None:
                    # An ERROR, not a FATAL: the same connection goes on (a rollback
                    # first, in case the error came inside the transaction).
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(STEP_TIMEOUT):
                            await conn.execute("ROLLBACK")
                    self.report.pooled_errors_survived += 1
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            finally:
                ep.active.discard(sid)
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STEP_TIMEOUT):
                    await conn.close()
            # Often longer than any idle timeout: the endpoints this client used may suspend.
            pause = self.rng.uniform(2.2, 3.0) if self.rng.random() < 0.3 else self.rng.random() / 5
            await asyncio.sleep(max(0.0, min(pause, self.deadline - time.monotonic())))

    async def session(self, ep: Endpoint) -> None:
        sid = next(self._session_ids)
        started = self.now()
        ep.active.add(sid)
        self.report.sessions += 1
        phase = "connect"
        conn: asyncpg.Connection | None = None
        txn: Txn | None = None
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                conn = await asyncpg.connect(**self.server.connect_kwargs(ep.name))
            self.connect_ms.append((self.now() - started) * 1000)
            for _ in range(self.rng.randint(1, 4)):
                tid = next(self._txn_ids)
                txn = Txn(ep.name, [next(self._row_ids) for _ in range(self.rng.randint(1, 3))])
                self.txns[tid] = txn
                phase = "transaction"
                async with asyncio.timeout(STEP_TIMEOUT):
                    transaction = conn.transaction()
                    await transaction.start()
                    await conn.execute(
                        "INSERT INTO soak (id, txn, session) SELECT unnest($1::bigint[]), $2, $3",
                        txn.ids,
                        tid,
                        sid,
                    )
                    if self.rng.random() < 0.3:
                        await conn.fetchval("SELECT count(*) FROM soak")
                    phase = "commit"
                    txn.state = "in_doubt"
                    await transaction.commit()
                txn.state = "committed"
                ep.committed.extend(txn.ids)
                self.report.transactions_committed += 1
                self.report.rows_committed += len(txn.ids)
                txn = None
            if self.rng.random() < 0.3 and ep.committed:
                phase = "read"
                # Rows whose COMMIT returned before this read began must all be visible.
                sample = self.rng.sample(ep.committed, min(20, len(ep.committed)))
                async with asyncio.timeout(STEP_TIMEOUT):
                    seen = await conn.fetchval(
                        "SELECT count(*) FROM soak WHERE id = ANY($1::bigint[])", sample
                    )
                if seen != len(sample):
                    self.report.read_misses += len(sample) - seen
                    log(f"READ MISS on {ep.name}: {seen} of {len(sample)} committed rows seen")
            if self.rng.random() < 0.2:
                phase = "hold"
                # Idle in a session past the idle timeout: the session is parked, the compute
                # may suspend under it, and this query must re-attach it.
                await asyncio.sleep(self.rng.uniform(0.5, 2.5))
                async with asyncio.timeout(STEP_TIMEOUT):
                    await conn.fetchval("SELECT 1")
            phase = "close"
            async with asyncio.timeout(STEP_TIMEOUT):
                await conn.close()
            conn = None
            self.report.sessions_ok += 1
            broken = ep.broken
            if (
                broken is not None
                and broken.repaired_at is not None
                and broken.recovered_at is None
                and started >= broken.repaired_at
            ):
                broken.recovered_at = round(self.now(), 3)
                broken.recovered = True
                log(f"broken endpoint {ep.name} recovered")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if txn is not None and txn.state == "open":
                txn.state = "aborted"
            self.record_error(ep, sid, started, phase, exc)
        finally:
            ep.active.discard(sid)
            if conn is not None:
                conn.terminate()

    def record_error(
        self, ep: Endpoint, sid: int, started: float, phase: str, exc: BaseException
    ) -> None:
        sqlstate = getattr(exc, "sqlstate", None)
        error_class = sqlstate if isinstance(sqlstate, str) else type(exc).__name__
        message = str(exc).strip().replace("\n", " ")[:300]
        detail = getattr(exc, "detail", None)
        if detail:
            message += f" (detail: {str(detail)[:200]})"
        broken = ep.broken
        since_kill = None
        if ep.killed_at is not None and self.now() - ep.killed_at < 10:
            since_kill = round((self.now() - ep.killed_at) * 1000)
        if sid in self.killed_sessions:
            verdict = "expected-killed"
        elif (
            broken is not None
            and broken.broken_at is not None
            and self.now() >= broken.broken_at  # the failed start came after the break
            and (broken.recovered_at is None or started < broken.recovered_at)
            and error_class == "57P03"
            and "could not start" in message
        ):
            verdict = "expected-broken"
            broken.failed_starts += 1
            if broken.reason is None and detail:
                broken.reason = str(detail)[:200]
        else:
            verdict = "unexpected"
            log(f"UNEXPECTED {error_class} on {ep.name} ({phase}): {message}")
        self.report.errors.append(
            SessionError(
                round(self.now(), 3),
                ep.name,
                sid,
                phase,
                error_class,
                message,
                verdict,
                since_kill,
                round(started, 3),
            )
        )

    # -- faults ---------------------------------------------------------------------------

    def running_postmaster(self, ep: Endpoint) -> int | None:
        lines = read_postmaster_pid(ep.data_dir)
        if lines is None or len(lines) < 8 or lines[7].strip() != "ready":
            return None
        pid = int(lines[0])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if str(ep.data_dir).encode() in cmdline else None

    def running_count(self) -> int:
        return sum(self.running_postmaster(ep) is not None for ep in self.endpoints.values())

    async def killer(self, interval: float) -> None:
        await asyncio.sleep(min(5.0, interval))
        while time.monotonic() < self.deadline - 2:
            candidates = [
                (ep, pid)
                for ep in self.endpoints.values()
                if ep.broken is None and (pid := self.running_postmaster(ep)) is not None
            ]
            busy = [(ep, pid) for ep, pid in candidates if ep.active]
            if candidates:
                ep, pid = self.rng.choice(busy or candidates)
                # No await between the snapshot and the kill: no session slips in between.
                self.killed_sessions |= ep.active
                ep.killed_at = self.now()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.report.kills.append(Kill(round(ep.killed_at, 3), ep.name, pid, len(ep.active)))
                log(f"SIGKILL postmaster {pid} of {ep.name} ({len(ep.active)} sessions on it)")
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * interval)

    async def breaker(self, ep: Endpoint, break_at: float, repair_at: float) -> None:
        assert ep.broken is not None
        conf = ep.data_dir / "postgresql.conf"
        original = await asyncio.to_thread(conf.read_text)
        try:
            await asyncio.sleep(max(0.0, break_at - self.now()))
            await asyncio.to_thread(conf.write_text, original + BROKEN_LINE)
            ep.broken.broken_at = round(self.now(), 3)
            log(f"broke {ep.name}'s postgresql.conf (its next start fails)")
            # However the load falls, a start is tried (and fails) while it is broken:
            # clients leave it alone until its compute is down, then a session a second.
            ep.avoid = True
            while self.now() < repair_at:
                if self.running_postmaster(ep) is None:
                    ep.avoid = False
                    await self.session(ep)
                await asyncio.sleep(min(1.0, max(0.0, repair_at - self.now())))
        finally:
            ep.avoid = False
            await asyncio.to_thread(conf.write_text, original)
        ep.broken.repaired_at = round(self.now(), 3)
        log(f"repaired {ep.name}'s postgresql.conf")
        # And one session a second until it works again (the start back-off may still run).
        while not ep.broken.recovered and time.monotonic() < self.deadline:
            await self.session(ep)
            await asyncio.sleep(1.0)

    async def monitor(self) -> None:
        for tick in itertools.count(1):
            if time.monotonic() >= self.deadline:
                return
            await asyncio.sleep(1.0)
            running = await asyncio.to_thread(self.running_count)
            self.report.max_running = max(self.report.max_running, running)
            if tick % 10 == 0:
                log(
                    f"t={self.now():.0f} s sessions {self.report.sessions} commits "
                    f"{self.report.transactions_committed} errors {len(self.report.errors)}"
                    f" running {running} kills {len(self.report.kills)}"
                )

    async def probe_recovery(self, ep: Endpoint) -> None:
        """After the load: a broken endpoint that has not recovered yet gets one more
        chance (its start back-off may still run)."""
        assert ep.broken is not None
        deadline = time.monotonic() + RECOVERY_GRACE
        while time.monotonic() < deadline:
            try:
                async with asyncio.timeout(STEP_TIMEOUT):
                    conn = await asyncpg.connect(**self.server.connect_kwargs(ep.name))
                    await conn.fetchval("SELECT 1")
                    await conn.close()
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                if getattr(exc, "sqlstate", None) != "57P03":
                    log(f"recovery probe of {ep.name}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
                continue
            ep.broken.recovered = True
            log(f"broken endpoint {ep.name} recovered after the load")
            return


async def _setup_endpoint(server: Server, name: str) -> None:
    async with asyncio.timeout(120):
        conn = await asyncpg.connect(**server.connect_kwargs(name))
        try:
            await conn.execute(
                "CREATE TABLE soak (id bigint PRIMARY KEY, txn bigint NOT NULL,"
                " session bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())"
            )
        finally:
            await conn.close()


async def _read_rows(server: Server, name: str) -> dict[int, int]:
    async with asyncio.timeout(120):
        conn = await asyncpg.connect(**server.connect_kwargs(name))
        try:
            rows = await conn.fetch("SELECT id, txn FROM soak")
        finally:
            await conn.close()
    return {int(r["id"]): int(r["txn"]) for r in rows}


async def _gather_limited(limit: int, coros: list[Any]) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


def verify(soak: Soak, report: SoakReport, rows_by_endpoint: dict[str, dict[int, int]]) -> None:
    """Compare the rows read back with what the clients know about each transaction."""
    for tid, txn in soak.txns.items():
        if txn.endpoint not in rows_by_endpoint:
            continue
        present = rows_by_endpoint[txn.endpoint]
        found = sum(1 for i in txn.ids if present.get(i) == tid)
        if txn.state == "committed":
            report.lost_rows += len(txn.ids) - found
            if found != len(txn.ids):
                log(f"LOST: txn {tid} on {txn.endpoint}: {found} of {len(txn.ids)} rows")
        elif txn.state == "aborted":
            report.transactions_aborted += 1
            report.phantom_rows += found
        elif txn.state == "in_doubt":
            report.transactions_in_doubt += 1
            if found == len(txn.ids):
                report.in_doubt_present += 1
            elif found:
                report.torn_transactions += 1
    known = {i for txn in soak.txns.values() for i in txn.ids}
    for present in rows_by_endpoint.values():
        report.rows_verified += len(present)
        report.unknown_rows += sum(1 for i in present if i not in known)


async def _stop_and_check(server: Server, report: SoakReport) -> None:
    """Stop pgwake gracefully, then look for postgres processes that outlive it."""
    stop = await asyncio.to_thread(server.stop)
    report.stops.append(stop)
    log(
        f"pgwake ({server.which}) stopped: exit {stop.get('returncode')} "
        f"in {stop.get('seconds', 0):.1f} s"
    )
    right_after = await asyncio.to_thread(postgres_processes, server.state_dir)
    left: dict[int, str] = dict(right_after)
    deadline = time.monotonic() + ORPHAN_GRACE
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        left = await asyncio.to_thread(postgres_processes, server.state_dir)
    report.slow_exits += len(set(right_after) - set(left))
    for pid, what in left.items():
        report.orphans.append(f"after {server.which} stop: {what}")
        log(f"ORPHAN {what}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # a child of ours: do not leave it behind


def _make_work_dir() -> Path:
    """A fresh dir under /tmp whose state dir the compute user can pass through."""
    work = Path(tempfile.mkdtemp(prefix="pgwake-soak-", dir="/tmp"))
    work.chmod(0o711)
    (work / "state").mkdir(mode=0o711)
    (work / "state").chmod(0o711)  # mkdir's mode is masked by the umask
    return work


async def run_soak(
    duration: float = 60.0,
    endpoints: int = 50,
    *,
    clients: int = 16,
    pooled: int = 4,
    kill_interval: float = 4.0,
    broken: int = 2,
    seed: int | None = None,
    keep: bool = False,
) -> SoakReport:
    """Run the soak against a ``pgwake serve`` of its own; return the report (also when
    it failed: ``report.ok`` is False and ``report.problems`` says why)."""
    if os.geteuid() != 0:
        raise RuntimeError("bench/soak.py runs as root (computes run as user pgwake)")
    seed = seed if seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    work = _make_work_dir()
    report = SoakReport(duration, endpoints, clients, seed, str(work))
    procs = Processes()
    server = Server(procs, work, "load")
    soak = Soak(server, report, rng)
    breakers: list[asyncio.Task[None]] = []
    interrupted = False
    try:
        log(f"work dir {work}, seed {seed}")
        await asyncio.to_thread(server.start)
        api = server.client()
        names = [f"soak-{i:02d}" for i in range(endpoints)]
        for name in names:
            idle = round(rng.uniform(1.0, 2.0), 1)
            await asyncio.to_thread(
                api.create_endpoint, name, password=PASSWORD, idle_timeout_seconds=idle
            )
            data_dir = server.state_dir / "computes" / "endpoints" / name / "data"
            soak.endpoints[name] = Endpoint(name, idle, data_dir)
        soak.names = names
        log(f"created {endpoints} endpoints; creating their tables")
        failures = [
            r
            for r in await _gather_limited(4, [_setup_endpoint(server, n) for n in names])
            if isinstance(r, BaseException)
        ]
        if failures:
            raise RuntimeError(f"setting up endpoints failed: {failures[0]!r}")

        soak.t0, soak.t0_wall = time.monotonic(), time.time()
        soak.deadline = soak.t0 + duration
        # The broken endpoints are taken from the cold end (the hot ones stay healthy).
        for index, name in enumerate(names[::-1][:broken]):
            ep = soak.endpoints[name]
            ep.broken = BrokenEndpoint(name)
            report.broken.append(ep.broken)
            break_at = duration * (0.15 + 0.1 * index)
            repair_at = duration * (0.45 + 0.05 * index)
            breakers.append(asyncio.create_task(soak.breaker(ep, break_at, repair_at)))
        log(f"load: {clients} clients for {duration:g} s")
        async with asyncio.TaskGroup() as group:
            loads = [group.create_task(soak.client()) for _ in range(clients)]
            # Clients that never disconnect, one per endpoint of the cold end (the broken
            # endpoints among them): their sessions are parked and re-attached.
            loads += [
                group.create_task(soak.pooled_client(soak.endpoints[name]))
                for name in names[::-1][: max(1, pooled)]
            ]
            group.create_task(soak.killer(kill_interval))
            group.create_task(soak.monitor())
            # A client still in a session at the deadline finishes it (steps are bounded).
            _, pending = await asyncio.wait(loads, timeout=duration + DRAIN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                report.problems.append(f"run: {len(pending)} clients hung past the deadline")
        for task in breakers:
            await task
        for item in report.broken:
            if not item.recovered:
                await soak.probe_recovery(soak.endpoints[item.endpoint])
        log(f"load done: {report.sessions} sessions, {len(report.errors)} errors")

        samples = await asyncio.to_thread(server.metrics)
        report.loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
        report.wakes = summed(samples, "pgwake_wakes_total", "outcome")
        # Summed over the backend label: one key for all.
        wake_sum = sum(summed(samples, "pgwake_wake_duration_seconds_sum", "").values())
        wake_count = sum(summed(samples, "pgwake_wake_duration_seconds_count", "").values())
        report.wake_ms_mean = wake_sum / wake_count * 1000 if wake_count else 0.0
        report.suspends = summed(samples, "pgwake_suspends_total", "reason")
        report.parks = summed(samples, "pgwake_parks_total", "outcome")
        report.reattaches = summed(samples, "pgwake_reattaches_total", "outcome")
        report.pgwake_errors = {
            f"{labels.get('sqlstate')}/{labels.get('kind')}": value
            for labels, value in samples.get("pgwake_client_errors_total", [])
            if value
        }
        await _stop_and_check(server, report)
        report.pgwake_log = scan_log(server.log_path)
        annotate_states(report.errors, server.log_path, soak.t0_wall)

        # Read every endpoint's rows back through a fresh pgwake on the same state dir.
        reader = Server(procs, work, "verify")
        await asyncio.to_thread(reader.start)
        results = await _gather_limited(4, [_read_rows(reader, n) for n in names])
        rows_by_endpoint: dict[str, dict[int, int]] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                report.unverified_endpoints.append(name)
                log(f"reading {name} failed: {result!r}")
            else:
                rows_by_endpoint[name] = result
        verify(soak, report, rows_by_endpoint)
        await _stop_and_check(reader, report)
    except Exception as exc:
        report.problems.append(f"run: {type(exc).__name__}: {exc}")
        log(f"FAILED: {exc!r}")
    except asyncio.CancelledError:
        interrupted = True
        raise
    finally:
        for task in breakers:
            if not task.done():
                task.cancel()
        # The breakers restore postgresql.conf in their own finally.
        await asyncio.gather(*breakers, return_exceptions=True)
        procs.stop_all()
        for pid in postgres_processes(work / "state"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        report.killed_sessions = len(soak.killed_sessions)
        if soak.connect_ms:
            report.connect_ms_p50 = percentile(soak.connect_ms, 0.5)
            report.connect_ms_p99 = percentile(soak.connect_ms, 0.99)
            report.connect_ms_max = max(soak.connect_ms)
        report.judge()
        if keep or (not report.ok and not interrupted):
            log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--endpoints", type=int, default=50, help="endpoints (50)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--pooled", type=int, default=4, help="clients that never disconnect (4)")
    parser.add_argument(
        "--kill-interval", type=float, default=4.0, help="mean seconds between kills (4)"
    )
    parser.add_argument("--broken", type=int, default=2, help="endpoints made to fail (2)")
    parser.add_argument("--seed", type=int, help="random seed (default: a random one)")
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()

    async def run() -> SoakReport:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run_soak(
            args.duration,
            args.endpoints,
            clients=args.clients,
            pooled=args.pooled,
            kill_interval=args.kill_interval,
            broken=args.broken,
            seed=args.seed,
            keep=args.keep,
        )

    try:
        report = uvloop.run(run())
    except (asyncio.CancelledError, KeyboardInterrupt):
        log("interrupted; everything started here was stopped")
        return 130
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
