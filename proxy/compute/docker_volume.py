"""An endpoint's volume on the Docker engine: made labelled with the endpoint's image and
limits, filled by short-lived containers, removed with the endpoint.

A new endpoint's volume is filled by two one-shot containers: one that gives the fresh
volume to ``postgres`` (root with only CAP_CHOWN), one that runs ``initdb`` and, in
single-user mode, creates the endpoint's role and database. A branch's volume gets
``pg_basebackup`` from the running source instead, run from the source's image. Each
one-shot container is removed once it has exited; one that fails gives the reason from
its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiodocker

from pgwake.compute import ComputeStartError, docker_spec, management
from pgwake.compute.docker_spec import LABEL_ENDPOINT, LABEL_INSTANCE, PGDATA
from pgwake.compute.pgdata import start_failure_reason

if TYPE_CHECKING:
    from pgwake.compute import EndpointSpec
    from pgwake.compute.docker_engine import DockerEngine
    from pgwake.settings import Settings
    from pgwake.state_dir import StateDir

__all__ = ["Volumes"]

logger = logging.getLogger(__name__)

#: The bound of one one-shot container, from its start to its exit.
_INIT_TIMEOUT: Final = 120.0


class Volumes:
    """The endpoints' volumes, on ``engine``."""

    def __init__(self, settings: Settings, state: StateDir, engine: DockerEngine) -> None:
        self._settings = settings
        self._state = state
        self._engine = engine

    async def create(
        self, docker: aiodocker.Docker, endpoint: str, options: dict[str, str]
    ) -> None:
        """The endpoint's named volume, labelled with its image and limits (a wake makes
        the container from them). Raises ``FileExistsError`` if it exists."""
        name = self._engine.resource(endpoint)
        with contextlib.suppress(aiodocker.DockerError):
            await docker.volumes.get(name)  # type: ignore[no-untyped-call]
            raise FileExistsError(f"endpoint {endpoint!r} already has a volume")
        await docker.volumes.create(  # type: ignore[no-untyped-call]
            docker_spec.volume(name, endpoint, self._engine.instance, options)
        )

    async def options(
        self, docker: aiodocker.Docker, endpoint: str
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """The image and limits an endpoint's volume was labelled with, and the volume."""
        try:
            volume = await (await docker.volumes.get(self._engine.resource(endpoint))).show()  # type: ignore[no-untyped-call]
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ComputeStartError("the endpoint's volume is missing") from None
            raise
        return docker_spec.options_from_volume(volume, self._settings), volume

    async def remove(self, docker: aiodocker.Docker, endpoint: str) -> None:
        """Remove the endpoint's volume, if there is one."""
        with contextlib.suppress(aiodocker.DockerError):
            volume = await docker.volumes.get(self._engine.resource(endpoint))  # type: ignore[no-untyped-call]
            await volume.delete()

    # -- filling a new volume ------------------------------------------------------------

    async def initialise(self, spec: EndpointSpec, options: dict[str, str]) -> None:
        """Fill a new endpoint's volume: ``initdb``, its role and its database."""
        await self._hand_to_postgres(spec.name, options)
        await self._run_once(
            spec.name,
            "initdb",
            docker_spec.initdb_container(
                self._engine.resource(spec.name),
                options,
                spec,
                management.admin_password(self._state),
            ),
        )

    async def copy_from(self, source_port: int, target: str, options: dict[str, str]) -> None:
        """Fill a branch's volume with ``pg_basebackup`` from the source compute running on
        the loopback ``source_port``."""
        await self._hand_to_postgres(target, options)
        await self._run_once(
            target,
            "pg_basebackup",
            docker_spec.basebackup_container(
                self._engine.resource(target),
                options,
                source_port,
                management.admin_password(self._state),
            ),
        )

    async def _hand_to_postgres(self, endpoint: str, options: dict[str, str]) -> None:
        await self._run_once(
            endpoint, "chown", docker_spec.chown_container(self._engine.resource(endpoint), options)
        )

    async def _run_once(self, endpoint: str, step: str, config: dict[str, Any]) -> None:
        """Run a short-lived container to its end; ``ComputeStartError`` unless it exits 0."""
        config["Labels"] = {LABEL_ENDPOINT: endpoint, LABEL_INSTANCE: self._engine.instance}
        async with self._engine.call(step) as docker:
            container = await docker.containers.create(config)
        try:
            async with asyncio.timeout(_INIT_TIMEOUT):
                await container.start()
                result = await container.wait()
            if result.get("StatusCode") != 0:
                lines = await container.log(stdout=True, stderr=True)
                text = "".join(lines)[-4000:]
                logger.error(
                    "event=docker_init_failed endpoint=%s step=%s log=%r", endpoint, step, text
                )
                raise ComputeStartError(
                    f"preparing the endpoint's volume failed at {step}: "
                    + start_failure_reason(text, Path(PGDATA))
                )
        finally:
            with contextlib.suppress(Exception):
                await container.delete(force=True)
