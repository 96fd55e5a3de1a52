"""Fixtures for the docker backend's tests: a real engine, locally built images.

Without an engine or the images (``deploy/docker/build-images.sh``) these tests skip, and
with ``PGWAKE_REQUIRE_DOCKER=1`` (CI) they fail instead. Every container and volume a test
server made is removed when it stops, and the session fails if one was left.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import DockerException, ImageNotFound

from tests.conftest import REQUIRE_DOCKER
from tests.integration.pgwake_fixture import Pgwake, serve

# testcontainers' reaper image cannot be pulled here; cleanup is by label instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

POSTGRES_IMAGES = {13: "pgwake-postgres:13", 15: "pgwake-postgres:15", 17: "pgwake-postgres:17"}
DEFAULT_IMAGE = POSTGRES_IMAGES[17]
_instances: set[str] = set()


def _unavailable(reason: str) -> None:
    if REQUIRE_DOCKER:
        pytest.fail(f"PGWAKE_REQUIRE_DOCKER is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    """The Docker engine (``DOCKER_HOST`` or the local socket), with the Postgres images."""
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        _unavailable(f"no Docker engine answers ({exc}); run deploy/docker/engine.sh up")
    for image in POSTGRES_IMAGES.values():
        try:
            client.images.get(image)
        except ImageNotFound:
            _unavailable(f"image {image} is missing; run deploy/docker/build-images.sh")
    yield client
    leftovers = [name for instance in _instances for name in remove_labelled(client, instance)]
    client.close()
    assert not leftovers, f"labelled containers or volumes outlived their tests: {leftovers}"


def remove_labelled(client: docker.DockerClient, instance: str) -> list[str]:
    """Remove the containers and volumes of one pgwake instance; return their names."""
    found = []
    label = f"pgwake.instance={instance}"
    for container in client.containers.list(all=True, filters={"label": label}):
        found.append(container.name)
        container.remove(force=True, v=True)
    for volume in client.volumes.list(filters={"label": label}):
        found.append(volume.name)
        volume.remove(force=True)
    return found


class DockerPgwake(Pgwake):
    """A pgwake server whose endpoints can be docker ones. Its cleanup also fails on a
    container still running after the stop (a graceful stop suspends every compute),
    then removes its containers and volumes."""

    def __init__(
        self,
        state_dir: Path,
        *,
        engine: docker.DockerClient,
        extra_env: dict[str, str] | None = None,
        **settings: str,
    ) -> None:
        super().__init__(state_dir, **settings)
        self.engine = engine
        #: Extra environment for the server and CLI (e.g. ``DOCKER_HOST``).
        self.extra_env = dict(extra_env or {})

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra_env}

    def create_docker(
        self,
        name: str,
        *,
        image: str = DEFAULT_IMAGE,
        idle_timeout: float | None = None,
        memory: str | None = None,
        cpus: str | None = None,
    ) -> str:
        return self.create(
            name, backend="docker", image=image, idle_timeout=idle_timeout, memory=memory, cpus=cpus
        )

    def cleanup(self) -> list[str]:
        leftovers = super().cleanup()
        with contextlib.suppress(FileNotFoundError):  # no instance id: nothing was made
            instance = self.instance
            _instances.add(instance)
            label = f"pgwake.instance={instance}"
            running = self.engine.containers.list(filters={"label": label})
            leftovers += [f"container {container.name}" for container in running]
            remove_labelled(self.engine, instance)
        return leftovers

    @property
    def instance(self) -> str:
        return (self.state_dir / "instance-id").read_text().strip()

    def containers(self, client: docker.DockerClient, endpoint: str) -> list[object]:
        filters = {"label": [f"pgwake.instance={self.instance}", f"pgwake.endpoint={endpoint}"]}
        return list(client.containers.list(all=True, filters=filters))

    def container(
        self, client: docker.DockerClient, endpoint: str
    ) -> docker.models.containers.Container:
        return client.containers.get(f"pgwake-{self.instance}-{endpoint}")

    def container_starts(self, client: docker.DockerClient, endpoint: str) -> int:
        """Postmaster starts, counted from the container's own log."""
        logs = self.container(client, endpoint).logs().decode(errors="replace")
        return logs.count("database system is ready to accept connections")


def docker_pgwake(
    engine: docker.DockerClient, extra_env: dict[str, str] | None = None, **kwargs: Any
) -> contextlib.AbstractContextManager[DockerPgwake]:
    """``serve`` (same arguments) with a ``DockerPgwake``."""
    make = functools.partial(DockerPgwake, engine=engine, extra_env=extra_env)
    return serve(server=make, **kwargs)


@pytest.fixture
def dpgwake(engine: docker.DockerClient) -> Iterator[DockerPgwake]:
    """A fresh pgwake for docker endpoints, not started: ``create_docker``, then ``start``."""
    with docker_pgwake(engine, start=False) as server:
        yield server


@pytest.fixture(scope="module")
def shared_dpgwake(engine: docker.DockerClient) -> Iterator[DockerPgwake]:
    with docker_pgwake(engine) as server:
        yield server


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent
