"""A backend for an authenticated client, logged in, and the client told (ARCHITECTURE.md).

One unit, in this order:

1. a kept backend (``server_reuse.py``) that logged in with the same startup message, if
   the compute runs and has one: the client gets the opening its login would have had;
2. else the compute, woken if it sleeps (``Lifecycle.wake``, up to ``wake_timeout``), and
   a connection to it: a warm one (``warm_sockets.py``) or a new one. When the compute
   does not answer, the lifecycle rechecks it and the wake runs again, as many times as
   the ``RetryPolicy`` says (``RETRY_ONCE_AFTER_RECHECK``);
3. the login on it (``compute_login.py``), within Postgres's ``authentication_timeout``.

Whatever this opened is closed again when it fails, or when the client's task is
cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake.edge.cancel_keys import BackendTarget, key_pair
from pgwake.edge.client_auth import password_failed
from pgwake.edge.compute_login import SessionOpening, StaleVerifier, open_compute, open_session
from pgwake.endpoint.lifecycle import ShuttingDown, WakeFailed
from pgwake.protocol import encode
from pgwake.protocol.errors import CannotConnectNow
from pgwake.protocol.messages import READY_FOR_QUERY, TRANSACTION_IDLE, AuthenticationRequest

if TYPE_CHECKING:
    from pgwake.compute import ComputeAddress
    from pgwake.edge.cancel_keys import CancelMap
    from pgwake.edge.client_auth import EdgeAuthResult
    from pgwake.edge.kept_connections import EndpointConnections
    from pgwake.edge.packet_stream import PacketStream
    from pgwake.edge.server_reuse import IdleServer
    from pgwake.endpoint.lifecycle import Lifecycle

__all__ = [
    "RETRY_ONCE_AFTER_RECHECK",
    "Attached",
    "RetryPolicy",
    "acquire_backend",
    "connect_compute",
]

logger = logging.getLogger(__name__)

# Postgres's own authentication_timeout default: the compute must finish pgwake's login
# within it (the compute enforces the same on its side).
_AUTHENTICATION_TIMEOUT: Final = 60.0
_AUTHENTICATION_OK: Final = encode.authentication(AuthenticationRequest.OK)
_READY_IDLE: Final = encode.message(READY_FOR_QUERY, TRANSACTION_IDLE)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What to do when the compute the lifecycle woke does not take a connection."""

    #: How many times the lifecycle rechecks the compute (``compute_unreachable``: a
    #: compute that died is noticed and marked stopped) before one more wake and connect.
    rechecks: int


#: Retry once after rechecking the compute: a compute that died since it was last seen
#: running is started again by the second wake; a second failure is the client's 57P03.
RETRY_ONCE_AFTER_RECHECK: Final = RetryPolicy(rechecks=1)


@dataclass(frozen=True, slots=True)
class Attached:
    """A logged-in backend whose opening the client has been sent."""

    stream: PacketStream
    opening: SessionOpening


async def acquire_backend(
    lifecycle: Lifecycle,
    client: PacketStream,
    *,
    startup: bytes,
    auth: EdgeAuthResult,
    role: str,
    cancels: CancelMap,
    connections: EndpointConnections,
    wake_timeout: float,
    conn_id: str,
    policy: RetryPolicy = RETRY_ONCE_AFTER_RECHECK,
) -> Attached:
    """Find the client a backend for ``startup`` and send it the session's opening
    (after ``auth.sasl_final``), with pgwake's cancel keys.

    Raises ``CannotConnectNow`` when the compute does not start in time, is unreachable
    after ``policy``'s retries, or fails the login; ``ComputeRefused`` after forwarding the
    compute's ErrorResponse; ``InvalidPassword`` when the password changed on the compute
    since the catalog's copy (the copy is refreshed first)."""
    address = lifecycle.address
    if address is not None and (kept := connections.idle_servers.take(startup)) is not None:
        return _reuse(
            lifecycle,
            client,
            address=address,
            auth=auth,
            kept=kept,
            cancels=cancels,
            conn_id=conn_id,
        )
    stream, address = await connect_compute(lifecycle, connections, wake_timeout, conn_id, policy)
    try:
        async with asyncio.timeout(_AUTHENTICATION_TIMEOUT):
            opening = await open_session(
                stream,
                client,
                startup=startup,
                preface=auth.sasl_final,
                client_key=auth.client_key,
                verifier=auth.verifier,
                endpoint=lifecycle.name,
                address=address,
                cancels=cancels,
            )
    except TimeoutError:
        stream.close()
        raise CannotConnectNow(
            f'endpoint "{lifecycle.name}" did not complete the login',
            detail=f"no ReadyForQuery within {_AUTHENTICATION_TIMEOUT:g} s",
        ) from None
    except StaleVerifier:
        stream.close()
        # The password changed since the catalog's copy: refresh it, refuse this one.
        await lifecycle.sync_verifiers()
        raise password_failed(role) from None
    except BaseException:
        stream.close()
        raise
    return Attached(stream, opening)


def _reuse(
    lifecycle: Lifecycle,
    client: PacketStream,
    *,
    address: ComputeAddress,
    auth: EdgeAuthResult,
    kept: IdleServer,
    cancels: CancelMap,
    conn_id: str,
) -> Attached:
    """Hand the client a kept backend: the opening its login would have had, with
    pgwake's own cancel keys, in one write."""
    cancel_key = cancels.register(
        BackendTarget(lifecycle.name, address, kept.process_id, kept.secret_key)
    )
    client.write(
        auth.sasl_final
        + _AUTHENTICATION_OK
        + kept.parameter_status
        + encode.backend_key_data(*key_pair(cancel_key))
        + _READY_IDLE
    )
    logger.info(
        "event=reused conn=%s endpoint=%s backend_pid=%d",
        conn_id,
        lifecycle.name,
        kept.process_id,
    )
    opening = SessionOpening(cancel_key, (kept.process_id, kept.secret_key), kept.parameter_status)
    return Attached(kept.stream, opening)


async def connect_compute(
    lifecycle: Lifecycle,
    connections: EndpointConnections,
    wake_timeout: float,
    conn_id: str,
    policy: RetryPolicy = RETRY_ONCE_AFTER_RECHECK,
) -> tuple[PacketStream, ComputeAddress]:
    """A connection to the woken compute: a warm one (its backend forked already), else
    a new one; rechecked and woken again as ``policy`` says when it does not answer."""
    rechecks = policy.rechecks
    while True:
        address = await _wake(lifecycle, wake_timeout, conn_id)
        warm = connections.warm_sockets.take(address)
        if warm is not None:
            return warm, address
        try:
            return await open_compute(address), address
        except (OSError, TimeoutError) as exc:
            if rechecks <= 0:
                raise CannotConnectNow(
                    f'endpoint "{lifecycle.name}" is not reachable',
                    detail=f"connecting to the compute failed: {type(exc).__name__}",
                ) from None
            rechecks -= 1
            # The compute died after we saw it running: recheck it, then wake again.
            await lifecycle.compute_unreachable()


async def _wake(lifecycle: Lifecycle, wake_timeout: float, conn_id: str) -> ComputeAddress:
    was_running = lifecycle.address is not None
    started = time.monotonic()
    try:
        async with asyncio.timeout(wake_timeout):
            address = await lifecycle.wake()
    except TimeoutError:
        raise CannotConnectNow(
            f'endpoint "{lifecycle.name}" did not start in time',
            detail=f"the compute was not ready within {wake_timeout:g} s",
            hint="Try again shortly.",
        ) from None
    except WakeFailed as failed:
        raise CannotConnectNow(
            f'endpoint "{lifecycle.name}" could not start',
            detail=failed.reason,
            hint=f"pgwake will try to start it again in {failed.retry_in:.0f} s.",
        ) from None
    except ShuttingDown:
        raise CannotConnectNow("pgwake is shutting down", hint="Connect again shortly.") from None
    if not was_running:
        logger.info(
            "event=woke conn=%s endpoint=%s ms=%d",
            conn_id,
            lifecycle.name,
            (time.monotonic() - started) * 1000,
        )
    return address
