"""The cancel keys pgwake hands clients: the backend's pid, a secret of pgwake's own."""

from __future__ import annotations

import asyncio

from pgwake.compute import ComputeAddress
from pgwake.edge.cancel_keys import BackendTarget, CancelMap, key_pair

TARGET = BackendTarget("app", ComputeAddress(unix_socket="/nonexistent/.s.PGSQL.5432"), 4242, 7)


def test_a_client_gets_the_backends_pid_and_a_secret_of_pgwakes_own() -> None:
    cancels = CancelMap()
    keys = {cancels.register(TARGET) for _ in range(50)}
    assert len(keys) == len(cancels) == 50
    for key in keys:
        process_id, secret = key_pair(key)
        assert process_id == 4242
        assert 0 <= secret < 1 << 32
        assert secret != TARGET.secret_key


def test_the_largest_key_pair_survives_packing() -> None:
    cancels = CancelMap()
    target = BackendTarget("app", TARGET.address, 0xFFFFFFFF, 7)
    process_id, _ = key_pair(cancels.register(target))
    assert process_id == 0xFFFFFFFF


def test_a_parked_sessions_key_is_known_and_reaches_nothing() -> None:
    cancels = CancelMap()
    key = cancels.register(TARGET)
    cancels.retarget(key, None)
    assert asyncio.run(cancels.forward(*key_pair(key))) is True  # no connection tried
    cancels.unregister(key)
    assert asyncio.run(cancels.forward(*key_pair(key))) is False
    assert asyncio.run(cancels.forward(4242, 7)) is False  # the backend's own secret
