"""The failed-login throttle: doubling delays per (address, endpoint), capped, bounded."""

from __future__ import annotations

from proxy.throttle import BASE_DELAY, MAX_DELAY, AuthThrottle


def test_a_failure_blocks_the_same_address_and_endpoint_only() -> None:
    throttle = AuthThrottle()
    assert throttle.wait_seconds("10.0.0.1", "a", now=100.0) == 0
    assert throttle.failed("10.0.0.1", "a", now=100.0) == BASE_DELAY
    assert throttle.wait_seconds("10.0.0.1", "a", now=100.5) == 0.5
    assert throttle.wait_seconds("10.0.0.1", "b", now=100.5) == 0
    assert throttle.wait_seconds("10.0.0.2", "a", now=100.5) == 0
    assert throttle.wait_seconds("10.0.0.1", "a", now=101.0) == 0


def test_delays_double_up_to_the_cap_and_success_clears() -> None:
    throttle = AuthThrottle()
    now = 0.0
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
    assert throttle.failed("h", "e", now) == BASE_DELAY


def test_a_long_quiet_period_starts_over() -> None:
    throttle = AuthThrottle()
    for step in range(5):
        throttle.failed("h", "e", now=float(step))
    assert throttle.failed("h", "e", now=10_000.0) == BASE_DELAY


def test_the_table_is_bounded_oldest_first() -> None:
    throttle = AuthThrottle(max_records=3)
    for index in range(5):
        throttle.failed(f"h{index}", "e", now=0.0)
    assert len(throttle) == 3
    assert throttle.wait_seconds("h0", "e", now=0.5) == 0  # forgotten
    assert throttle.wait_seconds("h4", "e", now=0.5) > 0
