"""Failed-authentication throttling per (client address, endpoint). Pure: takes ``now``.

After a failed login, the next attempt from the same address to the same endpoint is
refused until a delay has passed; each further failure doubles the delay, up to a cap. A
success clears the record. This is how CockroachDB's SQL proxy slows password guessing
without locking out the real user for long. The table is bounded: the oldest records are
dropped first, so a flood of addresses cannot exhaust memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = ["AuthThrottle"]

#: First delay after a failure, and the cap (seconds).
BASE_DELAY: Final = 1.0
MAX_DELAY: Final = 60.0
#: Records kept at most; beyond, the least recently failed are forgotten.
MAX_RECORDS: Final = 100_000


@dataclass(slots=True)
class _Record:
    failures: int
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
        """Record a failed login; return the delay imposed on the next attempt."""
        key = (address, endpoint)
        record = self._records.pop(key, None) or _Record(0, now)
        if now - record.blocked_until > MAX_DELAY:
            record.failures = 0  # quiet for long enough: start over
        record.failures += 1
        delay = min(BASE_DELAY * 2.0 ** min(record.failures - 1, 32), MAX_DELAY)
        record.blocked_until = now + delay
        self._records[key] = record
        while len(self._records) > self._max_records:
            self._records.popitem(last=False)
        return delay

    def succeeded(self, address: str, endpoint: str) -> None:
        """Forget past failures after a good login."""
        self._records.pop((address, endpoint), None)
