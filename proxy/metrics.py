"""Every Prometheus metric pgwake exports, defined in one place. A leaf module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ACCEPTED",
    "BYTES_RELAYED",
    "CANCEL_REQUESTS",
    "CLIENT_ERRORS",
    "CONNECTIONS_ACTIVE",
    "CONNECTIONS_TOTAL",
    "ENDPOINTS_CREATED",
    "ENDPOINTS_DELETED",
    "ENDPOINT_INFO",
    "ENDPOINT_STATE",
    "OPEN_CONNECTIONS",
    "PARKS",
    "REATTACHES",
    "REATTACH_SECONDS",
    "SERVER_REUSE",
    "SESSIONS",
    "SESSION_PINS",
    "STATE_TRANSITIONS",
    "SUSPENDS",
    "UNAUTHENTICATED",
    "UNAUTHENTICATED_REFUSED",
    "WAKES",
    "WAKE_DURATION",
    "publish_pins",
]

OPEN_CONNECTIONS: Final = Gauge(
    "pgwake_open_connections", "Client connections open now, in any phase (before routing too)."
)
ACCEPTED: Final = Counter(
    "pgwake_accepted_connections_total", "TCP connections accepted, before routing."
)
UNAUTHENTICATED: Final = Gauge(
    "pgwake_unauthenticated_connections",
    "Connections open now that have not proved a password yet (TLS, startup or SCRAM).",
)
UNAUTHENTICATED_REFUSED: Final = Counter(
    "pgwake_unauthenticated_refused_total",
    "Connections refused (53300) because too many were awaiting authentication, by "
    "limit (address, total).",
    ["limit"],
)
CONNECTIONS_ACTIVE: Final = Gauge(
    "pgwake_client_connections_active",
    "Client sessions of an endpoint (authenticated), open now.",
    ["endpoint"],
)
CONNECTIONS_TOTAL: Final = Counter(
    "pgwake_client_connections_total",
    "Client sessions of an endpoint (authenticated).",
    ["endpoint"],
)
WAKES: Final = Counter(
    "pgwake_wakes_total", "Compute starts, by outcome (success, failure).", ["endpoint", "outcome"]
)
WAKE_DURATION: Final = Histogram(
    "pgwake_wake_duration_seconds",
    "Time from wake request to a compute ready for clients, by compute backend.",
    ["backend"],
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SERVER_REUSE: Final = Counter(
    "pgwake_server_reuse_total",
    "Compute backends kept for the next client (server_reuse_seconds), by event: kept, "
    "reused, reset_failed, full, and why kept ones were closed: expired, idle, "
    "compute_stopped.",
    ["endpoint", "event"],
)
SUSPENDS: Final = Counter(
    "pgwake_suspends_total",
    "Compute suspends, by reason (idle, shutdown, crashed).",
    ["endpoint", "reason"],
)
ENDPOINT_STATE: Final = Gauge(
    "pgwake_endpoint_state",
    "1 for the state an endpoint is in, 0 for the others.",
    ["endpoint", "state"],
)
ENDPOINT_INFO: Final = Gauge(
    "pgwake_endpoint_info",
    "Always 1; labels describe the endpoint (join on `endpoint` for per-backend views).",
    ["endpoint", "backend"],
)
STATE_TRANSITIONS: Final = Counter(
    "pgwake_endpoint_transitions_total", "Lifecycle transitions, by trigger.", ["trigger"]
)
BYTES_RELAYED: Final = Counter(
    "pgwake_bytes_relayed_total",
    "Bytes relayed, by direction (to_compute, to_client); added when a session ends.",
    ["endpoint", "direction"],
)
CLIENT_ERRORS: Final = Counter(
    "pgwake_client_errors_total",
    "ErrorResponses pgwake itself sent, by SQLSTATE and kind.",
    ["sqlstate", "kind"],
)
ENDPOINTS_CREATED: Final = Counter(
    "pgwake_endpoints_created_total", "Endpoints created (API, CLI or branch)."
)
ENDPOINTS_DELETED: Final = Counter(
    "pgwake_endpoints_deleted_total",
    "Endpoints deleted, by reason (api, cli, ttl, idle).",
    ["reason"],
)
CANCEL_REQUESTS: Final = Counter(
    "pgwake_cancel_requests_total",
    "CancelRequests, by outcome (forwarded, unknown_key).",
    ["outcome"],
)
SESSIONS: Final = Gauge(
    "pgwake_sessions",
    "Client sessions of an endpoint by state: active (running something or connecting), "
    "idle (parkable), parked (no backend), pinned (idle but holding state pgwake cannot "
    "restore, or inside a transaction). Updated every lifecycle tick.",
    ["endpoint", "state"],
)
SESSION_PINS: Final = Gauge(
    "pgwake_session_pins",
    "Pinned sessions of an endpoint by reason (open transaction, temporary tables, LISTEN, "
    "advisory locks, WITH HOLD cursors, ...). Updated every lifecycle tick.",
    ["endpoint", "reason"],
)
PARKS: Final = Counter(
    "pgwake_session_parks_total",
    "Attempts to park an idle session, by outcome (parked, pinned, busy, failed).",
    ["endpoint", "outcome"],
)
REATTACHES: Final = Counter(
    "pgwake_session_reattaches_total",
    "Parked sessions given a backend again, by outcome (ok, wake_failed, login_failed, "
    "restore_failed).",
    ["endpoint", "outcome"],
)
REATTACH_SECONDS: Final = Histogram(
    "pgwake_session_reattach_seconds",
    "From a parked client's message to its backend restored (wake included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)

#: The pin reasons published per endpoint, so a reason that is gone is set back to 0.
_published_pins: dict[str, set[str]] = {}


def publish_pins(endpoint: str, reasons: Mapping[str, int]) -> None:
    """Set ``endpoint``'s pin gauges to ``reasons`` (reason to count)."""
    for reason in _published_pins.get(endpoint, set()) - reasons.keys():
        SESSION_PINS.labels(endpoint, reason).set(0)
    for reason, count in reasons.items():
        SESSION_PINS.labels(endpoint, reason).set(count)
    _published_pins[endpoint] = set(reasons) | _published_pins.get(endpoint, set())
