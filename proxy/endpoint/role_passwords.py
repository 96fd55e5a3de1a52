"""Setting a role's password: on the running compute now, or at its next start.

Rule: a running compute takes the new SCRAM verifier at once (``ALTER ROLE ... PASSWORD``
through the management connection), then the catalog; a suspended or failed one keeps it
pending in the catalog, which the edge checks clients against from now on and the next
start writes to the compute. A start or stop in flight is waited out, within bounds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake.auth.scram import make_verifier
from pgwake.compute.management import ADMIN_ROLE
from pgwake.endpoint.callers import ControlError
from pgwake.endpoint.connection_uri import DEFAULT_ROLE, connection_uri
from pgwake.endpoint.passwords import generate_password, password_problem
from pgwake.endpoint.states import EndpointState

if TYPE_CHECKING:
    from pgwake.catalog import Catalog, EndpointRecord
    from pgwake.endpoint.lifecycle import Lifecycle
    from pgwake.endpoint.lifecycles import LifecycleManager
    from pgwake.settings import Settings

__all__ = ["PasswordSet", "RolePasswords", "check_password"]

logger = logging.getLogger(__name__)
#: Postgres's NAMEDATALEN - 1: a longer role name would be truncated to another name.
_MAX_ROLE_BYTES: Final = 63
#: How often a password change waits to see a start or stop in flight finish.
_SETTLE_POLL_SECONDS: Final = 0.05
_MANAGEMENT_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class PasswordSet:
    """A role's new password, shown once, and a URI that holds it."""

    name: str
    role: str
    password: str
    connection_uri: str

    def __repr__(self) -> str:
        return f"PasswordSet({self.name}, {self.role})"


def check_password(password: str) -> None:
    """Raise ``ControlError`` ``invalid_password`` (422) for a password the rule refuses."""
    problem = password_problem(password)
    if problem is not None:
        raise ControlError("invalid_password", problem, 422)


class RolePasswords:
    """New passwords for endpoints' login roles."""

    def __init__(self, settings: Settings, catalog: Catalog, lifecycles: LifecycleManager) -> None:
        self._settings = settings
        self._catalog = catalog
        self._lifecycles = lifecycles

    async def set(self, record: EndpointRecord, *, role: str, password: str | None) -> PasswordSet:
        """Give ``role`` of ``record``'s endpoint a new password (``password``, else a
        generated one); the result shows it once.

        Raises ``ControlError``: ``role_not_found`` (404), ``invalid_password`` (422),
        ``password_failed`` (503) when the running compute cannot be reached."""
        name = record.name
        if password is not None:
            check_password(password)
        password = password if password is not None else generate_password()
        verifier = make_verifier(password)
        if not _may_be_role(role):
            raise _role_not_found(name, role)
        lifecycle = self._lifecycles.get(record)
        settings = self._settings
        deadline = time.monotonic() + settings.wake_timeout + settings.stop_timeout
        while True:
            state = lifecycle.state
            if state is EndpointState.RUNNING and await self._set_on_compute(
                lifecycle, role, verifier
            ):
                break
            if state in (EndpointState.SUSPENDED, EndpointState.FAILED):
                # No await since the state was read: the next start sees it pending.
                if role not in self._catalog.verifiers(name):
                    raise _role_not_found(name, role)
                self._catalog.set_verifier(name, role, verifier, pending=True)
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
        uri = connection_uri(settings, name, role, password, DEFAULT_ROLE)
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
        self._catalog.set_verifier(lifecycle.name, role, verifier, pending=False)
        return True


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
