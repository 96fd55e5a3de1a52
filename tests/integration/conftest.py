"""Fixtures for integration tests: real pgwake, real Postgres computes, real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.pgwake_fixture import Pgwake, running_pgwake


@pytest.fixture
def pgwake() -> Iterator[Pgwake]:
    """A fresh pgwake (own state dir and ports); call ``create`` then ``start``."""
    with running_pgwake() as server:
        yield server
        assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture(scope="module")
def shared_pgwake() -> Iterator[Pgwake]:
    """One running pgwake per test module, base domain ``localhost`` for SNI routing."""
    with running_pgwake(base_domain="localhost") as server:
        server.start()
        yield server
        assert "Traceback" not in server.log_text(), server.log_text()
