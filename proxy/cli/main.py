"""The ``pgwake`` command: ``serve`` (in the foreground, or ``--detach``ed), ``stop``,
``status`` and ``endpoint ...``.

``serve`` flags are derived from the ``Settings`` model, so a setting has one name
everywhere (``idle_timeout`` <-> ``--idle-timeout`` <-> ``PGWAKE_IDLE_TIMEOUT``).

A command that only reads (``status``, ``endpoint list``, ``get`` and the others that need
an existing endpoint) never creates a state dir: on a missing one it says which path it
looked at and fails. A failed ``endpoint`` command says where it looked: the catalog of
which state dir, or which server's API with which token.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pydantic

from pgwake import __version__
from pgwake.api.client import default_token
from pgwake.catalog import Catalog
from pgwake.cli.endpoint_commands import run_endpoint_command
from pgwake.cli.endpoint_parser import add_endpoint_commands
from pgwake.compute import Backends
from pgwake.endpoint.callers import ADMIN
from pgwake.endpoint.connection_uri import connection_uri
from pgwake.endpoint.control_plane import ControlPlane
from pgwake.endpoint.lifecycles import LifecycleManager
from pgwake.logs import configure_logging
from pgwake.settings import Settings, load_settings, shown_choices, shown_default
from pgwake.state_dir import StateDir, UnsafeStateDir

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["main"]

#: Exit status when pgwake cannot start (uvicorn's STARTUP_FAILURE).
STARTUP_FAILURE: Final = 3
#: ``pgwake status`` exits as ``pg_ctl status`` does: 0 running, 3 not running, 4 no
#: state dir (pg_ctl: no accessible data directory).
STATUS_NOT_RUNNING: Final = 3
STATUS_NO_STATE_DIR: Final = 4
#: Endpoint commands that make a state dir; every other one needs an existing one.
_CREATING_ACTIONS: Final = frozenset({"create"})
#: What ``pgwake serve --detach`` writes to the readiness pipe once it listens.
_READY: Final = b"ready\n"
_ENDPOINT_SETTINGS: Final = (
    "state_dir",
    "listen",
    "pg_bindir",
    "compute_user",
    "stop_timeout",
    "api_listen",
    "wake_timeout",
)


def _add_settings_flags(
    parser: argparse.ArgumentParser, names: Sequence[str] | None = None
) -> None:
    group = parser.add_argument_group("settings (flag > PGWAKE_* env > --config TOML > default)")
    group.add_argument("--config", type=Path, metavar="FILE.toml", help="TOML settings file.")
    for name, field in Settings.model_fields.items():
        if names is not None and name not in names:
            continue
        flag = "--" + name.replace("_", "-")
        env = "PGWAKE_" + name.upper()
        choices = shown_choices(name)
        group.add_argument(
            flag,
            dest=f"setting_{name}",
            metavar="{" + ",".join(choices) + "}" if choices else name.upper(),
            help=f"{field.description} [{env}; default: {shown_default(name, here=True)}]",
        )


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    return load_settings(args.config, **overrides)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgwake", description="Scale-to-zero Postgres behind an ordinary connection string."
    )
    parser.add_argument("--version", action="version", version=f"pgwake {__version__}")
    parser.set_defaults(parser=parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="Run the proxy.",
        description="Run the proxy: wake computes on connect, suspend them when idle.",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="Create an endpoint named 'demo' if missing and print its URI.",
    )
    serve.add_argument(
        "--detach",
        action="store_true",
        help="Run in the background: return once the server listens. It logs to "
        "<state_dir>/serve.log; `pgwake stop` stops it.",
    )
    _add_settings_flags(serve)

    stop = commands.add_parser(
        "stop",
        help="Stop the server running on the state dir.",
        description="Stop the pgwake serve running on the state dir, as SIGTERM does (let "
        "sessions finish for drain_timeout, suspend every compute), and wait until it has.",
    )
    _add_settings_flags(stop, ("state_dir",))
    status = commands.add_parser(
        "status",
        help="Show the state dir and whether a server runs on it.",
        description="Show the state dir and whether a pgwake serve runs on it. Exit "
        f"status: 0 running, {STATUS_NOT_RUNNING} not running, {STATUS_NO_STATE_DIR} no "
        "state dir (as pg_ctl status).",
    )
    _add_settings_flags(status, ("state_dir",))

    endpoint = commands.add_parser(
        "endpoint",
        help="Manage endpoints.",
        description="Through the running server's API when there is one (PGWAKE_API_URL, "
        "or a server on this state dir), else on the local catalog.",
    )
    endpoint.set_defaults(parser=endpoint)
    actions = endpoint.add_subparsers(dest="action", metavar="ACTION")
    add_endpoint_commands(actions, lambda sub: _add_settings_flags(sub, _ENDPOINT_SETTINGS))
    return parser


def _run(coro: Any) -> Any:
    try:
        import uvloop  # noqa: PLC0415 (optional off Linux)
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _serve(settings: Settings, demo: bool, on_ready: Callable[[], None] | None = None) -> int:
    from pgwake.server import Server, StartupFailure  # noqa: PLC0415 (heavy; serve only)

    server = Server(settings)
    try:
        if demo:
            await _ensure_demo(settings)
        await server.serve(on_ready)
    except (StartupFailure, UnsafeStateDir) as exc:
        logging.getLogger("pgwake.server").error("event=startup_failed reason=%s", exc)
        print(f"pgwake: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    return 0


async def _ensure_demo(settings: Settings) -> None:
    state = StateDir(settings.state_dir)
    state.ensure()
    catalog = Catalog(state.catalog)
    try:
        if catalog.exists("demo"):
            print(
                "endpoint demo exists; its password was shown when it was created "
                "(`pgwake endpoint password demo` sets a new one and prints its URI):"
            )
            print(connection_uri(settings, "demo", "app", None, "app"))
            return
        backends = Backends(settings)
        lifecycles = LifecycleManager(
            backends, catalog, settings.idle_timeout, settings.wake_timeout
        )
        control = ControlPlane(
            settings, catalog, backends, lifecycles, admin_token=secrets.token_urlsafe(32)
        )
        try:
            created = await control.create(ADMIN, name="demo")
            # Its disk size is measured in the background: let that write to the catalog
            # before it closes.
            for lifecycle in lifecycles:
                await lifecycle.settle()
        finally:
            await backends.close()
        print("created endpoint demo; connect with:")
        print(created.connection_uri, flush=True)
    finally:
        catalog.close()


def _detach(settings: Settings, demo: bool) -> int:
    """``serve --detach``: fork a server into its own session and return once it listens
    (0), or with its exit status when it fails to start, showing its error lines.

    The server keeps this command's stdout until it listens (``--demo`` prints the URI
    there), then both its stdout and stderr go to ``<state_dir>/serve.log``; its stdin is
    ``/dev/null``. It tells this process that it listens through a pipe."""
    state = StateDir(settings.state_dir.resolve())
    if state.server_running():
        pid = state.server_pid()
        print(f"pgwake: pgwake serve (pid {pid}) already runs on {state.path}", file=sys.stderr)
        return STARTUP_FAILURE
    try:
        state.ensure()
        log = os.open(state.serve_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except (UnsafeStateDir, OSError) as exc:
        print(f"pgwake: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    log_start = os.lseek(log, 0, os.SEEK_END)
    ready_out, ready_in = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the server
        os.close(ready_out)
        os.setsid()  # no terminal: a Ctrl-C or a closed shell does not reach it
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(log, 2)

        def listening() -> None:
            sys.stdout.flush()
            os.dup2(log, 1)
            os.write(ready_in, _READY)
            os.close(ready_in)

        return _run(_serve(settings, demo, listening))  # type: ignore[no-any-return]
    os.close(ready_in)
    os.close(log)
    with os.fdopen(ready_out, "rb") as ready:
        said = ready.read()
    if said == _READY:
        api = f", API on {settings.api_listen}" if settings.api_listen else ""
        print(
            f"pgwake serve (pid {pid}) listens on {settings.listen}{api}; log: "
            f"{state.serve_log}; `pgwake stop` stops it"
        )
        return 0
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status) or STARTUP_FAILURE
    with open(state.serve_log, "rb") as logged:
        logged.seek(log_start)
        lines = logged.read().decode(errors="replace").splitlines()
    shown = [line for line in lines if line.startswith("pgwake:") or " ERROR " in line]
    for line in shown or lines[-5:]:
        print(line, file=sys.stderr)
    print(f"pgwake: pgwake serve did not start; its log: {state.serve_log}", file=sys.stderr)
    return code


def _stop(settings: Settings) -> int:
    """``pgwake stop``: SIGTERM the server of the state dir; wait until it has let go."""
    state = StateDir(settings.state_dir.resolve())
    if not state.exists():
        print(_no_state_dir(state), file=sys.stderr)
        return 1
    pid = state.server_pid()
    if pid is None:
        print(f"pgwake: no pgwake serve runs on {state.path}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError as exc:
        print(f"pgwake: cannot stop pgwake serve (pid {pid}): {exc.strerror}", file=sys.stderr)
        return 1
    # Its drain, then each compute's fast shutdown (SIGQUIT after stop_timeout).
    deadline = time.monotonic() + settings.drain_timeout + settings.stop_timeout + 30
    while state.server_running():
        if time.monotonic() > deadline:
            print(
                f"pgwake: pgwake serve (pid {pid}) is still stopping; see its log",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.02)
    print(f"stopped pgwake serve (pid {pid}) on {state.path}")
    return 0


def _status(settings: Settings) -> int:
    """``pgwake status``: the state dir, and the server running on it."""
    state = StateDir(settings.state_dir.resolve())
    if not state.exists():
        print(f"state dir: {state.path} (none yet)")
        return STATUS_NO_STATE_DIR
    print(f"state dir: {state.path}")
    if not state.server_running():
        print("server: not running")
        return STATUS_NOT_RUNNING
    print(f"server: running (pid {state.server_pid()})")
    return 0


def _no_state_dir(state: StateDir) -> str:
    """Why a command that needs a state dir found none, and what to do."""
    text = (
        f"pgwake: no pgwake state dir at {state.path}: `pgwake serve` or `pgwake endpoint "
        "create` makes it; --state-dir or PGWAKE_STATE_DIR names another"
    )
    old = Path(".pgwake")
    if (old / "catalog.sqlite3").exists() and old.resolve() != state.path.resolve():
        text += " (./.pgwake here is a state dir: --state-dir .pgwake uses it)"
    return text


def _where(settings: Settings) -> str:
    """Where an ``endpoint`` command looked: the API it asked, and where its token came
    from, or the catalog it read (the choice ``run_endpoint_command`` makes)."""
    state = StateDir(settings.state_dir.resolve())
    url = os.environ.get("PGWAKE_API_URL")
    if url:
        return f"asked the API at {url} (token: {default_token()[1]})"
    if settings.api_listen and state.server_running():
        if os.environ.get("PGWAKE_TOKEN"):
            source = "PGWAKE_TOKEN"
        elif settings.admin_token is not None:
            source = "the admin_token setting"
        else:
            source = str(state.admin_token)
        return (
            f"asked pgwake serve (pid {state.server_pid()}) on {state.path} through its API "
            f"on {settings.api_listen} (token: {source})"
        )
    return f"looked in the catalog of {state.path}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgwake`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command is None or (args.command == "endpoint" and args.action is None):
        args.parser.print_help()
        return 0
    try:
        settings = _settings_from(args)
    except (pydantic.ValidationError, FileNotFoundError) as exc:
        print(f"pgwake: invalid settings: {_one_line(exc)}", file=sys.stderr)
        return STARTUP_FAILURE
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        if args.detach:
            return _detach(settings, args.demo)
        result: int = _run(_serve(settings, args.demo))
        return result
    if args.command == "stop":
        return _stop(settings)
    if args.command == "status":
        return _status(settings)
    state = StateDir(settings.state_dir)
    if (
        args.action not in _CREATING_ACTIONS
        and not os.environ.get("PGWAKE_API_URL")
        and not state.exists()
    ):
        print(_no_state_dir(state), file=sys.stderr)
        return 1
    status: int = _run(run_endpoint_command(args, settings, lambda: _where(settings)))
    return status


def _one_line(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
