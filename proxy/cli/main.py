"""The ``pgwake`` command.

``serve`` flags are derived from the ``Settings`` model, so a setting has one name
everywhere (``idle_timeout`` <-> ``--idle-timeout`` <-> ``PGWAKE_IDLE_TIMEOUT``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pydantic

from pgwake import __version__
from pgwake.catalog import Catalog
from pgwake.cli.endpoint_commands import add_endpoint_commands, run_endpoint_command
from pgwake.compute import Backends
from pgwake.endpoint.connection_uri import connection_uri
from pgwake.endpoint.control_plane import ADMIN, ControlPlane
from pgwake.endpoint.lifecycle import LifecycleManager
from pgwake.settings import Settings, load_settings
from pgwake.state_dir import StateDir, UnsafeStateDir

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

#: Exit status when pgwake cannot start (uvicorn's STARTUP_FAILURE).
STARTUP_FAILURE: Final = 3
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
        default = field.default if field.default is not None else "unset"
        group.add_argument(
            flag,
            dest=f"setting_{name}",
            metavar=name.upper(),
            help=f"{field.description} [{env}; default: {default}]",
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
    commands = parser.add_subparsers(dest="command", required=True)

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
    _add_settings_flags(serve)

    endpoint = commands.add_parser(
        "endpoint",
        help="Manage endpoints.",
        description="Through the running server's API when there is one (PGWAKE_API_URL, "
        "or a server on this state dir), else on the local catalog.",
    )
    actions = endpoint.add_subparsers(dest="action", required=True)
    add_endpoint_commands(actions, lambda sub: _add_settings_flags(sub, _ENDPOINT_SETTINGS))
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def _run(coro: Any) -> Any:
    try:
        import uvloop  # noqa: PLC0415 (optional off Linux)
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _serve(settings: Settings, demo: bool) -> int:
    from pgwake.server import Server, StartupFailure  # noqa: PLC0415 (heavy; serve only)

    server = Server(settings)
    try:
        if demo:
            await _ensure_demo(settings)
        await server.serve()
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
        finally:
            await backends.close()
        print("created endpoint demo; connect with:")
        print(created.connection_uri, flush=True)
    finally:
        catalog.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgwake`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = _settings_from(args)
    except (pydantic.ValidationError, FileNotFoundError) as exc:
        print(f"pgwake: invalid settings: {_one_line(exc)}", file=sys.stderr)
        return STARTUP_FAILURE
    _configure_logging(settings.log_level)
    if args.command == "serve":
        result: int = _run(_serve(settings, args.demo))
        return result
    try:
        status: int = _run(run_endpoint_command(args, settings))
    except Exception as exc:  # one clear line, not a traceback, for operator errors
        print(f"pgwake: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return status


def _one_line(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
