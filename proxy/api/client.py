"""A small typed client for pgwake's HTTP API (stdlib only).

Creating a database is three lines::

    from pgwake.api.client import PgwakeClient
    db = PgwakeClient().create_endpoint(ttl_seconds=3600)
    print(db.connection_uri)  # postgresql://app.quiet-river-k3x9q2:...@127.0.0.1:6432/app

The URI works as it is with libpq (psql, psycopg), asyncpg and SQLAlchemy on either (give
SQLAlchemy the driver in the scheme: ``postgresql+asyncpg://...``); the user name
``app.<endpoint>`` names the endpoint. A lost password is replaced with
``set_password(name)``, which returns a new URI.

``PgwakeClient()`` reads ``PGWAKE_API_URL`` (default ``http://127.0.0.1:8080``) and the
token from ``PGWAKE_TOKEN``, else ``PGWAKE_ADMIN_TOKEN``, else the ``admin-token`` file of
the local state dir (``PGWAKE_STATE_DIR``, else the per-user default of
``pgwake.state_dir.default_path``). A 401 names where the token came from.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from typing import Any, Final

from pgwake.state_dir import ADMIN_TOKEN, StateDir, configured_path

__all__ = [
    "ApiError",
    "Endpoint",
    "NewEndpoint",
    "NewPassword",
    "PgwakeClient",
    "PinnedSession",
    "Token",
    "build",
    "default_token",
]

DEFAULT_API_URL: Final = "http://127.0.0.1:8080"
_TIMEOUT: Final = 60.0


class ApiError(Exception):
    """The API refused a request: ``status``, the stable ``code`` and its ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class PinnedSession:
    """A session that keeps its endpoint's compute awake although it runs nothing."""

    client: str
    application_name: str = ""
    #: Unix time since when it has run nothing.
    since: float = 0.0
    #: Why it cannot be parked, in words (``temporary tables``...).
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint as the API describes it."""

    name: str
    state: str
    connection_uri: str
    backend: str = "local"
    #: In effect: the endpoint's own, else the server's ``idle_timeout``.
    idle_timeout_seconds: float | None = None
    created_at: float | None = None
    #: When the last client session ended (``None``: none has yet).
    last_active: float | None = None
    expires_at: float | None = None
    delete_after_idle_seconds: float | None = None
    allowed_cidrs: tuple[str, ...] = ()
    #: The backend's choices (docker: ``image``, ``memory``, ``cpus``).
    compute_options: dict[str, str] = field(default_factory=dict)
    #: Bytes of storage at create or the last suspend (``None``: not measured yet).
    disk_bytes: int | None = None
    #: Client sessions open now, in every state.
    sessions: int = 0
    #: Idle sessions are parked when the compute suspends (``False``: they keep it awake).
    park_sessions: bool = True
    #: Seconds a pinned session may run nothing before it is closed (``None``: never).
    pinned_session_timeout_seconds: float | None = None
    #: ``sessions`` by state: ``active``, ``idle``, ``parked``, ``pinned``.
    session_states: dict[str, int] = field(default_factory=dict)
    pinned_sessions: tuple[PinnedSession, ...] = ()
    #: The compute's client sessions that are not pgwake's, as of its last idle check
    #: (``None``: not running, or not checked yet).
    compute_other_sessions: int | None = None


@dataclass(frozen=True, slots=True)
class NewEndpoint(Endpoint):
    """A just-created endpoint: ``connection_uri`` holds the password, shown this once."""

    password: str | None = None

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"NewEndpoint(name={self.name!r}, state={self.state!r})"


@dataclass(frozen=True, slots=True)
class NewPassword:
    """A role's new password, shown this once, and a URI that holds it."""

    name: str
    role: str
    password: str
    connection_uri: str

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"NewPassword(name={self.name!r}, role={self.role!r})"


@dataclass(frozen=True, slots=True)
class Token:
    """A scoped API token; ``token`` is the secret, shown once."""

    id: str
    token: str
    label: str | None = None
    max_endpoints: int | None = None
    max_ttl_seconds: float | None = None

    def __repr__(self) -> str:
        return f"Token(id={self.id!r})"


#: Fields that hold a list of another of this module's dataclasses.
_NESTED: Final[dict[str, type[Any]]] = {"pinned_sessions": PinnedSession}


def build(cls: type[Any], data: dict[str, Any]) -> Any:
    """Make ``cls`` (one of this module's dataclasses) from a JSON-like mapping, ignoring
    keys it does not know (newer servers may send more)."""
    known = {f.name for f in fields(cls)}
    values = {k: _value(k, v) for k, v in data.items() if k in known}
    return cls(**values)


def _value(key: str, value: Any) -> Any:
    if not isinstance(value, list | tuple):
        return value
    nested = _NESTED.get(key)
    return tuple(build(nested, item) if nested else item for item in value)


def default_token() -> tuple[str | None, str]:
    """The token ``PgwakeClient()`` uses, and where it found it: ``PGWAKE_TOKEN``, else
    ``PGWAKE_ADMIN_TOKEN``, else the state dir's ``admin-token`` file (a path). With no
    token, the second item names every place it looked. Creates nothing."""
    for name in ("PGWAKE_TOKEN", "PGWAKE_ADMIN_TOKEN"):
        if os.environ.get(name):
            return os.environ[name], name
    state = StateDir(configured_path())
    token = state.read_secret(ADMIN_TOKEN)
    if token is None:
        return None, (
            "none: PGWAKE_TOKEN and PGWAKE_ADMIN_TOKEN are unset, and "
            f"{state.admin_token} is missing or unreadable"
        )
    return token, str(state.admin_token)


class PgwakeClient:
    """Synchronous client; every method raises ``ApiError`` on a refused request and
    ``OSError`` when the server cannot be reached."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("PGWAKE_API_URL") or DEFAULT_API_URL).rstrip("/")
        #: Where the token came from, named when the API answers 401.
        self.token_source = "given"  # noqa: S105 (a description, not a token)
        if token is None:
            token, self.token_source = default_token()
        self._token = token

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        keep_none: bool = False,
    ) -> Any:
        """Send ``body`` as JSON, without its ``None`` values unless ``keep_none``."""
        data = (
            None
            if body is None
            else json.dumps({k: v for k, v in body.items() if keep_none or v is not None}).encode()
        )
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:  # noqa: S310
                payload = response.read()
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", str(exc.reason)
            if exc.code == HTTPStatus.UNAUTHORIZED:
                message = f"{message} (token: {self.token_source})"
            raise ApiError(exc.code, code, message) from None
        return json.loads(payload) if payload else None

    def create_endpoint(
        self,
        name: str | None = None,
        *,
        password: str | None = None,
        idle_timeout_seconds: float | None = None,
        ttl_seconds: float | None = None,
        delete_after_idle_seconds: float | None = None,
        allowed_cidrs: list[str] | None = None,
        backend: str | None = None,
        image: str | None = None,
        memory: str | None = None,
        cpus: str | float | None = None,
        park_sessions: bool | None = None,
        pinned_session_timeout_seconds: float | None = None,
    ) -> NewEndpoint:
        """Create an endpoint (suspended until its first connect); ``backend`` and the
        docker options default to the server's settings, ``park_sessions`` to ``True``."""
        data = self._request(
            "POST",
            "/v1/endpoints",
            {
                "name": name,
                "password": password,
                "idle_timeout_seconds": idle_timeout_seconds,
                "ttl_seconds": ttl_seconds,
                "delete_after_idle_seconds": delete_after_idle_seconds,
                "allowed_cidrs": allowed_cidrs,
                "backend": backend,
                "image": image,
                "memory": memory,
                "cpus": float(cpus) if cpus is not None else None,
                "park_sessions": park_sessions,
                "pinned_session_timeout_seconds": pinned_session_timeout_seconds,
            },
        )
        result: NewEndpoint = build(NewEndpoint, data)
        return result

    def list_endpoints(self) -> list[Endpoint]:
        data = self._request("GET", "/v1/endpoints")
        return [build(Endpoint, item) for item in data["endpoints"]]

    def get_endpoint(self, name: str) -> Endpoint:
        result: Endpoint = build(Endpoint, self._request("GET", f"/v1/endpoints/{_q(name)}"))
        return result

    def update_endpoint(self, name: str, **settings: float | bool | None) -> Endpoint:
        """Change ``name``'s ``idle_timeout_seconds``, ``park_sessions`` or
        ``pinned_session_timeout_seconds``: those given are sent (``None`` too, which
        sets the default), the others keep their values."""
        data = self._request("PATCH", f"/v1/endpoints/{_q(name)}", settings, keep_none=True)
        result: Endpoint = build(Endpoint, data)
        return result

    def delete_endpoint(self, name: str) -> None:
        self._request("DELETE", f"/v1/endpoints/{_q(name)}")

    def suspend_endpoint(self, name: str) -> Endpoint:
        result: Endpoint = build(
            Endpoint, self._request("POST", f"/v1/endpoints/{_q(name)}/suspend")
        )
        return result

    def wake_endpoint(self, name: str) -> Endpoint:
        result: Endpoint = build(Endpoint, self._request("POST", f"/v1/endpoints/{_q(name)}/wake"))
        return result

    def branch_endpoint(
        self, source: str, name: str | None = None, *, ttl_seconds: float | None = None
    ) -> NewEndpoint:
        """A new endpoint holding a consistent copy of ``source`` (same roles)."""
        data = self._request(
            "POST",
            f"/v1/endpoints/{_q(source)}/branches",
            {"name": name, "ttl_seconds": ttl_seconds},
        )
        result: NewEndpoint = build(NewEndpoint, data)
        return result

    def set_password(
        self, name: str, *, role: str = "app", password: str | None = None
    ) -> NewPassword:
        """Give ``role`` of endpoint ``name`` a new password (``password``, else a generated
        one); the result holds it and a URI with it."""
        data = self._request(
            "POST", f"/v1/endpoints/{_q(name)}/password", {"role": role, "password": password}
        )
        result: NewPassword = build(NewPassword, data)
        return result

    def mint_token(
        self,
        *,
        label: str | None = None,
        max_endpoints: int | None = None,
        max_ttl_seconds: float | None = None,
    ) -> Token:
        """Mint a scoped token (needs the admin token)."""
        data = self._request(
            "POST",
            "/v1/tokens",
            {"label": label, "max_endpoints": max_endpoints, "max_ttl_seconds": max_ttl_seconds},
        )
        result: Token = build(Token, data)
        return result

    def revoke_token(self, token_id: str) -> None:
        self._request("DELETE", f"/v1/tokens/{_q(token_id)}")


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
