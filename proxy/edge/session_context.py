"""What every client connection shares, built once by ``server.py``; and the refusal of a
connection over the unauthenticated budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pgwake.edge.admission import UnauthenticatedBudget
from pgwake.edge.relay import Relays
from pgwake.protocol.errors import TooManyConnections

if TYPE_CHECKING:
    from pgwake.catalog import Catalog
    from pgwake.edge.admission import Refusal
    from pgwake.edge.cancel_keys import CancelMap
    from pgwake.edge.kept_connections import KeptConnections
    from pgwake.edge.throttle import AuthThrottle
    from pgwake.edge.tls import TlsMaterial
    from pgwake.endpoint.lifecycles import LifecycleManager
    from pgwake.settings import Settings

__all__ = ["SessionContext", "too_many_unauthenticated"]


@dataclass(slots=True)
class SessionContext:
    """What every session shares; built once by ``server.py``."""

    settings: Settings
    catalog: Catalog
    lifecycles: LifecycleManager
    cancels: CancelMap
    throttle: AuthThrottle
    #: Server-wide secret for SCRAM mock salts (stable, so probes see stable salts).
    mock_secret: bytes
    #: The current certificate; replaced on SIGHUP (sessions keep the one they began with).
    tls: TlsMaterial | None
    #: Kept backends and warm sockets, per endpoint (``kept_connections.py``).
    kept: KeptConnections
    #: Relayed sessions (their coroutines have ended; the server's drain waits on these).
    relays: Relays = field(default_factory=Relays)
    #: Authenticated sessions open now (``max_client_connections``).
    active_sessions: int = field(default=0)
    #: Connections that have not proved a password yet (``admission.py``).
    unauthenticated: UnauthenticatedBudget = field(init=False)

    def __post_init__(self) -> None:
        self.unauthenticated = UnauthenticatedBudget(
            per_address=self.settings.max_unauthenticated_per_address,
            total=self.settings.max_unauthenticated_connections,
        )


def too_many_unauthenticated(refusal: Refusal) -> TooManyConnections:
    """The 53300 for a connection over the unauthenticated budget."""
    if refusal.scope == "address":
        return TooManyConnections(
            "too many connections from your address are still logging in",
            detail=f"at most {refusal.limit} connections per client address may be in "
            "TLS, startup or authentication at once",
            hint="Finish or close the connections that are still logging in.",
        )
    return TooManyConnections(
        "too many connections are still logging in",
        detail=f"at most {refusal.limit} connections may be in TLS, startup or "
        "authentication at once",
        hint="Try again shortly.",
    )
