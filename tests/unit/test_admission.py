"""The budget of connections that have not proved a password yet."""

from __future__ import annotations

import pytest

from pgwake.edge.admission import Refusal, UnauthenticatedBudget


def test_one_address_is_capped_and_others_are_not() -> None:
    budget = UnauthenticatedBudget(per_address=2, total=10)
    budget.enter("a")
    budget.enter("a")
    with pytest.raises(Refusal) as refused:
        budget.enter("a")
    assert (refused.value.scope, refused.value.limit) == ("address", 2)
    budget.enter("b")
    assert (len(budget), budget.held_by("a"), budget.held_by("b")) == (3, 2, 1)
    budget.leave("a")
    budget.enter("a")  # room again
    assert len(budget) == 3


def test_the_total_is_capped() -> None:
    budget = UnauthenticatedBudget(per_address=5, total=3)
    for address in ("a", "b", "c"):
        budget.enter(address)
    with pytest.raises(Refusal) as refused:
        budget.enter("d")
    assert refused.value.scope == "total"
    assert budget.held_by("d") == 0
    assert len(budget) == 3


def test_a_proxied_connection_moves_to_the_real_client_address() -> None:
    budget = UnauthenticatedBudget(per_address=1, total=10)
    budget.enter("balancer")
    budget.move("balancer", "client-1")
    budget.enter("balancer")  # the balancer's own share is free again
    with pytest.raises(Refusal):
        budget.move("balancer", "client-1")  # client-1 already holds its one
    assert budget.held_by("balancer") == 1  # the refused one still counts there
    budget.leave("balancer")
    budget.leave("client-1")
    assert len(budget) == 0
    assert budget.held_by("balancer") == budget.held_by("client-1") == 0
