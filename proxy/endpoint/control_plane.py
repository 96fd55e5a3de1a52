"""The control plane: what the HTTP API (and the CLI) can do to endpoints and tokens.

Rule: authorization lives here, not in the HTTP layer. Every call names its caller, a
``Caller`` (the admin, or a scoped token): a scoped token sees and manages only the
endpoints it created, within its quotas. An endpoint another token owns is reported as
not found, so a token cannot even learn that it exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.auth.scram import make_verifier
from pgwake.catalog import EndpointExists
from pgwake.compute import ComputeStartError, EndpointSpec
from pgwake.endpoint.connection_uri import DEFAULT_ROLE, connection_uri
from pgwake.endpoint.lifecycle import WakeFailed
from pgwake.endpoint.names import generate_endpoint_name, is_valid_endpoint_name
from pgwake.endpoint.states import EndpointState

if TYPE_CHECKING:
    from pgwake.catalog import Catalog, EndpointRecord
    from pgwake.compute import Backends
    from pgwake.endpoint.lifecycles import LifecycleManager
    from pgwake.settings import Settings

__all__ = [
    "Caller",
    "ControlError",
    "ControlPlane",
    "Created",
    "EndpointView",
    "MintedToken",
]

logger = logging.getLogger(__name__)
_TOKEN_PREFIX: Final = "pgw_"  # noqa: S105 (a prefix, not a secret)
_NAME_ATTEMPTS: Final = 8


class ControlError(Exception):
    """A refused request: ``code`` is stable (API clients branch on it), ``status`` the
    HTTP status the API answers with."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _not_found(name: str) -> ControlError:
    return ControlError("endpoint_not_found", f'endpoint "{name}" does not exist', 404)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the admin (``token_id`` None) or a scoped token and its quotas."""

    token_id: str | None
    max_endpoints: int | None = None
    max_ttl_seconds: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.token_id is None


ADMIN: Final = Caller(None)


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as the API shows it (never a password)."""

    name: str
    state: str
    backend: str
    idle_timeout_seconds: float | None
    created_at: float
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


@dataclass(frozen=True, slots=True)
class Created:
    """A new endpoint, with the one response that shows its password."""

    endpoint: EndpointView
    password: str | None
    connection_uri: str

    def __repr__(self) -> str:
        return f"Created({self.endpoint.name})"


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A new scoped token; ``secret`` is shown once and stored only as a hash."""

    id: str
    secret: str
    label: str | None
    max_endpoints: int | None
    max_ttl_seconds: float | None

    def __repr__(self) -> str:
        return f"MintedToken({self.id})"


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ControlPlane:
    """Endpoint and token operations over the catalog, the backend and the lifecycles."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        backends: Backends,
        lifecycles: LifecycleManager,
        admin_token: str,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.backends = backends
        self.lifecycles = lifecycles
        self._admin_token = admin_token
        #: Names being created or branched, with the token that asked (``None``: admin).
        #: They count against that token's quota before the catalog holds them.
        self._creating: dict[str, str | None] = {}
        #: Names being deleted: already gone for every caller.
        self._deleting: set[str] = set()

    # -- tokens --------------------------------------------------------------------------

    def authenticate(self, secret: str) -> Caller | None:
        """The caller a bearer secret stands for, or ``None``."""
        if hmac.compare_digest(secret.encode(), self._admin_token.encode()):
            return ADMIN
        found = self.catalog.token_by_hash(_hash_secret(secret))
        if found is None:
            return None
        token_id, _, max_endpoints, max_ttl = found
        return Caller(token_id, max_endpoints, max_ttl)

    def mint_token(
        self,
        caller: Caller,
        *,
        label: str | None,
        max_endpoints: int | None,
        max_ttl_seconds: float | None,
    ) -> MintedToken:
        """Mint a scoped token (admin only)."""
        if not caller.is_admin:
            raise ControlError("forbidden", "only the admin token can mint tokens", 403)
        token_id = "tok_" + secrets.token_hex(6)
        secret = _TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.catalog.add_token(
            token_id, _hash_secret(secret), label, max_endpoints, max_ttl_seconds
        )
        logger.info(
            "event=token_minted token=%s max_endpoints=%s max_ttl_s=%s",
            token_id,
            max_endpoints,
            max_ttl_seconds,
        )
        return MintedToken(token_id, secret, label, max_endpoints, max_ttl_seconds)

    def revoke_token(self, caller: Caller, token_id: str) -> None:
        if not caller.is_admin:
            raise ControlError("forbidden", "only the admin token can revoke tokens", 403)
        if not self.catalog.delete_token(token_id):
            raise ControlError("token_not_found", f"token {token_id} does not exist", 404)

    # -- endpoints -----------------------------------------------------------------------

    def _visible(self, name: str, caller: Caller) -> EndpointRecord:
        record = self.catalog.get(name)
        if (
            record is None
            or name in self._deleting
            or not (caller.is_admin or record.owner == caller.token_id)
        ):
            raise _not_found(name)
        return record

    def _view(self, record: EndpointRecord) -> EndpointView:
        lifecycle = self.lifecycles.get(record)
        return EndpointView(
            name=record.name,
            state=lifecycle.state.value,
            backend=record.backend,
            idle_timeout_seconds=record.idle_timeout,
            created_at=record.created_at,
            last_active=record.last_active,
            expires_at=record.expires_at,
            delete_after_idle_seconds=record.delete_after_idle,
            allowed_cidrs=record.allowed_cidrs,
            compute_options=record.compute_options,
            disk_bytes=record.disk_bytes,
            connection_uri=connection_uri(
                self.settings, record.name, DEFAULT_ROLE, None, DEFAULT_ROLE
            ),
        )

    def list_endpoints(self, caller: Caller) -> list[EndpointView]:
        return [
            self._view(r)
            for r in self.catalog.list()
            if (caller.is_admin or r.owner == caller.token_id) and r.name not in self._deleting
        ]

    def record(self, caller: Caller, name: str) -> EndpointRecord:
        """The catalog record of an endpoint ``caller`` may see (``endpoint_not_found``)."""
        return self._visible(name, caller)

    def get(self, caller: Caller, name: str) -> EndpointView:
        return self._view(self._visible(name, caller))

    def _check_quota(self, caller: Caller, ttl_seconds: float | None) -> float | None:
        """The TTL to give a new endpoint of ``caller``; raise ``ControlError`` over quota."""
        if caller.max_endpoints is not None and caller.token_id is not None:
            # Creates still in flight count too: parallel requests cannot overshoot.
            in_flight = sum(owner == caller.token_id for owner in self._creating.values())
            if self.catalog.count_owned(caller.token_id) + in_flight >= caller.max_endpoints:
                raise ControlError(
                    "quota_exceeded",
                    f"this token may hold at most {caller.max_endpoints} endpoints",
                    403,
                )
        if caller.max_ttl_seconds is not None:
            if ttl_seconds is None:
                return caller.max_ttl_seconds  # a token with a TTL cap makes only ephemerals
            if ttl_seconds > caller.max_ttl_seconds:
                raise ControlError(
                    "ttl_too_long", f"ttl_seconds may be at most {caller.max_ttl_seconds:g}", 403
                )
        return ttl_seconds

    def _reserve_name(self, caller: Caller, requested: str | None) -> str:
        """A free name (``requested``, or a generated one), held until ``_release_name``.

        Call it with no ``await`` since the quota check, so both see the same state."""
        if requested is not None:
            if not is_valid_endpoint_name(requested):
                raise ControlError(
                    "invalid_name",
                    "invalid endpoint name: use lowercase letters, digits and hyphens "
                    "(a DNS label of at most 63 characters)",
                    422,
                )
            if self.catalog.exists(requested) or requested in self._creating:
                raise ControlError("endpoint_exists", f'endpoint "{requested}" already exists', 409)
            name = requested
        else:
            for _ in range(_NAME_ATTEMPTS):
                name = generate_endpoint_name()
                if not self.catalog.exists(name) and name not in self._creating:
                    break
            else:
                raise ControlError("name_unavailable", "could not generate a free name", 503)
        self._creating[name] = caller.token_id
        return name

    def _release_name(self, name: str) -> None:
        self._creating.pop(name, None)

    async def create(
        self,
        caller: Caller,
        *,
        name: str | None = None,
        password: str | None = None,
        idle_timeout: float | None = None,
        ttl_seconds: float | None = None,
        delete_after_idle_seconds: float | None = None,
        allowed_cidrs: tuple[str, ...] = (),
        backend: str | None = None,
        compute_options: dict[str, str | None] | None = None,
    ) -> Created:
        """Create a suspended endpoint; the result holds its password, shown once.

        ``backend`` defaults to the server's ``compute_backend``; ``compute_options`` are
        that backend's (docker: ``image``, ``memory``, ``cpus``).

        Raises ``ControlError``: ``quota_exceeded``/``ttl_too_long`` (403), ``invalid_name``
        or ``invalid_cidr`` (422), ``invalid_backend``/``invalid_option`` (422),
        ``endpoint_exists`` (409), ``name_unavailable`` (503), ``create_failed`` (503)."""
        backend_name = backend or self.backends.default
        try:
            compute = self.backends.get(backend_name)
        except ValueError as exc:
            raise ControlError("invalid_backend", str(exc), 422) from None
        try:
            options = compute.resolve_options(dict(compute_options or {}))
        except ValueError as exc:
            raise ControlError("invalid_option", str(exc), 422) from None
        try:
            networks = tuple(str(ipaddress.ip_network(c, strict=False)) for c in allowed_cidrs)
        except ValueError:
            raise ControlError(
                "invalid_cidr", "allowed_cidrs holds something that is not a network", 422
            ) from None
        ttl_seconds = self._check_quota(caller, ttl_seconds)
        name = self._reserve_name(caller, name)
        try:
            password = password or secrets.token_urlsafe(18)
            verifier = make_verifier(password)
            spec = EndpointSpec(name, DEFAULT_ROLE, DEFAULT_ROLE, verifier, options)
            try:
                await compute.create(spec)
            except FileExistsError:  # a data directory the catalog does not know
                raise ControlError(
                    "endpoint_exists", f'endpoint "{name}" already exists', 409
                ) from None
            except ComputeStartError as exc:
                raise ControlError("create_failed", exc.reason, 503) from None
            try:
                record = self.catalog.add_endpoint(
                    name,
                    compute.name,
                    idle_timeout,
                    DEFAULT_ROLE,
                    verifier,
                    networks,
                    owner=caller.token_id,
                    expires_at=time.time() + ttl_seconds if ttl_seconds else None,
                    delete_after_idle=delete_after_idle_seconds,
                    compute_options=options,
                )
            except EndpointExists:  # e.g. `pgwake endpoint create` of the same name
                await compute.delete(name)
                raise ControlError(
                    "endpoint_exists", f'endpoint "{name}" already exists', 409
                ) from None
        finally:
            self._release_name(name)
        self.lifecycles.get(record).measure_disk()
        metrics.ENDPOINTS_CREATED.inc()
        logger.info(
            "event=endpoint_created endpoint=%s owner=%s ttl_s=%s",
            name,
            caller.token_id or "admin",
            ttl_seconds,
        )
        return Created(
            self._view(record),
            password,
            connection_uri(self.settings, name, DEFAULT_ROLE, password, DEFAULT_ROLE),
        )

    async def delete(self, caller: Caller, name: str, *, reason: str = "api") -> None:
        """Stop the compute if it runs and remove the endpoint with its data.

        Raises ``ControlError`` ``endpoint_not_found`` (also while another delete runs),
        ``delete_failed`` (503) when the backend cannot remove the compute now."""
        record = self._visible(name, caller)
        self._deleting.add(name)
        try:
            lifecycle = self.lifecycles.get(record)
            await lifecycle.retire()
            try:
                await lifecycle.backend.delete(name)
            except ComputeStartError as exc:  # e.g. the Docker engine is unreachable
                lifecycle.closing = False  # still there: it may serve again
                raise ControlError("delete_failed", exc.reason, 503) from None
            self.catalog.delete(name)
            self.lifecycles.forget(name)
        finally:
            self._deleting.discard(name)
        metrics.ENDPOINTS_DELETED.labels(reason).inc()
        logger.info("event=endpoint_deleted endpoint=%s reason=%s", name, reason)

    async def suspend(self, caller: Caller, name: str) -> EndpointView:
        record = self._visible(name, caller)
        await self.lifecycles.get(record).suspend("api")
        return self._view(record)

    async def wake(self, caller: Caller, name: str) -> EndpointView:
        """Start the compute if needed and wait until it runs.

        Raises ``ControlError``: ``endpoint_not_found``, ``wake_failed`` (503),
        ``wake_timeout`` (504)."""
        record = self._visible(name, caller)
        try:
            async with asyncio.timeout(self.settings.wake_timeout):
                await self.lifecycles.get(record).wake()
        except TimeoutError:
            raise ControlError("wake_timeout", "the compute did not start in time", 504) from None
        except WakeFailed as exc:  # its reason is client-safe
            raise ControlError(
                "wake_failed", f"the compute could not start: {exc.reason or exc}", 503
            ) from None
        except Exception as exc:  # ShuttingDown, or a bug: still a 503 (no traceback)
            detail = str(exc)
            raise ControlError(
                "wake_failed", f"the compute could not start: {detail}", 503
            ) from None
        return self._view(record)

    async def branch(
        self,
        caller: Caller,
        source: str,
        *,
        name: str | None = None,
        ttl_seconds: float | None = None,
    ) -> Created:
        """A new endpoint holding a consistent copy of ``source``'s data (and its roles).

        The source is woken if needed and copied with a base backup, so writes running on
        it during the copy are either wholly in the branch or not at all. Raises
        ``ControlError`` as ``create`` and ``wake`` do, and ``branch_failed`` (503)."""
        source_record = self._visible(source, caller)
        ttl_seconds = self._check_quota(caller, ttl_seconds)
        name = self._reserve_name(caller, name)
        source_lifecycle = self.lifecycles.get(source_record)
        compute = source_lifecycle.backend
        # Held like a client session while it is copied: neither the idle timer nor the
        # reaper's idle rule stops the source under pg_basebackup.
        source_lifecycle.acquire()
        try:
            await self.wake(caller, source)
            try:
                await compute.branch(source, name)
            except ComputeStartError as exc:
                raise ControlError(
                    "branch_failed", f"could not copy {source}: {exc.reason}", 503
                ) from None
            except FileExistsError:
                raise ControlError(
                    "endpoint_exists", f'endpoint "{name}" already exists', 409
                ) from None
            # The copy holds the source's roles as they are now: store their verifiers.
            await source_lifecycle.sync_verifiers()
            roles = self.catalog.verifiers(source)
            first_role = DEFAULT_ROLE if DEFAULT_ROLE in roles else next(iter(roles), None)
            if first_role is None:
                await compute.delete(name)
                raise ControlError("branch_failed", "the source has no login roles", 409)
            try:
                record = self.catalog.add_endpoint(
                    name,
                    compute.name,
                    source_record.idle_timeout,
                    first_role,
                    roles[first_role],
                    source_record.allowed_cidrs,
                    owner=caller.token_id,
                    expires_at=time.time() + ttl_seconds if ttl_seconds else None,
                    roles=roles,
                    compute_options=source_record.compute_options,
                )
            except EndpointExists:
                await compute.delete(name)
                raise ControlError(
                    "endpoint_exists", f'endpoint "{name}" already exists', 409
                ) from None
        finally:
            source_lifecycle.release()
            self._release_name(name)
        self.lifecycles.get(record).measure_disk()
        metrics.ENDPOINTS_CREATED.inc()
        logger.info(
            "event=endpoint_branched endpoint=%s source=%s owner=%s",
            name,
            source,
            caller.token_id or "admin",
        )
        # Same roles and passwords as the source: no password to show.
        uri = connection_uri(self.settings, name, DEFAULT_ROLE, None, DEFAULT_ROLE)
        return Created(self._view(record), None, uri)

    # -- the reaper ------------------------------------------------------------------------

    async def reap(self, now: float | None = None) -> list[str]:
        """Delete every endpoint past its TTL, or unused for ``delete_after_idle``; return
        their names. One endpoint that cannot be deleted is logged and skipped."""
        now = time.time() if now is None else now
        reaped = []
        for record in self.catalog.list():
            lifecycle = self.lifecycles.get(record)
            expired = record.expires_at is not None and record.expires_at <= now
            last_used = record.last_active or record.created_at
            idle = (
                record.delete_after_idle is not None
                and lifecycle.sessions == 0
                and lifecycle.state in (EndpointState.SUSPENDED, EndpointState.FAILED)
                and last_used + record.delete_after_idle <= now
            )
            if not (expired or idle):
                continue
            try:
                await self.delete(ADMIN, record.name, reason="ttl" if expired else "idle")
            except ControlError:
                continue  # deleted meanwhile
            except Exception:
                logger.exception("event=reap_failed endpoint=%s", record.name)
                continue
            reaped.append(record.name)
        return reaped
