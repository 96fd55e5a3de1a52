"""An endpoint's SCRAM verifiers: read from its running compute, kept in the catalog.

The compute is the truth: ``ALTER ROLE ... PASSWORD`` changes ``pg_authid`` there. The
catalog keeps a copy so a suspended endpoint's clients can still be authenticated, and
that copy is refreshed soon after a start, now and then while it runs, before each
suspend, and when a login shows it stale (ARCHITECTURE.md). The lifecycle says when; the
management connection (``compute/management.py``) runs the SQL.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgwake.catalog import Catalog
    from pgwake.compute.management import ManagementConnection

__all__ = ["VerifierSync"]

logger = logging.getLogger(__name__)


class VerifierSync:
    """One endpoint's verifiers, between its compute and the catalog."""

    def __init__(self, endpoint: str, catalog: Catalog) -> None:
        self.endpoint = endpoint
        self._catalog = catalog

    async def save(self, management: ManagementConnection | None) -> None:
        """Copy every login role's verifier from the running compute (``management``) to
        the catalog. Without a compute to ask, or when the compute does not answer, the
        catalog keeps the copy it has (logged)."""
        if management is None:
            return
        try:
            verifiers = await management.verifiers()
        except Exception as exc:
            logger.warning(
                "event=verifier_sync_failed endpoint=%s error=%s",
                self.endpoint,
                type(exc).__name__,
            )
            return
        self._catalog.replace_verifiers(self.endpoint, verifiers)
        logger.debug("event=verifiers_synced endpoint=%s roles=%d", self.endpoint, len(verifiers))

    async def lookup(self, role: str, management: ManagementConnection | None) -> str | None:
        """``role``'s verifier: the running compute's own when ``management`` is given and
        answers (so ALTER ROLE takes effect at once), else the catalog's copy; ``None``
        for a role that cannot log in with one. Never starts anything."""
        if management is not None:
            try:
                return await management.verifier(role)
            except Exception as exc:
                logger.warning(
                    "event=verifier_lookup_failed endpoint=%s error=%s",
                    self.endpoint,
                    type(exc).__name__,
                )
        return self._catalog.verifier(self.endpoint, role)
