"""Authentication: SCRAM-SHA-256 (pure functions and state machines)."""

from __future__ import annotations
