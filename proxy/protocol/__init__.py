"""Sans-IO PostgreSQL wire protocol codec: bytes in, messages out, no sockets, no asyncio."""

from __future__ import annotations
