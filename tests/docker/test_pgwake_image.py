"""The pgwake image (deploy/Dockerfile, built by deploy/docker/build-images.sh) runs for
real: started with testcontainers, the engine's socket mounted, it wakes a docker endpoint
that psql on the host connects to."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import docker
import pytest
from docker.errors import ImageNotFound
from testcontainers.core.container import DockerContainer

from pgwake.api.client import PgwakeClient
from tests.docker.conftest import DEFAULT_IMAGE, _unavailable
from tests.integration.pgwake_fixture import ADMIN_TOKEN, PASSWORD, free_port

pytestmark = pytest.mark.docker

PGWAKE_IMAGE = "pgwake:dev"
ENDPOINT = "fromimage"


def _wait_for_api(client: PgwakeClient, container: DockerContainer) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            client.list_endpoints()
            return
        time.sleep(0.1)
    stdout, stderr = container.get_logs()
    raise AssertionError(f"pgwake in the image did not answer:\n{stdout!r}\n{stderr!r}")


def test_the_pgwake_image_wakes_a_docker_endpoint(engine: docker.DockerClient) -> None:
    try:
        engine.images.get(PGWAKE_IMAGE)
    except ImageNotFound:
        _unavailable(f"image {PGWAKE_IMAGE} is missing; run deploy/docker/build-images.sh")
    port, api_port = free_port(), free_port()
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    container = (
        DockerContainer(PGWAKE_IMAGE)
        # Host networking: the computes it starts listen on loopback ports of this host.
        .with_kwargs(network_mode="host", group_add=[str(socket_gid)])
        .with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
        .with_env("PGWAKE_LISTEN", f"127.0.0.1:{port}")
        .with_env("PGWAKE_API_LISTEN", f"127.0.0.1:{api_port}")
        .with_env("PGWAKE_METRICS_LISTEN", "")
        .with_env("PGWAKE_ADMIN_TOKEN", ADMIN_TOKEN)
        .with_env("PGWAKE_COMPUTE_BACKEND", "docker")
        .with_env("PGWAKE_DOCKER_IMAGE", DEFAULT_IMAGE)
        .with_env("PGWAKE_IDLE_TIMEOUT", "2")
    )
    client = PgwakeClient(f"http://127.0.0.1:{api_port}", ADMIN_TOKEN)
    with container:
        try:
            _wait_for_api(client, container)
            created = client.create_endpoint(ENDPOINT, password=PASSWORD)
            assert created.backend == "docker"
            out = subprocess.run(
                [
                    "psql",
                    created.connection_uri,
                    "-Atc",
                    "SELECT current_setting('server_version_num')::int / 10000, current_user",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert out.stdout.strip() == "17|app"
            computes = engine.containers.list(filters={"label": f"pgwake.endpoint={ENDPOINT}"})
            assert len(computes) == 1
            assert computes[0].status == "running"
            # The idle timer of the containerised pgwake stops the compute cleanly.
            deadline = time.monotonic() + 30
            while client.get_endpoint(ENDPOINT).state != "suspended":
                assert time.monotonic() < deadline, "the compute was not suspended"
                time.sleep(0.2)
            computes[0].reload()
            assert computes[0].attrs["State"]["ExitCode"] == 0
            client.delete_endpoint(ENDPOINT)
            label = f"pgwake.endpoint={ENDPOINT}"
            assert engine.containers.list(all=True, filters={"label": label}) == []
            assert engine.volumes.list(filters={"label": label}) == []
        finally:
            label = f"pgwake.endpoint={ENDPOINT}"
            for leftover in engine.containers.list(all=True, filters={"label": label}):
                leftover.remove(force=True, v=True)
            for volume in engine.volumes.list(filters={"label": label}):
                volume.remove(force=True)
