"""The ``pgwake`` command: ``main`` (serve, status) and ``endpoint_commands``."""

from __future__ import annotations

from pgwake.cli.main import main

__all__ = ["main"]
