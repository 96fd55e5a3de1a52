"""Compute backends: where an endpoint's Postgres server runs, and how it starts and stops.

``ComputeBackend`` is the seam: ``endpoint/lifecycle.py`` drives it and never cares whether the
compute is a local process, a container or a pod. Backends are named by import strings,
the way uvicorn names its loops, and loaded once at startup.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgwake.compute.management import ManagementConnection
    from pgwake.settings import Settings

__all__ = [
    "BACKENDS",
    "Backends",
    "ComputeAddress",
    "ComputeBackend",
    "ComputeStartError",
    "EndpointSpec",
    "load_backend",
]

#: Backend name -> "module:Class". Unknown names are refused at startup.
BACKENDS: Final = {
    "local": "pgwake.compute.local:LocalBackend",
    "docker": "pgwake.compute.docker:DockerBackend",
}


class ComputeStartError(Exception):
    """The compute could not start; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ComputeAddress:
    """How to reach a running compute: a unix socket path, or a TCP host and port."""

    unix_socket: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return self.unix_socket or f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What a backend needs to create an endpoint's compute."""

    name: str
    role: str
    database: str
    #: SCRAM-SHA-256 verifier (``SCRAM-SHA-256$...``) for ``role``; never a plaintext.
    verifier: str
    #: Backend-specific choices made at create (docker: ``image``, ``memory``, ``cpus``).
    options: dict[str, str] = field(default_factory=dict)


class ComputeBackend(Protocol):
    """What lifecycle needs from a place that runs computes."""

    name: str

    def resolve_options(self, requested: dict[str, str | None]) -> dict[str, str]:
        """The options a new endpoint gets: ``requested`` with the server's defaults filled
        in. ``ValueError`` (a message for the user) when one is unknown or invalid."""

    async def prepare(self) -> None:
        """Get ready to create computes (e.g. make the template); idempotent."""

    async def maintain(self) -> None:
        """Background upkeep while the server runs (e.g. spare copies); until cancelled."""

    async def create(self, spec: EndpointSpec) -> None:
        """Create a suspended compute for a new endpoint."""

    async def delete(self, endpoint: str) -> None:
        """Stop the compute if it runs and remove its data."""

    async def branch(self, source: str, target: str) -> None:
        """Create ``target`` as a consistent copy of the running ``source``'s data."""

    async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
        """Start the compute and return once it accepts connections.

        Raises ``ComputeStartError`` with a client-safe reason."""

    async def stop(self, endpoint: str) -> None:
        """Shut the compute down cleanly (checkpoint; no data lost)."""

    async def probe(self, endpoint: str) -> ComputeAddress | None:
        """Return the address of a compute that runs now (to adopt it), else ``None``."""

    async def is_alive(self, endpoint: str) -> bool:
        """True while the compute's server process lives."""

    def management(self, endpoint: str) -> ManagementConnection | None:
        """An (unopened) admin connection to the running compute, or ``None`` if it is not
        running."""

    def disk_bytes(self, endpoint: str) -> int:
        """Bytes of storage the endpoint holds (0 when the backend cannot tell)."""

    async def close(self) -> None:
        """Release what the backend holds (engine connections); the computes keep running."""


def load_backend(name: str, settings: Settings) -> ComputeBackend:
    """Instantiate the backend called ``name``; raise ``ValueError`` listing valid names."""
    try:
        target = BACKENDS[name]
    except KeyError:
        valid = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown compute backend {name!r}; valid backends: {valid}") from None
    module_name, _, class_name = target.partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: ComputeBackend = backend_class(settings)
    return backend


class Backends:
    """The backends one server uses, each loaded when an endpoint first needs it.

    Loading is lazy so a server whose endpoints are all local never touches a Docker
    engine, and an engine that is down does not stop pgwake from starting."""

    def __init__(
        self, settings: Settings, on_load: Callable[[ComputeBackend], None] | None = None
    ) -> None:
        self._settings = settings
        self._loaded: dict[str, ComputeBackend] = {}
        #: Called once per backend when it is first loaded (the server starts its upkeep).
        self.on_load = on_load
        #: The backend of new endpoints that do not name one.
        self.default: str = settings.compute_backend

    def add(self, backend: ComputeBackend, *, default: bool = False) -> None:
        """Use an already built backend under its own name (tests, embedding)."""
        self._loaded[backend.name] = backend
        if default:
            self.default = backend.name

    def get(self, name: str) -> ComputeBackend:
        """The backend called ``name``; ``ValueError`` (listing valid names) if unknown."""
        backend = self._loaded.get(name)
        if backend is None:
            backend = self._loaded[name] = load_backend(name, self._settings)
            if self.on_load is not None:
                self.on_load(backend)
        return backend

    def loaded(self) -> list[ComputeBackend]:
        return list(self._loaded.values())

    async def close(self) -> None:
        for backend in self._loaded.values():
            await backend.close()
