"""The HTTP API's request and response bodies: the OpenAPI document is generated from them.

Rule: requests are validated here, completely (``extra="forbid"``, bounds on every number,
patterns on every name), so that a request the control plane receives is well-formed and
anything malformed is a 422, never a 500. Requests are strict: a number must be a JSON
number (``"10"`` and ``true`` are refused, not read as 10 and 1), and the bounds are the
ones ``pgwake.settings`` gives the settings and the CLI. The password rule is the one
exception: ``pgwake.endpoint.passwords`` holds it, and the control plane applies it to the
API and the CLI alike (422 ``invalid_password``), so that a refused password gets one
message everywhere; the schema only shows it. Responses are built from the control
plane's dataclasses by the ``from_*`` constructors.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TYPE_CHECKING, Annotated, Final, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from pgwake.endpoint import names
from pgwake.endpoint.connection_uri import DEFAULT_ROLE
from pgwake.endpoint.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from pgwake.endpoint.states import EndpointState
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
    from pgwake.endpoint.role_passwords import PasswordSet
    from pgwake.endpoint.tokens import MintedToken
    from pgwake.endpoint.views import Created, EndpointView

__all__ = [
    "ENDPOINT_NAME_PATTERN",
    "TOKEN_ID_PATTERN",
    "BranchCreate",
    "EndpointCreate",
    "EndpointCreated",
    "EndpointList",
    "EndpointOut",
    "EndpointUpdate",
    "ErrorBody",
    "ErrorResponse",
    "Health",
    "NewPassword",
    "PasswordChange",
    "PinnedSessionOut",
    "Readiness",
    "SessionStatesOut",
    "TokenCreate",
    "TokenMinted",
]

#: A lowercase DNS label: the one rule for endpoint names, ``pgwake.edge.routing``'s (anchored).
ENDPOINT_NAME_PATTERN: Final = names.ENDPOINT_NAME_PATTERN.pattern
#: Token ids are ``tok_`` and 12 hex digits; the pattern is a little wider on purpose.
TOKEN_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"  # noqa: S105 (a pattern, not a secret)
#: A token may hold this many endpoints at most; more is a typo, not a quota.
_MAX_QUOTA: Final = 1_000_000
#: An allow-list longer than this is a mistake, not a policy.
_MAX_CIDRS: Final = 64
#: Postgres's NAMEDATALEN - 1 (bytes; the control plane checks the bytes).
_MAX_ROLE_LENGTH: Final = 63


def _text(value: str) -> str:
    """Refuse strings that cannot be stored or sent: lone surrogates and NUL characters."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError("must be a network in CIDR notation, e.g. 10.0.0.0/8") from None


Text = Annotated[str, AfterValidator(_text)]
#: Checked by the control plane (``pgwake.endpoint.passwords``); the schema shows the rule.
Password = Annotated[
    Text,
    WithJsonSchema(
        {"type": "string", "minLength": MIN_PASSWORD_LENGTH, "maxLength": MAX_PASSWORD_LENGTH}
    ),
]
RoleName = Annotated[Text, Field(min_length=1, max_length=_MAX_ROLE_LENGTH, examples=["app"])]
EndpointName = Annotated[str, Field(pattern=ENDPOINT_NAME_PATTERN, max_length=63)]
Network = Annotated[
    str,
    Field(min_length=1, max_length=49, examples=["10.0.0.0/8", "2001:db8::/32"]),
    AfterValidator(_network),
]
StateName = Literal["suspended", "starting", "running", "suspending", "failed"]
assert {state.value for state in EndpointState} == set(get_args(StateName))


class _Request(BaseModel):
    # strict: JSON types are kept, so "10" is not 10 and true is not 1.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- requests ----------------------------------------------------------------------------


class EndpointCreate(_Request):
    """A new endpoint. Every field is optional: ``{}`` makes one with a generated name."""

    name: EndpointName | None = Field(
        default=None,
        description="A lowercase DNS label; generated (`quiet-river-k3x9q2`) if omitted.",
    )
    password: Password | None = Field(
        default=None,
        description=f"Password of the role `app`, {MIN_PASSWORD_LENGTH} to "
        f"{MAX_PASSWORD_LENGTH} characters; generated if omitted.",
    )
    idle_timeout_seconds: IdleTimeout | None = Field(
        default=None,
        description="Seconds without sessions before the compute is suspended "
        f"(at least {MIN_IDLE_TIMEOUT_SECONDS:g}); the server's `idle_timeout` if omitted.",
    )
    ttl_seconds: Lifetime | None = Field(
        default=None,
        description="Delete the endpoint this many seconds after its creation "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )
    delete_after_idle_seconds: Lifetime | None = Field(
        default=None,
        description="Delete the endpoint once it has been unused this many seconds "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )
    allowed_cidrs: list[Network] = Field(
        default_factory=list,
        max_length=_MAX_CIDRS,
        description="Networks clients may connect from; empty means any address.",
    )
    backend: Literal["local", "docker"] | None = Field(
        default=None, description="Where the compute runs; the server's default if omitted."
    )
    image: Annotated[Text, Field(min_length=1, max_length=255)] | None = Field(
        default=None, description="Docker image (docker endpoints only)."
    )
    memory: Annotated[Text, Field(pattern=r"^[0-9]+[bkmgBKMG]?$", max_length=20)] | None = Field(
        default=None, description="Container memory limit such as `512m` (docker only)."
    )
    cpus: Cpus | None = Field(
        default=None,
        description=f"Container CPU limit, {MIN_CPUS:g} to {MAX_CPUS:g} (docker only).",
    )
    park_sessions: bool = Field(
        default=True,
        description="Park idle sessions when the compute suspends: their backends end, "
        "their clients stay connected, and their next message wakes the compute and "
        "re-attaches them. `false`: any open session keeps the compute awake.",
    )
    pinned_session_timeout_seconds: IdleTimeout | None = Field(
        default=None,
        description="Close a pinned session (one holding state a new backend cannot be "
        "given: an open transaction, temporary tables, LISTEN, advisory locks, WITH HOLD "
        "cursors) once it has run nothing this many seconds, so the compute can suspend "
        f"(at least {MIN_IDLE_TIMEOUT_SECONDS:g}); `null`: never.",
    )


class EndpointUpdate(_Request):
    """New idle and session settings; a field left out keeps its value, `null` sets the
    default."""

    idle_timeout_seconds: IdleTimeout | None = Field(
        default=None,
        description="Seconds without sessions before the compute is suspended "
        f"(at least {MIN_IDLE_TIMEOUT_SECONDS:g}); `null`: the server's `idle_timeout`.",
    )
    park_sessions: bool = Field(
        default=True,
        description="Park idle sessions when the compute suspends (see create); `false`: "
        "any open session keeps the compute awake.",
    )
    pinned_session_timeout_seconds: IdleTimeout | None = Field(
        default=None,
        description="Close a pinned session once it has run nothing this many seconds (see "
        f"create; at least {MIN_IDLE_TIMEOUT_SECONDS:g}); `null`: never.",
    )


class BranchCreate(_Request):
    """A copy of an endpoint's data; it keeps the source's roles and passwords."""

    name: EndpointName | None = Field(default=None, description="Generated if omitted.")
    ttl_seconds: Lifetime | None = Field(
        default=None,
        description="Delete the branch this many seconds after its creation "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )


class PasswordChange(_Request):
    """A new password for one of the endpoint's roles."""

    role: RoleName = Field(default=DEFAULT_ROLE, description="A role that can log in.")
    password: Password | None = Field(
        default=None,
        description=f"{MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters; "
        "generated if omitted.",
    )


class TokenCreate(_Request):
    """A scoped token: it sees only the endpoints it creates, within its quotas."""

    label: Annotated[Text, Field(max_length=200)] | None = Field(
        default=None, description="A note for people."
    )
    max_endpoints: int | None = Field(
        default=None,
        ge=1,
        le=_MAX_QUOTA,
        description="Endpoints the token may hold at once (at least 1); no limit if omitted.",
    )
    max_ttl_seconds: Lifetime | None = Field(
        default=None,
        description="Longest TTL the token may ask for; its endpoints always get one "
        f"(at least {MIN_LIFETIME_SECONDS:g}).",
    )


# -- responses ---------------------------------------------------------------------------


class SessionStatesOut(_Response):
    """An endpoint's client sessions by state."""

    active: int = Field(description="Running a query, or waiting for the compute or a login.")
    idle: int = Field(description="On a backend, running nothing; parked at the next suspend.")
    parked: int = Field(
        description="Connected, on no backend: their next message wakes the compute and "
        "re-attaches them."
    )
    pinned: int = Field(
        description="On a backend, running nothing, but holding state a new backend cannot "
        "be given: they keep the compute awake."
    )


class PinnedSessionOut(_Response):
    """A session that keeps its compute awake although it runs nothing."""

    client: str = Field(description="The client's address.")
    application_name: str
    since: float = Field(description="Unix time since when it has run nothing.")
    reason: str = Field(
        description="Why it cannot be parked, in words.", examples=["temporary tables"]
    )


class EndpointOut(_Response):
    """An endpoint; ``connection_uri`` has no password in it."""

    name: str
    state: StateName
    backend: str
    idle_timeout_seconds: float = Field(
        description="Seconds without sessions before a suspend, in effect: the endpoint's "
        "own, else the server's `idle_timeout`."
    )
    created_at: float = Field(description="Unix time.")
    last_active: float | None = Field(
        description="Unix time the last client session ended; `null` if none has."
    )
    expires_at: float | None = Field(description="Unix time the reaper deletes it at.")
    delete_after_idle_seconds: float | None
    allowed_cidrs: list[str]
    compute_options: dict[str, str] = Field(
        description="The backend's choices (docker: image, memory, cpus)."
    )
    disk_bytes: int | None = Field(
        description="Bytes of storage, measured at create and after each suspend; "
        "`null` until measured."
    )
    connection_uri: str
    sessions: int = Field(description="Client sessions open now, in every state.")
    park_sessions: bool = Field(description="Idle sessions are parked when the compute suspends.")
    pinned_session_timeout_seconds: float | None = Field(
        description="Seconds a pinned session may run nothing before it is closed; `null`: never."
    )
    session_states: SessionStatesOut = Field(description="`sessions` by state.")
    pinned_sessions: list[PinnedSessionOut] = Field(
        description="The pinned sessions, and why each is."
    )
    compute_other_sessions: int | None = Field(
        description="The compute's client sessions that are not pgwake's (direct clients, "
        "other proxies), as of its last idle check; `null` while it is not running or "
        "before that check."
    )

    @classmethod
    def from_view(cls, view: EndpointView) -> EndpointOut:
        # Same fields by design; validation also checks ``state`` is a known state.
        return cls.model_validate(dataclasses.asdict(view))


class EndpointCreated(EndpointOut):
    """A new endpoint: the one response that shows its password (in ``connection_uri``
    too). ``password`` is ``null`` for a branch, which keeps its source's roles."""

    password: str | None

    @classmethod
    def from_created(cls, created: Created) -> EndpointCreated:
        fields = EndpointOut.from_view(created.endpoint).model_dump()
        fields["connection_uri"] = created.connection_uri
        return cls(**fields, password=created.password)


class NewPassword(_Response):
    """A role's new password: the one response that shows it (in ``connection_uri`` too)."""

    name: str = Field(description="The endpoint.")
    role: str
    password: str
    connection_uri: str

    @classmethod
    def from_password_set(cls, changed: PasswordSet) -> NewPassword:
        return cls(
            name=changed.name,
            role=changed.role,
            password=changed.password,
            connection_uri=changed.connection_uri,
        )


class EndpointList(_Response):
    endpoints: list[EndpointOut]


class TokenMinted(_Response):
    """A new token; ``token`` is its secret, shown only here."""

    id: str
    token: str
    label: str | None
    max_endpoints: int | None
    max_ttl_seconds: float | None

    @classmethod
    def from_minted(cls, minted: MintedToken) -> TokenMinted:
        return cls(
            id=minted.id,
            token=minted.secret,
            label=minted.label,
            max_endpoints=minted.max_endpoints,
            max_ttl_seconds=minted.max_ttl_seconds,
        )


class ErrorBody(_Response):
    code: str = Field(description="Stable; clients branch on it.", examples=["endpoint_not_found"])
    message: str = Field(description="For people.")


class ErrorResponse(_Response):
    """Every error the API answers with."""

    error: ErrorBody


class Health(_Response):
    status: Literal["ok"]


class Readiness(_Response):
    status: Literal["ready"]
