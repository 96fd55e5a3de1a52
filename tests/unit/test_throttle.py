"""The failed-login throttle: a few free failures, then doubling delays per (address,
endpoint), capped, forgotten after a quiet period, bounded in memory."""

from __future__ import annotations

from pgwake.edge.throttle import BASE_DELAY, FORGET_AFTER, FREE_FAILURES, MAX_DELAY, AuthThrottle


def _use_free_failures(throttle: AuthThrottle, address: str, endpoint: str, now: float) -> None:
    for _ in range(FREE_FAILURES):
        assert throttle.failed(address, endpoint, now) == 0
        assert throttle.wait_seconds(address, endpoint, now) == 0


def test_a_typo_under_sslmode_prefer_is_not_a_lockout() -> None:
    # libpq's default tries TLS, then plaintext: one typo is two failed proofs.
    throttle = AuthThrottle()
    assert FREE_FAILURES >= 2
    assert throttle.failed("10.0.0.1", "a", now=100.0) == 0
    assert throttle.failed("10.0.0.1", "a", now=100.1) == 0
    assert throttle.wait_seconds("10.0.0.1", "a", now=100.1) == 0


def test_a_paid_failure_blocks_the_same_address_and_endpoint_only() -> None:
    throttle = AuthThrottle()
    _use_free_failures(throttle, "10.0.0.1", "a", now=100.0)
    assert throttle.failed("10.0.0.1", "a", now=100.0) == BASE_DELAY
    assert throttle.wait_seconds("10.0.0.1", "a", now=100.5) == 0.5
    assert throttle.wait_seconds("10.0.0.1", "b", now=100.5) == 0
    assert throttle.wait_seconds("10.0.0.2", "a", now=100.5) == 0
    assert throttle.wait_seconds("10.0.0.1", "a", now=101.0) == 0


def test_delays_double_up_to_the_cap_and_success_clears() -> None:
    throttle = AuthThrottle()
    now = 0.0
    _use_free_failures(throttle, "h", "e", now)
    delays = []
    for _ in range(12):
        delay = throttle.failed("h", "e", now)
        delays.append(delay)
        now += delay  # the client waits exactly as long as it must
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == MAX_DELAY
    assert delays[-1] == MAX_DELAY
    throttle.succeeded("h", "e")
    assert throttle.wait_seconds("h", "e", now) == 0
    assert throttle.failed("h", "e", now) == 0  # free failures again


def test_failures_in_one_instant_are_each_counted() -> None:
    # Parallel proofs verified in the same instant: each is recorded as it is verified.
    throttle = AuthThrottle()
    delays = [throttle.failed("h", "e", now=5.0) for _ in range(FREE_FAILURES + 3)]
    assert delays == [0.0] * FREE_FAILURES + [1.0, 2.0, 4.0]
    assert throttle.wait_seconds("h", "e", now=5.0) == 4.0


def test_a_long_quiet_period_starts_over() -> None:
    throttle = AuthThrottle()
    for step in range(FREE_FAILURES + 5):
        throttle.failed("h", "e", now=float(step))
    last = float(FREE_FAILURES + 4)
    # Still remembered just before the quiet period ends...
    assert throttle.failed("h", "e", now=last + FORGET_AFTER) > 0
    # ...and forgotten after it.
    assert throttle.failed("h", "e", now=last + 3 * FORGET_AFTER) == 0


def test_the_table_is_bounded_oldest_first() -> None:
    throttle = AuthThrottle(max_records=3)
    for index in range(5):
        _use_free_failures(throttle, f"h{index}", "e", now=0.0)
        throttle.failed(f"h{index}", "e", now=0.0)
    assert len(throttle) == 3
    assert throttle.wait_seconds("h0", "e", now=0.5) == 0  # forgotten
    assert throttle.wait_seconds("h4", "e", now=0.5) > 0
