"""Quotas and names for endpoints being made (created or branched).

Rule: a name is reserved, and counted against its token's quota, from the quota check
until the catalog holds the endpoint (or the attempt fails), so parallel requests can
neither take the same name nor overshoot a quota.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pgwake.endpoint.callers import ControlError
from pgwake.endpoint.names import generate_endpoint_name, is_valid_endpoint_name

if TYPE_CHECKING:
    from pgwake.catalog import Catalog
    from pgwake.endpoint.callers import Caller

__all__ = ["Reservations"]

_NAME_ATTEMPTS: Final = 8


class Reservations:
    """The names being made, each with the token that asked (``None``: admin)."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        #: Names being created or branched, with the token that asked (``None``: admin).
        #: They count against that token's quota before the catalog holds them.
        self._creating: dict[str, str | None] = {}

    def check_quota(self, caller: Caller, ttl_seconds: float | None) -> float | None:
        """The TTL to give a new endpoint of ``caller``; raise ``ControlError`` over quota."""
        if caller.max_endpoints is not None and caller.token_id is not None:
            # Creates still in flight count too: parallel requests cannot overshoot.
            in_flight = sum(owner == caller.token_id for owner in self._creating.values())
            if self._catalog.count_owned(caller.token_id) + in_flight >= caller.max_endpoints:
                raise ControlError(
                    "quota_exceeded",
                    f"this token may hold at most {caller.max_endpoints} endpoints",
                    403,
                )
        if caller.max_ttl_seconds is not None:
            if ttl_seconds is None:
                return caller.max_ttl_seconds  # a token with a TTL cap makes only ephemerals
            if ttl_seconds > caller.max_ttl_seconds:
                raise ControlError(
                    "ttl_too_long", f"ttl_seconds may be at most {caller.max_ttl_seconds:g}", 403
                )
        return ttl_seconds

    def reserve(self, caller: Caller, requested: str | None) -> str:
        """A free name (``requested``, or a generated one), held until ``release``.

        Call it with no ``await`` since the quota check, so both see the same state."""
        if requested is not None:
            if not is_valid_endpoint_name(requested):
                raise ControlError(
                    "invalid_name",
                    "invalid endpoint name: use lowercase letters, digits and hyphens "
                    "(a DNS label of at most 63 characters)",
                    422,
                )
            if self._catalog.exists(requested) or requested in self._creating:
                raise ControlError("endpoint_exists", f'endpoint "{requested}" already exists', 409)
            name = requested
        else:
            for _ in range(_NAME_ATTEMPTS):
                name = generate_endpoint_name()
                if not self._catalog.exists(name) and name not in self._creating:
                    break
            else:
                raise ControlError("name_unavailable", "could not generate a free name", 503)
        self._creating[name] = caller.token_id
        return name

    def release(self, name: str) -> None:
        self._creating.pop(name, None)
