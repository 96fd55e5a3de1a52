"""How much storage an endpoint holds, recorded in the catalog for ``endpoint list``.

Measured at create and after each suspend, when the data is at rest, in the background:
walking a data directory on every list would take seconds for a thousand endpoints.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgwake.catalog import Catalog
    from pgwake.compute import ComputeBackend

__all__ = ["record_disk_usage"]

logger = logging.getLogger(__name__)


async def record_disk_usage(backend: ComputeBackend, catalog: Catalog, endpoint: str) -> None:
    """Measure ``endpoint``'s storage (in a thread: it walks files) and store it; a
    failure is logged, and the catalog keeps the last measure."""
    try:
        size = await asyncio.to_thread(backend.disk_bytes, endpoint)
        if size:  # 0: the backend cannot tell (e.g. a remote engine's volume)
            catalog.set_disk_bytes(endpoint, size)
    except Exception as exc:
        logger.warning(
            "event=disk_measure_failed endpoint=%s error=%s", endpoint, type(exc).__name__
        )
