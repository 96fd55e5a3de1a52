"""An endpoint's compute container: made on a free loopback port, started, waited on until
Postgres accepts logins, stopped, removed.

Wake is create-if-missing + start, then a readiness probe on the port (a startup packet,
answered by an authentication request once Postgres takes logins). A port another
program took since it was chosen costs one more container on another port. Suspend is
SIGINT (fast shutdown with a checkpoint); SIGQUIT, then SIGKILL, only after
``stop_timeout``, logged as errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiodocker

from pgwake.compute import ComputeStartError, docker_spec, management
from pgwake.compute.docker_engine import ENGINE_TIMEOUT, require_image
from pgwake.compute.docker_spec import LABEL_ENDPOINT, LABEL_INSTANCE, LABEL_PORT, PGDATA
from pgwake.compute.pgdata import start_failure_reason
from pgwake.protocol import encode
from pgwake.protocol.messages import AUTHENTICATION

if TYPE_CHECKING:
    from pgwake.compute.docker_engine import DockerEngine
    from pgwake.compute.docker_volume import Volumes
    from pgwake.settings import Settings

__all__ = ["Containers"]

logger = logging.getLogger(__name__)

_READY_POLL_SECONDS: Final = 0.005


class Containers:
    """The endpoints' compute containers on ``engine``, and the loopback port of each."""

    def __init__(self, settings: Settings, engine: DockerEngine, volumes: Volumes) -> None:
        self._settings = settings
        self._engine = engine
        self._volumes = volumes
        first, _, last = settings.docker_ports.partition("-")
        self._port_range = range(int(first), int(last) + 1)
        #: Endpoint -> loopback port of its container, as its label says.
        self._ports: dict[str, int] = {}
        #: Endpoint -> host path of its volume (for disk_bytes), when the engine is local.
        self._volume_paths: dict[str, str] = {}
        self._port_lock = asyncio.Lock()

    @property
    def stop_bound(self) -> float:
        """The bound of a call that stops a container: the kill-and-wait sequence may take
        stop_timeout and two more bounded waits."""
        return self._settings.stop_timeout + 20 + ENGINE_TIMEOUT

    def port(self, endpoint: str) -> int | None:
        """The loopback port of the endpoint's container, once it has been seen."""
        return self._ports.get(endpoint)

    def volume_path(self, endpoint: str) -> str | None:
        """The host path of the endpoint's volume, when the engine is local and a wake has
        made its container."""
        return self._volume_paths.get(endpoint)

    def forget(self, endpoint: str) -> None:
        self._ports.pop(endpoint, None)
        self._volume_paths.pop(endpoint, None)

    async def find(
        self, docker: aiodocker.Docker, endpoint: str
    ) -> tuple[aiodocker.containers.DockerContainer, dict[str, Any]] | None:
        """The endpoint's container and its state, if it exists and is this server's."""
        try:
            container = await docker.containers.get(self._engine.resource(endpoint))
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise
        labels = container["Config"].get("Labels") or {}
        if labels.get(LABEL_INSTANCE) != self._engine.instance:
            return None
        info: dict[str, Any] = {"State": container["State"]}
        port = labels.get(LABEL_PORT)
        if port:
            self._ports[endpoint] = int(port)
        return container, info

    # -- start ---------------------------------------------------------------------------

    async def start(self, endpoint: str, ready_timeout: float) -> int:
        """Start the endpoint's container and return its port once Postgres accepts
        logins. Raises ``ComputeStartError`` with a client-safe reason."""
        deadline = time.monotonic() + ready_timeout
        avoid: set[int] = set()
        for attempt in range(2):
            async with self._engine.call("start") as docker:
                container = await self._start_container(docker, endpoint, avoid)
            port = self._ports[endpoint]
            try:
                await self._wait_ready(endpoint, container, port, deadline)
            except _PortTaken:
                if attempt:
                    raise ComputeStartError(f"port {port} is in use by another program") from None
                logger.warning("event=docker_port_taken endpoint=%s port=%d", endpoint, port)
                avoid.add(port)
                async with self._engine.call("recreate") as docker:
                    await container.delete(force=True)
                continue
            except ComputeStartError:
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.stop(endpoint)
                raise
            return port
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start_container(
        self, docker: aiodocker.Docker, endpoint: str, avoid: set[int]
    ) -> aiodocker.containers.DockerContainer:
        """Start the endpoint's container, creating it if it is missing. When its port is
        known the start is one engine call (a running container answers 304, no error)."""
        if endpoint in self._ports and not avoid:
            container = docker.containers.container(self._engine.resource(endpoint))
            try:
                await container.start()
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
                self._ports.pop(endpoint, None)  # removed behind our back: make it again
            else:
                return container
        found = await self.find(docker, endpoint)
        if found is None:
            container = await self._create(docker, endpoint, avoid)
        else:
            container, info = found
            if info.get("State", {}).get("Running"):
                return container
        await container.start()
        return container

    async def _create(
        self, docker: aiodocker.Docker, endpoint: str, avoid: set[int]
    ) -> aiodocker.containers.DockerContainer:
        name = self._engine.resource(endpoint)
        options, volume = await self._volumes.options(docker, endpoint)
        if volume.get("Mountpoint"):
            self._volume_paths[endpoint] = volume["Mountpoint"]
        await require_image(docker, options["image"])
        async with self._port_lock:
            port = await self._free_port(docker, avoid)
            container = await docker.containers.create(
                docker_spec.compute_container(
                    name,
                    endpoint,
                    self._engine.instance,
                    options,
                    port=port,
                    stop_timeout=self._settings.stop_timeout,
                ),
                name=name,
            )
        self._ports[endpoint] = port
        logger.info(
            "event=docker_container_created endpoint=%s image=%s port=%d memory=%s cpus=%s",
            endpoint,
            options["image"],
            port,
            options["memory"],
            options["cpus"],
        )
        return container

    async def _free_port(self, docker: aiodocker.Docker, avoid: set[int]) -> int:
        """A port in the range that no pgwake container holds and nothing listens on."""
        taken = set(avoid)
        for container in await docker.containers.list(all=True, filters={"label": [LABEL_PORT]}):
            with contextlib.suppress(KeyError, ValueError, TypeError):
                taken.add(int(container["Labels"][LABEL_PORT]))
        for port in self._port_range:
            if port not in taken and _bindable(port):
                return port
        raise ComputeStartError(f"no free loopback port in {self._settings.docker_ports}")

    async def _wait_ready(
        self,
        endpoint: str,
        container: aiodocker.containers.DockerContainer,
        port: int,
        deadline: float,
    ) -> None:
        checks = 0
        while True:
            if await _accepts_logins(port):
                return
            checks += 1
            if checks % 20 == 0:  # every ~100 ms: did postgres exit?
                async with self._engine.call("inspect") as _:
                    info = await container.show()
                state = info.get("State", {})
                if not state.get("Running"):
                    lines = await container.log(stdout=True, stderr=True, tail=80)
                    text = "".join(lines)
                    if "could not bind" in text and "Address already in use" in text:
                        raise _PortTaken
                    reason = start_failure_reason(text, Path(PGDATA))
                    if state.get("OOMKilled"):
                        reason = "the compute hit its memory limit while starting"
                    raise ComputeStartError(reason)
            if time.monotonic() > deadline:
                await self.stop(endpoint)
                raise ComputeStartError("postgres did not become ready in time")
            await asyncio.sleep(_READY_POLL_SECONDS)

    # -- stop and remove -----------------------------------------------------------------

    async def stop(self, endpoint: str) -> None:
        """Stop the endpoint's container, if there is one (see ``stop_container``)."""
        async with self._engine.call("stop", self.stop_bound) as docker:
            found = await self.find(docker, endpoint)
            if found is not None:
                await self.stop_container(endpoint, found[0])

    async def stop_container(
        self, endpoint: str, container: aiodocker.containers.DockerContainer
    ) -> None:
        """SIGINT, then SIGQUIT after ``stop_timeout``, then SIGKILL: each waited on, and a
        hung wait logged as an error."""
        started = time.monotonic()
        bound = self._settings.stop_timeout
        for signal_name, wait in (("SIGINT", bound), ("SIGQUIT", 10.0), ("SIGKILL", 10.0)):
            try:
                await container.kill(signal=signal_name)
            except aiodocker.DockerError as exc:
                if exc.status == 409:  # not running
                    return
                raise
            try:
                async with asyncio.timeout(wait):
                    result = await container.wait()
            except TimeoutError:
                logger.error(
                    "event=compute_stop_hung backend=docker endpoint=%s signal=%s waited_s=%g",
                    endpoint,
                    signal_name,
                    wait,
                )
                continue
            code = result.get("StatusCode")
            log = logger.debug if code == 0 and signal_name == "SIGINT" else logger.error
            log(
                "event=compute_stopped backend=docker endpoint=%s exit_code=%s signal=%s ms=%d",
                endpoint,
                code,
                signal_name,
                (time.monotonic() - started) * 1000,
            )
            return

    async def remove(self, docker: aiodocker.Docker, endpoint: str) -> None:
        """Stop and remove every container of the endpoint's (the one-shot ones too)."""
        for container in await docker.containers.list(
            all=True,
            filters={
                "label": [
                    f"{LABEL_INSTANCE}={self._engine.instance}",
                    f"{LABEL_ENDPOINT}={endpoint}",
                ]
            },
        ):
            await self.stop_container(endpoint, container)
            await container.delete(force=True, v=True)


class _PortTaken(Exception):
    """Postgres could not bind its port: another program took it since we chose it."""


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_PROBE_STARTUP: Final = encode.startup_message(
    {"user": management.ADMIN_ROLE, "database": "postgres", "application_name": "pgwake-probe"}
)


async def _accepts_logins(port: int) -> bool:
    """True once Postgres on ``port`` answers a startup with an authentication request
    (while it starts it answers 57P03; before it listens, the connect is refused)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(_PROBE_STARTUP)
        header = await asyncio.wait_for(reader.readexactly(5), 2.0)
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return False
    finally:
        writer.close()  # an unanswered SASL exchange ends silently on the server
    kind, _length = struct.unpack("!cI", header)
    return bool(kind == AUTHENTICATION)
