"""Docker compute backend: each endpoint is one labelled container and one named volume.

The engine is reached through aiodocker (``DOCKER_HOST`` honoured), never the ``docker``
CLI. Per endpoint, under a name that holds this server's instance id::

    volume    pgwake-<instance>-<endpoint>   PGDATA; labels keep the image and limits
    container pgwake-<instance>-<endpoint>   postgres, host network, one loopback port

pgwake never relies on an image's entrypoint: it runs ``initdb`` and ``postgres`` from the
image's PATH as the image's ``postgres`` user, so the official ``postgres:NN`` images and
the ones ``deploy/docker/build-images.sh`` makes both work.

Create runs two short-lived containers: one that gives the fresh volume to ``postgres``
(root with only CAP_CHOWN), one that runs ``initdb`` and, in single-user mode, creates the
endpoint's role (with its SCRAM verifier) and database. A branch runs ``pg_basebackup``
from the source's image against the running source instead. Wake is create-if-missing + start,
then a readiness probe on the port. Suspend is SIGINT (fast shutdown with a checkpoint);
SIGQUIT, then SIGKILL, only after ``stop_timeout``, logged as errors. Containers are
sandboxed: memory and CPU limits, no swap, non-root, no capabilities,
``no-new-privileges``, read-only root file system, nothing published (host networking,
Postgres bound to 127.0.0.1 only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiodocker
import aiohttp

from pgwake.compute import (
    ComputeAddress,
    ComputeStartError,
    EndpointSpec,
    management,
    postgresql_conf,
)
from pgwake.compute.pgdata import start_failure_reason
from pgwake.protocol import encode
from pgwake.protocol.messages import AUTHENTICATION
from pgwake.settings import MAX_CPUS, MIN_CPUS, parse_memory
from pgwake.state_dir import INSTANCE_ID, StateDir

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pgwake.settings import Settings

__all__ = ["DockerBackend"]

logger = logging.getLogger(__name__)

LABEL_ENDPOINT: Final = "pgwake.endpoint"
LABEL_INSTANCE: Final = "pgwake.instance"
_LABEL_PORT: Final = "pgwake.port"
_LABEL_IMAGE: Final = "pgwake.image"
_LABEL_MEMORY: Final = "pgwake.memory"
_LABEL_CPUS: Final = "pgwake.cpus"

#: Where the volume is mounted: the official images' PGDATA parent (their VOLUME), so no
#: anonymous volume is made beside ours. PGDATA is a subdirectory, as those images advise.
_MOUNT: Final = "/var/lib/postgresql/data"
_PGDATA: Final = f"{_MOUNT}/pgdata"
#: The container's private tmpfs: the unix socket and initdb's password file live there.
_CONTAINER_TMP: Final = "/tmp"  # noqa: S108 (inside the container, not this host)
_READY_POLL_SECONDS: Final = 0.005
#: aiodocker's status for "could not connect to the engine" (not an HTTP status).
_UNREACHABLE: Final = 900
_ENGINE_TIMEOUT: Final = 30.0
_INIT_TIMEOUT: Final = 120.0
# Kept in the container's own log (docker logs) and rotated by the engine.
_LOG_OPTIONS: Final = {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}}
_PIDS_LIMIT: Final = 1024
# Appended to postgresql.conf at initdb. A container listens on loopback TCP, at the port
# given when it is made (see _create_container's command line).
_CONF: Final = postgresql_conf.render()
# Run by the init container as the image's postgres user. Secrets come in through the
# environment of that short-lived container (removed right after), never its command.
_INIT_SCRIPT: Final = f"""set -eu
umask 077
printf '%s' "$PGWAKE_ADMIN_PASSWORD" > /tmp/pw
initdb -D {_PGDATA} -U {management.ADMIN_ROLE} --pwfile=/tmp/pw -E UTF8 --no-locale \
  --auth-local=scram-sha-256 --auth-host=scram-sha-256 >/dev/null
rm -f /tmp/pw
printf '%s' "$PGWAKE_CONF" >> {_PGDATA}/postgresql.conf
printf '%s\\n' "$PGWAKE_SETUP_SQL" | postgres --single -D {_PGDATA} -F -c listen_addresses= \
  postgres >/dev/null
"""


def _memory_label(value: str) -> str:
    parse_memory(value)
    return value.strip().lower()


class DockerBackend:
    """Runs computes as containers on a Docker engine."""

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._state = StateDir(settings.state_dir.resolve())
        self._docker: aiodocker.Docker | None = None
        self._instance: str | None = None
        first, _, last = settings.docker_ports.partition("-")
        self._port_range = range(int(first), int(last) + 1)
        #: Endpoint -> loopback port of its container, as its label says.
        self._ports: dict[str, int] = {}
        #: Endpoint -> host path of its volume (for disk_bytes), when the engine is local.
        self._volume_paths: dict[str, str] = {}
        self._port_lock = asyncio.Lock()

    # -- names and engine access -----------------------------------------------------------

    @property
    def instance(self) -> str:
        """This server's id on the engine: containers of other pgwake servers are not ours."""
        if self._instance is None:
            made = self._state.secret(INSTANCE_ID, lambda: os.urandom(4).hex().encode())
            self._instance = made.decode().strip()
        return self._instance

    def _resource(self, endpoint: str) -> str:
        return f"pgwake-{self.instance}-{endpoint}"

    def _engine(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker()  # DOCKER_HOST, else the local socket
        return self._docker

    @contextlib.asynccontextmanager
    async def _engine_call(
        self, what: str, bound: float = _ENGINE_TIMEOUT
    ) -> AsyncIterator[aiodocker.Docker]:
        """Run engine calls, turning engine failures into client-safe reasons."""
        try:
            async with asyncio.timeout(bound):
                yield self._engine()
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

    # -- options -------------------------------------------------------------------------

    def resolve_options(self, requested: dict[str, str | None]) -> dict[str, str]:
        """Fill in the server's defaults; ``ValueError`` for a bad value."""
        unknown = set(requested) - {"image", "memory", "cpus"}
        if unknown:
            raise ValueError(f"docker endpoints take image, memory and cpus, not {unknown}")
        image = requested.get("image") or self._settings.docker_image
        memory = _memory_label(requested.get("memory") or self._settings.docker_memory)
        cpus = float(requested.get("cpus") or self._settings.docker_cpus)
        if not MIN_CPUS <= cpus <= MAX_CPUS:
            raise ValueError(f"cpus must be from {MIN_CPUS:g} to {MAX_CPUS:g}, got {cpus:g}")
        return {"image": image, "memory": memory, "cpus": f"{cpus:g}"}

    # -- lifecycle of the backend ------------------------------------------------------------

    async def prepare(self) -> None:
        """Nothing up front: the engine is asked when an endpoint needs it."""

    async def maintain(self) -> None:
        """Log computes killed by their memory limit as the engine reports them."""
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
        subscriber = self._engine().events.subscribe(filters=filters)  # type: ignore[no-untyped-call]
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
            await self._engine().events.stop()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    # -- create / delete -----------------------------------------------------------------

    async def create(self, spec: EndpointSpec) -> None:
        options = self.resolve_options(dict(spec.options))
        async with self._engine_call("create") as docker:
            await self._require_image(docker, options["image"])
            await self._create_volume(docker, spec.name, options)
        try:
            started = time.monotonic()
            await self._initialise(spec, options)
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

    async def _create_volume(
        self, docker: aiodocker.Docker, endpoint: str, options: dict[str, str]
    ) -> None:
        """The endpoint's named volume, labelled with its image and limits (a wake makes
        the container from them). Raises ``FileExistsError`` if it exists."""
        name = self._resource(endpoint)
        with contextlib.suppress(aiodocker.DockerError):
            await docker.volumes.get(name)  # type: ignore[no-untyped-call]
            raise FileExistsError(f"endpoint {endpoint!r} already has a volume")
        await docker.volumes.create(  # type: ignore[no-untyped-call]
            {
                "Name": name,
                "Labels": {
                    LABEL_ENDPOINT: endpoint,
                    LABEL_INSTANCE: self.instance,
                    _LABEL_IMAGE: options["image"],
                    _LABEL_MEMORY: options["memory"],
                    _LABEL_CPUS: options["cpus"],
                },
            }
        )

    async def _volume_options(
        self, docker: aiodocker.Docker, endpoint: str
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """The image and limits an endpoint's volume was labelled with, and the volume."""
        try:
            volume = await (await docker.volumes.get(self._resource(endpoint))).show()  # type: ignore[no-untyped-call]
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ComputeStartError("the endpoint's volume is missing") from None
            raise
        labels = volume.get("Labels") or {}
        options = {
            "image": labels.get(_LABEL_IMAGE, self._settings.docker_image),
            "memory": labels.get(_LABEL_MEMORY, self._settings.docker_memory),
            "cpus": labels.get(_LABEL_CPUS, str(self._settings.docker_cpus)),
        }
        return options, volume

    async def _require_image(self, docker: aiodocker.Docker, image: str) -> None:
        try:
            await docker.images.inspect(image)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ComputeStartError(
                    f"image {image} is not on the Docker engine (pull or build it first)"
                ) from None
            raise

    def _mounts(self, endpoint: str) -> list[dict[str, str]]:
        return [{"Type": "volume", "Source": self._resource(endpoint), "Target": _MOUNT}]

    async def _hand_volume_to_postgres(self, endpoint: str, options: dict[str, str]) -> None:
        # A fresh volume belongs to root unless the image has the mount point: hand it to
        # postgres. Root, but with CAP_CHOWN alone and no network.
        await self._run_once(
            endpoint,
            "chown",
            {
                "Image": options["image"],
                "User": "0",
                "Entrypoint": ["chown", "postgres:postgres", _MOUNT],
                "Cmd": [],
                "HostConfig": {
                    **self._sandbox(options),
                    "Mounts": self._mounts(endpoint),
                    "NetworkMode": "none",
                    "CapAdd": ["CHOWN"],
                },
            },
        )

    async def _initialise(self, spec: EndpointSpec, options: dict[str, str]) -> None:
        mounts = self._mounts(spec.name)
        await self._hand_volume_to_postgres(spec.name, options)
        setup_sql = (
            f"CREATE ROLE {management.quote_ident(spec.role)} LOGIN CREATEDB CREATEROLE "
            f"PASSWORD {management.quote_literal(spec.verifier)}\n"
            f"CREATE DATABASE {management.quote_ident(spec.database)} "
            f"OWNER {management.quote_ident(spec.role)}"
        )
        await self._run_once(
            spec.name,
            "initdb",
            {
                "Image": options["image"],
                "User": "postgres",
                "Entrypoint": ["sh", "-c", _INIT_SCRIPT],
                "Cmd": [],
                "Env": [
                    f"PGWAKE_ADMIN_PASSWORD={management.admin_password(self._state)}",
                    f"PGWAKE_CONF={_CONF}",
                    f"PGWAKE_SETUP_SQL={setup_sql}",
                    "LC_ALL=C",
                ],
                "HostConfig": {**self._sandbox(options), "Mounts": mounts, "NetworkMode": "none"},
            },
        )

    async def _run_once(self, endpoint: str, step: str, config: dict[str, Any]) -> None:
        """Run a short-lived container to its end; ``ComputeStartError`` unless it exits 0."""
        config["Labels"] = {LABEL_ENDPOINT: endpoint, LABEL_INSTANCE: self.instance}
        async with self._engine_call(step) as docker:
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
                    + start_failure_reason(text, Path(_PGDATA))
                )
        finally:
            with contextlib.suppress(Exception):
                await container.delete(force=True)

    async def delete(self, endpoint: str) -> None:
        name = self._resource(endpoint)
        bound = self._settings.stop_timeout + 20 + _ENGINE_TIMEOUT
        async with self._engine_call("delete", bound) as docker:
            for container in await docker.containers.list(
                all=True,
                filters={
                    "label": [f"{LABEL_INSTANCE}={self.instance}", f"{LABEL_ENDPOINT}={endpoint}"]
                },
            ):
                await self._stop_container(endpoint, container)
                await container.delete(force=True, v=True)
            with contextlib.suppress(aiodocker.DockerError):
                volume = await docker.volumes.get(name)  # type: ignore[no-untyped-call]
                await volume.delete()
        self._ports.pop(endpoint, None)
        self._volume_paths.pop(endpoint, None)

    async def branch(self, source: str, target: str) -> None:
        """Copy the running ``source`` into a new volume with ``pg_basebackup`` (a
        consistent snapshot even under writes), run from the source's image over its
        loopback port; the copy recovers to that point on its first start. The branch
        keeps the source's image and limits."""
        port = self._ports.get(source)
        if port is None:
            raise ComputeStartError("the source compute is not running")
        async with self._engine_call("branch") as docker:
            options, _ = await self._volume_options(docker, source)
            await self._require_image(docker, options["image"])
            await self._create_volume(docker, target, options)
        try:
            started = time.monotonic()
            await self._hand_volume_to_postgres(target, options)
            await self._run_once(
                target,
                "pg_basebackup",
                {
                    "Image": options["image"],
                    "User": "postgres",
                    "Entrypoint": [
                        "pg_basebackup",
                        "--host=127.0.0.1",
                        f"--port={port}",
                        f"--username={management.ADMIN_ROLE}",
                        f"--pgdata={_PGDATA}",
                        "--wal-method=stream",
                        "--checkpoint=fast",
                        "--no-password",
                    ],
                    "Cmd": [],
                    # The secret is in the environment of a container removed right after.
                    "Env": [f"PGPASSWORD={management.admin_password(self._state)}"],
                    "HostConfig": {
                        **self._sandbox(options),
                        "Mounts": self._mounts(target),
                        "NetworkMode": "host",  # the source listens on loopback only
                    },
                },
            )
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

    # -- start / stop --------------------------------------------------------------------

    def _sandbox(self, options: dict[str, str]) -> dict[str, Any]:
        memory = parse_memory(options["memory"])
        return {
            "Memory": memory,
            "MemorySwap": memory,  # no swap: the limit is the limit
            "NanoCpus": int(float(options["cpus"]) * 1e9),
            "PidsLimit": _PIDS_LIMIT,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "ReadonlyRootfs": True,
            "Tmpfs": {_CONTAINER_TMP: "rw,nosuid,nodev,size=64m"},
            "LogConfig": _LOG_OPTIONS,
        }

    async def _container(
        self, docker: aiodocker.Docker, endpoint: str
    ) -> tuple[aiodocker.containers.DockerContainer, dict[str, Any]] | None:
        try:
            container = await docker.containers.get(self._resource(endpoint))
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise
        labels = container["Config"].get("Labels") or {}
        if labels.get(LABEL_INSTANCE) != self.instance:
            return None
        info: dict[str, Any] = {"State": container["State"]}
        port = labels.get(_LABEL_PORT)
        if port:
            self._ports[endpoint] = int(port)
        return container, info

    async def _create_container(
        self, docker: aiodocker.Docker, endpoint: str, avoid: set[int]
    ) -> aiodocker.containers.DockerContainer:
        name = self._resource(endpoint)
        options, volume = await self._volume_options(docker, endpoint)
        if volume.get("Mountpoint"):
            self._volume_paths[endpoint] = volume["Mountpoint"]
        await self._require_image(docker, options["image"])
        async with self._port_lock:
            port = await self._free_port(docker, avoid)
            container = await docker.containers.create(
                {
                    "Image": options["image"],
                    "User": "postgres",
                    "Entrypoint": ["postgres"],
                    "Cmd": [
                        "-D",
                        _PGDATA,
                        "-p",
                        str(port),
                        "-k",
                        _CONTAINER_TMP,
                        "-c",
                        "listen_addresses=127.0.0.1",
                    ],
                    "Env": ["LC_ALL=C"],
                    "Labels": {
                        LABEL_ENDPOINT: endpoint,
                        LABEL_INSTANCE: self.instance,
                        _LABEL_PORT: str(port),
                    },
                    "StopSignal": "SIGINT",
                    "StopTimeout": max(1, round(self._settings.stop_timeout)),
                    "HostConfig": {
                        **self._sandbox(options),
                        "NetworkMode": "host",
                        "Mounts": [{"Type": "volume", "Source": name, "Target": _MOUNT}],
                        "RestartPolicy": {"Name": "no"},
                    },
                },
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
        for container in await docker.containers.list(all=True, filters={"label": [_LABEL_PORT]}):
            with contextlib.suppress(KeyError, ValueError, TypeError):
                taken.add(int(container["Labels"][_LABEL_PORT]))
        for port in self._port_range:
            if port not in taken and _bindable(port):
                return port
        raise ComputeStartError(f"no free loopback port in {self._settings.docker_ports}")

    async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
        deadline = time.monotonic() + ready_timeout
        avoid: set[int] = set()
        for attempt in range(2):
            async with self._engine_call("start") as docker:
                container = await self._start_container(docker, endpoint, avoid)
            port = self._ports[endpoint]
            try:
                await self._wait_ready(endpoint, container, port, deadline)
            except _PortTaken:
                if attempt:
                    raise ComputeStartError(f"port {port} is in use by another program") from None
                logger.warning("event=docker_port_taken endpoint=%s port=%d", endpoint, port)
                avoid.add(port)
                async with self._engine_call("recreate") as docker:
                    await container.delete(force=True)
                continue
            except ComputeStartError:
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.stop(endpoint)
                raise
            return ComputeAddress(host="127.0.0.1", port=port)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start_container(
        self, docker: aiodocker.Docker, endpoint: str, avoid: set[int]
    ) -> aiodocker.containers.DockerContainer:
        """Start the endpoint's container, creating it if it is missing. When its port is
        known the start is one engine call (a running container answers 304, no error)."""
        if endpoint in self._ports and not avoid:
            container = docker.containers.container(self._resource(endpoint))
            try:
                await container.start()
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
                self._ports.pop(endpoint, None)  # removed behind our back: make it again
            else:
                return container
        found = await self._container(docker, endpoint)
        if found is None:
            container = await self._create_container(docker, endpoint, avoid)
        else:
            container, info = found
            if info.get("State", {}).get("Running"):
                return container
        await container.start()
        return container

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
                async with self._engine_call("inspect") as _:
                    info = await container.show()
                state = info.get("State", {})
                if not state.get("Running"):
                    lines = await container.log(stdout=True, stderr=True, tail=80)
                    text = "".join(lines)
                    if "could not bind" in text and "Address already in use" in text:
                        raise _PortTaken
                    reason = start_failure_reason(text, Path(_PGDATA))
                    if state.get("OOMKilled"):
                        reason = "the compute hit its memory limit while starting"
                    raise ComputeStartError(reason)
            if time.monotonic() > deadline:
                await self.stop(endpoint)
                raise ComputeStartError("postgres did not become ready in time")
            await asyncio.sleep(_READY_POLL_SECONDS)

    async def stop(self, endpoint: str) -> None:
        # The kill-and-wait sequence may take stop_timeout and two more bounded waits.
        bound = self._settings.stop_timeout + 20 + _ENGINE_TIMEOUT
        async with self._engine_call("stop", bound) as docker:
            found = await self._container(docker, endpoint)
            if found is not None:
                await self._stop_container(endpoint, found[0])

    async def _stop_container(
        self, endpoint: str, container: aiodocker.containers.DockerContainer
    ) -> None:
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

    # -- observation ---------------------------------------------------------------------

    async def probe(self, endpoint: str) -> ComputeAddress | None:
        async with self._engine_call("probe") as docker:
            found = await self._container(docker, endpoint)
        if found is None or not found[1].get("State", {}).get("Running"):
            return None
        port = self._ports.get(endpoint)
        return ComputeAddress(host="127.0.0.1", port=port) if port else None

    async def is_alive(self, endpoint: str) -> bool:
        async with self._engine_call("inspect") as docker:
            found = await self._container(docker, endpoint)
        return found is not None and bool(found[1].get("State", {}).get("Running"))

    def management(self, endpoint: str) -> management.ManagementConnection | None:
        port = self._ports.get(endpoint)
        if port is None:
            return None
        return management.ManagementConnection(
            ComputeAddress(host="127.0.0.1", port=port), management.admin_password(self._state)
        )

    def disk_bytes(self, endpoint: str) -> int:
        path = self._volume_paths.get(endpoint)
        total = 0
        if path is None:
            return 0
        for directory, _, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(directory, name)).st_size
        return total


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
