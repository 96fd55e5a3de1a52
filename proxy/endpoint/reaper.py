"""The reaper: deletes endpoints past their TTL, or unused for ``delete_after_idle``.

Rule: the reaper only decides which endpoints are due; it deletes them through the
control plane's delete (as the admin), so their clients are told why
(``why_deleted``) exactly as for any other delete.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import TYPE_CHECKING

from pgwake.endpoint.callers import ControlError
from pgwake.endpoint.states import EndpointState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pgwake.catalog import Catalog, EndpointRecord
    from pgwake.endpoint.lifecycles import LifecycleManager

__all__ = ["Reaper", "why_deleted"]

logger = logging.getLogger(__name__)


class Reaper:
    """Finds the endpoints due for deletion and deletes them with ``delete(name, reason)``."""

    def __init__(
        self,
        catalog: Catalog,
        lifecycles: LifecycleManager,
        delete: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._catalog = catalog
        self._lifecycles = lifecycles
        self._delete = delete

    async def reap(self, now: float | None = None) -> list[str]:
        """Delete every endpoint past its TTL, or unused for ``delete_after_idle``; return
        their names. One endpoint that cannot be deleted is logged and skipped."""
        now = time.time() if now is None else now
        reaped = []
        for record in self._catalog.list():
            lifecycle = self._lifecycles.get(record)
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
                await self._delete(record.name, "ttl" if expired else "idle")
            except ControlError:
                continue  # deleted meanwhile
            except Exception:
                logger.exception("event=reap_failed endpoint=%s", record.name)
                continue
            reaped.append(record.name)
        return reaped


def why_deleted(record: EndpointRecord, reason: str) -> tuple[str, str | None]:
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
