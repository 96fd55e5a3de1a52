"""What the control plane answers about endpoints: ``EndpointView`` (never a password)
and ``Created`` (the one answer that shows a new endpoint's password)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgwake.endpoint.compute_resources import PinnedSession, SessionStates

__all__ = ["Created", "EndpointView", "SessionCounts"]


@dataclass(frozen=True, slots=True)
class SessionCounts:
    """An endpoint's client sessions by state (``SessionStates``, pinned ones counted)."""

    active: int = 0
    idle: int = 0
    parked: int = 0
    pinned: int = 0

    @classmethod
    def of(cls, states: SessionStates) -> SessionCounts:
        return cls(states.active, states.idle, states.parked, len(states.pinned))

    @property
    def total(self) -> int:
        return self.active + self.idle + self.parked + self.pinned


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as the API shows it (never a password)."""

    name: str
    state: str
    backend: str
    #: In effect: the endpoint's own, else the server's ``idle_timeout``.
    idle_timeout_seconds: float
    created_at: float
    #: When the last client session ended (``None``: none has yet).
    last_active: float | None
    expires_at: float | None
    delete_after_idle_seconds: float | None
    allowed_cidrs: tuple[str, ...]
    #: The backend's choices (docker: ``image``, ``memory``, ``cpus``).
    compute_options: dict[str, str]
    #: Bytes of storage at create or the last suspend (``None``: not measured yet).
    disk_bytes: int | None
    #: A URI without the password.
    connection_uri: str
    #: Client sessions open now, in every state (0 where no server runs).
    sessions: int = 0
    #: Park idle sessions when the compute suspends (``False``: they keep it awake).
    park_sessions: bool = True
    #: Seconds a pinned session may stay idle before it is closed (``None``: forever).
    pinned_session_timeout_seconds: float | None = None
    #: ``sessions`` by state.
    session_states: SessionCounts = field(default_factory=SessionCounts)
    #: The sessions that keep the compute awake although they run nothing, and why.
    pinned_sessions: tuple[PinnedSession, ...] = ()
    #: The compute's client sessions that are not pgwake's, as of its last idle check
    #: (``None``: not running, or not checked yet).
    compute_other_sessions: int | None = None


@dataclass(frozen=True, slots=True)
class Created:
    """A new endpoint, with the one response that shows its password."""

    endpoint: EndpointView
    password: str | None
    connection_uri: str

    def __repr__(self) -> str:
        return f"Created({self.endpoint.name})"
