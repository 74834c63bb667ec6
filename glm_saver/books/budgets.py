"""Budgets: the global one and one per key, each over a period, with alerts as they fill up.

Spend per budget and the alerts already sent live in the store (SQLite or Redis), so a restart
keeps them and several proxies enforce one budget together. An alert fires once per threshold per
period: a WARNING in the log, a Prometheus counter, and a JSON POST to the webhook if configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
from pydantic import BaseModel, Field

import glm_saver.books.metrics as metrics
from glm_saver.books.store import Store
from glm_saver.money import usd
from glm_saver.settings import BudgetSettings, GlmSaverSettings, Period

logger = logging.getLogger(__name__)

GLOBAL = "global"
WEBHOOK_TIMEOUT = 5.0
# A hold whose request never reported back (a crash, a lost event) stops counting after this long;
# longer than any deployment timeout, so a live request never loses its hold.
HOLD_SECONDS = 900.0
# Answers remembered per budget as charged. A charge the store applied after the proxy gave up on
# it is followed, about a second later, by the same charge from the queue of unbooked answers; it
# is recognised while fewer than this many other answers were charged to the budget in between.
CHARGES_KEPT = 64


class Hold(BaseModel):
    """A request in flight to a paid model: its worst-case cost, held until it settles."""

    usd: float
    expires_at: float


class BudgetUse(BaseModel):
    period_start: str = ""
    spent_usd: float = 0.0
    alerts_fired: list[float] = Field(default_factory=list)
    holds: dict[str, Hold] = Field(default_factory=dict)
    # The ids of the latest answers charged (CHARGES_KEPT): one charged again is not added twice.
    charged: list[str] = Field(default_factory=list)

    @property
    def held_usd(self) -> float:
        return sum(hold.usd for hold in self.holds.values())


@dataclass(frozen=True)
class Alert:
    budget: str
    threshold: float
    spent_usd: float
    limit_usd: float
    period: str
    period_start: str


def period_start(period: Period, now: float) -> str:
    moment = datetime.fromtimestamp(now, tz=timezone.utc)
    formats = {"daily": "%Y-%m-%d", "weekly": "%G-W%V", "monthly": "%Y-%m"}
    return moment.strftime(formats[period]) if period in formats else "all"


def current(use: BudgetUse, budget: BudgetSettings, now: float) -> BudgetUse:
    """The use in the current period: a new period starts from zero, but requests in flight keep
    their holds (they will be paid in the new period); expired holds are dropped."""
    start = period_start(budget.period, now)
    live = {ticket: hold for ticket, hold in use.holds.items() if hold.expires_at > now}
    if use.period_start != start:
        return BudgetUse(period_start=start, holds=live, charged=use.charged)
    return use if len(live) == len(use.holds) else use.model_copy(update={"holds": live})


def hold(
    use: BudgetUse, budget: BudgetSettings, ticket: str, amount: float, now: float, full_when_refused: bool = True
) -> tuple[BudgetUse, list[float] | None]:
    """Hold `amount` for a request in flight if spend, other holds and it stay within the limit.

    Returns the thresholds a refusal sets off (None when held): a budget that cannot take the next
    request is full for all practical purposes, so every alert not fired yet fires now, unless the
    caller can still ask a cheaper model (`full_when_refused` False: the budget is not full for it).
    """
    use = current(use, budget, now)
    if use.spent_usd + use.held_usd + amount > budget.limit_usd:
        if not full_when_refused:
            return use, []
        crossed = [t for t in budget.alert_thresholds if t not in use.alerts_fired]
        return use.model_copy(update={"alerts_fired": [*use.alerts_fired, *crossed]}), crossed
    return use.model_copy(update={"holds": {**use.holds, ticket: Hold(usd=amount, expires_at=now + HOLD_SECONDS)}}), None


def release(use: BudgetUse, budget: BudgetSettings, ticket: str | None, now: float) -> BudgetUse:
    use = current(use, budget, now)
    if ticket not in use.holds:
        return use
    return use.model_copy(update={"holds": {name: held for name, held in use.holds.items() if name != ticket}})


def spend(
    use: BudgetUse, budget: BudgetSettings, amount: float, now: float, ticket: str | None = None, answer: str | None = None
) -> tuple[BudgetUse, list[float]]:
    """Add what a request really cost, and let go of what it held; an answer charged already (by a
    write the store applied after the proxy gave up on it) is not added again."""
    use = release(use, budget, ticket, now)
    if answer is not None and answer in use.charged:
        return use, []
    spent = use.spent_usd + amount
    crossed = [t for t in budget.alert_thresholds if spent >= t * budget.limit_usd and t not in use.alerts_fired]
    charged = use.charged if answer is None else [*use.charged[-(CHARGES_KEPT - 1) :], answer]
    return use.model_copy(update={"spent_usd": spent, "alerts_fired": [*use.alerts_fired, *crossed], "charged": charged}), crossed


@dataclass(frozen=True)
class BudgetRefusal:
    """A budget that cannot take a request's worst-case cost."""

    name: str
    budget: BudgetSettings
    use: BudgetUse
    amount: float

    @property
    def detail(self) -> str:
        left = max(0.0, self.budget.limit_usd - self.use.spent_usd - self.use.held_usd)
        return f"budget {self.name} has {usd(left)} of {usd(self.budget.limit_usd)} left ({self.budget.period}); the request may cost {usd(self.amount)}"


def key_budget_name(key: str) -> str:
    return f"key:{key}"


class BudgetBook:
    def __init__(self, store: Store[BudgetUse], settings: GlmSaverSettings, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._key_budgets = {key.alias: key.budget for key in settings.keys if key.budget is not None}
        self._alert_tasks: set[asyncio.Task[None]] = set()

    def budgets_of(self, key: str) -> list[tuple[str, BudgetSettings]]:
        named = [(GLOBAL, self._settings.budget)] if self._settings.budget else []
        if key in self._key_budgets:
            named.append((key_budget_name(key), self._key_budgets[key]))
        return named

    async def hold(self, key: str, ticket: str, amount: float, full_when_refused: bool = True) -> BudgetRefusal | None:
        """Hold a request's worst-case cost on every budget of the key, or on none of them (one
        atomic update of all of them: one round trip on Redis). A refusal fires the refusing
        budget's alerts unless `full_when_refused` is False (see `hold`)."""
        now = self._clock()
        named = self.budgets_of(key)
        if not named:
            return None

        def change(uses: list[BudgetUse]) -> tuple[list[BudgetUse], tuple[int, BudgetUse, list[float]] | None]:
            held: list[BudgetUse] = []
            for index, ((_, budget), use) in enumerate(zip(named, uses, strict=True)):
                updated, crossed = hold(use, budget, ticket, amount, now, full_when_refused)
                if crossed is not None:  # refused: nothing held anywhere, the refusing budget's alerts kept
                    untouched = [current(earlier, named[i][1], now) for i, earlier in enumerate(uses[:index])]
                    return [*untouched, updated, *uses[index + 1 :]], (index, updated, crossed)
                held.append(updated)
            return held, None

        refused = await self._store.update_all([name for name, _ in named], change)
        if refused is None:
            return None
        index, use, crossed = refused
        name, budget = named[index]
        self._alert([Alert(name, t, use.spent_usd, budget.limit_usd, budget.period, use.period_start) for t in crossed])
        return BudgetRefusal(name, budget, use, amount)

    def _alert(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            deliver(alert, self._settings.alert_webhook, self._alert_tasks)

    async def release(self, key: str, ticket: str) -> None:
        """A request that failed: what it held is free again."""
        now = self._clock()
        named = self.budgets_of(key)
        if named:
            await self._store.update_all(
                [name for name, _ in named], lambda uses: ([release(use, b, ticket, now) for (_, b), use in zip(named, uses, strict=True)], None)
            )

    async def charge(self, key: str, amount: float, ticket: str | None = None, answer: str | None = None) -> list[Alert]:
        """Add spend to every budget the key is under (releasing the request's holds), once per
        `answer` id; delivers and returns the alerts this spend set off."""
        now = self._clock()
        named = self.budgets_of(key)
        if not named:
            return []

        def change(uses: list[BudgetUse]) -> tuple[list[BudgetUse], list[tuple[BudgetUse, list[float]]]]:
            spent = [spend(use, budget, amount, now, ticket, answer) for (_, budget), use in zip(named, uses, strict=True)]
            return [use for use, _ in spent], spent

        alerts: list[Alert] = []
        for (name, budget), (use, crossed) in zip(named, await self._store.update_all([name for name, _ in named], change), strict=True):
            alerts += [Alert(name, t, use.spent_usd, budget.limit_usd, budget.period, use.period_start) for t in crossed]
            metrics.BUDGET_USED.labels(budget=name).set(use.spent_usd / budget.limit_usd)
        self._alert(alerts)
        return alerts

    async def exhausted(self, key: str) -> tuple[str, BudgetSettings, BudgetUse] | None:
        """The first budget of the key that is spent in its current period, if any (read together:
        one round trip on Redis)."""
        now = self._clock()
        named = self.budgets_of(key)
        if not named:
            return None
        uses = await asyncio.gather(*(self._store.read(name) for name, _ in named))
        for (name, budget), stored in zip(named, uses, strict=True):
            use = current(stored, budget, now)
            if use.spent_usd >= budget.limit_usd:
                return name, budget, use
        return None

    async def describe(self) -> dict[str, Any]:
        now = self._clock()
        names = [(GLOBAL, self._settings.budget)] if self._settings.budget else []
        names += [(key_budget_name(alias), budget) for alias, budget in self._key_budgets.items()]
        described = {}
        for name, budget in names:
            use = current(await self._store.read(name), budget, now)
            described[name] = {
                "limit_usd": budget.limit_usd,
                "spent_usd": use.spent_usd,
                "held_usd": use.held_usd,
                "used": use.spent_usd / budget.limit_usd,
                "period": budget.period,
                "period_start": use.period_start,
                "alert_thresholds": budget.alert_thresholds,
                "alerts_fired": use.alerts_fired,
                "action": budget.action,
            }
        return described


async def _post(url: str, payload: dict[str, Any]) -> None:
    try:
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT) as client:
            (await client.post(url, json=payload)).raise_for_status()
    except Exception as err:  # noqa: BLE001 - a failing webhook must never surface as an unretrieved task error
        logger.error("glm_saver: budget alert webhook failed: %s", type(err).__name__)


def deliver(alert: Alert, webhook: str | None, pending: set[asyncio.Task[None]]) -> None:
    """Log the alert, count it, and POST it to the webhook without holding up the request."""
    logger.warning(
        "glm_saver: budget %s reached %.0f%% (%s of %s, %s %s)",
        alert.budget,
        alert.threshold * 100,
        usd(alert.spent_usd),
        usd(alert.limit_usd),
        alert.period,
        alert.period_start,
    )
    metrics.BUDGET_ALERTS.labels(budget=alert.budget, threshold=f"{alert.threshold:g}").inc()
    if webhook:
        task = asyncio.get_running_loop().create_task(_post(webhook, {"event": "glm_saver.budget_alert", **asdict(alert)}))
        pending.add(task)  # keep a reference until it is done, or the loop may drop it
        task.add_done_callback(pending.discard)
