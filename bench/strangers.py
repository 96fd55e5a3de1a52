#!/usr/bin/env python3
"""Strangers: what connections that never prove a password cost pgwake and a running
endpoint.

    python bench/strangers.py [--strangers 1000] [--runs 200] [--rounds 3] [--json FILE]

A stranger knows an endpoint's name and a real role (``app``) but not the password. Each
one connects, sends a StartupMessage naming the endpoint, reads AuthenticationSASL,
sends a SCRAM client-first-message, reads the server-first-message, and then stalls
without ever sending a proof. pgwake must hold such a connection for little memory, let
it slow nobody else down, and open nothing on the compute for it. On a running endpoint,
with ``pgwake serve`` started for this part (its defaults, but a ``startup_timeout`` long
enough that no stranger is dropped while it is measured), this measures:

1. pgwake's memory (VmRSS, and USS from ``smaps_rollup``) at idle, then with the
   strangers held, on a freshly started pgwake (target: < 30 MB above idle);
2. warm connect + ``SELECT 1`` + close through pgwake (libpq, SCRAM), a block of
   ``--runs`` on the idle server and a block with the strangers held, back to back, in
   ``--rounds`` rounds (the order alternates; the strangers are opened and closed in
   each round), since other work on a shared machine moves p50 by more than the
   strangers could (target: the median over rounds of p50 with / p50 without <= 2);
3. the processes of the endpoint's compute (postmaster and its children) right before
   and once the strangers are held, every round (target: no more).

The strangers come from 127.0.0.2, 127.0.0.3, ... (all of 127/8 is loopback), as many
per address as pgwake's default ``max_unauthenticated_per_address`` admits, so pgwake
runs with its own limits and the legitimate client (127.0.0.1) has an address of its
own. One more stranger from the first, full, address must be refused (53300).

Run as root, like ``core.py``. Everything runs on loopback in a fresh work directory
under /tmp and is stopped and removed at the end; every stranger's socket is closed.
``run_part`` does the same on the suite's own work directory (``bench/run.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import statistics
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import core, scale
from pgwake.settings import Settings

__all__ = [
    "COUNT",
    "LATENCY_RATIO_TARGET",
    "PER_ADDRESS",
    "RSS_TARGET_MIB",
    "SERVE_ARGS",
    "StrangerResult",
    "StrangerRound",
    "compute_processes",
    "measure",
    "one_more_refused",
    "open_strangers",
    "run_part",
    "sources",
]

#: Strangers held at once.
COUNT = 1000
#: Seconds a connection has for its startup and SCRAM exchange (pgwake's default is far
#: shorter): the strangers must outlive every round, however slow the machine.
STARTUP_TIMEOUT = 120.0
#: ``pgwake serve`` for this part: its defaults (its own unauthenticated-connection
#: limits included), but for the startup timeout.
SERVE_ARGS = ["--startup-timeout", f"{STARTUP_TIMEOUT:g}"]
#: pgwake's default per-address budget of connections still authenticating.
PER_ADDRESS = int(Settings.model_fields["max_unauthenticated_per_address"].default)
#: Targets: memory above idle with ``COUNT`` strangers, and warm connect p50 ratio.
RSS_TARGET_MIB = 30.0
LATENCY_RATIO_TARGET = 2.0

# Protocol constants (Postgres ``src/include/libpq/pqcomm.h``).
_PROTOCOL_3_0 = 3 << 16
_AUTH_SASL = 10
_AUTH_SASL_CONTINUE = 11
_MESSAGE_HEADER = struct.Struct("!ci")


# -- the wire, by hand: a stranger is not a client library --------------------------------


def _startup(endpoint: str) -> bytes:
    params = {"user": core.ROLE, "database": core.DATABASE, "options": f"endpoint={endpoint}"}
    body = struct.pack("!i", _PROTOCOL_3_0)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", 4 + len(body)) + body


def _sasl_initial_response(client_first: bytes) -> bytes:
    body = b"SCRAM-SHA-256\0" + struct.pack("!i", len(client_first)) + client_first
    return b"p" + struct.pack("!i", 4 + len(body)) + body


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise core.BenchError("pgwake closed a stranger's connection")
        data += chunk
    return data


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    kind, length = _MESSAGE_HEADER.unpack(_recv_exactly(sock, _MESSAGE_HEADER.size))
    return kind, _recv_exactly(sock, length - 4)


def _error_fields(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in body.split(b"\0"):
        if item:
            fields[chr(item[0])] = item[1:].decode(errors="replace")
    return fields


def _expect_auth(sock: socket.socket, code: int) -> bytes:
    """The body after the code of the next message, an Authentication ``code``."""
    kind, body = _read_message(sock)
    if kind == b"E":
        fields = _error_fields(body)
        raise core.BenchError(f"stranger refused: {fields.get('C')} {fields.get('M')}")
    if kind != b"R" or struct.unpack_from("!i", body)[0] != code:
        raise core.BenchError(f"stranger expected Authentication {code}, got {kind!r} {body!r}")
    return body[4:]


# -- strangers ------------------------------------------------------------------------------


def sources(count: int, per_address: int = PER_ADDRESS) -> list[str]:
    """The source address of each of ``count`` strangers: ``per_address`` from 127.0.0.2,
    then as many from 127.0.0.3, and so on."""
    return [f"127.0.0.{2 + index // per_address}" for index in range(count)]


def open_strangers(
    port: int, endpoint: str, addresses: list[str], into: list[socket.socket]
) -> None:
    """Open one stranger per address in ``addresses``, each stalled after the
    server-first-message, appending every socket to ``into`` as soon as it exists (the
    caller closes them, also when this raises).

    In three passes (connect and startup, AuthenticationSASL and client-first,
    server-first), so that pgwake handles them the way a flood arrives: together."""
    for address in addresses:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        into.append(sock)
        sock.settimeout(30)
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(_startup(endpoint))
    nonces: list[bytes] = []
    for sock in into:
        _expect_auth(sock, _AUTH_SASL)
        nonce = secrets.token_urlsafe(18).encode()
        nonces.append(nonce)
        sock.sendall(_sasl_initial_response(b"n,,n=,r=" + nonce))
    for sock, nonce in zip(into, nonces, strict=True):
        server_first = _expect_auth(sock, _AUTH_SASL_CONTINUE)
        if not server_first.startswith(b"r=" + nonce):
            raise core.BenchError(f"unexpected server-first-message {server_first!r}")


def _still_held(sock: socket.socket) -> bool:
    """Whether pgwake still holds the stranger: nothing to read, and no end of stream."""
    sock.setblocking(False)
    try:
        return not sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(30)


def one_more_refused(port: int, endpoint: str, address: str) -> str:
    """Open one more stranger from ``address``; return the SQLSTATE pgwake answers with,
    or ``"admitted"`` when it offers SASL instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):  # refused before it reads: the send may fail
            sock.sendall(_startup(endpoint))
        kind, body = _read_message(sock)
    if kind == b"E":
        return _error_fields(body).get("C", "?")
    return "admitted"


def compute_processes(data_dir: Path) -> list[str]:
    """The titles of the compute running on ``data_dir``: its postmaster and every child
    (background workers, backends, and backends forked but still waiting for a startup
    packet, which keep the postmaster's command line until they get one)."""
    lines = core.read_postmaster_pid(data_dir)
    if lines is None:
        raise core.BenchError(f"no compute runs on {data_dir}")
    postmaster = int(lines[0])
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # The command name may hold spaces and parentheses: fields follow the last ")".
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if int(entry.name) == postmaster:
                found.append("postmaster")
            elif parent == postmaster:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                found.append(title if title.startswith("postgres:") else "awaiting a startup")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


# -- the measurement ----------------------------------------------------------------------


@dataclass
class StrangerRound:
    """One round: a block of warm connects on the idle server and one with the strangers
    held, back to back (which comes first alternates from round to round)."""

    strangers_first: bool
    #: Warm connect + SELECT 1 + close, ms: no strangers, and the strangers held.
    idle_ms: list[float] = field(default_factory=list)
    with_ms: list[float] = field(default_factory=list)
    #: The compute's processes right before the strangers were opened, and once they
    #: were all held (no other client in between); then after the warm connects made
    #: with them held (info: a client's backend may still be being reset and kept then).
    compute_before: list[str] = field(default_factory=list)
    compute_with: list[str] = field(default_factory=list)
    compute_after_runs: list[str] = field(default_factory=list)
    open_seconds: float = 0.0
    held_seconds: float = 0.0
    #: Strangers pgwake still held at the end of the round.
    still_held: int = 0

    @property
    def ratio(self) -> float:
        return statistics.median(self.with_ms) / statistics.median(self.idle_ms)


@dataclass
class StrangerResult:
    """Memory (first round: pgwake's heap fresh), warm-connect latency and compute
    processes (every round), without and with the strangers held."""

    strangers: int
    per_address: int
    addresses: list[str]
    rounds: list[StrangerRound] = field(default_factory=list)
    #: pgwake's memory in the first round: idle, with the strangers (after opening them,
    #: after the warm connects), after they closed.
    idle: scale.MemorySample | None = None
    held: list[scale.MemorySample] = field(default_factory=list)
    after_close: scale.MemorySample | None = None
    #: pgwake's ``pgwake_unauthenticated_connections`` with the strangers held.
    unauthenticated_gauge: float | None = None
    #: What pgwake answered one more stranger from the first (full) address.
    over_limit: str | None = None

    @property
    def rss_above_idle_mib(self) -> float:
        assert self.idle is not None
        return (max(s.rss_kib for s in self.held) - self.idle.rss_kib) / 1024

    @property
    def uss_above_idle_mib(self) -> float:
        assert self.idle is not None
        return (max(s.uss_kib for s in self.held) - self.idle.uss_kib) / 1024

    @property
    def latency_ratio(self) -> float:
        """The median over rounds of p50 with the strangers / p50 without."""
        return statistics.median(r.ratio for r in self.rounds)

    @property
    def compute_grew(self) -> bool:
        return any(len(r.compute_with) > len(r.compute_before) for r in self.rounds)

    @property
    def still_held(self) -> int:
        return min(r.still_held for r in self.rounds)

    @property
    def rss_ok(self) -> bool:
        return self.rss_above_idle_mib < RSS_TARGET_MIB

    @property
    def latency_ok(self) -> bool:
        return self.latency_ratio <= LATENCY_RATIO_TARGET

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """(metric, measured, baseline, ratio, target, met?) rows."""
        assert self.idle is not None
        n = f"{self.strangers:,}"
        held_rss = max(s.rss_kib for s in self.held) / 1024
        held_uss = max(s.uss_kib for s in self.held) / 1024
        idle_rss, idle_uss = self.idle.rss_kib / 1024, self.idle.uss_kib / 1024
        idle50 = statistics.median(t for r in self.rounds for t in r.idle_ms)
        with50 = statistics.median(t for r in self.rounds for t in r.with_ms)
        before = max(len(r.compute_before) for r in self.rounds)
        held = max(len(r.compute_with) for r in self.rounds)
        after_runs = max(len(r.compute_after_runs) for r in self.rounds)
        rows = [
            (
                f"pgwake RSS with {n} stalled strangers, MiB (vs idle)",
                f"{held_rss:.1f} (+{self.rss_above_idle_mib:.1f})",
                f"{idle_rss:.1f}",
                f"{held_rss / idle_rss:.2f}",
                f"< {RSS_TARGET_MIB:g} MB above idle",
                _met(self.rss_ok),
            ),
            (
                f"pgwake USS with {n} stalled strangers, MiB (vs idle)",
                f"{held_uss:.1f} (+{self.uss_above_idle_mib:.1f})",
                f"{idle_uss:.1f}",
                f"{held_uss / idle_uss:.2f}",
                "(info)",
                "-",
            ),
            (
                "RSS per stranger, KiB",
                f"{self.rss_above_idle_mib * 1024 / self.strangers:.1f}",
                "-",
                "-",
                "(info)",
                "-",
            ),
            (
                f"warm connect+SELECT 1+close p50 with {n} strangers held, ms (vs idle,"
                " back to back)",
                f"{with50:.2f}",
                f"{idle50:.2f}",
                f"{self.latency_ratio:.2f} ("
                + ", ".join(f"{r.ratio:.2f}" for r in self.rounds)
                + ")",
                f"ratio <= {LATENCY_RATIO_TARGET:g}",
                _met(self.latency_ok),
            ),
            (
                f"compute processes with {n} strangers held (vs right before)",
                str(held),
                str(before),
                f"{held / before:.2f}",
                "no more",
                _met(not self.compute_grew),
            ),
            (
                "compute processes after the warm connects made with them (vs right before)",
                str(after_runs),
                str(before),
                f"{after_runs / before:.2f}",
                "(info)",
                "-",
            ),
            (
                "strangers still held at the end of each round (fewest)",
                f"{self.still_held:,} of {n}",
                "-",
                "-",
                "all",
                _met(self.still_held == self.strangers),
            ),
            (
                "`pgwake_unauthenticated_connections` with the strangers held",
                "-" if self.unauthenticated_gauge is None else f"{self.unauthenticated_gauge:.0f}",
                "-",
                "-",
                "(info)",
                "-",
            ),
        ]
        if self.over_limit is not None:
            rows.append(
                (
                    f"one more stranger from {self.addresses[0]} (holding {self.per_address})",
                    self.over_limit,
                    "-",
                    "-",
                    "53300",
                    _met(self.over_limit == "53300"),
                )
            )
        return rows

    def table(self) -> str:
        header = ("metric", "measured", "baseline", "ratio", "target", "met?")
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in self.rows()]
        return "\n".join(out)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _timed_runs(info: bytes, runs: int) -> list[float]:
    return [core.timed_connect_select_close(info) for _ in range(runs)]


def _processes_text(processes: list[str]) -> str:
    """``postgres: app app x1, postmaster x1, ...``: what the compute's processes are."""
    kinds: dict[str, int] = {}
    for line in processes:
        words = line.split()
        # "postgres: app app 127.0.0.1(5432) idle" -> "postgres: app app"
        kind = " ".join(words[:3]) if len(words) > 3 else line
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{kind} x{count}" for kind, count in sorted(kinds.items()))


def _round(
    setup: core.Setup,
    endpoint: str,
    addresses: list[str],
    runs: int,
    result: StrangerResult,
    number: int,
) -> StrangerRound:
    """One round; the first also measures memory and the per-address limit."""
    assert setup.pgwake_process is not None
    pid = setup.pgwake_process.pid
    info = setup.via_pgwake(endpoint)
    data_dir = setup.endpoint_data(endpoint)
    first = number == 0
    this = StrangerRound(strangers_first=number % 2 == 1)
    if not this.strangers_first:
        this.idle_ms = _timed_runs(info, runs)
    time.sleep(1)  # every closed connection's backend is kept or gone by now
    if first:
        result.idle = scale.memory(pid, 0)
    this.compute_before = compute_processes(data_dir)
    socks: list[socket.socket] = []
    started = time.monotonic()
    try:
        open_strangers(setup.proxy_port, endpoint, addresses, socks)
        this.open_seconds = time.monotonic() - started
        time.sleep(1)
        this.compute_with = compute_processes(data_dir)
        if first:
            result.held.append(scale.memory(pid, len(socks)))
            result.unauthenticated_gauge = core.summed_samples(
                setup.metrics_text(), "pgwake_unauthenticated_connections"
            )
            if len(addresses) >= PER_ADDRESS:
                result.over_limit = one_more_refused(setup.proxy_port, endpoint, addresses[0])
        this.with_ms = _timed_runs(info, runs)
        time.sleep(1)
        this.compute_after_runs = compute_processes(data_dir)
        if first:
            result.held.append(scale.memory(pid, len(socks)))
        this.still_held = sum(_still_held(sock) for sock in socks)
        this.held_seconds = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    time.sleep(2)  # pgwake notices every close
    if first:
        result.after_close = scale.memory(pid, 0)
    if this.strangers_first:
        this.idle_ms = _timed_runs(info, runs)
    return this


def measure(
    setup: core.Setup, endpoint: str, count: int = COUNT, runs: int = 200, rounds: int = 3
) -> StrangerResult:
    """Measure ``count`` strangers on ``endpoint`` through the running pgwake (which must
    have been started with ``SERVE_ARGS``) in ``rounds`` rounds of ``runs`` warm connects
    without and with them; wakes the endpoint first. Every stranger's socket is closed
    before this returns or raises."""
    addresses = sources(count)
    result = StrangerResult(count, PER_ADDRESS, sorted(set(addresses)))
    _timed_runs(setup.via_pgwake(endpoint), 10)  # wakes the endpoint; warm-up, unmeasured
    for number in range(rounds):
        this = _round(setup, endpoint, addresses, runs, result, number)
        result.rounds.append(this)
        if number == 0:
            assert result.idle is not None
            core.log(
                f"strangers: {count} held from {', '.join(result.addresses)}; pgwake RSS"
                f" {result.idle.rss_kib / 1024:.1f} MiB idle,"
                f" {max(s.rss_kib for s in result.held) / 1024:.1f} MiB with them"
            )
        core.log(
            f"strangers round {number + 1}/{rounds}: opened in {this.open_seconds:.1f} s,"
            f" {this.still_held} still held after {this.held_seconds:.1f} s; warm p50"
            f" {statistics.median(this.idle_ms):.2f} ms idle,"
            f" {statistics.median(this.with_ms):.2f} ms with them; compute processes"
            f" {len(this.compute_before)} -> {len(this.compute_with)}"
            f" ({_processes_text(this.compute_with)})"
        )
        if this.still_held < count:  # the figures stand, but not for all the strangers
            core.log(
                f"strangers: pgwake dropped {count - this.still_held} of {count} in round"
                f" {number + 1} ({this.held_seconds:.0f} s; startup timeout"
                f" {STARTUP_TIMEOUT:g} s)"
            )
    return result


def run_part(
    setup: core.Setup, endpoint: str, count: int = COUNT, runs: int = 200, rounds: int = 3
) -> StrangerResult:
    """Restart pgwake with ``SERVE_ARGS`` (its computes suspend on the way out, and its
    heap starts fresh), then ``measure``."""
    if setup.pgwake_process is not None:
        setup.procs.stop(setup.pgwake_process)
        setup.pgwake_process = None
    core.start_pgwake(setup, SERVE_ARGS)
    return measure(setup, endpoint, count, runs, rounds)


# -- main ----------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--strangers", type=int, default=COUNT, help=f"strangers held at once (default {COUNT})"
    )
    parser.add_argument(
        "--runs", type=int, default=200, help="warm connects per block (default 200)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds without and with strangers (default 3)"
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
        print(f"bench/strangers.py cannot run here: {problem}", file=sys.stderr)
        return 2
    limit = scale.raise_fd_limit()
    if limit < args.strangers + 1000:
        print(f"{args.strangers} strangers need more open files than {limit}", file=sys.stderr)
        return 2
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with core.interruptible():
        try:
            with core.environment(args.pg_bindir, keep=args.keep) as setup:
                core.start_pgwake(setup, SERVE_ARGS)
                core.create_endpoint(setup, core.WARM_ENDPOINT, 600.0)
                result = measure(setup, core.WARM_ENDPOINT, args.strangers, args.runs, args.rounds)
        except KeyboardInterrupt:
            core.log("interrupted; everything started here was stopped")
            return 130
        except core.BenchError as exc:
            core.log(f"FAILED: {exc}")
            return 1
    print(
        f"pgwake serve {' '.join(SERVE_ARGS)}; {args.rounds} rounds of {args.runs} warm"
        " connects without and with the strangers"
    )
    print(
        f"load average at start / end: {loadavg} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
