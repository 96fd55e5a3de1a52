"""The control plane: what the HTTP API (and the CLI) can do to endpoints and tokens.

Rule: authorization lives here, not in the HTTP layer. Every call names its caller, a
``Caller`` (the admin, or a scoped token): a scoped token sees and manages only the
endpoints it created, within its quotas. An endpoint another token owns is reported as
not found, so a token cannot even learn that it exists.

``ControlPlane`` composes the jobs beside it: ``tokens.py`` (mint, revoke, authenticate),
``reservations.py`` (quotas and names being made), ``role_passwords.py`` (a role's
password, now or at the next start) and ``reaper.py`` (TTLs and delete-after-idle).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.auth.scram import make_verifier
from pgwake.catalog import EndpointExists
from pgwake.compute import ComputeStartError, EndpointSpec
from pgwake.endpoint.callers import ADMIN, ControlError, endpoint_not_found
from pgwake.endpoint.connection_uri import DEFAULT_ROLE, connection_uri
from pgwake.endpoint.lifecycle import WakeFailed
from pgwake.endpoint.passwords import generate_password
from pgwake.endpoint.reaper import Reaper, why_deleted
from pgwake.endpoint.reservations import Reservations
from pgwake.endpoint.role_passwords import RolePasswords, check_password
from pgwake.endpoint.tokens import Tokens
from pgwake.endpoint.views import Created, EndpointView, SessionCounts

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgwake.catalog import Catalog, EndpointRecord
    from pgwake.compute import Backends
    from pgwake.endpoint.callers import Caller
    from pgwake.endpoint.lifecycles import LifecycleManager
    from pgwake.endpoint.role_passwords import PasswordSet
    from pgwake.endpoint.tokens import MintedToken
    from pgwake.settings import Settings

__all__ = ["KEEP", "ControlPlane", "Keep"]

logger = logging.getLogger(__name__)


class Keep(enum.Enum):
    """``ControlPlane.update``'s "leave this setting as it is" (``None`` is a value)."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


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
        self._tokens = Tokens(catalog, admin_token)
        self._reservations = Reservations(catalog)
        self._passwords = RolePasswords(settings, catalog, lifecycles)
        self._reaper = Reaper(catalog, lifecycles, self._delete_as_admin)
        #: Names being deleted: already gone for every caller.
        self._deleting: set[str] = set()
        #: Ends an endpoint's relayed sessions, telling each client why; returns how
        #: many. Set by the server (``Relays.end_endpoint``); none where no server runs.
        self.end_sessions: Callable[[str, str, str | None], int] | None = None

    # -- tokens (``tokens.py``) ------------------------------------------------------------

    def authenticate(self, secret: str) -> Caller | None:
        """The caller a bearer secret stands for, or ``None``."""
        return self._tokens.authenticate(secret)

    def mint_token(
        self,
        caller: Caller,
        *,
        label: str | None,
        max_endpoints: int | None,
        max_ttl_seconds: float | None,
    ) -> MintedToken:
        """Mint a scoped token (admin only)."""
        return self._tokens.mint(
            caller, label=label, max_endpoints=max_endpoints, max_ttl_seconds=max_ttl_seconds
        )

    def revoke_token(self, caller: Caller, token_id: str) -> None:
        self._tokens.revoke(caller, token_id)

    # -- endpoints -----------------------------------------------------------------------

    def _visible(self, name: str, caller: Caller) -> EndpointRecord:
        record = self.catalog.get(name)
        if (
            record is None
            or name in self._deleting
            or not (caller.is_admin or record.owner == caller.token_id)
        ):
            raise endpoint_not_found(name)
        return record

    def _view(self, record: EndpointRecord) -> EndpointView:
        lifecycle = self.lifecycles.get(record)
        states = lifecycle.session_states()
        counts = SessionCounts.of(states)
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
            # The lifecycle counts the sessions that hold the endpoint, the edge every
            # session by state (parked ones too); where the edge keeps no states (no
            # server) the lifecycle's count stands.
            sessions=max(lifecycle.sessions, counts.total),
            park_sessions=lifecycle.park_sessions,
            pinned_session_timeout_seconds=lifecycle.pinned_session_timeout,
            session_states=counts,
            pinned_sessions=states.pinned,
            compute_other_sessions=lifecycle.compute_other_sessions,
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
        park_sessions: bool = True,
        pinned_session_timeout: float | None = None,
    ) -> Created:
        """Create a suspended endpoint; the result holds its password, shown once.

        ``backend`` defaults to the server's ``compute_backend``; ``compute_options`` are
        that backend's (docker: ``image``, ``memory``, ``cpus``). ``park_sessions`` and
        ``pinned_session_timeout`` (seconds; ``None``: never) say what becomes of its idle
        sessions when the compute suspends.

        Raises ``ControlError``: ``quota_exceeded``/``ttl_too_long`` (403), ``invalid_name``,
        ``invalid_password`` or ``invalid_cidr`` (422), ``invalid_backend``/``invalid_option``
        (422), ``endpoint_exists`` (409), ``name_unavailable`` (503), ``create_failed``
        (503)."""
        if password is not None:
            check_password(password)
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
        ttl_seconds = self._reservations.check_quota(caller, ttl_seconds)
        name = self._reservations.reserve(caller, name)
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
                    park_sessions=park_sessions,
                    pinned_session_timeout=pinned_session_timeout,
                )
            except EndpointExists:  # e.g. `pgwake endpoint create` of the same name
                await compute.delete(name)
                raise ControlError(
                    "endpoint_exists", f'endpoint "{name}" already exists', 409
                ) from None
        finally:
            self._reservations.release(name)
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

    def update(
        self,
        caller: Caller,
        name: str,
        *,
        idle_timeout: float | Keep | None = KEEP,
        park_sessions: bool | Keep = KEEP,
        pinned_session_timeout: float | Keep | None = KEEP,
    ) -> EndpointView:
        """Change an endpoint's idle and session settings; each left at ``KEEP`` stays as
        it is, ``None`` means the default (the server's ``idle_timeout``; no pinned
        session timeout). They take effect at once, running compute or not.

        Raises ``ControlError`` ``endpoint_not_found``."""
        record = self._visible(name, caller)
        self.catalog.set_session_settings(
            name,
            idle_timeout=record.idle_timeout if idle_timeout is KEEP else idle_timeout,
            park_sessions=record.park_sessions if park_sessions is KEEP else park_sessions,
            pinned_session_timeout=(
                record.pinned_session_timeout
                if pinned_session_timeout is KEEP
                else pinned_session_timeout
            ),
        )
        updated = self._visible(name, caller)
        logger.info(
            "event=endpoint_updated endpoint=%s idle_timeout_s=%s park_sessions=%s "
            "pinned_session_timeout_s=%s",
            name,
            updated.idle_timeout,
            updated.park_sessions,
            updated.pinned_session_timeout,
        )
        return self._view(updated)  # also hands the new values to its lifecycle

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
                ended = self.end_sessions(name, *why_deleted(record, reason))
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
        ttl_seconds = self._reservations.check_quota(caller, ttl_seconds)
        name = self._reservations.reserve(caller, name)
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
                    park_sessions=source_record.park_sessions,
                    pinned_session_timeout=source_record.pinned_session_timeout,
                )
            except EndpointExists:
                await compute.delete(name)
                raise ControlError(
                    "endpoint_exists", f'endpoint "{name}" already exists', 409
                ) from None
        finally:
            source_lifecycle.release(busy=True)
            self._reservations.release(name)
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

    # -- passwords (``role_passwords.py``) -------------------------------------------------

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
        return await self._passwords.set(record, role=role, password=password)

    # -- the reaper (``reaper.py``) --------------------------------------------------------

    async def reap(self, now: float | None = None) -> list[str]:
        """Delete every endpoint past its TTL, or unused for ``delete_after_idle``; return
        their names. One endpoint that cannot be deleted is logged and skipped."""
        return await self._reaper.reap(now)

    async def _delete_as_admin(self, name: str, reason: str) -> None:
        await self.delete(ADMIN, name, reason=reason)
