"""Find the endpoint a client means, from TLS SNI, ``options`` or the user name. Pure.

Precedence (ARCHITECTURE.md): SNI first label > ``options`` ``endpoint=<name>`` > user
``<role>.<endpoint>``. Two sources naming different endpoints is an error, not a guess.

A dotted user name is only read as ``<role>.<endpoint>`` when its last part is an endpoint
that exists (or no other source names one), so roles such as ``first.last`` keep working
behind SNI or options routing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake.endpoint.names import EndpointName, is_valid_endpoint_name
from pgwake.protocol.errors import InvalidCatalogName, SqlclientUnableToEstablishSqlconnection

if TYPE_CHECKING:
    from pgwake.protocol.messages import StartupMessage

__all__ = [
    "Route",
    "address_allowed",
    "compute_parameters",
    "resolve",
    "split_options",
]


_OPTION_KEY: Final = "endpoint="
# pg_split_opts splits on C-locale isspace() only, not on Unicode spaces.
_OPTION_SPACES: Final = frozenset(" \t\n\v\f\r")

_HINT: Final = (
    "Name the endpoint in one of three ways: the TLS host name <endpoint>.<base-domain>, "
    "the connection option options=endpoint%3D<endpoint>, or the user name <role>.<endpoint>."
)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a startup goes, and what the compute must see."""

    endpoint: EndpointName
    #: The role to send to the compute (the user name without ``.<endpoint>``).
    role: str
    #: ``options`` with ``endpoint=...`` removed; ``None`` when nothing is left.
    options: str | None
    #: Which source named the endpoint: ``sni``, ``options`` or ``user`` (for logs).
    source: str


def split_options(options: str) -> list[str]:
    """Split a libpq ``options`` string into words; a backslash escapes the next character
    (the same rules as Postgres's ``pg_split_opts``)."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    in_word = False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
            in_word = True
        elif char == "\\":
            escaped = True
            in_word = True
        elif char in _OPTION_SPACES:
            if in_word:
                words.append("".join(current))
                current = []
                in_word = False
        else:
            current.append(char)
            in_word = True
    if in_word:
        words.append("".join(current))
    return words


def _join_options(words: list[str]) -> str:
    return " ".join(re.sub(r"([ \t\n\v\f\r\\])", r"\\\1", word) for word in words)


def _from_sni(
    server_name: str | None, base_domain: str | None, exists: Callable[[str], bool]
) -> str | None:
    if not server_name:
        return None
    host = server_name.rstrip(".").lower()
    label, _, rest = host.partition(".")
    if base_domain is not None:
        # Under a configured domain the first label is the endpoint, known or not.
        return label if rest == base_domain else None
    # No domain configured: only a multi-label host whose first label is a real endpoint
    # routes, so "localhost" or "db.example.com" do not turn into endpoint names.
    return label if rest and exists(label) else None


def resolve(
    *,
    user: str,
    options: str | None,
    server_name: str | None,
    base_domain: str | None,
    exists: Callable[[str], bool],
) -> Route:
    """Return the ``Route`` for a startup.

    ``exists(name)`` tells whether an endpoint is in the catalog. Raises
    ``SqlclientUnableToEstablishSqlconnection`` when no source names an endpoint, and
    ``InvalidCatalogName`` when the sources disagree or name an invalid endpoint.
    """
    sni_name = _from_sni(server_name, base_domain, exists)

    option_name: str | None = None
    kept: list[str] = []
    for word in split_options(options or ""):
        if word.startswith(_OPTION_KEY):
            value = word[len(_OPTION_KEY) :]
            if option_name is not None and value != option_name:
                raise InvalidCatalogName(
                    "conflicting endpoints in options",
                    detail=f'options name both "{option_name}" and "{value}"',
                    hint=_HINT,
                )
            option_name = value
        else:
            kept.append(word)
    new_options = _join_options(kept) if kept else None

    role, dot, user_suffix = user.rpartition(".")
    user_name = user_suffix if dot and role and is_valid_endpoint_name(user_suffix) else None

    named = [
        (source, name)
        for source, name in (("sni", sni_name), ("options", option_name))
        if name is not None
    ]
    if sni_name is not None and option_name is not None and sni_name != option_name:
        raise InvalidCatalogName(
            "conflicting endpoints",
            detail=f'the TLS host names "{sni_name}" but options name "{option_name}"',
            hint=_HINT,
        )
    if named:
        source, endpoint = named[0]
        if user_name is not None and user_name != endpoint and exists(user_name):
            raise InvalidCatalogName(
                "conflicting endpoints",
                detail=f'the {source} names "{endpoint}" but the user name names "{user_name}"',
                hint=_HINT,
            )
        # role.<endpoint> with the same endpoint: the compute sees the bare role.
        final_role = role if user_name == endpoint else user
    elif user_name is not None:
        source, endpoint, final_role = "user", user_name, role
    else:
        raise SqlclientUnableToEstablishSqlconnection("no endpoint specified", hint=_HINT)

    if not is_valid_endpoint_name(endpoint):
        raise InvalidCatalogName(
            "invalid endpoint name",
            detail="endpoint names are lowercase letters, digits and hyphens (a DNS label)",
            hint=_HINT,
        )
    return Route(EndpointName(endpoint), final_role, new_options, source)


def address_allowed(client_host: str, allowed_cidrs: Sequence[str]) -> bool:
    """Whether an endpoint's IP allow-list (empty: everyone) lets ``client_host`` in; a
    host that is no IP address (a unix socket) is let in only by an empty list."""
    if not allowed_cidrs:
        return True
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in allowed_cidrs)


def compute_parameters(startup: StartupMessage, route: Route) -> dict[str, str]:
    """The startup parameters the compute gets: the client's, with the route's role as
    ``user`` and its ``options`` (without ``endpoint=``), less the ``_pq_.`` protocol
    extensions pgwake declined in NegotiateProtocolVersion."""
    parameters = {
        key: value
        for key, value in startup.parameters.items()
        if key not in ("user", "options") and not key.startswith("_pq_.")
    }
    parameters = {"user": route.role, **parameters}
    if route.options:
        parameters["options"] = route.options
    return parameters
