"""Local compute backend: each endpoint is a data directory and a ``postgres`` process.

``LocalBackend`` puts three parts together: where computes live and how they run as the
compute user (``local_layout.py``), the template every endpoint is a copy of
(``local_template.py``) and the postmaster processes (``local_process.py``). It adds what
concerns one endpoint's data: create (a copy; the role's verifier is set at its first
start), branch (``pg_basebackup`` from the running source), delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
from typing import TYPE_CHECKING, Final

from pgwake.compute import ComputeAddress, ComputeStartError, EndpointSpec, management
from pgwake.compute.local_layout import PORT, LocalLayout
from pgwake.compute.local_process import Postmasters
from pgwake.compute.local_template import SPARE_COPIES, Template
from pgwake.state_dir import StateDir, write_private

if TYPE_CHECKING:
    from pathlib import Path

    from pgwake.settings import Settings

__all__ = ["LocalBackend"]

logger = logging.getLogger(__name__)

#: Written at create, read and removed at the first start (see ``_apply_setup``).
_SETUP_FILE: Final = "setup.json"


class LocalBackend:
    """Runs computes as ``postgres`` processes on this host."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self._state = StateDir(settings.state_dir.resolve())
        self._layout = LocalLayout(settings, self._state)
        self._template = Template(self._layout, self._state)
        self._postmasters = Postmasters(self._layout, settings.stop_timeout)

    @property
    def bindir(self) -> Path:
        return self._layout.bindir

    def data_dir(self, endpoint: str) -> Path:
        """The endpoint's PGDATA (tests break its config to test start failures)."""
        return self._layout.data_dir(endpoint)

    def _admin_password(self) -> str:
        return management.admin_password(self._state)

    def resolve_options(self, requested: dict[str, str | None]) -> dict[str, str]:
        given = sorted(key for key, value in requested.items() if value is not None)
        if given:
            raise ValueError(f"local endpoints take no {', '.join(given)} (docker ones do)")
        return {}

    async def prepare(self) -> None:
        """Make the template data directory once (initdb), guarded by a file lock."""
        await self._template.prepare()

    async def maintain(self, spares: int = SPARE_COPIES) -> None:
        """Keep ``spares`` copies of the template ready, so that creating an endpoint is a
        rename rather than a 35 MB copy. Runs until cancelled (the server runs it)."""
        await self._template.maintain(spares)

    # -- create / branch / delete --------------------------------------------------------

    async def create(self, spec: EndpointSpec) -> None:
        await self.prepare()
        endpoint_dir = self._layout.endpoint_dir(spec.name)
        if endpoint_dir.exists():
            raise FileExistsError(f"endpoint {spec.name!r} already has a data directory")
        try:
            self._layout.mkdir_for_compute(endpoint_dir)
            await self._template.copy_to(self.data_dir(spec.name))
            # The role's verifier is set on the first start (see _apply_setup): creating
            # an endpoint is just this copy.
            setup = endpoint_dir / _SETUP_FILE
            write_private(
                setup,
                json.dumps(
                    {"role": spec.role, "database": spec.database, "verifier": spec.verifier}
                ).encode(),
            )
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, endpoint_dir, True)
            raise

    async def branch(self, source: str, target: str) -> None:
        """Copy the running ``source`` with ``pg_basebackup`` (a consistent snapshot even
        under writes); the copy recovers to that point on its first start."""
        address = self._postmasters.address(source)
        if address is None:
            raise ComputeStartError("the source compute is not running")
        target_dir = self._layout.endpoint_dir(target)
        if target_dir.exists():
            raise FileExistsError(f"endpoint {target!r} already has a data directory")
        assert address.unix_socket is not None
        socket_dir = address.unix_socket.rsplit("/", 1)[0]
        try:
            self._layout.mkdir_for_compute(target_dir)
            argv = [
                str(self._layout.bindir / "pg_basebackup"),
                "-h",
                socket_dir,
                "-p",
                str(PORT),
                "-U",
                management.ADMIN_ROLE,
                "-D",
                str(self.data_dir(target)),
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-password",
            ]
            try:
                await asyncio.to_thread(
                    self._layout.run_as_compute,
                    argv,
                    cwd=str(target_dir),
                    extra_env={"PGPASSWORD": self._admin_password()},
                )
            except subprocess.CalledProcessError as exc:
                lines = exc.stderr.decode(errors="replace").strip().splitlines()
                raise ComputeStartError(
                    f"pg_basebackup failed: {lines[-1] if lines else '?'}"
                ) from None
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, target_dir, True)
            raise

    async def delete(self, endpoint: str) -> None:
        if self._postmasters.pid(endpoint) is not None:
            await self.stop(endpoint)
        await asyncio.to_thread(shutil.rmtree, self._layout.endpoint_dir(endpoint), True)
        with contextlib.suppress(OSError):
            shutil.rmtree(self._layout.socket_dir(endpoint))

    # -- start / stop --------------------------------------------------------------------

    async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
        if not self.data_dir(endpoint).is_dir():
            raise ComputeStartError("the endpoint has no data directory")
        running = self._postmasters.address(endpoint)
        if running is not None:
            return running
        address = await self._postmasters.start(endpoint, ready_timeout)
        await self._apply_setup(endpoint, address)
        return address

    async def _apply_setup(self, endpoint: str, address: ComputeAddress) -> None:
        """First start of a new endpoint: give its role the verifier chosen at create."""
        setup_path = self._layout.endpoint_dir(endpoint) / _SETUP_FILE
        try:
            setup = json.loads(setup_path.read_text())
        except FileNotFoundError:
            return
        spec = EndpointSpec(endpoint, setup["role"], setup["database"], setup["verifier"])
        try:
            await management.setup_endpoint(address, self._admin_password(), spec)
        except Exception as exc:
            logger.exception("event=endpoint_setup_failed endpoint=%s", endpoint)
            await self.stop(endpoint)
            raise ComputeStartError("the endpoint's first-start setup failed") from exc
        setup_path.unlink()

    async def stop(self, endpoint: str) -> None:
        await self._postmasters.stop(endpoint)

    # -- observation ---------------------------------------------------------------------

    async def probe(self, endpoint: str) -> ComputeAddress | None:
        return self._postmasters.address(endpoint)

    async def is_alive(self, endpoint: str) -> bool:
        return self._postmasters.pid(endpoint) is not None

    def management(self, endpoint: str) -> management.ManagementConnection | None:
        address = self._postmasters.address(endpoint)
        if address is None:
            return None
        return management.ManagementConnection(address, self._admin_password())

    async def close(self) -> None:
        """Nothing to release: computes are plain processes that outlive pgwake."""

    def disk_bytes(self, endpoint: str) -> int:
        total = 0
        for directory, _, files in os.walk(self._layout.endpoint_dir(endpoint)):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(directory, name)).st_size
        return total
