"""The control plane: what the HTTP API (and the CLI) can do to endpoints and tokens.

Rule: authorization lives here, not in the HTTP layer. Every call names its caller, a
``Caller`` (the admin, or a scoped token): a scoped token sees and manages only the
endpoints it created, within its quotas. An endpoint another token owns is reported as
not found, so a token cannot even learn that it exists.
"""

from __future__ import annotations

import asyncio
import datetime
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
from pgwake.compute.management import ADMIN_ROLE
from pgwake.endpoint.connection_uri import DEFAULT_ROLE, connection_uri
from pgwake.endpoint.lifecycle import WakeFailed
from pgwake.endpoint.names import generate_endpoint_name, is_valid_endpoint_name
from pgwake.endpoint.passwords import generate_password, password_problem
from pgwake.endpoint.states import EndpointState

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgwake.catalog import Catalog, EndpointRecord
    from pgwake.compute import Backends
    from pgwake.endpoint.lifecycle import Lifecycle
    from pgwake.endpoint.lifecycles import LifecycleManager
    from pgwake.settings import Settings

__all__ = [
    "Caller",
    "ControlError",
    "ControlPlane",
    "Created",
    "EndpointView",
    "MintedToken",
    "PasswordSet",
]

logger = logging.getLogger(__name__)
_TOKEN_PREFIX: Final = "pgw_"  # noqa: S105 (a prefix, not a secret)
_NAME_ATTEMPTS: Final = 8
#: Postgres's NAMEDATALEN - 1: a longer role name would be truncated to another name.
_MAX_ROLE_BYTES: Final = 63
#: How often a password change waits to see a start or stop in flight finish.
_SETTLE_POLL_SECONDS: Final = 0.05
_MANAGEMENT_TIMEOUT: Final = 10.0


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


def _check_password(password: str) -> None:
    problem = password_problem(password)
    if problem is not None:
        raise ControlError("invalid_password", problem, 422)


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
class PasswordSet:
    """A role's new password, shown once, and a URI that holds it."""

    name: str
    role: str
    password: str
    connection_uri: str

    def __repr__(self) -> str:
        return f"PasswordSet({self.name}, {self.role})"


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
        #: Ends an endpoint's relayed sessions, telling each client why; returns how
        #: many. Set by the server (``Relays.end_endpoint``); none where no server runs.
        self.end_sessions: Callable[[str, str, str | None], int] | None = None

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
            idle_timeout_seconds=lifecycle.idle_timeout,
            created_at=record.created_at,
            last_active=record.last_session_end,
            expires_at=record.expires_at,
            delete_after_idle_seconds=record.delete_after_idle,
            allowed_cidrs=record.allowed_cidrs,
            compute_options=record.compute_options,
            disk_bytes=record.disk_bytes,
            connection_uri=connection_uri(
                self.settings, record.name, DEFAULT_ROLE, None, DEFAULT_ROLE
            ),
            sessions=lifecycle.sessions,
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

        Raises ``ControlError``: ``quota_exceeded``/``ttl_too_long`` (403), ``invalid_name``,
        ``invalid_password`` or ``invalid_cidr`` (422), ``invalid_backend``/``invalid_option``
        (422), ``endpoint_exists`` (409), ``name_unavailable`` (503), ``create_failed``
        (503)."""
        if password is not None:
            _check_password(password)
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
            password = password if password is not None else generate_password()
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
        """Stop the compute if it runs and remove the endpoint with its data. Its open
        sessions end first, each client told why (``reason``: ``api``, ``cli``, ``ttl``,
        ``idle``).

        Raises ``ControlError`` ``endpoint_not_found`` (also while another delete runs),
        ``delete_failed`` (503) when the backend cannot remove the compute now."""
        record = self._visible(name, caller)
        self._deleting.add(name)
        try:
            lifecycle = self.lifecycles.get(record)
            if self.end_sessions is not None:
                ended = self.end_sessions(name, *_why_deleted(record, reason))
                if ended:
                    logger.info(
                        "event=sessions_ended endpoint=%s sessions=%d reason=%s",
                        name,
                        ended,
                        reason,
                    )
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

    # -- passwords -------------------------------------------------------------------------

    async def set_password(
        self,
        caller: Caller,
        name: str,
        *,
        role: str = DEFAULT_ROLE,
        password: str | None = None,
    ) -> PasswordSet:
        """Give ``role`` of endpoint ``name`` a new password (``password``, else a
        generated one); the result shows it once. A running compute gets it at once
        (``ALTER ROLE ... PASSWORD`` with its SCRAM verifier); a suspended one keeps its
        old one until its next start writes the catalog's, but pgwake checks clients
        against the new one from now on.

        Raises ``ControlError``: ``endpoint_not_found``, ``role_not_found`` (404),
        ``invalid_password`` (422), ``password_failed`` (503) when the running compute
        cannot be reached."""
        record = self._visible(name, caller)
        if password is not None:
            _check_password(password)
        password = password if password is not None else generate_password()
        verifier = make_verifier(password)
        if not _may_be_role(role):
            raise _role_not_found(name, role)
        lifecycle = self.lifecycles.get(record)
        deadline = time.monotonic() + self.settings.wake_timeout + self.settings.stop_timeout
        while True:
            state = lifecycle.state
            if state is EndpointState.RUNNING and await self._set_on_compute(
                lifecycle, role, verifier
            ):
                break
            if state in (EndpointState.SUSPENDED, EndpointState.FAILED):
                # No await since the state was read: the next start sees it pending.
                if role not in self.catalog.verifiers(name):
                    raise _role_not_found(name, role)
                self.catalog.set_verifier(name, role, verifier, pending=True)
                break
            if time.monotonic() > deadline:
                raise ControlError(
                    "password_failed", "the compute is still starting or stopping", 503
                )
            # A start or a stop in flight (or the compute stopped under us): look again.
            await asyncio.sleep(_SETTLE_POLL_SECONDS)
        logger.info(
            "event=password_set endpoint=%s role=%s compute=%s",
            name,
            role,
            "now" if state is EndpointState.RUNNING else "next_start",
        )
        uri = connection_uri(self.settings, name, role, password, DEFAULT_ROLE)
        return PasswordSet(name, role, password, uri)

    async def _set_on_compute(self, lifecycle: Lifecycle, role: str, verifier: str) -> bool:
        """Set ``role``'s verifier on the running compute, then in the catalog. Returns
        ``False`` when the compute stopped meanwhile (the caller sets it pending)."""
        management = lifecycle.backend.management(lifecycle.name)
        if management is None:
            return False
        try:
            async with asyncio.timeout(_MANAGEMENT_TIMEOUT):
                if not await management.is_login_role(role):
                    raise _role_not_found(lifecycle.name, role)
                await management.set_verifier(role, verifier)
        except ControlError:
            raise
        except Exception as exc:
            if lifecycle.state is not EndpointState.RUNNING:
                return False  # it stopped under us: the loop sets it pending
            logger.warning(
                "event=password_set_failed endpoint=%s role=%s error=%s",
                lifecycle.name,
                role,
                type(exc).__name__,
            )
            raise ControlError(
                "password_failed", "the running compute could not be reached; try again", 503
            ) from None
        finally:
            await management.close()
        self.catalog.set_verifier(lifecycle.name, role, verifier, pending=False)
        return True

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


def _may_be_role(role: str) -> bool:
    """Whether ``role`` can name a client's role: not pgwake's own, and a name Postgres
    keeps as it is (no NUL, not truncated)."""
    try:
        size = len(role.encode())
    except UnicodeEncodeError:
        return False
    return role != ADMIN_ROLE and "\x00" not in role and 0 < size <= _MAX_ROLE_BYTES


def _role_not_found(name: str, role: str) -> ControlError:
    return ControlError(
        "role_not_found", f'endpoint "{name}" has no role "{role}" that can log in', 404
    )


def _why_deleted(record: EndpointRecord, reason: str) -> tuple[str, str | None]:
    """What the clients of an endpoint being deleted are told: a message and a hint (the
    edge sends them as a FATAL that ends the session)."""
    if reason == "ttl" and record.expires_at is not None:
        ttl = record.expires_at - record.created_at
        expired = datetime.datetime.fromtimestamp(record.expires_at).astimezone()
        return (
            f'terminating connection because endpoint "{record.name}" is deleted: its time '
            f"to live of {ttl:.0f} s ran out at {expired.isoformat(timespec='seconds')}",
            "The endpoint's data is deleted with it. Give a new endpoint a longer "
            "ttl_seconds (--ttl), or none.",
        )
    return (
        f'terminating connection because endpoint "{record.name}" is deleted with its data',
        None,
    )
