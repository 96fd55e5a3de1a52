"""Parking with docker computes: idle connections of psycopg, asyncpg and a SQLAlchemy
pool stay open while their endpoint's container stops, and find their settings and
prepared statements on the restarted one (the scenarios of
``tests/integration/test_parking_clients.py``).

A restarted container numbers its processes from the start again: the session's new backend
may have the old one's pid, so a new backend shows in its start time only."""

from __future__ import annotations

from collections.abc import Callable

import docker
import pytest

from tests.docker.conftest import DockerPgwake
from tests.integration.test_parking_clients import (
    IDLE_TIMEOUT,
    asyncpg_scenario,
    psycopg_scenario,
    sqlalchemy_pool_scenario,
)

pytestmark = pytest.mark.docker


def _endpoint(
    server: DockerPgwake, engine: docker.DockerClient, name: str
) -> tuple[str, Callable[[], bool]]:
    """A docker endpoint, and whether its container has stopped."""
    server.create_docker(name, idle_timeout=IDLE_TIMEOUT)

    def container_stopped() -> bool:
        return bool(server.container(engine, name).status == "exited")

    return name, container_stopped


def test_psycopg_prepared_statements_outlive_a_stopped_container(
    shared_dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    psycopg_scenario(
        shared_dpgwake,
        *_endpoint(shared_dpgwake, engine, "parked-psycopg"),
        same_pid_possible=True,
    )


def test_asyncpg_statement_cache_outlives_a_stopped_container(
    shared_dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    asyncpg_scenario(
        shared_dpgwake,
        *_endpoint(shared_dpgwake, engine, "parked-asyncpg"),
        same_pid_possible=True,
    )


def test_sqlalchemy_pool_of_5_outlives_a_stopped_container(
    shared_dpgwake: DockerPgwake, engine: docker.DockerClient
) -> None:
    sqlalchemy_pool_scenario(
        shared_dpgwake,
        *_endpoint(shared_dpgwake, engine, "parked-sqlalchemy"),
        same_pid_possible=True,
    )
