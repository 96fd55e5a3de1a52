"""What the control plane answers about endpoints: ``EndpointView`` (never a password)
and ``Created`` (the one answer that shows a new endpoint's password)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Created", "EndpointView"]


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
    #: Client sessions open now (0 where no server runs).
    sessions: int = 0


@dataclass(frozen=True, slots=True)
class Created:
    """A new endpoint, with the one response that shows its password."""

    endpoint: EndpointView
    password: str | None
    connection_uri: str

    def __repr__(self) -> str:
        return f"Created({self.endpoint.name})"
