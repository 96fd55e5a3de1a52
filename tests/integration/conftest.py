"""Fixtures for integration tests: real pgwake, real Postgres computes, real clients."""

from __future__ import annotations

import subprocess
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


@pytest.fixture(scope="session")
def pgjdbc_classes(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Java helpers (``tests/clients/java``) compiled against Debian's pgjdbc; the
    ``-cp`` to run them with (the client matrix, the printed-URI and the parking tests
    share it)."""
    from tests.integration.test_client_matrix import (
        CLIENTS_DIR,
        PGJDBC_JAR,
        need_file,
        need_program,
    )

    javac = need_program("javac")
    need_program("java")
    jar = need_file(PGJDBC_JAR, "pgjdbc (Debian's libpostgresql-jdbc-java)")
    classes = tmp_path_factory.mktemp("pgjdbc-classes")
    subprocess.run(
        [
            javac,
            "-cp",
            str(jar),
            "-d",
            str(classes),
            *map(str, sorted((CLIENTS_DIR / "java").glob("*.java"))),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    return f"{classes}:{jar}"
