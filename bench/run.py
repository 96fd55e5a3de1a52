#!/usr/bin/env python3
"""pgwake's bench suite in one command: every measurement, one results file, PNG plots.

    python bench/run.py [--quick] [--out bench/results] [--skip PART]

Runs as root on the machine it measures (computes, the raw postgres and PgBouncer run as
user ``pgwake``), on loopback only, in fresh work directories under /tmp; everything it
starts is stopped and removed at the end, also on Ctrl-C or SIGTERM. Parts, in order:

1. cold connect through pgwake vs a raw ``postgres`` start (``core.py``);
2. warm connect through pgwake vs the compute's socket (``core.py``);
3. ``pgbench -S`` and ``pgbench -S -C`` through pgwake, direct and PgBouncer (session
   mode, SCRAM), rounds alternated, ratios per pair;
4. 500 clients at once on one suspended endpoint: all must succeed, one compute start;
5. 5,000 idle client sessions: pgwake's (and PgBouncer's) memory per session;
6. 1,000 stalled strangers (no proof) on a running endpoint: pgwake's memory, warm
   connects beside them, the compute's processes (``strangers.py``);
7. parking (``parking.py``): 1,000 parked sessions' memory, re-attach latency, an ORM
   pool across suspends, ``pgbench -S`` through HEAD vs the commit before parking;
8. control plane: creates, 1,000 endpoints, wakes (``control.py``);
9. the soak (``soak.py``'s ``run_soak``), short.

Writes ``<out>/<date>.md`` (``<date>-quick.md`` with ``--quick``) and its PNGs beside it,
and prints the same Markdown to stdout. ``--quick`` is a smoke run of a few minutes; the
full run takes about a quarter of an hour. Exit status 1 when a part failed (the results
file says which); a target not met is a finding, not a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import inspect
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import control, core, docker_cold, parking, report, scale, strangers

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent
PARTS = (
    "cold",
    "warm",
    "pgbench",
    "pgbench-C",
    "burst",
    "idle",
    "strangers",
    "parking",
    "control",
    "soak",
    "docker",
)
#: The parts that run on one work directory, through ``run_with_pgwake``.
PGWAKE_PARTS = frozenset(PARTS[:7])
BURST_ENDPOINT = "burst"
#: The burst endpoint's compute gets room for every client (the template allows 300).
BURST_MAX_CONNECTIONS = 600
#: A load test from one address, not a flood: every bench client comes from 127.0.0.1,
#: and every client of the burst holds a session on one endpoint at once (default cap
#: 250) after authenticating at the same time as the others (default cap of connections
#: still authenticating: 200 per address). The cap of those from all addresses (2,000)
#: has room for the burst's 500.
SERVE_ARGS = [
    "--max-endpoint-connections",
    "1000",
    "--max-unauthenticated-per-address",
    "2000",
]
#: The warm connect once more with server reuse off: every connect gets a new backend
#: (forked ahead of time, a warm socket) and logs in on the compute.
NO_REUSE_ARGS = ["--server-reuse-seconds", "0"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    cold_runs: int
    warm_runs: int
    pgbench_seconds: int
    pgbench_rounds: int
    burst_clients: int
    burst_repeats: int
    strangers: int
    stranger_runs: int
    stranger_rounds: int
    idle_endpoints: int
    idle_per_endpoint: int
    idle_step: int
    creates: int
    density: int
    wakes: int
    soak_duration: float
    soak_endpoints: int
    parking_sessions: int
    parking_endpoints: int
    parking_runs: int
    parking_cycles: int
    parking_pgbench_seconds: int
    parking_pgbench_rounds: int
    clients: int = 8
    threads: int = 2


FULL = Plan(
    cold_runs=30,
    warm_runs=200,
    pgbench_seconds=10,
    pgbench_rounds=3,
    burst_clients=500,
    burst_repeats=3,
    strangers=1000,
    stranger_runs=200,
    stranger_rounds=3,
    idle_endpoints=50,
    idle_per_endpoint=100,
    idle_step=1000,
    creates=100,
    density=1000,
    wakes=100,
    soak_duration=60.0,
    soak_endpoints=50,
    parking_sessions=1000,
    parking_endpoints=20,
    parking_runs=30,
    parking_cycles=20,
    parking_pgbench_seconds=10,
    parking_pgbench_rounds=5,
)
QUICK = Plan(
    cold_runs=5,
    warm_runs=30,
    pgbench_seconds=3,
    pgbench_rounds=1,
    burst_clients=500,
    burst_repeats=1,
    strangers=1000,
    stranger_runs=50,
    stranger_rounds=3,
    idle_endpoints=5,
    idle_per_endpoint=100,
    idle_step=100,
    creates=10,
    density=50,
    wakes=5,
    soak_duration=15.0,
    soak_endpoints=10,
    parking_sessions=200,
    parking_endpoints=5,
    parking_runs=5,
    parking_cycles=20,
    parking_pgbench_seconds=3,
    parking_pgbench_rounds=2,
)


def part(results: report.Results, name: str, action: Callable[[], T]) -> T | None:
    """Run one part; a failure is logged and recorded, and the suite goes on."""
    core.log(f"== {name}")
    started = time.monotonic()
    try:
        value = action()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        results.errors[name] = f"{type(exc).__name__}: {exc}".strip()
        core.log(f"{name} FAILED: {exc}")
        if not isinstance(exc, core.BenchError):
            traceback.print_exc()
        return None
    core.log(f"== {name} done in {time.monotonic() - started:.0f} s")
    return value


# -- the parts that share one pgwake -----------------------------------------------------


def restart_pgwake(setup: core.Setup, serve_args: list[str]) -> None:
    """Stop pgwake (its computes suspend on the way out), start it with ``serve_args``,
    and wake the warm endpoint again."""
    if setup.pgwake_process is not None:
        setup.procs.stop(setup.pgwake_process)
        setup.pgwake_process = None
    core.start_pgwake(setup, serve_args)
    core.timed_connect_select(setup.via_pgwake(core.WARM_ENDPOINT))


def run_warm_no_reuse(setup: core.Setup, plan: Plan) -> core.WarmResults:
    """The warm part again, right after it, through a pgwake with server reuse off; then
    pgwake as the later parts expect it."""
    restart_pgwake(setup, [*SERVE_ARGS, *NO_REUSE_ARGS])
    try:
        return core.measure_warm(setup, plan.warm_runs)
    finally:
        restart_pgwake(setup, SERVE_ARGS)


def run_pgbench(setup: core.Setup, plan: Plan, results: report.Results, skip: set[str]) -> None:
    core.start_pgbouncer(
        setup,
        setup.compute_socket_dir(core.WARM_ENDPOINT),
        pool_size=plan.clients + 4,
        secret=setup.verifier(core.WARM_ENDPOINT),
    )
    direct = core.pgbench_env(str(setup.compute_socket_dir(core.WARM_ENDPOINT)), core.COMPUTE_PORT)
    core.log("pgbench -i -s 1 (direct)")
    core.run_pgbench(["-i", "-s", "1", "-q"], direct, timeout=300)
    args = (setup, plan.pgbench_seconds, plan.pgbench_rounds, plan.clients, plan.threads)
    if "pgbench" not in skip:
        results.pgbench = part(
            results, "pgbench -S", lambda: core.measure_pgbench(*args, initialise=False)
        )
    if "pgbench-C" not in skip:
        results.pgbench_connect = part(
            results,
            "pgbench -S -C",
            lambda: core.measure_pgbench(*args, ["-C"], initialise=False),
        )
    if setup.pgbouncer_process is not None:
        setup.procs.stop(setup.pgbouncer_process)
        setup.pgbouncer_process = None


def run_burst(setup: core.Setup, plan: Plan) -> scale.BurstResult:
    core.create_endpoint(setup, BURST_ENDPOINT, 600.0)
    core.timed_connect_select(setup.via_pgwake(BURST_ENDPOINT))  # first start: the verifier
    core.api(setup).suspend_endpoint(BURST_ENDPOINT)
    setup.wait_suspended(BURST_ENDPOINT)
    # pgwake has no per-endpoint Postgres settings: the data dir's own postgresql.conf
    # (read at every start) gets the room.
    with open(setup.endpoint_data(BURST_ENDPOINT) / "postgresql.conf", "a") as conf:
        conf.write(
            f"\n# bench/run.py: room for the burst\nmax_connections = {BURST_MAX_CONNECTIONS}\n"
        )
    return scale.burst(setup, BURST_ENDPOINT, plan.burst_clients, plan.burst_repeats)


def run_idle(setup: core.Setup, plan: Plan, results: report.Results) -> None:
    names = [f"idle{i:02d}" for i in range(plan.idle_endpoints)]
    for name in names:
        core.create_endpoint(setup, name, 600.0)
    # A fresh pgwake (the old one suspends its computes on the way out), so the figures
    # are not flattered by a heap that earlier parts already grew.
    if setup.pgbouncer_process is not None:
        setup.procs.stop(setup.pgbouncer_process)
        setup.pgbouncer_process = None
    if setup.pgwake_process is not None:
        setup.procs.stop(setup.pgwake_process)
    core.start_pgwake(setup, SERVE_ARGS)
    api = core.api(setup)
    for name in names:
        api.wake_endpoint(name)
        core.timed_connect_select_close(setup.via_pgwake(name))  # code paths warm
    total = plan.idle_endpoints * plan.idle_per_endpoint
    # pgwake holds two sockets per session (client and compute); so does PgBouncer.
    needed = 2 * total + 1000
    if (limit := resource.getrlimit(resource.RLIMIT_NOFILE)[0]) < needed:
        raise core.BenchError(
            f"{total} idle sessions need an open-file limit of at least {needed}, this"
            f" process has {limit} and cannot raise it (ulimit -Hn)"
        )
    assert setup.pgwake_process is not None
    pid = setup.pgwake_process.pid
    targets = [scale.asyncpg_kwargs(setup, name) for name in names]
    idle = part(
        results,
        "idle via pgwake",
        lambda: scale.hold_idle("pgwake", pid, targets, total, plan.idle_step),
    )
    if idle is not None:
        results.idle["pgwake"] = idle

    def via_pgbouncer() -> scale.IdleResult:
        bouncer = core.start_pgbouncer(
            setup,
            databases={name: setup.compute_socket_dir(name) for name in names},
            pool_size=plan.idle_per_endpoint + 10,
            secret=core.PASSWORD,
            max_client_conn=total + 100,
            name="pgbouncer-idle",
        )
        targets = [
            {
                "host": "127.0.0.1",
                "port": setup.pgbouncer_port,
                "user": core.ROLE,
                "password": core.PASSWORD,
                "database": name,
                "ssl": False,
            }
            for name in names
        ]
        try:
            return scale.hold_idle("pgbouncer", bouncer.pid, targets, total, plan.idle_step)
        finally:
            setup.procs.stop(bouncer)
            setup.pgbouncer_process = None

    idle = part(results, "idle via PgBouncer", via_pgbouncer)
    if idle is not None:
        results.idle["pgbouncer"] = idle
    for name in names:  # give the computes' memory back before the next part
        api.suspend_endpoint(name)


def run_with_pgwake(
    results: report.Results, plan: Plan, args: argparse.Namespace, skip: set[str]
) -> None:
    """Parts 1-6, on one work directory; pgwake restarts for the warm connect without
    server reuse, for the idle part and for the strangers part."""
    with core.environment(args.pg_bindir, keep=args.keep) as setup:
        core.prepare_core(setup, SERVE_ARGS)
        results.machine["pgwake serve"] = " ".join(["pgwake serve", *SERVE_ARGS])
        if "cold" not in skip:
            results.cold = part(
                results, "cold", lambda: core.measure_cold(setup, plan.cold_runs, 0.1)
            )
            results.wake_ms = core.mean_wake_ms(setup.metrics_text())
        if "warm" not in skip:
            results.warm = part(results, "warm", lambda: core.measure_warm(setup, plan.warm_runs))
            results.machine["pgwake serve (warm, no server reuse)"] = " ".join(
                ["pgwake serve", *SERVE_ARGS, *NO_REUSE_ARGS]
            )
            results.warm_no_reuse = part(
                results, "warm, no server reuse", lambda: run_warm_no_reuse(setup, plan)
            )
        if not {"pgbench", "pgbench-C"} <= skip:
            part(results, "pgbench setup", lambda: run_pgbench(setup, plan, results, skip))
        if "burst" not in skip:
            results.burst = part(results, "burst", lambda: run_burst(setup, plan))
        if "idle" not in skip:
            part(results, "idle setup", lambda: run_idle(setup, plan, results))
        if "strangers" not in skip:
            # pgwake's own limits on connections still authenticating, not SERVE_ARGS':
            # the strangers are spread over as many addresses as those limits need.
            results.machine["pgwake serve (strangers)"] = " ".join(
                ["pgwake serve", *strangers.SERVE_ARGS]
            )
            results.strangers = part(
                results,
                "strangers",
                lambda: strangers.run_part(
                    setup,
                    core.WARM_ENDPOINT,
                    plan.strangers,
                    plan.stranger_runs,
                    plan.stranger_rounds,
                ),
            )
        if setup.metrics_errors:
            results.notes.append(f"GET /metrics failed {setup.metrics_errors} times (retried)")
        if results.errors:
            save_logs(setup.workdir)


def save_logs(workdir: Path) -> None:
    """Copy the work directory's logs (not its data) somewhere that outlives it."""
    target = Path(f"/tmp/pgwake-bench-logs-{time.strftime('%Y%m%d-%H%M%S')}")
    target.mkdir()
    for path in [*workdir.glob("*.log"), *workdir.glob("pgbouncer*/pgbouncer.log")]:
        shutil.copy(path, target / f"{path.parent.name}-{path.name}")
    core.log(f"a part failed: logs kept in {target}")


def run_parking(plan: Plan, args: argparse.Namespace) -> parking.ParkingResult:
    """``parking.py``'s four measurements, in a work directory of their own."""
    return parking.run_parking(
        args.pg_bindir,
        sessions=plan.parking_sessions,
        endpoints=plan.parking_endpoints,
        runs=plan.parking_runs,
        cycles=plan.parking_cycles,
        pgbench_seconds=plan.parking_pgbench_seconds,
        pgbench_rounds=plan.parking_pgbench_rounds,
        keep=args.keep,
    )


# -- the soak (bench/soak.py, another engineer's) ---------------------------------------


def run_soak_hook(plan: Plan, keep: bool) -> dict[str, Any]:
    """Call ``bench/soak.py``'s ``run_soak`` when it is there; a marked gap when not."""
    if not (BENCH_DIR / "soak.py").is_file():
        core.log("soak: bench/soak.py is not there; hook left open")
        return {"status": "missing"}
    module = importlib.import_module("bench.soak")
    run_soak = getattr(module, "run_soak", None)
    if run_soak is None:
        return {"status": "missing"}
    accepted = inspect.signature(run_soak).parameters
    wanted = {"duration": plan.soak_duration, "endpoints": plan.soak_endpoints}
    kwargs = {key: value for key, value in wanted.items() if key in accepted}
    if inspect.iscoroutinefunction(run_soak):
        outcome = scale.run_async(lambda: run_soak(**kwargs))
    else:
        outcome = run_soak(**kwargs)
    data: dict[str, Any] = {
        "status": "ran",
        "arguments": ", ".join(f"{key}={value:g}" for key, value in kwargs.items()),
        "ok": bool(getattr(outcome, "ok", False)),
        "problems": list(getattr(outcome, "problems", [])),
    }
    if hasattr(outcome, "table"):
        data["table"] = outcome.table()
    if hasattr(outcome, "to_dict"):
        data["report"] = outcome.to_dict()
    # The soak keeps its work dir when it fails (its logs); the suite leaves nothing behind
    # unless asked to.
    work_dir = Path(str(getattr(outcome, "work_dir", "")))
    if not keep and work_dir.name.startswith("pgwake-soak-") and work_dir.is_dir():
        shutil.rmtree(work_dir, ignore_errors=True)
        core.log(f"soak: removed its work dir {work_dir} (--keep keeps it)")
    return data


# -- machine and run description ---------------------------------------------------------


def run_docker(plan: Plan) -> str:
    """Docker cold connects (``docker_cold.py``), when an engine and the image are here."""
    runs = max(5, plan.cold_runs)
    try:
        import docker  # noqa: PLC0415

        engine = docker.from_env()
        engine.images.get(docker_cold.DEFAULT_IMAGE)
        engine.close()
    except Exception as exc:  # no engine or no image: say so, it is not a failure
        return (
            f"Not measured: {type(exc).__name__}: {exc}. Start an engine "
            "(`deploy/docker/engine.sh up`) and build the images "
            "(`deploy/docker/build-images.sh`)."
        )
    return docker_cold.table(docker_cold.measure(runs, docker_cold.DEFAULT_IMAGE))


def _version(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except (ImportError, AttributeError):
        return "not installed"


def machine_info(bindir: Path) -> dict[str, str]:
    info = core.machine_info(bindir)
    memory = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    os_name = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    commit = _git("rev-parse", "--short=12", "HEAD") or "?"
    dirty = _git("status", "--porcelain", "--", "proxy")
    if dirty:
        commit += f" (+ uncommitted changes in {len(dirty.splitlines())} file(s) under proxy/)"
    return {
        "commit": commit,
        "cpu": info["cpu"],
        "cores (usable)": f"{info['nproc']} (of {os.cpu_count()})",
        "memory": memory,
        "os": os_name,
        "kernel": info["kernel"],
        "python": f"{info['python']} ({platform.python_implementation()})",
        "uvloop": _version("uvloop"),
        "asyncpg": _version("asyncpg"),
        "postgres": info["postgres"],
        "pgbouncer": info["pgbouncer"],
        "libpq (client, psycopg)": info["libpq (client)"],
        "open-file limit (bench and its children)": _fd_limit_text(),
        "loadavg at start": info["loadavg at start"],
    }


def _fd_limit_text() -> str:
    limit = scale.raise_fd_limit()
    if limit < scale.FD_LIMIT:
        return f"{limit} (the hard limit here; {scale.FD_LIMIT} was asked for)"
    return str(limit)


def _git(*argv: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(core.REPO_ROOT), *argv], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# -- main --------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results",
        help="directory for <date>.md and its PNGs (default bench/results)",
    )
    parser.add_argument(
        "--skip", action="append", default=[], choices=PARTS, help="leave a part out (repeatable)"
    )
    parser.add_argument(
        "--pg-bindir",
        type=Path,
        default=core.DEFAULT_BINDIR,
        help=f"Postgres binaries for pgwake and the raw baseline (default {core.DEFAULT_BINDIR})",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    skip = set(args.skip)
    plan = QUICK if args.quick else FULL
    problem = core.preflight(args.pg_bindir)
    if problem is None:
        try:
            import matplotlib  # noqa: F401, PLC0415
        except ImportError:
            problem = "matplotlib is missing: pip install -e '.[bench]' (or run bench/install.sh)"
    if problem:
        print(f"bench/run.py cannot run here: {problem}", file=sys.stderr)
        return 2
    scale.raise_fd_limit()
    date = datetime.date.today().isoformat()
    prefix = f"{date}-quick" if args.quick else date
    command = shlex.join(["python", "bench/run.py", *sys.argv[1:]])
    results = report.Results(date, "quick" if args.quick else "full", command)
    results.machine = machine_info(args.pg_bindir)
    results.params = dataclasses.asdict(plan)
    started = time.monotonic()
    with core.interruptible():
        try:
            if PGWAKE_PARTS - skip:
                part(results, "pgwake parts", lambda: run_with_pgwake(results, plan, args, skip))
            if "parking" not in skip:
                results.parking = part(results, "parking", lambda: run_parking(plan, args))
                if results.parking is not None:
                    for name, message in results.parking.errors.items():
                        results.errors[f"parking: {name}"] = message
            if "control" not in skip:
                results.control = part(
                    results,
                    "control",
                    lambda: control.run_control(
                        plan.creates,
                        plan.density,
                        plan.wakes,
                        rss_every=max(1, plan.density // 20),
                        progress=core.log,
                    ),
                )
            if "soak" not in skip:
                results.soak = part(results, "soak", lambda: run_soak_hook(plan, args.keep))
            if "docker" not in skip:
                results.docker = part(results, "docker", lambda: run_docker(plan))
        except KeyboardInterrupt:
            core.log("interrupted; everything started here was stopped")
            return 130
    results.runtime_seconds = time.monotonic() - started
    results.machine["loadavg at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    plots = report.plot_all(results, args.out, prefix)
    text = report.render(results, plots)
    target = args.out / f"{prefix}.md"
    target.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    print(text)
    core.log(f"wrote {target} and {len(plots)} PNG(s) in {results.runtime_seconds / 60:.1f} min")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
