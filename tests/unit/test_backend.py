"""Getting a backend for an authenticated client (``backend.acquire_backend``) against a
stand-in lifecycle: a kept backend, a warm socket, a new connection, the retry policy,
and what is closed when the login fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from pgwake.compute import ComputeAddress
from pgwake.edge import backend
from pgwake.edge.backend import RETRY_ONCE_AFTER_RECHECK, RetryPolicy, acquire_backend
from pgwake.edge.cancel_keys import CancelMap, key_pair
from pgwake.edge.client_auth import EdgeAuthResult
from pgwake.edge.compute_login import SessionOpening, StaleVerifier
from pgwake.edge.server_reuse import IdleServer
from pgwake.protocol import encode
from pgwake.protocol.errors import CannotConnectNow, InvalidPassword
from pgwake.protocol.messages import AuthenticationRequest

ADDRESS = ComputeAddress(unix_socket="/run/demo/.s.PGSQL.5432")
AUTH = EdgeAuthResult(cast("Any", "verifier"), b"client-key", b"<sasl-final>")
STATUS = encode.message(b"S", b"TimeZone\0UTC\0")


class _Stream:
    """A compute or client connection: what was written, whether it was closed."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed_calls = 0

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed_calls += 1


class _Kept:
    def __init__(self, server: IdleServer | None) -> None:
        self.server = server

    def take(self, startup: bytes) -> IdleServer | None:
        server, self.server = self.server, None
        return server


class _Warm:
    def __init__(self, stream: _Stream | None = None) -> None:
        self.stream = stream

    def take(self, address: ComputeAddress) -> _Stream | None:
        stream, self.stream = self.stream, None
        return stream


class _Lifecycle:
    """What ``acquire_backend`` asks of a lifecycle, counted."""

    def __init__(
        self,
        *,
        running: bool = True,
        kept: IdleServer | None = None,
        warm: _Stream | None = None,
        wake_delay: float = 0.0,
    ) -> None:
        self.name = "demo"
        self.address: ComputeAddress | None = ADDRESS if running else None
        self.idle_servers = _Kept(kept)
        self.warm_sockets = _Warm(warm)
        self.wake_delay = wake_delay
        self.wakes = 0
        self.rechecks = 0
        self.verifier_syncs = 0

    async def wake(self) -> ComputeAddress:
        self.wakes += 1
        await asyncio.sleep(self.wake_delay)
        self.address = ADDRESS
        return ADDRESS

    async def compute_unreachable(self) -> None:
        self.rechecks += 1
        self.address = None

    async def sync_verifiers(self) -> None:
        self.verifier_syncs += 1


def _acquire(
    lifecycle: _Lifecycle,
    *,
    connect: Callable[[ComputeAddress], Awaitable[_Stream]],
    login: Callable[..., Awaitable[SessionOpening]] | None = None,
    policy: RetryPolicy = RETRY_ONCE_AFTER_RECHECK,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[backend.Attached, _Stream, CancelMap]:
    async def logged_in(compute: _Stream, client: _Stream, **_: object) -> SessionOpening:
        client.write(b"<opening>")
        return SessionOpening(1 << 32 | 2, (3, 4), STATUS)

    monkeypatch.setattr(backend, "open_compute", connect)
    monkeypatch.setattr(backend, "open_session", login or logged_in)
    client, cancels = _Stream(), CancelMap()

    async def scenario() -> backend.Attached:
        return await acquire_backend(
            cast("Any", lifecycle),
            cast("Any", client),
            startup=b"<startup>",
            auth=AUTH,
            role="alice",
            cancels=cancels,
            # The stand-in lifecycle holds its endpoint's kept backends and warm sockets.
            connections=cast("Any", lifecycle),
            wake_timeout=0.5,
            conn_id="c0ffee00",
            policy=policy,
        )

    return asyncio.run(scenario()), client, cancels


async def _never(address: ComputeAddress) -> _Stream:
    raise AssertionError("no new connection expected")


def test_a_kept_backend_is_handed_over_with_the_opening_its_login_had(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kept_stream = _Stream()
    kept = IdleServer(cast("Any", kept_stream), 4242, 99, STATUS, 0.0)
    lifecycle = _Lifecycle(kept=kept)
    with caplog.at_level(logging.INFO, logger="pgwake.edge.backend"):
        attached, client, cancels = _acquire(lifecycle, connect=_never, monkeypatch=monkeypatch)
    assert attached.stream is cast("Any", kept_stream)
    cancel_key = attached.opening.cancel_key
    assert cancel_key is not None
    assert attached.opening == SessionOpening(cancel_key, (4242, 99), STATUS)
    assert client.written == (
        b"<sasl-final>"
        + encode.authentication(AuthenticationRequest.OK)
        + STATUS
        + encode.backend_key_data(*key_pair(cancel_key))
        + encode.message(b"Z", b"I")
    )
    assert len(cancels) == 1
    assert lifecycle.wakes == 0
    assert "event=reused conn=c0ffee00 endpoint=demo backend_pid=4242" in caplog.text


def test_a_warm_socket_is_taken_before_a_new_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    warm = _Stream()
    attached, client, _ = _acquire(_Lifecycle(warm=warm), connect=_never, monkeypatch=monkeypatch)
    assert attached.stream is cast("Any", warm)
    assert client.written == b"<opening>"


def test_a_sleeping_compute_is_woken_and_that_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    new = _Stream()

    async def connect(address: ComputeAddress) -> _Stream:
        return new

    lifecycle = _Lifecycle(running=False)
    with caplog.at_level(logging.INFO, logger="pgwake.edge.backend"):
        attached, _, _ = _acquire(lifecycle, connect=connect, monkeypatch=monkeypatch)
    assert attached.stream is cast("Any", new)
    assert lifecycle.wakes == 1
    assert "event=woke conn=c0ffee00 endpoint=demo ms=" in caplog.text


def test_an_unreachable_compute_is_rechecked_and_woken_once_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[ComputeAddress] = []
    new = _Stream()

    async def connect(address: ComputeAddress) -> _Stream:
        attempts.append(address)
        if len(attempts) == 1:
            raise ConnectionRefusedError
        return new

    lifecycle = _Lifecycle()
    attached, _, _ = _acquire(lifecycle, connect=connect, monkeypatch=monkeypatch)
    assert attached.stream is cast("Any", new)
    assert (len(attempts), lifecycle.rechecks, lifecycle.wakes) == (2, 1, 2)


def test_a_second_failure_is_the_clients_57p03(monkeypatch: pytest.MonkeyPatch) -> None:
    async def connect(address: ComputeAddress) -> _Stream:
        raise TimeoutError

    lifecycle = _Lifecycle()
    with pytest.raises(CannotConnectNow, match='endpoint "demo" is not reachable'):
        _acquire(lifecycle, connect=connect, monkeypatch=monkeypatch)
    assert (lifecycle.rechecks, lifecycle.wakes) == (RETRY_ONCE_AFTER_RECHECK.rechecks, 2)


def test_a_policy_without_rechecks_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async def connect(address: ComputeAddress) -> _Stream:
        raise ConnectionRefusedError

    lifecycle = _Lifecycle()
    with pytest.raises(CannotConnectNow, match="not reachable"):
        _acquire(lifecycle, connect=connect, policy=RetryPolicy(0), monkeypatch=monkeypatch)
    assert (lifecycle.rechecks, lifecycle.wakes) == (0, 1)


def test_a_compute_that_does_not_start_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CannotConnectNow, match="did not start in time"):
        _acquire(_Lifecycle(running=False, wake_delay=5), connect=_never, monkeypatch=monkeypatch)


def test_a_stale_verifier_is_refreshed_and_the_client_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warm = _Stream()

    async def stale(compute: _Stream, client: _Stream, **_: object) -> SessionOpening:
        raise StaleVerifier

    lifecycle = _Lifecycle(warm=warm)
    with pytest.raises(InvalidPassword):
        _acquire(lifecycle, connect=_never, login=stale, monkeypatch=monkeypatch)
    assert lifecycle.verifier_syncs == 1
    assert warm.closed_calls == 1


def test_a_failed_login_closes_the_compute_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    warm = _Stream()

    async def refused(compute: _Stream, client: _Stream, **_: object) -> SessionOpening:
        raise CannotConnectNow("the compute's login failed")

    with pytest.raises(CannotConnectNow, match="login failed"):
        _acquire(_Lifecycle(warm=warm), connect=_never, login=refused, monkeypatch=monkeypatch)
    assert warm.closed_calls == 1
