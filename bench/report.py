"""The suite's results: one Markdown file with its PNG plots, and the summary on stdout.

Pure rendering: it reads a ``Results`` (filled by ``bench/run.py``) and measures nothing.
Medians everywhere (the machine is shared and noisy); ratios are pgwake over the baseline.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import core

if TYPE_CHECKING:
    from bench.control import ControlResults
    from bench.parking import ParkingResult
    from bench.scale import BurstResult, IdleResult
    from bench.strangers import StrangerResult

__all__ = ["Results", "plot_all", "render", "targets"]

#: The suite's targets beyond core.py's: idle sessions and control-plane create latency.
IDLE_TARGET_CONNECTIONS = 5000
IDLE_RSS_TARGET_MIB = 100.0
CREATE_P50_TARGET_MS = 150.0

PGBENCH_NAMES = ("pgwake", "direct", "pgbouncer")
RATIO_PAIRS = (("pgwake", "direct"), ("pgwake", "pgbouncer"), ("pgbouncer", "direct"))
COLOURS = {"pgwake": "tab:blue", "direct": "tab:gray", "pgbouncer": "tab:orange"}


@dataclass
class Results:
    """Everything one suite run measured; a field stays None when its part was skipped
    or failed (``errors`` then says why)."""

    date: str
    mode: str
    command: str
    machine: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    cold: core.ColdResults | None = None
    warm: core.WarmResults | None = None
    #: The warm part again through a pgwake with server reuse off.
    warm_no_reuse: core.WarmResults | None = None
    wake_ms: float | None = None
    pgbench: dict[str, list[float]] | None = None
    pgbench_connect: dict[str, list[float]] | None = None
    burst: BurstResult | None = None
    idle: dict[str, IdleResult] = field(default_factory=dict)
    strangers: StrangerResult | None = None
    parking: ParkingResult | None = None
    control: ControlResults | None = None
    soak: dict[str, Any] | None = None
    #: ``bench/docker_cold.py``'s table (Markdown), or why it did not run.
    docker: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runtime_seconds: float = 0.0


# -- small formatting helpers --------------------------------------------------------------


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _p(values: list[float], fraction: float) -> float:
    return core.percentile(values, fraction)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def _dist_row(name: str, values: list[float], digits: int = 1) -> tuple[str, ...]:
    return (
        name,
        f"{_p(values, 0.5):.{digits}f}",
        f"{_p(values, 0.9):.{digits}f}",
        f"{min(values):.{digits}f}",
        f"{max(values):.{digits}f}",
        str(len(values)),
    )


def _idle_at(result: IdleResult) -> float:
    """pgwake's RSS (MiB) with IDLE_TARGET_CONNECTIONS sessions: measured, or linearly
    extrapolated from a smaller run."""
    first, last = result.samples[0], result.samples[-1]
    if last.connections >= IDLE_TARGET_CONNECTIONS:
        return last.rss_kib / 1024
    per = result.per_connection_bytes["rss"]
    return (first.rss_kib * 1024 + per * IDLE_TARGET_CONNECTIONS) / 2**20


# -- targets -------------------------------------------------------------------------------


def targets(results: Results) -> list[tuple[str, str, str]]:
    """(target, measured, met?) for each of the suite's targets."""
    rows: list[tuple[str, str, str]] = []
    cold = results.cold
    if cold is not None and cold.cold and cold.raw:
        c50, r50 = _med(cold.cold), _med(cold.raw)
        rows.append(
            (
                f"cold connect p50 <= {core.COLD_P50_TARGET_MS:g} ms",
                f"{c50:.1f} ms",
                _met(c50 <= core.COLD_P50_TARGET_MS),
            )
        )
        rows.append(
            (
                f"cold connect p50 <= {core.COLD_RATIO_TARGET:g}x raw postgres start",
                f"{c50 / r50:.2f}x ({c50:.1f} vs {r50:.1f} ms)",
                _met(c50 / r50 <= core.COLD_RATIO_TARGET),
            )
        )
    else:
        rows.append(("cold connect p50 <= 100 ms and <= 2x raw start", "not measured", "n/a"))
    warm = results.warm
    if warm is not None and warm.pgwake:
        ratio = _med(warm.pgwake) / _med(warm.direct)
        rows.append(
            (
                f"warm connect ratio <= {core.WARM_RATIO_TARGET:g} (median, vs direct)",
                f"{ratio:.2f} ({_med(warm.pgwake):.2f} vs {_med(warm.direct):.2f} ms)",
                _met(ratio <= core.WARM_RATIO_TARGET),
            )
        )
    else:
        rows.append(("warm connect ratio <= 1.3", "not measured", "n/a"))
    warm = results.warm_no_reuse
    if warm is not None and warm.pgwake:
        ratio = _med(warm.pgwake) / _med(warm.direct)
        rows.append(
            (
                f"warm connect ratio <= {core.WARM_RATIO_TARGET:g} without server reuse"
                " (`--server-reuse-seconds 0`)",
                f"{ratio:.2f} ({_med(warm.pgwake):.2f} vs {_med(warm.direct):.2f} ms)",
                _met(ratio <= core.WARM_RATIO_TARGET),
            )
        )
    else:
        rows.append(("warm connect ratio <= 1.3 without server reuse", "not measured", "n/a"))
    if results.pgbench:
        tps = {name: _med(values) for name, values in results.pgbench.items()}
        ratio = tps["pgwake"] / tps["pgbouncer"]
        rows.append(
            (
                "`pgbench -S` TPS >= PgBouncer's (median of rounds)",
                f"{ratio:.2f} ({tps['pgwake']:.0f} vs {tps['pgbouncer']:.0f})",
                _met(ratio >= core.PGBENCH_VS_PGBOUNCER_TARGET),
            )
        )
    else:
        rows.append(("`pgbench -S` TPS >= PgBouncer's", "not measured", "n/a"))
    idle = results.idle.get("pgwake")
    if idle is not None and len(idle.samples) >= 2:
        at = _idle_at(idle)
        measured = idle.samples[-1].connections >= IDLE_TARGET_CONNECTIONS
        text = (
            f"{at:.0f} MiB" if measured else f"{at:.0f} MiB (extrapolated from {idle.connections})"
        )
        per = idle.per_connection_bytes["rss"] / 1024
        first, last = idle.samples[0], idle.samples[-1]
        rows.append(
            (
                f"{IDLE_TARGET_CONNECTIONS:,} idle client connections: pgwake RSS "
                f"< {IDLE_RSS_TARGET_MIB:g} MB",
                f"{text} (with none: {first.rss_kib / 1024:.0f} MiB; USS {first.uss_kib / 1024:.0f}"
                f" -> {last.uss_kib / 1024:.0f} MiB); {per:.1f} KiB per connection",
                _met(at < IDLE_RSS_TARGET_MIB) if measured else "n/a (quick)",
            )
        )
    else:
        rows.append(("5,000 idle client connections under 100 MB RSS", "not measured", "n/a"))
    rows += _stranger_targets(results.strangers)
    if results.parking is not None:
        rows += results.parking.targets()
    else:
        rows.append(("parking: memory, re-attach, ORM, pgbench vs base", "not measured", "n/a"))
    control = results.control
    if control is not None and control.create_ms:
        c50 = _med(control.create_ms)
        rows.append(
            (
                f"create p50 <= {CREATE_P50_TARGET_MS:g} ms",
                f"{c50:.1f} ms",
                _met(c50 <= CREATE_P50_TARGET_MS),
            )
        )
    return rows


def _stranger_targets(result: StrangerResult | None) -> list[tuple[str, str, str]]:
    from bench import strangers  # noqa: PLC0415 (plotting and measuring stay apart)

    n = f"{strangers.COUNT:,}"
    if result is None or not result.rounds or result.idle is None:
        return [(f"{n} stalled strangers: memory, warm connect, compute", "not measured", "n/a")]
    n = f"{result.strangers:,}"
    idle = result.idle.rss_kib / 1024
    ratios = ", ".join(f"{r.ratio:.2f}" for r in result.rounds)
    before = max(len(r.compute_before) for r in result.rounds)
    held = max(len(r.compute_with) for r in result.rounds)
    return [
        (
            f"{n} stalled strangers: pgwake RSS < {strangers.RSS_TARGET_MIB:g} MB above idle",
            f"+{result.rss_above_idle_mib:.1f} MiB ({idle:.0f} MiB idle)",
            _met(result.rss_ok),
        ),
        (
            f"warm connect p50 with {n} strangers held <= {strangers.LATENCY_RATIO_TARGET:g}x"
            " idle (median of rounds)",
            f"{result.latency_ratio:.2f}x (rounds: {ratios})",
            _met(result.latency_ok),
        ),
        (
            f"no compute process for {n} strangers",
            f"{held} processes with them, {before} before",
            _met(not result.compute_grew),
        ),
    ]


# -- plots ---------------------------------------------------------------------------------


def plot_all(results: Results, out: Path, prefix: str) -> dict[str, Path]:
    """Write the PNGs for whatever was measured; return {section: path}."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.rcParams.update({"font.size": 8, "figure.dpi": 90, "savefig.dpi": 90})
    written: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        path = out / f"{prefix}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, pil_kwargs={"optimize": True})
        plt.close(fig)
        written[name] = path

    def cdf(ax: Any, values: list[float], label: str, **kwargs: Any) -> None:
        ordered = sorted(values)
        n = len(ordered)
        ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=label, **kwargs)

    if results.cold is not None and results.cold.cold:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        cdf(ax, results.cold.cold, "pgwake cold connect", color=COLOURS["pgwake"])
        cdf(ax, results.cold.cold_tls, "pgwake cold connect, TLS", color="tab:cyan")
        cdf(ax, results.cold.raw, "raw postgres start + connect", color=COLOURS["direct"])
        ax.axvline(core.COLD_P50_TARGET_MS, color="tab:red", lw=0.8, ls="--", label="100 ms")
        ax.set_xlabel("ms, start until first SELECT 1 row")
        ax.set_ylabel("fraction of runs")
        ax.set_title("Cold connect (endpoint suspended)")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        save(fig, "cold")

    if results.warm is not None and results.warm.pgwake:
        fig, ax = plt.subplots(figsize=(6, 3.0))
        data = [results.warm.direct, results.warm.pgwake, results.warm.pgwake_tls]
        labels = ["direct (unix socket)", "pgwake", "pgwake, TLS"]
        if results.warm_no_reuse is not None and results.warm_no_reuse.pgwake:
            data.append(results.warm_no_reuse.pgwake)
            labels.append("pgwake, no server reuse")
        ax.boxplot(data, vert=False, showfliers=False, widths=0.5)
        ax.set_yticks(range(1, len(data) + 1), labels)
        ax.set_xlabel("ms, connect + SELECT 1 + close (whiskers 1.5 IQR, outliers hidden)")
        ax.set_title("Warm connect (compute running, SCRAM both ways)")
        ax.grid(alpha=0.3, axis="x")
        save(fig, "warm")

    runs = [
        (label, tps)
        for label, tps in (("-S", results.pgbench), ("-S -C", results.pgbench_connect))
        if tps
    ]
    if runs:
        fig, axes = plt.subplots(1, len(runs), figsize=(6.4, 3.0), squeeze=False)
        for ax, (label, tps) in zip(axes[0], runs, strict=True):
            rounds = len(tps["pgwake"])
            width = 0.8 / len(PGBENCH_NAMES)
            for i, name in enumerate(PGBENCH_NAMES):
                xs = [r + (i - 1) * width for r in range(rounds)]
                ax.bar(xs, tps[name], width, label=name, color=COLOURS[name])
            ax.set_xticks(range(rounds), [f"round {r + 1}" for r in range(rounds)])
            ax.set_title(f"pgbench {label}")
            ax.set_ylabel("TPS")
            ax.grid(alpha=0.3, axis="y")
        axes[0][0].legend(loc="lower left", fontsize=7)
        save(fig, "pgbench")

    if results.burst is not None and any(results.burst.first_result_ms):
        fig, ax = plt.subplots(figsize=(6, 3.0))
        for i, times in enumerate(results.burst.first_result_ms):
            if times:
                cdf(
                    ax,
                    times,
                    f"cold, repetition {i + 1}",
                    color=COLOURS["pgwake"],
                    alpha=0.5 + 0.5 * i / max(1, len(results.burst.first_result_ms) - 1),
                )
        warm = [t for series in results.burst.warm_ms for t in series]
        direct = [t for series in results.burst.direct_ms for t in series]
        if warm:
            cdf(ax, warm, "warm via pgwake (all repetitions)", color="tab:green", ls="--")
        if direct:
            cdf(ax, direct, "direct (all repetitions)", color=COLOURS["direct"], ls=":")
        ax.set_xlabel("ms from the common start to the client's first SELECT 1 row")
        ax.set_ylabel("fraction of clients")
        ax.set_title(f"{results.burst.clients} clients at once on a suspended endpoint")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        save(fig, "burst")

    if results.idle:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for name, idle in results.idle.items():
            xs = [s.connections for s in idle.samples]
            colour = COLOURS.get(name)
            ax.plot(
                xs,
                [s.rss_kib / 1024 for s in idle.samples],
                "o-",
                ms=3,
                color=colour,
                label=f"{name} RSS",
            )
            ax.plot(
                xs,
                [s.uss_kib / 1024 for s in idle.samples],
                "x--",
                ms=3,
                color=colour,
                label=f"{name} USS",
                alpha=0.6,
            )
        ax.axhline(IDLE_RSS_TARGET_MIB, color="tab:red", lw=0.8, ls="--", label="100 MB target")
        ax.set_xlabel("idle client sessions")
        ax.set_ylabel("MiB")
        ax.set_title("Memory of the proxy process with idle sessions")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        save(fig, "idle")

    control = results.control
    if control is not None and len(control.density) > 1:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        creates = [(n, ms) for n, ms, _ in control.density[1:]]
        ax.scatter(
            [n for n, _ in creates],
            [ms for _, ms in creates],
            s=3,
            color=COLOURS["direct"],
            label="create latency (ms)",
        )
        ax.set_yscale("log")
        ax.set_xlabel("endpoints existing")
        ax.set_ylabel("create latency, ms (log)")
        right = ax.twinx()
        rss = [(n, kib / 1024) for n, _, kib in control.density if kib]
        right.plot(
            [n for n, _ in rss],
            [m for _, m in rss],
            "o-",
            ms=3,
            color=COLOURS["pgwake"],
            label="pgwake RSS (MiB)",
        )
        right.set_ylabel("pgwake RSS, MiB")
        right.set_ylim(0, max([m for _, m in rss], default=1) * 1.25)
        ax.set_title(f"{control.endpoints_total} endpoints (suspended), created one by one")
        handles = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=7)
        ax.grid(alpha=0.3)
        save(fig, "endpoints")
    return written


# -- markdown ------------------------------------------------------------------------------


def _image(out: list[str], plots: dict[str, Path], name: str, alt: str) -> None:
    if name in plots:
        out += ["", f"![{alt}]({plots[name].name})"]


def render(results: Results, plots: dict[str, Path]) -> str:
    """The results file's Markdown (PNG links relative to its own directory)."""
    out: list[str] = [f"# pgwake bench suite, {results.date}", ""]
    m = results.machine
    out += [
        f"- commit: `{m.get('commit', '?')}`",
        f"- command: `{results.command}` ({results.mode} run, "
        f"{results.runtime_seconds / 60:.1f} min)",
        f"- load average at start / end: {m.get('loadavg at start', '?')} / "
        f"{m.get('loadavg at end', '?')}",
        "",
        "The machine is shared: figures are medians and are meant to be compared within",
        "this run (every side of a comparison runs alternated with the others), not across",
        "runs.",
        "",
        "## Machine",
        "",
    ]
    skip = {"commit", "loadavg at start", "loadavg at end"}
    out += _table(("what", "value"), [(k, v) for k, v in m.items() if k not in skip])
    out += ["", "## Targets", ""]
    out += _table(("target", "measured", "met?"), targets(results))
    if results.errors:
        out += ["", "## Parts that failed", ""]
        out += [f"- **{name}**: {message}" for name, message in results.errors.items()]

    cold = results.cold
    if cold is not None and cold.cold:
        out += ["", "## Cold connect", ""]
        out.append(
            f"Endpoint suspended (idle timeout {core.COLD_IDLE_TIMEOUT:g} s), connect through"
            " pgwake until the first `SELECT 1` row, libpq, `sslmode=disable` unless TLS;"
            " baseline: a raw `postgres` spawned by hand on a copy of the same data dir"
            " (spawn, poll `postmaster.pid` for ready, connect, `SELECT 1`). Runs alternated."
        )
        out.append("")
        header: tuple[str, ...] = ("ms", "p50", "p90", "min", "max", "n")
        rows: list[tuple[str, ...]] = [
            _dist_row("pgwake cold connect", cold.cold),
            _dist_row("pgwake cold connect, TLS (`sslmode=require`)", cold.cold_tls),
            _dist_row("raw postgres start -> first row", cold.raw),
            _dist_row("raw postgres fast shutdown", cold.raw_stop),
        ]
        out += _table(header, rows)
        out.append("")
        out.append(f"p50 ratio pgwake / raw start: **{_med(cold.cold) / _med(cold.raw):.2f}**")
        if results.wake_ms is not None:
            out.append(f"(pgwake's own mean wake time from its metrics: {results.wake_ms:.1f} ms)")
        _image(out, plots, "cold", "cold connect CDF")

    runs = [
        (label, warm)
        for label, warm in (("", results.warm), (", no server reuse", results.warm_no_reuse))
        if warm is not None and warm.pgwake
    ]
    if runs:
        out += ["", "## Warm connect", ""]
        out.append(
            "Compute running; connect + `SELECT 1` + close, SCRAM both ways; direct = the"
            " compute's unix socket. Runs alternated. pgwake runs with its defaults, so"
            " server reuse (`server_reuse_seconds` = 30) hands most connects a kept backend:"
            " the compute neither forks nor logs in for them. Right after, the same runs"
            " through a pgwake restarted with `--server-reuse-seconds 0` (no server reuse):"
            " every connect takes a new backend (one forked ahead of time, a warm socket)"
            " and logs in on the compute; its direct runs are alternated with it, so each"
            " ratio has its own baseline."
        )
        out.append("")
        header = ("ms", "p50", "p90", "min", "max", "n")
        rows = []
        for label, warm in runs:
            rows += [
                _dist_row(f"pgwake{label}", warm.pgwake, 2),
                _dist_row(f"pgwake, TLS{label}", warm.pgwake_tls, 2),
                _dist_row(f"direct (runs alternated with pgwake{label})", warm.direct, 2),
            ]
        out += _table(header, rows)
        out.append("")
        ratio_rows = []
        for label, warm in runs:
            w50, d50 = _med(warm.pgwake), _med(warm.direct)
            ratio = w50 / d50
            ratio_rows.append(
                (
                    "server reuse off (`--server-reuse-seconds 0`)"
                    if label
                    else "server reuse on (the default)",
                    f"{w50:.2f}",
                    f"{d50:.2f}",
                    f"**{ratio:.2f}**",
                    f"<= {core.WARM_RATIO_TARGET:g}",
                    _met(ratio <= core.WARM_RATIO_TARGET),
                )
            )
        out += _table(("median, ms", "pgwake", "direct", "ratio", "target", "met?"), ratio_rows)
        _image(out, plots, "warm", "warm connect")

    params = results.params
    for title, tps, note in (
        ("`pgbench -S`", results.pgbench, "sessions open for the whole run"),
        (
            "`pgbench -S -C`",
            results.pgbench_connect,
            "a new connection (and SCRAM login) per transaction; pgwake keeps and resets"
            " backends between clients (server reuse, its default), as PgBouncer keeps its"
            " server connections",
        ),
    ):
        if not tps:
            continue
        out += ["", f"## {title}", ""]
        out.append(
            f"`-c {params.get('clients')} -j {params.get('threads')} -T "
            f"{params.get('pgbench_seconds')}`, {note}; `PGSSLMODE=disable`; rounds"
            " alternated, order rotated. direct = the compute's unix socket; PgBouncer"
            f" {results.machine.get('pgbouncer', '')} in session mode over TCP in front of"
            " the same socket, SCRAM with the role's verifier in its auth_file."
        )
        out.append("")
        rounds = len(tps["pgwake"])
        header = (
            "round",
            *PGBENCH_NAMES,
            *(f"{a}/{b}" for a, b in RATIO_PAIRS),
        )
        rows = []
        for r in range(rounds):
            rows.append(
                (
                    str(r + 1),
                    *(f"{tps[n][r]:.0f}" for n in PGBENCH_NAMES),
                    *(f"{tps[a][r] / tps[b][r]:.2f}" for a, b in RATIO_PAIRS),
                )
            )
        rows.append(
            (
                "**median**",
                *(f"**{_med(tps[n]):.0f}**" for n in PGBENCH_NAMES),
                *(
                    f"**{_med([tps[a][r] / tps[b][r] for r in range(rounds)]):.2f}**"
                    for a, b in RATIO_PAIRS
                ),
            )
        )
        out += _table(header, rows)
        out.append("")
        out.append("TPS; the median row's ratios are medians of the per-round ratios.")
    _image(out, plots, "pgbench", "pgbench TPS per round")

    burst = results.burst
    if burst is not None:
        out += ["", f"## {burst.clients} clients at once on a suspended endpoint", ""]
        out.append(
            "asyncpg clients in one process (uvloop) all start connecting at once to one"
            " suspended endpoint (its compute has `max_connections = 600`); each runs"
            " `SELECT 1` and keeps its session until every client has its row. They all"
            " come from 127.0.0.1, so pgwake runs as"
            f" `{results.machine.get('pgwake serve', 'pgwake serve')}`: room for 500"
            " sessions on one endpoint, and for 500 connections from one address"
            " authenticating at once. Time to first result is from the common start."
            " Client-side SCRAM (PBKDF2, 4,096 iterations, ~0.7 ms each) runs in that one"
            " client process too."
        )
        out.append("")
        header = (
            "repetition",
            "ok",
            "p50 ms",
            "p90 ms",
            "max ms",
            "compute starts",
            "wake ms",
            "warm via pgwake p50 / max",
            "direct p50 / max",
        )
        rows = []

        def p50_max(series: list[list[float]], i: int) -> str:
            if i >= len(series) or not series[i]:
                return "-"
            return f"{_p(series[i], 0.5):.0f} / {max(series[i]):.0f}"

        for i, times in enumerate(burst.first_result_ms):
            starts = burst.starts[i]
            start_text = f"{starts.get('success', 0):.0f}" + (
                f" (+{starts['failure']:.0f} failed)" if starts.get("failure") else ""
            )
            rows.append(
                (
                    str(i + 1),
                    f"{len(times)}/{burst.clients}",
                    f"{_p(times, 0.5):.0f}" if times else "-",
                    f"{_p(times, 0.9):.0f}" if times else "-",
                    f"{max(times):.0f}" if times else "-",
                    start_text,
                    f"{burst.wake_ms[i]:.0f}",
                    p50_max(burst.warm_ms, i),
                    p50_max(burst.direct_ms, i),
                )
            )
        out += _table(header, rows)
        out.append("")
        out.append(
            "All clients succeeded, exactly one compute start each time: "
            + ("**yes**" if burst.all_ok else "**no**")
        )
        out.append("")
        out.append(
            "The two right-hand columns are the same burst right after, on the running"
            " compute (through pgwake, and straight to its unix socket): the part of the"
            " time that is connecting that many clients at all, not the wake."
        )
        for i, errors in enumerate(burst.errors):
            if errors:
                out.append(f"- repetition {i + 1} errors (first): `{errors[0]}`")
        for error in burst.baseline_errors[:3]:
            out.append(f"- baseline error: `{error}`")
        _image(out, plots, "burst", "time to first result")

    if results.idle:
        out += ["", "## Idle client sessions", ""]
        first = next(iter(results.idle.values()))
        out.append(
            f"{first.connections:,} asyncpg sessions in one process, spread round-robin over"
            f" {params.get('idle_endpoints')} endpoints ({params.get('idle_per_endpoint')}"
            " each, so every compute stays under its `max_connections = 300`); each runs"
            " `SELECT 1` and then stays idle. Every session also holds a backend on its"
            " compute (pgwake relays sessions, it does not pool). pgwake was restarted just"
            " before (computes already running), so its heap starts fresh. PgBouncer"
            " (session mode) fronts the same computes, one database per endpoint; its"
            " clients' `SELECT 1` pins a server connection each, so it too holds two sockets"
            " per session. PgBouncer's auth_file has the plaintext password here, since"
            " every endpoint salts its own verifier."
        )
        out.append("")
        header = (
            "proxy",
            "sessions",
            "RSS before, MiB",
            "RSS with all, MiB",
            "per session RSS, KiB",
            "PSS, KiB",
            "USS, KiB",
            "RSS after close, MiB",
            "connect s",
        )
        rows = []
        for name, idle in results.idle.items():
            if len(idle.samples) < 2:
                continue
            per = idle.per_connection_bytes
            rows.append(
                (
                    name,
                    f"{idle.samples[-1].connections:,}",
                    f"{idle.samples[0].rss_kib / 1024:.1f}",
                    f"{idle.samples[-1].rss_kib / 1024:.1f}",
                    f"{per['rss'] / 1024:.1f}",
                    f"{per['pss'] / 1024:.1f}",
                    f"{per['uss'] / 1024:.1f}",
                    f"{idle.after_close.rss_kib / 1024:.1f}" if idle.after_close else "-",
                    f"{idle.connect_seconds:.1f}",
                )
            )
        out += _table(header, rows)
        out.append("")
        out.append("Samples (sessions: RSS MiB):")
        for name, idle in results.idle.items():
            samples = ", ".join(f"{s.connections}: {s.rss_kib / 1024:.1f}" for s in idle.samples)
            out.append(f"- {name}: {samples}")
        _image(out, plots, "idle", "RSS against idle sessions")

    result = results.strangers
    if result is not None and result.rounds:
        from bench import strangers  # noqa: PLC0415

        out += ["", f"## {result.strangers:,} stalled strangers on a running endpoint", ""]
        out.append(
            f"A stranger connects, names the endpoint and the real role `{core.ROLE}` in its"
            " StartupMessage, reads AuthenticationSASL, sends a SCRAM client-first-message,"
            " reads the server-first-message, and stalls without a proof. pgwake was"
            f" restarted for this part with `{' '.join(strangers.SERVE_ARGS)}` (so no"
            " stranger is dropped while it is measured) and otherwise its defaults: the"
            f" strangers come {result.per_address} per address (its default"
            " `max_unauthenticated_per_address`) from"
            f" {', '.join(result.addresses)}, the legitimate client from 127.0.0.1."
            " Memory: pgwake's VmRSS and USS in the first round, its heap fresh. Warm"
            f" connect (libpq, SCRAM, server reuse on): {len(result.rounds)} rounds of"
            f" {len(result.rounds[0].idle_ms)} connects on the idle server and as many with"
            " the strangers held, back to back, the order alternating; the ratio is the"
            " median of the rounds' p50 ratios (each round's in brackets). Compute"
            " processes: the postmaster and its children, counted at rest right before the"
            " strangers and once they are all held."
        )
        out.append("")
        out += _table(("metric", "measured", "baseline", "ratio", "target", "met?"), result.rows())
        if result.after_close is not None and result.idle is not None:
            out.append("")
            out.append(
                f"pgwake RSS after the strangers closed: {result.after_close.rss_kib / 1024:.1f}"
                f" MiB (idle before: {result.idle.rss_kib / 1024:.1f} MiB). Strangers opened"
                " in " + ", ".join(f"{r.open_seconds:.1f}" for r in result.rounds) + " s per round."
            )

    if results.parking is not None:
        from bench import parking  # noqa: PLC0415

        p = results.parking
        out += ["", "## Parking", ""]
        out.append(
            f"`parking.py`, in a work directory of its own. Memory: {p.sessions:,} asyncpg"
            f" sessions over {p.endpoints} endpoints, each ran `SELECT 1`, through a freshly"
            " started `pgwake serve`; sampled at idle, with all open on their backends, and"
            " once every endpoint (idle timeout"
            f" {parking.MEMORY_IDLE_TIMEOUT:g} s) suspended and all were parked; beside them"
            " the same count on endpoints created with `park_sessions: false` through"
            " another fresh pgwake (relayed idle sessions, each with a backend)."
            " Re-attach: a libpq connection parked on a suspended endpoint (idle timeout"
            f" {parking.REATTACH_IDLE_TIMEOUT:g} s) sends `SELECT 1`, runs interleaved with"
            " cold connects (new connection + `SELECT 1`) on the same suspended endpoint."
            " ORM: SQLAlchemy (psycopg) QueuePool of"
            f" {parking.ORM_POOL_SIZE}, idle timeout {parking.ORM_IDLE_TIMEOUT:g} s, a query"
            " on each pooled connection per cycle, then a wait for the suspend. pgbench:"
            " `-S -c 8 -j 2` through this checkout's pgwake (HEAD) and through"
            f" {parking.BASE_COMMIT}'s (the last commit before parking), each with its own"
            " state dir and an equivalent compute, back to back in each round."
        )
        out.append("")
        out.append(p.table())

    control = results.control
    if control is not None:
        out += ["", "## Control plane: creates, density, wakes", ""]
        out.append(
            "A `pgwake serve` of its own (log level warning): sequential API creates, create"
            " -> first `SELECT 1` through pgwake, then endpoints created one by one up to"
            f" {control.endpoints_total} (all suspended), then wakes one after another via"
            " the API (each followed by a suspend)."
        )
        out.append("")
        out += _table(("metric", "value"), control.rows())
        _image(out, plots, "endpoints", "endpoints: RSS and create latency")

    out += ["", "## Soak", ""]
    soak = results.soak
    if soak is None:
        out.append("Skipped.")
    elif soak.get("status") == "missing":
        out.append(
            "**Hook only:** `bench/soak.py` (with `run_soak`) was not there when this ran;"
            " `bench/run.py` calls it when it is."
        )
    else:
        out.append(
            f"`bench/soak.py` `run_soak({soak.get('arguments', '')})`: "
            + ("**passed**" if soak.get("ok") else "**failed**")
        )
        if soak.get("table"):
            out += ["", str(soak["table"])]
        for problem in soak.get("problems", []):
            out.append(f"- problem: {problem}")

    out += ["", "## Docker cold connect", ""]
    out.append(results.docker or "Skipped.")

    if results.notes:
        out += ["", "## Notes", ""]
        out += [f"- {note}" for note in results.notes]
    out.append("")
    return "\n".join(out)
