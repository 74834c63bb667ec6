"""The books: what every answer cost, and what always-Cerebras would have cost instead.

One `Charge` per LiteLLM success event (client answers and the cascade's internal calls), priced
with the prices configured in `model_list` (`model_info.input_cost_per_token` /
`output_cost_per_token`). Tokens come from the answer's usage; a stream that reports 0 is counted
from the text instead. Nothing of a request's content is kept: only names, counts and money.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

import glm_saver.books.metrics as metrics
from glm_saver.books.budgets import BudgetBook, BudgetUse
from glm_saver.books.store import StoreUnavailable, build_store, raise_first, side_by_side
from glm_saver.deployments import Prices, group_prices
from glm_saver.settings import GlmSaverSettings

if TYPE_CHECKING:
    from glm_saver.events import CallRecord
    from glm_saver.routing.gate import Ticket

logger = logging.getLogger(__name__)

FINAL = "final"
# Who a call was for: the client's answer, or one of the cascade's own calls.
ROLES = ("draft", "verify", FINAL)
# Answers kept in memory while the store cannot be written, booked when it answers again (tried
# again this often while any wait, so they are booked even when no new request comes).
MAX_UNBOOKED = 100_000
UNBOOKED_RETRY_SECONDS = 1.0
# Rows per table of the books. Models, routes, strategies and roles are few; keys are not (every new
# caller name is a row): past this many rows a table books new names under OTHER, so the books,
# /stats and the memory they take stay bounded however many callers come and go.
MAX_ROWS = 1000
OTHER = "other"
TABLES = ("by_model", "by_key", "by_route", "by_strategy", "by_role")


@dataclass(frozen=True)
class Charge:
    """One answer in the books."""

    group: str  # the model group that answered
    route: str  # what the client was told (local, cerebras, draft-accepted, ...)
    strategy: str
    key: str  # who pays: a key alias or a short hash, never the key
    role: str  # final (the client's answer), draft or verify (the cascade's internal calls)
    prompt_tokens: int
    completion_tokens: int  # reasoning included, so it is billed once, as output
    cost: float
    cloud_cost: float  # what always-Cerebras would have cost for this (0 for internal calls)
    counts_tokens: bool = True  # False for a cascade answer replayed from drafts already counted
    reasoning_tokens: int = 0  # of completion_tokens: shown in the books, never priced a second time

    def rows(self) -> list[tuple[str, str]]:
        """The (table, row name) pairs this answer is booked under."""
        return list(zip(TABLES, (self.group, self.key, self.route, self.strategy, self.role), strict=True))


def answer_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Unbooked:
    """An answer on its way into the books and the budgets, and which of the two it reached.

    `id` makes booking it again a no-op: a store that answers too late counts as down, yet may
    still apply what it was sent, and then the answer is booked again from the queue."""

    charge: Charge
    ticket: Ticket | None
    booked: bool = False
    settled: bool = False
    id: str = field(default_factory=answer_id)


class Tally(BaseModel):
    requests: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # part of completion_tokens
    cost_usd: float = 0.0
    cloud_cost_usd: float = 0.0

    def add(self, charge: Charge) -> None:
        # On the fields' values directly: every answer adds to six tallies, and pydantic's
        # __setattr__ (no validation is configured for it to run) made that 30 us per answer.
        fields = vars(self)
        fields["calls"] += 1
        fields["requests"] += charge.role == FINAL
        if charge.counts_tokens:
            fields["prompt_tokens"] += charge.prompt_tokens
            fields["completion_tokens"] += charge.completion_tokens
            fields["reasoning_tokens"] += charge.reasoning_tokens
        fields["cost_usd"] += charge.cost
        fields["cloud_cost_usd"] += charge.cloud_cost

    def view(self) -> dict[str, Any]:
        return {
            **self.model_dump(),
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "savings_usd": self.cloud_cost_usd - self.cost_usd,
        }


class Books(BaseModel):
    totals: Tally = Field(default_factory=Tally)
    by_model: dict[str, Tally] = Field(default_factory=dict)
    by_key: dict[str, Tally] = Field(default_factory=dict)
    by_route: dict[str, Tally] = Field(default_factory=dict)
    by_strategy: dict[str, Tally] = Field(default_factory=dict)
    by_role: dict[str, Tally] = Field(default_factory=dict)

    def add(self, charge: Charge) -> Books:
        self.totals.add(charge)
        for name, row in charge.rows():
            table: dict[str, Tally] = getattr(self, name)
            booked = row if row in table or len(table) < MAX_ROWS else OTHER  # bounded: see MAX_ROWS
            tally = table.get(booked)
            if tally is None:  # made only for a new row: a Tally costs a validation
                tally = table[booked] = Tally()
            tally.add(charge)
        return self

    def view(self) -> dict[str, Any]:
        return {"totals": self.totals.view(), **{name: {k: t.view() for k, t in getattr(self, name).items()} for name in TABLES}}


class Ledger:
    """Books every answer at the configured prices and charges the budgets it falls under."""

    def __init__(self, settings: GlmSaverSettings, config: Mapping[str, Any], state_dir: Path) -> None:
        from glm_saver.books.tallies import build_tallies  # it builds on this module's Books

        path = state_dir / settings.sqlite_path
        budget_store = build_store(BudgetUse, settings, config, namespace="budgets", sqlite_path=path)
        self.budgets = BudgetBook(budget_store, settings)
        shared = getattr(budget_store, "link", None) if settings.state == "redis" else None
        self._books = build_tallies(lambda: build_store(Books, settings, config, namespace="books", sqlite_path=path), shared)
        groups = {*settings.tier_groups, *settings.entry_models}
        self._prices = {group: group_prices(config, group) for group in groups}
        self.cloud_prices = self._prices[settings.cloud_group]
        self._settings = settings
        self._unbooked: deque[Unbooked] = deque(maxlen=MAX_UNBOOKED)
        self._retry: asyncio.Task[None] | None = None
        self._booking = asyncio.Lock()

    def keeps(self, group: str | None) -> bool:
        return group in self._prices

    def prices_of(self, group: str) -> Prices:
        return self._prices.get(group) or Prices()  # a group not in model_list costs nothing we know of

    def charge_of(self, record: CallRecord) -> Charge:
        """The charge for one logged answer: a client's (planned by the plugin, or not) or internal."""
        group = str(record.group)
        prompt, completion, role = record.prompt_tokens, record.completion_tokens, record.role
        tag = record.tag or {}
        route = str(tag.get("label") or tag.get("route") or (role if record.internal else "direct"))
        return Charge(
            group=group,
            route=route,
            strategy=str(tag.get("strategy") or self._settings.strategy),
            key=record.caller,
            role=role,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=self._prices[group].cost(prompt, completion),
            cloud_cost=self.cloud_prices.cost(prompt, completion) if role == FINAL else 0.0,
            # A cascade answer replays drafts whose tokens their own calls already counted.
            counts_tokens=not route.startswith("draft-"),
            reasoning_tokens=record.reasoning_tokens,
        )

    async def record(self, record: CallRecord) -> None:
        """Book an answer and settle its ticket; while the store is down, keep it to book later.

        Answers are booked as they come, side by side (their round trips share pipelines); only
        while some wait for the store do new ones queue behind them."""
        answer = Unbooked(self.charge_of(record), record.ticket)
        if self._unbooked:
            self._unbooked.append(answer)
            await self._book_waiting()
            return
        try:
            await self._book(answer)
        except StoreUnavailable as err:
            self._unbooked.append(answer)
            logger.error("glm_saver: %d answer(s) not booked yet, kept until the store answers: %s", len(self._unbooked), err)
            self._retry_later()

    async def _book_waiting(self) -> None:
        # One booker at a time: the queue's head is booked, then dropped, so two concurrent
        # bookers would book it twice.
        async with self._booking:
            try:
                while self._unbooked:
                    await self._book(self._unbooked[0])
                    self._unbooked.popleft()
            except StoreUnavailable as err:
                logger.error("glm_saver: %d answer(s) not booked yet, kept until the store answers: %s", len(self._unbooked), err)
                self._retry_later()

    def _retry_later(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(self._retry_after_pause())

    async def _retry_after_pause(self) -> None:
        await asyncio.sleep(UNBOOKED_RETRY_SECONDS)
        await self._book_waiting()

    @property
    def unbooked(self) -> int:
        return len(self._unbooked)

    async def _book(self, answer: Unbooked) -> None:
        """The books and the budgets at once (one round trip on Redis); a part already done is not
        done again when the other is retried."""
        if answer.ticket is None and not self.budgets.budgets_of(answer.charge.key):
            answer.settled = True  # no hold to settle, no budget to charge: no step (on Redis, no task) for it
        parts = [part for part, done in ((self._add_to_books, answer.booked), (self._settle, answer.settled)) if not done]
        raise_first(await side_by_side([part(answer) for part in parts], at_once=self._settings.batches_round_trips))

    async def _add_to_books(self, answer: Unbooked) -> None:
        charge = answer.charge
        totals = await self._books.add(charge, answer.id)
        answer.booked = True
        metrics.SAVINGS.set(totals.cloud_cost_usd - totals.cost_usd)
        if charge.counts_tokens:
            metrics.series(metrics.TOKENS, charge.group, "prompt").inc(charge.prompt_tokens)
            metrics.series(metrics.TOKENS, charge.group, "completion").inc(charge.completion_tokens)
        metrics.series(metrics.COST, charge.group).inc(charge.cost)

    async def _settle(self, answer: Unbooked) -> None:
        charge, ticket = answer.charge, answer.ticket
        settles = ticket is not None and ticket.key == charge.key
        if ticket is not None and not settles:
            await self.budgets.release(ticket.key, ticket.id)
        await self.budgets.charge(charge.key, charge.cost, ticket.id if ticket is not None and settles else None, answer.id)
        answer.settled = True

    async def describe(self) -> dict[str, Any]:
        return {**(await self._books.read()).view(), "budgets": await self.budgets.describe(), "unbooked": self.unbooked}
