"""The money gate: budget holds, headroom reservations and the clamp, all or nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from glm_saver.books.budgets import CHARGES_KEPT, HOLD_SECONDS, BudgetBook, BudgetUse
from glm_saver.books.headroom import CloudHeadroom, Quota
from glm_saver.books.ledger import answer_id
from glm_saver.books.store import MemoryStore, StoreUnavailable
from glm_saver.deployments import Prices
from glm_saver.routing.gate import CloudGate, Refusal, Ticket
from glm_saver.settings import GlmSaverSettings, RateLimitSettings

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")

# $1 per 1,000 prompt tokens and $2 per 1,000 completion tokens: easy sums by hand.
PRICES = Prices(input=0.001, output=0.002)
JAN_31 = 1_769_903_940.0  # 2026-01-31T23:59:00Z
FEB_01 = JAN_31 + 120  # two minutes later: in flight across midnight


class YieldingStore(MemoryStore[M]):
    """A memory store whose updates give the loop a turn first, as a network store does, so
    concurrent admissions really interleave."""

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        await asyncio.sleep(0)
        return await super().update(key, change)


class DownStore(MemoryStore[M]):
    async def read(self, key: str) -> M:
        raise StoreUnavailable("the redis state store is unreachable (ConnectionError)")

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        raise StoreUnavailable("the redis state store is unreachable (ConnectionError)")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _settings(limit: float = 1.0, action: str = "reject", period: str = "monthly", cap: int = 16384) -> GlmSaverSettings:
    return GlmSaverSettings.model_validate(
        {
            "budget": {"limit_usd": limit, "period": period, "action": action},
            "rate_limits": {"max_tokens_cap": cap},
        }
    )


def _gate(settings: GlmSaverSettings, clock: Clock, headroom: CloudHeadroom | None = None, store: Any = None) -> tuple[CloudGate, BudgetBook]:
    budgets = BudgetBook(store or YieldingStore(BudgetUse), settings, clock=clock)
    return CloudGate(headroom, budgets, lambda group: PRICES, settings.rate_limits), budgets


def test_a_concurrent_burst_never_holds_more_than_the_budget() -> None:
    clock = Clock(JAN_31)
    gate, budgets = _gate(_settings(limit=1.0), clock)

    async def burst() -> list[Ticket | Refusal]:
        # Each request may cost 100 prompt + 100 completion tokens: $0.30 worst case.
        return await asyncio.gather(*(gate.admit("alice", "cerebras", 100, 100) for _ in range(20)))

    results = asyncio.run(burst())
    granted = [r for r in results if isinstance(r, Ticket)]
    assert len(granted) == 3  # 3 x $0.30 = $0.90 fits in $1, a fourth would not
    assert all(isinstance(r, Refusal) and r.reason == "budget" for r in results if not isinstance(r, Ticket))
    described = asyncio.run(budgets.describe())["global"]
    assert abs(described["held_usd"] - 0.9) < 1e-9


def test_a_refusal_fires_every_alert_unless_a_cheaper_model_is_left_to_ask() -> None:
    clock = Clock(JAN_31)
    gate, budgets = _gate(_settings(limit=0.2), clock)  # the worst case of 100 + 100 tokens is $0.30
    refused = asyncio.run(gate.admit("alice", "cerebras", 100, 100, cheaper_left=True))
    assert isinstance(refused, Refusal) and refused.reason == "budget"
    assert asyncio.run(budgets.describe())["global"]["alerts_fired"] == []
    refused = asyncio.run(gate.admit("alice", "cerebras", 100, 100))
    assert isinstance(refused, Refusal) and refused.reason == "budget"
    assert asyncio.run(budgets.describe())["global"]["alerts_fired"] == [0.5, 0.8, 1.0]


def test_settling_a_ticket_replaces_its_hold_by_the_real_cost() -> None:
    clock = Clock(JAN_31)
    gate, budgets = _gate(_settings(limit=1.0), clock)
    ticket = asyncio.run(gate.admit("alice", "cerebras", 100, 100))
    assert isinstance(ticket, Ticket) and abs(ticket.cost_usd - 0.3) < 1e-9
    asyncio.run(budgets.charge("alice", 0.05, ticket.id))
    described = asyncio.run(budgets.describe())["global"]
    assert (described["held_usd"], round(described["spent_usd"], 9)) == (0, 0.05)


def test_an_answer_charged_again_is_charged_once_while_it_is_among_the_latest_charged() -> None:
    clock = Clock(JAN_31)
    _, budgets = _gate(_settings(limit=1.0), clock)
    first = answer_id()
    for answer in (first, first, *(answer_id() for _ in range(CHARGES_KEPT - 1)), first):
        asyncio.run(budgets.charge("alice", 0.001, None, answer))
    assert round(asyncio.run(budgets.describe())["global"]["spent_usd"], 9) == round(0.001 * CHARGES_KEPT, 9)
    asyncio.run(budgets.charge("alice", 0.001, None, answer_id()))  # the first answer leaves the latest CHARGES_KEPT
    asyncio.run(budgets.charge("alice", 0.001, None, first))
    assert round(asyncio.run(budgets.describe())["global"]["spent_usd"], 9) == round(0.001 * (CHARGES_KEPT + 2), 9)


def test_a_failed_call_gives_its_hold_back() -> None:
    clock = Clock(JAN_31)
    gate, budgets = _gate(_settings(limit=0.5), clock)
    first = asyncio.run(gate.admit("alice", "cerebras", 100, 100))
    assert isinstance(first, Ticket)
    assert isinstance(asyncio.run(gate.admit("alice", "cerebras", 100, 100)), Refusal)  # $0.60 > $0.50
    asyncio.run(budgets.release("alice", first.id))
    assert isinstance(asyncio.run(gate.admit("alice", "cerebras", 100, 100)), Ticket)


def test_a_hold_that_never_settles_expires() -> None:
    clock = Clock(JAN_31)
    gate, _ = _gate(_settings(limit=0.5), clock)
    assert isinstance(asyncio.run(gate.admit("alice", "cerebras", 100, 100)), Ticket)
    assert isinstance(asyncio.run(gate.admit("alice", "cerebras", 100, 100)), Refusal)
    clock.now += HOLD_SECONDS + 1
    assert isinstance(asyncio.run(gate.admit("alice", "cerebras", 100, 100)), Ticket)


def test_a_new_period_starts_from_zero_but_keeps_the_holds_in_flight() -> None:
    clock = Clock(JAN_31)
    gate, budgets = _gate(_settings(limit=1.0, period="monthly"), clock)
    asyncio.run(budgets.charge("alice", 0.8))
    in_flight = asyncio.run(gate.admit("alice", "cerebras", 50, 50))  # $0.15 fits beside $0.80
    assert isinstance(in_flight, Ticket)
    assert isinstance(asyncio.run(gate.admit("alice", "cerebras", 50, 50)), Refusal)  # 0.80 + 0.15 + 0.15 > 1
    clock.now = FEB_01
    described = asyncio.run(budgets.describe())["global"]
    assert (described["period_start"], described["spent_usd"], round(described["held_usd"], 9)) == ("2026-02", 0.0, 0.15)
    asyncio.run(budgets.charge("alice", 0.1, in_flight.id))  # the request ends in February: paid there
    described = asyncio.run(budgets.describe())["global"]
    assert (round(described["spent_usd"], 9), described["held_usd"]) == (0.1, 0)


def test_the_clamp_bounds_the_ticket_and_its_worst_case_cost() -> None:
    gate, _ = _gate(_settings(limit=100.0, cap=1000), Clock(JAN_31))
    ticket = asyncio.run(gate.admit("alice", "cerebras", 100, 131072))
    assert isinstance(ticket, Ticket)
    assert ticket.max_tokens == 1000
    assert abs(ticket.cost_usd - (100 * 0.001 + 1000 * 0.002)) < 1e-9


def test_a_budget_refusal_gives_the_headroom_reservation_back() -> None:
    clock = Clock(JAN_31)
    headroom = CloudHeadroom(YieldingStore(Quota), RateLimitSettings(), key="cerebras", clock=clock)
    gate, _ = _gate(_settings(limit=0.1), clock, headroom)
    refused = asyncio.run(gate.admit("alice", "cerebras", 100, 100))
    assert isinstance(refused, Refusal) and refused.reason == "budget"
    described = asyncio.run(headroom.describe())
    assert (described["reserved_tokens_in_flight"], described["requests_in_flight"]) == (0, 0)


def test_an_unreachable_store_refuses_rather_than_waving_the_call_through() -> None:
    clock = Clock(JAN_31)
    headroom = CloudHeadroom(DownStore(Quota), RateLimitSettings(), key="cerebras", clock=clock)
    gate, _ = _gate(_settings(limit=10.0), clock, headroom, store=DownStore(BudgetUse))
    refused = asyncio.run(gate.admit("alice", "cerebras", 100, 100))
    assert isinstance(refused, Refusal)
    assert refused.reason == "store-down" and "redis" in refused.detail


def test_a_key_without_budgets_is_held_to_the_headroom_only() -> None:
    clock = Clock(JAN_31)
    settings = GlmSaverSettings.model_validate({"rate_limits": {"max_tokens_cap": 100}})
    headroom = CloudHeadroom(YieldingStore(Quota), RateLimitSettings(max_tokens_cap=100), key="cerebras", clock=clock)
    gate, _ = _gate(settings, clock, headroom)
    ticket = asyncio.run(gate.admit("bob", "cerebras", 10, None))
    assert isinstance(ticket, Ticket) and ticket.reservation is not None
    assert ticket.reservation.tokens == 110
