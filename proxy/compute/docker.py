"""Docker compute backend: each endpoint is one labelled container and one named volume.

``DockerBackend`` puts four parts together: the engine client (``docker_engine.py``), what
is asked of the engine (``docker_spec.py``), the endpoints' volumes (``docker_volume.py``:
made and filled at create and branch) and their compute containers
(``docker_container.py``: wake and suspend). Containers are sandboxed: memory and CPU
limits, no swap, non-root, no capabilities, ``no-new-privileges``, read-only root file
system, nothing published (host networking, Postgres bound to 127.0.0.1 only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from pgwake.compute import ComputeAddress, ComputeStartError, docker_spec, management
from pgwake.compute.docker_container import Containers
from pgwake.compute.docker_engine import DockerEngine, require_image
from pgwake.compute.docker_volume import Volumes
from pgwake.state_dir import StateDir

if TYPE_CHECKING:
    from pgwake.compute import EndpointSpec
    from pgwake.settings import Settings

__all__ = ["DockerBackend"]

logger = logging.getLogger(__name__)


class DockerBackend:
    """Runs computes as containers on a Docker engine."""

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._state = StateDir(settings.state_dir.resolve())
        self._engine = DockerEngine(self._state)
        self._volumes = Volumes(settings, self._state, self._engine)
        self._containers = Containers(settings, self._engine, self._volumes)

    @property
    def instance(self) -> str:
        """This server's id on the engine: containers of other pgwake servers are not ours."""
        return self._engine.instance

    def resolve_options(self, requested: dict[str, str | None]) -> dict[str, str]:
        """Fill in the server's defaults; ``ValueError`` for a bad value."""
        return docker_spec.resolve_options(requested, self._settings)

    # -- lifecycle of the backend ------------------------------------------------------------

    async def prepare(self) -> None:
        """Nothing up front: the engine is asked when an endpoint needs it."""

    async def maintain(self) -> None:
        """Log computes killed by their memory limit as the engine reports them."""
        await self._engine.watch_oom()

    async def close(self) -> None:
        await self._engine.close()

    # -- create / branch / delete --------------------------------------------------------

    async def create(self, spec: EndpointSpec) -> None:
        options = self.resolve_options(dict(spec.options))
        async with self._engine.call("create") as docker:
            await require_image(docker, options["image"])
            await self._volumes.create(docker, spec.name, options)
        try:
            started = time.monotonic()
            await self._volumes.initialise(spec, options)
            logger.info(
                "event=docker_volume_initialised endpoint=%s image=%s ms=%d",
                spec.name,
                options["image"],
                (time.monotonic() - started) * 1000,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self.delete(spec.name)
            raise

    async def branch(self, source: str, target: str) -> None:
        """Copy the running ``source`` into a new volume with ``pg_basebackup`` (a
        consistent snapshot even under writes), run from the source's image over its
        loopback port; the copy recovers to that point on its first start. The branch
        keeps the source's image and limits."""
        port = self._containers.port(source)
        if port is None:
            raise ComputeStartError("the source compute is not running")
        async with self._engine.call("branch") as docker:
            options, _ = await self._volumes.options(docker, source)
            await require_image(docker, options["image"])
            await self._volumes.create(docker, target, options)
        try:
            started = time.monotonic()
            await self._volumes.copy_from(port, target, options)
            logger.info(
                "event=docker_branch_copied endpoint=%s source=%s ms=%d",
                target,
                source,
                (time.monotonic() - started) * 1000,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self.delete(target)
            raise

    async def delete(self, endpoint: str) -> None:
        async with self._engine.call("delete", self._containers.stop_bound) as docker:
            await self._containers.remove(docker, endpoint)
            await self._volumes.remove(docker, endpoint)
        self._containers.forget(endpoint)

    # -- start / stop --------------------------------------------------------------------

    async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
        port = await self._containers.start(endpoint, ready_timeout)
        return ComputeAddress(host="127.0.0.1", port=port)

    async def stop(self, endpoint: str) -> None:
        await self._containers.stop(endpoint)

    # -- observation ---------------------------------------------------------------------

    async def probe(self, endpoint: str) -> ComputeAddress | None:
        async with self._engine.call("probe") as docker:
            found = await self._containers.find(docker, endpoint)
        if found is None or not found[1].get("State", {}).get("Running"):
            return None
        port = self._containers.port(endpoint)
        return ComputeAddress(host="127.0.0.1", port=port) if port else None

    async def is_alive(self, endpoint: str) -> bool:
        async with self._engine.call("inspect") as docker:
            found = await self._containers.find(docker, endpoint)
        return found is not None and bool(found[1].get("State", {}).get("Running"))

    def management(self, endpoint: str) -> management.ManagementConnection | None:
        port = self._containers.port(endpoint)
        if port is None:
            return None
        return management.ManagementConnection(
            ComputeAddress(host="127.0.0.1", port=port), management.admin_password(self._state)
        )

    def disk_bytes(self, endpoint: str) -> int:
        path = self._containers.volume_path(endpoint)
        total = 0
        if path is None:
            return 0
        for directory, _, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(directory, name)).st_size
        return total
