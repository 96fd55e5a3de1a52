"""The budget of connections that have not proved a password yet. Pure: no I/O.

A stranger who knows an endpoint's name can open sockets and stall in the TLS handshake,
the startup or the SCRAM exchange. Such a connection is not a session: it holds no slot
of the endpoint and does not keep a compute awake. What it does hold, a socket and a
few kilobytes until ``startup_timeout``, is bounded here: at most ``per_address`` such
connections from one client address, and ``total`` from everyone, so one address cannot
crowd out the others. A connection enters at accept under its peer's address, moves to
the real client's address once a PROXY header names it, and leaves once its proof is
verified or it closes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["Refusal", "UnauthenticatedBudget"]


class Refusal(Exception):
    """Over the budget: ``scope`` is ``"address"`` or ``"total"``."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"over the {scope} limit of {limit}")
        self.scope: Final = scope
        self.limit: Final = limit


class UnauthenticatedBudget:
    """Counts connections awaiting authentication, per client address and in all."""

    def __init__(self, *, per_address: int, total: int) -> None:
        self.per_address = per_address
        self.total = total
        self._by_address: dict[str, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def held_by(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def enter(self, address: str) -> None:
        """Count a new connection from ``address``; raise ``Refusal`` over a limit."""
        if self._count >= self.total:
            raise Refusal("total", self.total)
        self._take(address)
        self._count += 1

    def move(self, old: str, new: str) -> None:
        """The connection's real client is ``new`` (a PROXY header said so); raise
        ``Refusal`` if ``new`` is over its limit (the connection still counts under
        ``old`` then, and leaves from there)."""
        if old == new:
            return
        self._take(new)
        self._give_back(old)

    def leave(self, address: str) -> None:
        """The connection authenticated or closed."""
        self._give_back(address)
        self._count -= 1

    def _take(self, address: str) -> None:
        held = self._by_address.get(address, 0)
        if held >= self.per_address:
            raise Refusal("address", self.per_address)
        self._by_address[address] = held + 1

    def _give_back(self, address: str) -> None:
        held = self._by_address[address] - 1
        if held:
            self._by_address[address] = held
        else:
            del self._by_address[address]
