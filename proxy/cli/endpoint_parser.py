"""The ``pgwake endpoint`` subcommands' arguments (argparse), bounded as the settings
and the HTTP API bound them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Final

import pydantic

from pgwake.endpoint.connection_uri import DEFAULT_ROLE
from pgwake.endpoint.passwords import MIN_PASSWORD_LENGTH
from pgwake.settings import (
    MAX_CPUS,
    MIN_CPUS,
    MIN_IDLE_TIMEOUT_SECONDS,
    MIN_LIFETIME_SECONDS,
    Cpus,
    IdleTimeout,
    Lifetime,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["SETTING_FLAGS", "add_endpoint_commands", "compute_options", "setting_changes"]

#: ``endpoint update``'s flags, by the API field each sets.
SETTING_FLAGS: Final = (
    "idle_timeout_seconds",
    "park_sessions",
    "pinned_session_timeout_seconds",
)


def _bounded(kind: Any) -> Callable[[str], float]:
    """An argparse ``type``: the number in a flag, within ``kind``'s bounds, the ones the
    settings and the HTTP API apply (``pgwake.settings``)."""
    adapter: pydantic.TypeAdapter[float] = pydantic.TypeAdapter(kind)

    def parse(text: str) -> float:
        try:
            return adapter.validate_python(text)
        except pydantic.ValidationError as exc:
            raise argparse.ArgumentTypeError(exc.errors()[0]["msg"]) from None

    return parse


def _or_none(kind: Any, word: str) -> Callable[[str], float | None]:
    """As ``_bounded``, and ``word`` (e.g. ``never``) gives ``None``: the default."""
    number = _bounded(kind)

    def parse(text: str) -> float | None:
        return None if text == word else number(text)

    return parse


def _boolean(text: str) -> bool:
    """An argparse ``type`` for ``true`` or ``false``."""
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false, not {text!r}")
    return text == "true"


_PARK_HELP: Final = (
    "Park idle sessions when the compute suspends: their clients stay connected and their "
    "next message wakes it (default: true); false: any open session keeps it awake."
)


def _pinned_help(extra: str) -> str:
    return (
        "Close a pinned session (open transaction, temporary tables, LISTEN, advisory locks, "
        "WITH HOLD cursors) once it has run nothing this many seconds, so the compute can "
        f"suspend (at least {MIN_IDLE_TIMEOUT_SECONDS:g}; {extra})."
    )


def add_endpoint_commands(actions: Any, add_settings: Any) -> None:
    """Register the ``endpoint`` subcommands on ``actions`` (an argparse subparsers)."""
    create = actions.add_parser("create", help="Create an endpoint; prints its URI last.")
    create.add_argument("name", nargs="?", help="Name (generated, unguessable, if omitted).")
    create.add_argument(
        "--password",
        help=f"Password of role 'app', at least {MIN_PASSWORD_LENGTH} characters "
        "(generated if omitted).",
    )
    create.add_argument(
        "--allow",
        action="append",
        metavar="CIDR",
        help="Only accept clients from this network (repeatable).",
    )
    create.add_argument(
        "--idle-timeout",
        dest="endpoint_idle_timeout",
        type=_bounded(IdleTimeout),
        metavar="SECONDS",
        help=f"Suspend after this many idle seconds (at least {MIN_IDLE_TIMEOUT_SECONDS:g}).",
    )
    create.add_argument(
        "--ttl",
        type=_bounded(Lifetime),
        metavar="SECONDS",
        help="Delete the endpoint this many seconds after creation "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )
    create.add_argument(
        "--delete-after-idle",
        type=_bounded(Lifetime),
        metavar="SECONDS",
        help="Delete the endpoint once unused for this many seconds "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )
    create.add_argument(
        "--backend",
        choices=("local", "docker"),
        help="Where the compute runs (default: the compute_backend setting).",
    )
    create.add_argument("--image", help="Docker image (docker; default: docker_image).")
    create.add_argument(
        "--memory", help="Container memory limit, e.g. 512m (docker; default: docker_memory)."
    )
    create.add_argument(
        "--cpus",
        type=_bounded(Cpus),
        help=f"Container CPU limit, {MIN_CPUS:g} to {MAX_CPUS:g} (docker; default: docker_cpus).",
    )
    create.add_argument("--park-sessions", type=_boolean, metavar="{true,false}", help=_PARK_HELP)
    create.add_argument(
        "--pinned-session-timeout",
        type=_bounded(IdleTimeout),
        metavar="SECONDS",
        help=_pinned_help("default: never"),
    )
    add_settings(create)
    _add_update(actions, add_settings)
    add_settings(actions.add_parser("list", help="List endpoints."))
    for action, text in (
        ("get", "Show one endpoint."),
        ("delete", "Delete an endpoint and its data."),
        ("suspend", "Suspend an endpoint's compute now."),
        ("wake", "Start an endpoint's compute now."),
    ):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("name")
        add_settings(parser)
    branch = actions.add_parser("branch", help="Copy an endpoint's data into a new endpoint.")
    branch.add_argument("source")
    branch.add_argument("name", nargs="?", help="Name of the branch (generated if omitted).")
    branch.add_argument(
        "--ttl",
        type=_bounded(Lifetime),
        metavar="SECONDS",
        help="Delete the branch this many seconds after creation "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )
    add_settings(branch)
    password = actions.add_parser(
        "password",
        help="Give a role a new password; prints a URI with it last.",
        description="Give one of the endpoint's login roles a new password (a lost one "
        "cannot be shown again). A running compute takes it at once, a suspended one at "
        "its next start; pgwake accepts the new one from now on.",
    )
    password.add_argument("name")
    password.add_argument(
        "--role", default=DEFAULT_ROLE, help=f"The role (default: {DEFAULT_ROLE})."
    )
    password.add_argument(
        "--password",
        help=f"The new password, at least {MIN_PASSWORD_LENGTH} characters (generated if omitted).",
    )
    add_settings(password)


def _add_update(actions: Any, add_settings: Any) -> None:
    # Each flag is set in the namespace only when given (SUPPRESS): one left out keeps
    # the endpoint's value, while "default"/"never" set the default (null in the API).
    update = actions.add_parser(
        "update",
        help="Change an endpoint's idle timeout and what becomes of its idle sessions.",
        description="Change an endpoint's settings; those not given keep their values. "
        "They take effect at once.",
    )
    update.add_argument("name")
    update.add_argument(
        "--idle-timeout",
        dest="idle_timeout_seconds",
        type=_or_none(IdleTimeout, "default"),
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help="Suspend after this many idle seconds "
        f"(at least {MIN_IDLE_TIMEOUT_SECONDS:g}; default: the server's idle_timeout).",
    )
    update.add_argument(
        "--park-sessions",
        type=_boolean,
        metavar="{true,false}",
        default=argparse.SUPPRESS,
        help=_PARK_HELP,
    )
    update.add_argument(
        "--pinned-session-timeout",
        dest="pinned_session_timeout_seconds",
        type=_or_none(IdleTimeout, "never"),
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help=_pinned_help("never: the default"),
    )
    add_settings(update)


def setting_changes(args: argparse.Namespace) -> dict[str, float | bool | None]:
    """``endpoint update``'s changes by API field: only the flags given."""
    return {name: getattr(args, name) for name in SETTING_FLAGS if hasattr(args, name)}


def compute_options(args: argparse.Namespace) -> dict[str, str | None]:
    """The backend options given on the command line (``None`` = the server's default)."""
    options = {"image": args.image, "memory": args.memory}
    if args.cpus is not None:
        options["cpus"] = f"{args.cpus:g}"
    return options
