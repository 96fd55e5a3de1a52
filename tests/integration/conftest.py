"""Fixtures for integration tests: real pgwake, real Postgres computes, real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.pgwake_fixture import Pgwake, serve


@pytest.fixture
def pgwake() -> Iterator[Pgwake]:
    """A fresh pgwake (own state dir and ports), not started: ``create``, then ``start``."""
    with serve(start=False) as server:
        yield server


@pytest.fixture(scope="module")
def shared_pgwake() -> Iterator[Pgwake]:
    """One running pgwake per test module, base domain ``localhost`` for SNI routing."""
    with serve(base_domain="localhost") as server:
        yield server
