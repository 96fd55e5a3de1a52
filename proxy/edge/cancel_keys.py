"""Cancel keys: clients see their backend's real process id and a secret key of
pgwake's own, mapped to the backend's.

The real pid keeps what clients do with it true: ``pg_terminate_backend(pid)``, matching a
NOTIFY's sender to the listener's own ``backend_pid``, ``pg_stat_activity`` rows. The
compute's own secret never leaves pgwake, so a CancelRequest must come through pgwake,
and one with a key pgwake does not know is dropped without a word, exactly as Postgres
treats an unknown key. A parked session's key stands for no backend until it re-attaches:
nothing runs, so its cancel has nothing to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake import metrics
from pgwake.protocol import encode

if TYPE_CHECKING:
    from pgwake.compute import ComputeAddress

__all__ = ["BackendTarget", "CancelKey", "CancelMap", "key_pair"]

logger = logging.getLogger(__name__)
_FORWARD_TIMEOUT: Final = 5.0

#: A cancel key pair pgwake gave a client, packed in one int (``process_id << 32 |
#: secret_key``): every session holds one while it lives, parked ones included, and one
#: int is a third of a tuple of two.
CancelKey = int


def _pack(process_id: int, secret_key: int) -> CancelKey:
    return process_id << 32 | secret_key


def key_pair(key: CancelKey) -> tuple[int, int]:
    """The (process_id, secret_key) a BackendKeyData message carries."""
    return key >> 32, key & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class BackendTarget:
    """Where a cancel for one session must go."""

    endpoint: str
    address: ComputeAddress
    process_id: int
    secret_key: int

    def __repr__(self) -> str:
        return f"BackendTarget({self.endpoint})"


class CancelMap:
    """The cancel keys pgwake gave clients -> the backend each stands for (``None``: the
    session is parked)."""

    def __init__(self) -> None:
        self._targets: dict[CancelKey, BackendTarget | None] = {}

    def __len__(self) -> int:
        return len(self._targets)

    def register(self, target: BackendTarget) -> CancelKey:
        """Return the key ``target``'s client gets: the backend's pid and a fresh random
        secret (two computes may have backends with the same pid)."""
        while True:
            secret = secrets.randbits(32)
            key = _pack(target.process_id, secret)
            if key not in self._targets and secret != target.secret_key:
                self._targets[key] = target
                return key

    def retarget(self, key: CancelKey, target: BackendTarget | None) -> None:
        """Point ``key`` at another backend (a parked session re-attached), or at none
        (it parked): the client keeps the key it was given, its cancels reach the backend
        it uses."""
        if key in self._targets:
            self._targets[key] = target

    def unregister(self, key: CancelKey) -> None:
        self._targets.pop(key, None)

    async def forward(self, process_id: int, secret_key: int) -> bool:
        """Send the matching CancelRequest to the compute; False if the key is unknown."""
        key = _pack(process_id, secret_key)
        target = self._targets.get(key)
        if target is None:
            if key in self._targets:
                metrics.CANCEL_REQUESTS.labels("no_backend").inc()
                return True
            metrics.CANCEL_REQUESTS.labels("unknown_key").inc()
            logger.warning("event=cancel_unknown_key")
            return False
        metrics.CANCEL_REQUESTS.labels("forwarded").inc()
        address = target.address
        try:
            async with asyncio.timeout(_FORWARD_TIMEOUT):
                if address.unix_socket:
                    reader, writer = await asyncio.open_unix_connection(address.unix_socket)
                else:
                    reader, writer = await asyncio.open_connection(address.host, address.port)
                try:
                    writer.write(encode.cancel_request(target.process_id, target.secret_key))
                    await writer.drain()
                    await reader.read()  # Postgres closes once it has read the request
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            logger.warning(
                "event=cancel_forward_failed endpoint=%s error=%s",
                target.endpoint,
                type(exc).__name__,
            )
            return False
        logger.info("event=cancel_forwarded endpoint=%s", target.endpoint)
        return True
