"""A real ``pgwake serve`` process on free loopback ports, for integration tests.

Like psycopg's ``fix_proxy.py``: start the process, wait until it listens, prove it with
one connection, and stop everything in ``finally``. Every test server comes from ``serve``,
whose teardown fails the test when a compute process outlives a graceful stop or the
server's log holds a traceback.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from pgwake.logs import parse_logfmt
from pgwake.state_dir import StateDir

PASSWORD = "s3cret-pw"
#: The HTTP API's admin token in every test server (PGWAKE_ADMIN_TOKEN).
ADMIN_TOKEN = "pgwake-test-admin-token-0123456789"
_READY_LINE = "database system is ready to accept connections"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_state_dir(prefix: str = "pgwake-test-") -> Path:
    """An empty state dir with the mode pgwake gives a new one: as root, the unprivileged
    compute user can pass through it (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(StateDir(path).mode)
    return path


def postgres_pids_under(path: Path) -> list[int]:
    """PIDs of postgres processes whose command line mentions ``path``."""
    pids = []
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if needle in cmdline and b"postgres" in cmdline and status != "Z":
            pids.append(int(entry.name))
    return pids


class Pgwake:
    """One pgwake state dir, and the server process serving it (started on demand)."""

    def __init__(self, state_dir: Path, **settings: str) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.metrics_port = free_port()
        self.api_port = free_port()
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir / "serve.log"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PGWAKE_STATE_DIR": str(self.state_dir),
                "PGWAKE_LISTEN": f"127.0.0.1:{self.port}",
                "PGWAKE_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
                "PGWAKE_API_LISTEN": f"127.0.0.1:{self.api_port}",
                "PGWAKE_ADMIN_TOKEN": ADMIN_TOKEN,
                "PGWAKE_DRAIN_TIMEOUT": "2",
            }
        )
        env.update({f"PGWAKE_{key.upper()}": value for key, value in self.settings.items()})
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pgwake.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def create(self, name: str, **options: object) -> str:
        """Create an endpoint with the CLI; return the URI it printed last.

        Each option is a flag of ``pgwake endpoint create``: ``idle_timeout=1`` is
        ``--idle-timeout 1``, a list repeats the flag, ``None`` leaves it out. The
        password is ``PASSWORD`` unless given."""
        options = {"password": PASSWORD, **options}
        args = ["endpoint", "create", name]
        for key, value in options.items():
            values = value if isinstance(value, list | tuple) else [value]
            args += [item for v in values if v is not None for item in (_flag(key), str(v))]
        out = self.cli(*args).stdout.strip().splitlines()
        return out[-1]

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        offset = log.tell()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgwake.cli", "serve"],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgwake exited early:\n{self.log_text()}")
            if "event=listening" in self.log_text()[offset:]:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"pgwake did not start listening:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API (``PGWAKE_API_LISTEN``)."""
        return f"http://127.0.0.1:{self.api_port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def dsn(
        self,
        endpoint: str,
        *,
        user: str = "app",
        sslmode: str = "disable",
        password: str = PASSWORD,
        **params: str,
    ) -> str:
        extra = "".join(f" {key}={value}" for key, value in params.items())
        return (
            f"host=127.0.0.1 port={self.port} user={user} password={password} dbname=app"
            f" sslmode={sslmode} options=endpoint={endpoint}{extra}"
        )

    def asyncpg_kwargs(self, endpoint: str) -> dict[str, object]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "app",
            "password": PASSWORD,
            "database": "app",
            "ssl": False,
            "server_settings": {"options": f"endpoint={endpoint}"},
        }

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return values

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def state(self, endpoint: str) -> str | None:
        for (name, labels), value in self.metrics().items():
            if (
                name == "pgwake_endpoint_state"
                and value == 1.0
                and ("endpoint", endpoint) in labels
            ):
                return dict(labels)["state"]
        return None

    def wait_state(self, endpoint: str, state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(endpoint) == state:
                return
            time.sleep(0.02)
        raise AssertionError(f"{endpoint} not {state} after {timeout}s: {self.state(endpoint)}")

    def compute_dir(self, endpoint: str) -> Path:
        return self.state_dir / "computes" / "endpoints" / endpoint

    def compute_starts(self, endpoint: str) -> int:
        """Postmaster starts, counted from the compute's own log (not pgwake's metrics)."""
        log = self.compute_dir(endpoint) / "postgres.log"
        return log.read_text(errors="replace").count(_READY_LINE) if log.exists() else 0

    def compute_settings(self, endpoint: str, names: Iterable[str]) -> dict[str, str]:
        """``names``' values in the running compute (``SHOW``), in postgresql.conf
        notation: strings quoted."""
        with psycopg.connect(self.dsn(endpoint), autocommit=True) as conn:
            values = {name: conn.execute(f"SHOW {name}").fetchone() for name in names}
        return {name: _conf_value(row[0] if row else None) for name, row in values.items()}

    def postgres_pids(self) -> list[int]:
        return postgres_pids_under(self.state_dir)

    def cleanup(self) -> list[str]:
        """Stop the server; kill and name any compute left running."""
        self.stop()
        leftovers = self.postgres_pids()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [f"postgres pid {pid}" for pid in leftovers]


def _conf_value(value: object) -> str:
    text = str(value)
    return text if text.replace(".", "").isalnum() else "'" + text + "'"


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


_template_cache: Path | None = None


def seeded_state_dir() -> Path:
    """A new state dir whose compute template is copied from one made once per run.

    initdb takes ~0.5 s; copying its result takes ~40 ms. pgwake's own template logic is
    still exercised by the first state dir (and by test_cli)."""
    global _template_cache  # noqa: PLW0603
    if _template_cache is None:
        source = make_state_dir("pgwake-template-")
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import asyncio; from pgwake.settings import load_settings;"
                "from pgwake.compute.local import LocalBackend;"
                f"asyncio.run(LocalBackend(load_settings(state_dir={str(source)!r})).prepare())",
            ],
            check=True,
            timeout=120,
            capture_output=True,
        )
        _template_cache = source
        atexit.register(shutil.rmtree, source, True)
    source_state = StateDir(_template_cache)
    state = StateDir(make_state_dir())
    state.computes.mkdir(mode=0o711)
    state.computes.chmod(0o711)
    subprocess.run(
        ["cp", "-a", str(source_state.computes / "template"), str(state.computes / "template")],
        check=True,
    )
    shutil.copy2(source_state.admin_password, state.admin_password)
    (state.computes / "endpoints").mkdir(mode=0o711)
    shutil.copy2(source_state.computes / "template.ready", state.computes / "template.ready")
    return state.path


#: Endpoints for ``serve`` to create: names, or names mapped to their ``Pgwake.create``
#: options (``{"fenced": {"allow": "10.0.0.0/8"}}`` runs ``--allow 10.0.0.0/8``).
Endpoints = Iterable[str] | Mapping[str, Mapping[str, object]]
ServerT = TypeVar("ServerT", bound=Pgwake)


@overload
def serve(
    endpoints: Endpoints = (), *, start: bool = True, fresh: bool = False, **settings: str
) -> contextlib.AbstractContextManager[Pgwake]: ...


@overload
def serve(
    endpoints: Endpoints = (),
    *,
    start: bool = True,
    fresh: bool = False,
    server: Callable[..., ServerT],
    **settings: str,
) -> contextlib.AbstractContextManager[ServerT]: ...


@contextlib.contextmanager
def serve(
    endpoints: Endpoints = (),
    *,
    start: bool = True,
    fresh: bool = False,
    server: Any = Pgwake,
    **settings: str,
) -> Iterator[Any]:
    """A pgwake server (settings as ``PGWAKE_*``, e.g. ``idle_timeout="1"``) with
    ``endpoints`` created, started unless ``start`` is false (the test then finishes the
    setup and calls ``start``).

    Its state dir is a copy of a prepared one, or with ``fresh`` one that does not exist
    yet (pgwake's first run makes it, and its template). ``server`` builds the ``Pgwake``
    (a subclass, a ``functools.partial``) from the state dir and the settings.

    At the end the server is stopped and its state dir removed; then, unless the test
    already failed, the test fails if a compute outlived the stop or the server's log
    holds a traceback or an unretrieved task exception."""
    root = make_state_dir("pgwake-fresh-") if fresh else None
    instance = server(root / "state" if root else seeded_state_dir(), **settings)
    if root is not None:
        instance.log_path = root / "serve.log"  # the state dir does not exist yet
    try:
        specs: Mapping[str, Mapping[str, object]] = (
            endpoints if isinstance(endpoints, Mapping) else {name: {} for name in endpoints}
        )
        for name, options in specs.items():
            instance.create(name, **options)
        if start:
            instance.start()
        yield instance
    finally:
        leftovers = instance.cleanup()
        log = instance.log_text()
        shutil.rmtree(root or instance.state_dir, ignore_errors=True)
    assert not leftovers, f"computes outlived pgwake's shutdown: {leftovers}"
    assert not errors_in(log), log
    unparsable = unparsable_log_lines(log)
    assert not unparsable, f"log lines that are not logfmt: {unparsable[:5]}"


def unparsable_log_lines(text: str) -> list[str]:
    """The lines of a pgwake log that are not logfmt with ``ts``, ``level`` and ``logger``
    (every line a test server writes must be)."""
    bad = []
    for line in text.splitlines():
        try:
            fields = parse_logfmt(line)
        except ValueError:
            bad.append(line)
            continue
        if not {"ts", "level", "logger"} <= fields.keys():
            bad.append(line)
    return bad


def wait_for(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.02) -> None:
    """Return once ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


async def wait_for_async(
    predicate: Callable[[], object], timeout: float = 30, interval: float = 0.02
) -> None:
    """``wait_for`` inside a coroutine: other tasks (open sessions) run meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


#: What a server log must never hold: a traceback, or a task whose exception nobody read.
_FAULTS = re.compile(r"Traceback \(most recent call last\)|Task exception was never retrieved")


def errors_in(text: str) -> list[str]:
    """The faults in a server log (see ``_FAULTS``)."""
    return _FAULTS.findall(text)
