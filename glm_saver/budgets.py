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

from glm_saver import metrics
from glm_saver.settings import BudgetSettings, GlmSaverSettings, Period
from glm_saver.store import Store

logger = logging.getLogger("glm_saver")

GLOBAL = "global"
WEBHOOK_TIMEOUT = 5.0


class BudgetUse(BaseModel):
    period_start: str = ""
    spent_usd: float = 0.0
    alerts_fired: list[float] = Field(default_factory=list)


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
    """The use in the current period (a new period starts from zero)."""
    start = period_start(budget.period, now)
    return use if use.period_start == start else BudgetUse(period_start=start)


def spend(use: BudgetUse, budget: BudgetSettings, amount: float, now: float) -> tuple[BudgetUse, list[float]]:
    use = current(use, budget, now)
    spent = use.spent_usd + amount
    crossed = [t for t in budget.alert_thresholds if spent >= t * budget.limit_usd and t not in use.alerts_fired]
    return BudgetUse(period_start=use.period_start, spent_usd=spent, alerts_fired=[*use.alerts_fired, *crossed]), crossed


def key_budget_name(key: str) -> str:
    return f"key:{key}"


class BudgetBook:
    def __init__(self, store: Store[BudgetUse], settings: GlmSaverSettings, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._key_budgets = {key.alias: key.budget for key in settings.keys if key.budget is not None}

    def budgets_of(self, key: str) -> list[tuple[str, BudgetSettings]]:
        named = [(GLOBAL, self._settings.budget)] if self._settings.budget else []
        if key in self._key_budgets:
            named.append((key_budget_name(key), self._key_budgets[key]))
        return named

    async def charge(self, key: str, amount: float) -> list[Alert]:
        """Add spend to every budget the key is under; returns the alerts this spend set off."""
        now = self._clock()
        alerts: list[Alert] = []
        for name, budget in self.budgets_of(key):

            def change(use: BudgetUse, budget: BudgetSettings = budget) -> tuple[BudgetUse, tuple[BudgetUse, list[float]]]:
                updated, crossed = spend(use, budget, amount, now)
                return updated, (updated, crossed)

            use, crossed = await self._store.update(name, change)
            alerts += [Alert(name, t, use.spent_usd, budget.limit_usd, budget.period, use.period_start) for t in crossed]
            metrics.BUDGET_USED.labels(budget=name).set(use.spent_usd / budget.limit_usd)
        return alerts

    async def exhausted(self, key: str) -> tuple[str, BudgetSettings, BudgetUse] | None:
        """The first budget of the key that is spent in its current period, if any."""
        now = self._clock()
        for name, budget in self.budgets_of(key):
            use = current(await self._store.read(name), budget, now)
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
                "used": use.spent_usd / budget.limit_usd,
                "period": budget.period,
                "period_start": use.period_start,
                "alerts_fired": use.alerts_fired,
                "action": budget.action,
            }
        return described


async def _post(url: str, payload: dict[str, Any]) -> None:
    try:
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT) as client:
            (await client.post(url, json=payload)).raise_for_status()
    except httpx.HTTPError as err:
        logger.error("glm_saver: budget alert webhook failed: %s", type(err).__name__)


def deliver(alert: Alert, webhook: str | None, pending: set[asyncio.Task[None]]) -> None:
    """Log the alert, count it, and POST it to the webhook without holding up the request."""
    logger.warning(
        "glm_saver: budget %s reached %.0f%% ($%.6g of $%.6g, %s %s)",
        alert.budget, alert.threshold * 100, alert.spent_usd, alert.limit_usd, alert.period, alert.period_start,
    )
    metrics.BUDGET_ALERTS.labels(budget=alert.budget, threshold=f"{alert.threshold:g}").inc()
    if webhook:
        task = asyncio.get_running_loop().create_task(_post(webhook, {"event": "glm_saver.budget_alert", **asdict(alert)}))
        pending.add(task)  # keep a reference until it is done, or the loop may drop it
        task.add_done_callback(pending.discard)
