"""Every Prometheus metric pgwake exports, defined in one place. A leaf module.

The label values of a closed set are named here too (``SESSION_STATES``...): each
endpoint's series are made at zero when its lifecycle is (``publish_endpoint``), so a
dashboard sees them before the first event, and dropped when it is deleted.
"""

from __future__ import annotations

import contextlib
from typing import Final

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# No ``<name>_created`` series beside each counter and histogram: a per-endpoint counter
# would export two series per label set, and every scrape builds all of them (a scrape's
# short-lived objects are what its memory costs: a third fewer with 20 endpoints).
disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = [
    "ACCEPTED",
    "BYTES_RELAYED",
    "CANCEL_REQUESTS",
    "CLIENT_ERRORS",
    "CLIENT_SESSIONS",
    "CONNECTIONS_ACTIVE",
    "CONNECTIONS_TOTAL",
    "ENDPOINTS_CREATED",
    "ENDPOINTS_DELETED",
    "ENDPOINT_INFO",
    "ENDPOINT_STATE",
    "OPEN_CONNECTIONS",
    "PARKS",
    "PARK_OUTCOMES",
    "PINNED_REASONS",
    "PINNED_SESSIONS",
    "REATTACHES",
    "REATTACH_DURATION",
    "REATTACH_OUTCOMES",
    "SERVER_REUSE",
    "SESSION_STATES",
    "STATE_TRANSITIONS",
    "SUSPENDS",
    "UNAUTHENTICATED",
    "UNAUTHENTICATED_REFUSED",
    "WAKES",
    "WAKE_DURATION",
    "forget_endpoint",
    "publish_endpoint",
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
    "CancelRequests, by outcome (forwarded, unknown_key, no_backend: the session is parked).",
    ["outcome"],
)

# -- parked and pinned sessions ----------------------------------------------------------

#: ``SessionStates``' states: running or waiting, idle on a backend, parked, pinned.
SESSION_STATES: Final = ("active", "idle", "parked", "pinned")
#: Why a session is pinned, as a label: the state a new backend could not be given.
PINNED_REASONS: Final = (
    "open_transaction",
    "temporary_tables",
    "listen",
    "advisory_locks",
    "with_hold_cursors",
    "copy",
    "other",
)
#: A parked session's next message: re-attached, or why not (the session stays, and its
#: next message tries again; only a password changed meanwhile ends it).
REATTACH_OUTCOMES: Final = ("ok", "wake_failed", "restore_failed", "login_failed")
#: An idle session at suspend: parked, kept on its backend (pinned, or busy again by
#: then), or failed to park (closed).
PARK_OUTCOMES: Final = ("parked", "pinned", "busy", "failed")

CLIENT_SESSIONS: Final = Gauge(
    "pgwake_client_sessions",
    "Client sessions of an endpoint open now, by state (active, idle, parked, pinned).",
    ["endpoint", "state"],
)
PINNED_SESSIONS: Final = Gauge(
    "pgwake_pinned_sessions",
    "Pinned client sessions of an endpoint (they keep its compute awake), by reason "
    "(open_transaction, temporary_tables, listen, advisory_locks, with_hold_cursors, copy, "
    "other).",
    ["endpoint", "reason"],
)
REATTACHES: Final = Counter(
    "pgwake_reattaches_total",
    "Parked sessions given a backend again at their next message, by outcome (ok, "
    "wake_failed, restore_failed, login_failed).",
    ["endpoint", "outcome"],
)
REATTACH_DURATION: Final = Histogram(
    "pgwake_reattach_duration_seconds",
    "Time from a parked session's next message to its backend ready for it (a wake if "
    "needed, the login, the restored state), by compute backend.",
    ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)
PARKS: Final = Counter(
    "pgwake_parks_total",
    "Idle sessions met by a suspend, by outcome (parked; pinned or busy: kept on their "
    "backend; failed: closed).",
    ["endpoint", "outcome"],
)

_BY_ENDPOINT: Final = (
    (CLIENT_SESSIONS, SESSION_STATES),
    (PINNED_SESSIONS, PINNED_REASONS),
    (REATTACHES, REATTACH_OUTCOMES),
    (PARKS, PARK_OUTCOMES),
)


def publish_endpoint(endpoint: str, backend: str) -> None:
    """Make ``endpoint``'s session series at zero (those already there keep their value)."""
    for metric, values in _BY_ENDPOINT:
        for value in values:
            metric.labels(endpoint, value)
    REATTACH_DURATION.labels(backend)


def forget_endpoint(endpoint: str) -> None:
    """Drop a deleted endpoint's session series."""
    for metric, values in _BY_ENDPOINT:
        for value in values:
            with contextlib.suppress(KeyError):  # never made
                metric.remove(endpoint, value)
