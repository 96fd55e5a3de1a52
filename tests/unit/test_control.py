"""The control plane's concurrency rules, with a real catalog and an in-memory backend."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pgwake import metrics
from pgwake.catalog import Catalog
from pgwake.compute import (
    Backends,
    ComputeAddress,
    ComputeBackend,
    ComputeStartError,
    EndpointSpec,
)
from pgwake.endpoint.callers import ADMIN, Caller, ControlError
from pgwake.endpoint.control_plane import ControlPlane
from pgwake.endpoint.lifecycles import LifecycleManager
from pgwake.settings import load_settings

ADMIN_TOKEN = "unit-test-admin-token"


class SlowBackend:
    """Creates, copies and deletes take a little while, so that requests overlap. It
    implements all of ``ComputeBackend`` (checked by mypy, see ``_BACKEND``)."""

    name = "fake"

    def __init__(self) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.running: set[str] = set()
        self.branch_error: str | None = None
        self.start_error: str | None = None

    async def prepare(self) -> None:
        pass

    async def maintain(self) -> None:
        pass

    async def create(self, spec: EndpointSpec) -> None:
        await asyncio.sleep(0.01)
        self.created.append(spec.name)

    async def delete(self, endpoint: str) -> None:
        await asyncio.sleep(0.01)
        self.deleted.append(endpoint)

    async def branch(self, source: str, target: str) -> None:
        await asyncio.sleep(0.01)
        if self.branch_error is not None:
            raise ComputeStartError(self.branch_error)
        self.created.append(target)

    async def start(self, endpoint: str, ready_timeout: float) -> ComputeAddress:
        if self.start_error is not None:
            raise ComputeStartError(self.start_error)
        self.running.add(endpoint)
        return ComputeAddress(unix_socket=f"/nonexistent/{endpoint}")

    async def stop(self, endpoint: str) -> None:
        self.running.discard(endpoint)

    async def probe(self, endpoint: str) -> ComputeAddress | None:
        return None

    async def is_alive(self, endpoint: str) -> bool:
        return endpoint in self.running

    def resolve_options(self, requested: dict[str, str | None]) -> dict[str, str]:
        return {}

    async def close(self) -> None:
        pass

    def management(self, endpoint: str) -> None:
        return None

    def disk_bytes(self, endpoint: str) -> int:
        return 0


#: mypy checks here that the double is a ``ComputeBackend`` (``tests/test_sourcecode.py``).
_BACKEND: ComputeBackend = SlowBackend()


def _control(tmp_path: Path) -> tuple[ControlPlane, SlowBackend, Catalog]:
    settings = load_settings(state_dir=str(tmp_path))
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    backend = SlowBackend()
    backends = Backends(settings)
    backends.add(backend, default=True)
    lifecycles = LifecycleManager(backends, catalog, 300, 30)
    control = ControlPlane(settings, catalog, backends, lifecycles, ADMIN_TOKEN)
    return control, backend, catalog


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_parallel_creates_cannot_overshoot_a_quota(tmp_path: Path) -> None:
    control, backend, _ = _control(tmp_path)
    minted = control.mint_token(ADMIN, label=None, max_endpoints=2, max_ttl_seconds=None)
    caller = control.authenticate(minted.secret)
    assert caller is not None

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            *(control.create(caller) for _ in range(6)), return_exceptions=True
        )

    results = _run(scenario())
    refused = [r for r in results if isinstance(r, ControlError)]
    assert len(results) - len(refused) == 2
    assert {r.code for r in refused} == {"quota_exceeded"}
    assert len(control.list_endpoints(caller)) == 2
    assert len(backend.created) == 2


def test_a_name_being_created_is_taken(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)

    async def scenario() -> tuple[object, object]:
        return await asyncio.gather(
            control.create(ADMIN, name="twin"),
            control.create(ADMIN, name="twin"),
            return_exceptions=True,
        )

    first, second = _run(scenario())
    assert first.endpoint.name == "twin"
    assert isinstance(second, ControlError)
    assert (second.code, second.status) == ("endpoint_exists", 409)


def test_concurrent_deletes_delete_once(tmp_path: Path) -> None:
    control, backend, catalog = _control(tmp_path)
    before = metrics.ENDPOINTS_DELETED.labels("api")._value.get()

    async def scenario() -> tuple[object, object]:
        await control.create(ADMIN, name="once")
        return await asyncio.gather(
            control.delete(ADMIN, "once"),
            control.delete(ADMIN, "once"),
            return_exceptions=True,
        )

    results = _run(scenario())
    assert results.count(None) == 1
    (error,) = [r for r in results if r is not None]
    assert isinstance(error, ControlError)
    assert error.code == "endpoint_not_found"
    assert backend.deleted == ["once"]
    assert not catalog.exists("once")
    assert metrics.ENDPOINTS_DELETED.labels("api")._value.get() == before + 1


def test_invalid_networks_are_refused(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)
    with pytest.raises(ControlError) as refused:
        _run(control.create(ADMIN, allowed_cidrs=("10.0.0.0/33",)))
    assert (refused.value.code, refused.value.status) == ("invalid_cidr", 422)
    created = _run(control.create(ADMIN, allowed_cidrs=("10.1.2.3/8",)))
    assert created.endpoint.allowed_cidrs == ("10.0.0.0/8",)


def test_a_failed_copy_is_a_branch_error_and_frees_its_name(tmp_path: Path) -> None:
    control, backend, _ = _control(tmp_path)

    async def scenario() -> None:
        await control.create(ADMIN, name="source")
        backend.branch_error = "pg_basebackup failed"
        with pytest.raises(ControlError) as failed:
            await control.branch(ADMIN, "source", name="copy")
        assert (failed.value.code, failed.value.status) == ("branch_failed", 503)
        backend.branch_error = None
        created = await control.branch(ADMIN, "source", name="copy")
        assert created.password is None
        assert created.endpoint.name == "copy"

    _run(scenario())


def test_the_reaper_spares_running_endpoints_and_deletes_expired_ones(tmp_path: Path) -> None:
    control, _, catalog = _control(tmp_path)

    async def scenario() -> list[str]:
        await control.create(ADMIN, name="idle", delete_after_idle_seconds=1)
        await control.create(ADMIN, name="busy", delete_after_idle_seconds=1)
        await control.create(ADMIN, name="expired", ttl_seconds=1)
        await control.create(ADMIN, name="kept", ttl_seconds=3600)
        await control.wake(ADMIN, "busy")
        reaped = await control.reap(now=catalog.get("kept").created_at + 5)  # type: ignore[union-attr]
        await control.lifecycles.suspend_all()
        return reaped

    assert sorted(_run(scenario())) == ["expired", "idle"]
    assert {r.name for r in catalog.list()} == {"busy", "kept"}


def test_scoped_tokens_are_stored_as_hashes_and_revocable(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)
    minted = control.mint_token(ADMIN, label="ci", max_endpoints=None, max_ttl_seconds=60.0)
    assert control.authenticate(minted.secret) == Caller(minted.id, None, 60.0)
    assert control.authenticate(minted.secret + "x") is None
    assert control.authenticate(ADMIN_TOKEN) == ADMIN
    data = b"".join(p.read_bytes() for p in tmp_path.glob("catalog.sqlite3*"))
    assert minted.secret.encode() not in data
    control.revoke_token(ADMIN, minted.id)
    assert control.authenticate(minted.secret) is None


def test_a_wake_that_cannot_start_is_a_503_with_the_reason(tmp_path: Path) -> None:
    control, backend, _ = _control(tmp_path)

    async def scenario() -> list[ControlError]:
        await control.create(ADMIN, name="broken")
        backend.start_error = "out of disk"
        refused = []
        for _ in range(2):  # the failed start, then the back-off's refusal: same text
            with pytest.raises(ControlError) as info:
                await control.wake(ADMIN, "broken")
            refused.append(info.value)
        await control.lifecycles.suspend_all()
        with pytest.raises(ControlError) as info:
            await control.wake(ADMIN, "broken")
        refused.append(info.value)
        return refused

    failed, in_backoff, shutting_down = _run(scenario())
    for error in (failed, in_backoff):
        assert (error.code, error.status) == ("wake_failed", 503)
        assert error.message == "the compute could not start: out of disk"
    assert (shutting_down.code, shutting_down.status) == ("wake_failed", 503)
    assert shutting_down.message == "the compute could not start: pgwake is shutting down"
