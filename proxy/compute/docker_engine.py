"""The docker backend's way to the Docker engine: one aiodocker client, calls bounded in
time, engine failures turned into client-safe ``ComputeStartError`` reasons, and the
engine's events watched for computes killed by their memory limit.

The engine is reached through aiodocker (``DOCKER_HOST`` honoured), never the ``docker``
CLI. Which containers and volumes are this server's is told by its instance id, kept in
the state dir, so several pgwake servers can share one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Final

import aiodocker
import aiohttp

from pgwake.compute import ComputeStartError
from pgwake.compute.docker_spec import LABEL_ENDPOINT, LABEL_INSTANCE
from pgwake.state_dir import INSTANCE_ID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pgwake.state_dir import StateDir

__all__ = ["ENGINE_TIMEOUT", "DockerEngine", "require_image"]

logger = logging.getLogger(__name__)

#: The bound of one engine call, unless the caller gives another.
ENGINE_TIMEOUT: Final = 30.0
#: aiodocker's status for "could not connect to the engine" (not an HTTP status).
_UNREACHABLE: Final = 900


class DockerEngine:
    """This server's client of the engine, made at the first call."""

    def __init__(self, state: StateDir) -> None:
        self._state = state
        self._docker: aiodocker.Docker | None = None
        self._instance: str | None = None

    @property
    def instance(self) -> str:
        """This server's id on the engine: containers of other pgwake servers are not ours."""
        if self._instance is None:
            made = self._state.secret(INSTANCE_ID, lambda: os.urandom(4).hex().encode())
            self._instance = made.decode().strip()
        return self._instance

    def resource(self, endpoint: str) -> str:
        """The name of the endpoint's volume and of its container."""
        return f"pgwake-{self.instance}-{endpoint}"

    def client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker()  # DOCKER_HOST, else the local socket
        return self._docker

    @contextlib.asynccontextmanager
    async def call(
        self, what: str, bound: float = ENGINE_TIMEOUT
    ) -> AsyncIterator[aiodocker.Docker]:
        """Run engine calls, turning engine failures into client-safe reasons."""
        try:
            async with asyncio.timeout(bound):
                yield self.client()
        except aiodocker.DockerError as exc:
            if exc.status != _UNREACHABLE:
                logger.warning(
                    "event=docker_engine_error action=%s status=%s error=%r",
                    what,
                    exc.status,
                    exc.message,
                )
                raise ComputeStartError(
                    f"the Docker engine refused to {what} the compute: {exc.message[:200]}"
                ) from None
            logger.warning("event=docker_engine_unreachable action=%s error=%r", what, exc.message)
            raise ComputeStartError(f"the Docker engine is unreachable (during {what})") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("event=docker_engine_unreachable action=%s error=%r", what, exc)
            raise ComputeStartError(
                f"the Docker engine is unreachable ({type(exc).__name__} during {what})"
            ) from None

    async def watch_oom(self) -> None:
        """Log computes killed by their memory limit as the engine reports them; runs
        until cancelled, subscribing again (with a back-off) when the stream ends."""
        backoff = 1.0
        while True:
            try:
                await self._watch_events()  # returns when the engine ends the stream
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # engine down: try again later, quietly
                logger.debug("event=docker_events_unavailable error=%r", exc)
                backoff = min(backoff * 2, 60.0)
            await asyncio.sleep(backoff)

    async def _watch_events(self) -> None:
        filters = {"type": ["container"], "label": [f"{LABEL_INSTANCE}={self.instance}"]}
        subscriber = self.client().events.subscribe(filters=filters)  # type: ignore[no-untyped-call]
        try:
            while True:
                event = await subscriber.get()
                if event is None:
                    return
                action = event.get("Action") or event.get("status")
                if action != "oom":
                    continue
                endpoint = event.get("Actor", {}).get("Attributes", {}).get(LABEL_ENDPOINT)
                logger.error(
                    "event=compute_oom backend=docker endpoint=%s reason=%s",
                    endpoint,
                    "a process hit the container memory limit",
                )
        finally:
            await self.client().events.stop()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None


async def require_image(docker: aiodocker.Docker, image: str) -> None:
    """``ComputeStartError`` (a reason the user can act on) unless the engine has ``image``."""
    try:
        await docker.images.inspect(image)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            raise ComputeStartError(
                f"image {image} is not on the Docker engine (pull or build it first)"
            ) from None
        raise
