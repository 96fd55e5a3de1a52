"""The catalog: endpoint records and their roles. SQLite by default (one file).

Rule: every query lives in this package. The server and the CLI share the file (WAL mode,
busy timeout), so ``pgwake endpoint create`` works while ``pgwake serve`` runs.
"""

from __future__ import annotations

from pgwake.catalog.sqlite import Catalog, EndpointExists, EndpointRecord

__all__ = ["Catalog", "EndpointExists", "EndpointRecord"]
