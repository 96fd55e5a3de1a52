"""The local backend's ``postgres`` processes: spawn, readiness, stop, and finding them again.

Start spawns ``postgres`` directly and polls ``postmaster.pid`` for the ``ready`` status
every few milliseconds (``pg_ctl -w`` sleeps in 100 ms steps). Stop is SIGINT, a fast
shutdown with a checkpoint; SIGQUIT only after ``stop_timeout``, logged as an error, then
SIGKILL. Computes run in their own session, so they outlive a ``kill -9`` of pgwake and are
found again by their ``postmaster.pid`` (and adopted by the next pgwake).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pgwake.compute import ComputeStartError
from pgwake.compute.local_layout import PORT
from pgwake.compute.pgdata import read_postmaster_pid, start_failure_reason

if TYPE_CHECKING:
    from pgwake.compute import ComputeAddress
    from pgwake.compute.local_layout import LocalLayout

__all__ = ["Postmasters"]

logger = logging.getLogger(__name__)

_READY_POLL_SECONDS: Final = 0.002
# A start moves a server log this big to postgres.log.1 (replacing the older one), so an
# endpoint woken thousands of times keeps at most about twice this much log.
_LOG_ROTATE_BYTES: Final = 16 * 1024 * 1024


class Postmasters:
    """The postmaster of each endpoint under ``layout``: the ones this pgwake spawned,
    and the ones a ``postmaster.pid`` names."""

    def __init__(self, layout: LocalLayout, stop_timeout: float) -> None:
        self._layout = layout
        self._stop_timeout = stop_timeout
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
        """Spawn the endpoint's ``postgres`` and return its address once it is ready.

        Raises ``ComputeStartError``: the reason it exited (from its log), or that it
        was not ready within ``ready_timeout`` (it is stopped then)."""
        layout = self._layout
        data_dir = layout.data_dir(endpoint)
        socket_dir = layout.socket_dir(endpoint)
        layout.mkdir_for_compute(socket_dir.parent, mode=0o711)
        layout.mkdir_for_compute(socket_dir)
        log_path = layout.endpoint_dir(endpoint) / "postgres.log"
        # fork+exec takes milliseconds: off the event loop, so other sessions keep flowing.
        process, log_offset = await asyncio.to_thread(self._spawn, data_dir, socket_dir, log_path)
        self._children[endpoint] = process
        deadline = time.monotonic() + ready_timeout
        while True:
            pid_file = read_postmaster_pid(data_dir)
            if pid_file is not None and pid_file.pid == process.pid and pid_file.status == "ready":
                return layout.address(socket_dir)
            if process.poll() is not None:
                self._children.pop(endpoint, None)
                raise ComputeStartError(_failure_reason(log_path, log_offset, data_dir))
            if time.monotonic() > deadline:
                await self.stop(endpoint)
                raise ComputeStartError(f"postgres did not become ready within {ready_timeout:g} s")
            await asyncio.sleep(_READY_POLL_SECONDS)

    def _spawn(
        self, data_dir: Path, socket_dir: Path, log_path: Path
    ) -> tuple[subprocess.Popen[bytes], int]:
        with contextlib.suppress(FileNotFoundError):
            if log_path.stat().st_size >= _LOG_ROTATE_BYTES:
                log_path.replace(log_path.with_name(log_path.name + ".1"))
        with open(log_path, "ab") as log:
            log_offset = log.tell()
            process = subprocess.Popen(
                [
                    str(self._layout.bindir / "postgres"),
                    "-D",
                    str(data_dir),
                    "-k",
                    str(socket_dir),
                    "-p",
                    str(PORT),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(data_dir.parent),
                env=self._layout.child_env(),
                start_new_session=True,
                close_fds=True,
                **self._layout.as_compute_user(),
            )
        return process, log_offset

    def pid(self, endpoint: str) -> int | None:
        """The endpoint's live postmaster's pid, else ``None``."""
        child = self._children.get(endpoint)
        if child is not None:
            if child.poll() is None:
                return child.pid
            del self._children[endpoint]  # reaped now; fall through to the pid file
        pid_file = read_postmaster_pid(self._layout.data_dir(endpoint))
        if pid_file is None or not _is_postgres_process(pid_file.pid):
            return None
        return pid_file.pid

    def address(self, endpoint: str) -> ComputeAddress | None:
        """Where the endpoint's postmaster listens, if it lives and is ready."""
        pid = self.pid(endpoint)
        if pid is None:
            return None
        pid_file = read_postmaster_pid(self._layout.data_dir(endpoint))
        if pid_file is None or pid_file.status != "ready" or not pid_file.socket_dir:
            return None
        return self._layout.address(pid_file.socket_dir)

    async def stop(self, endpoint: str) -> None:
        """Stop the endpoint's postmaster, if it runs: SIGINT, then SIGQUIT after
        ``stop_timeout``, then SIGKILL."""
        pid = self.pid(endpoint)
        if pid is None:
            return
        started = time.monotonic()
        if await self._signal_and_wait(endpoint, pid, signal.SIGINT, self._stop_timeout):
            logger.debug(
                "event=compute_stopped endpoint=%s ms=%d",
                endpoint,
                (time.monotonic() - started) * 1000,
            )
            return
        logger.error(
            "event=compute_stop_hung endpoint=%s pid=%d action=SIGQUIT waited_s=%g",
            endpoint,
            pid,
            self._stop_timeout,
        )
        if await self._signal_and_wait(endpoint, pid, signal.SIGQUIT, 10):
            return
        logger.error("event=compute_stop_hung endpoint=%s pid=%d action=SIGKILL", endpoint, pid)
        await self._signal_and_wait(endpoint, pid, signal.SIGKILL, 10)

    async def _signal_and_wait(self, endpoint: str, pid: int, signum: int, bound: float) -> bool:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if self.pid(endpoint) != pid:
                return True
            await asyncio.sleep(_READY_POLL_SECONDS)
        return False


def _failure_reason(log_path: Path, offset: int, data_dir: Path) -> str:
    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read(64 * 1024).decode("utf-8", "replace")
    return start_failure_reason(text, data_dir)


def _is_postgres_process(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) process that looks like a postmaster."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if sys.platform != "linux":
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat_line.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and b"postgres" in cmdline
