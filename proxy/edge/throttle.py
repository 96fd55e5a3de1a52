"""Failed-authentication throttling per (client address, endpoint). Pure: takes ``now``.

The first ``FREE_FAILURES`` failures cost nothing: one typo under libpq's default
``sslmode=prefer`` is two failed proofs (the TLS attempt, then the plaintext retry), and a
person who mistypes twice must not read it as a lockout. Each failure after those blocks
the (address, endpoint) for a delay, ``BASE_DELAY`` doubling up to ``MAX_DELAY``; a success
clears the record, and so does ``FORGET_AFTER`` seconds without a failure.

The session consults ``check`` and records the outcome in the same step as the proof is
verified (no ``await`` in between), so parallel connections cannot all pass the check
before the first failure is recorded: the schedule bounds guesses whatever the client's
concurrency. Over a day that is at most ``FREE_FAILURES`` + a few + one a minute per
(address, endpoint).

The table is bounded: the oldest records are dropped first, so a flood of addresses
cannot exhaust memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = ["BASE_DELAY", "FORGET_AFTER", "FREE_FAILURES", "MAX_DELAY", "AuthThrottle"]

#: Failures in a row that impose no delay.
FREE_FAILURES: Final = 5
#: First delay once the free failures are used, and the cap (seconds).
BASE_DELAY: Final = 1.0
MAX_DELAY: Final = 60.0
#: Seconds without a failure after which an address starts over with its free failures.
FORGET_AFTER: Final = 900.0
#: Records kept at most; beyond, the least recently failed are forgotten.
MAX_RECORDS: Final = 100_000


@dataclass(slots=True)
class _Record:
    failures: int
    last_failure: float
    blocked_until: float


class AuthThrottle:
    """Remembers failures and tells how long a (address, endpoint) must still wait."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()
        self._max_records = max_records

    def __len__(self) -> int:
        return len(self._records)

    def wait_seconds(self, address: str, endpoint: str, now: float) -> float:
        """Seconds before ``address`` may try ``endpoint`` again (0 when it may now)."""
        record = self._records.get((address, endpoint))
        return max(0.0, record.blocked_until - now) if record else 0.0

    def failed(self, address: str, endpoint: str, now: float) -> float:
        """Record a failed proof; return the delay imposed on the next attempt (0 while
        the free failures last)."""
        key = (address, endpoint)
        record = self._records.pop(key, None)
        if record is None or now - record.last_failure > FORGET_AFTER:
            record = _Record(0, now, now)
        record.failures += 1
        record.last_failure = now
        paid = record.failures - FREE_FAILURES
        delay = 0.0 if paid <= 0 else min(BASE_DELAY * 2.0 ** min(paid - 1, 32), MAX_DELAY)
        record.blocked_until = now + delay
        self._records[key] = record
        while len(self._records) > self._max_records:
            self._records.popitem(last=False)
        return delay

    def succeeded(self, address: str, endpoint: str) -> None:
        """Forget past failures after a good login."""
        self._records.pop((address, endpoint), None)
