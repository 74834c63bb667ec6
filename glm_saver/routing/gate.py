"""The money gate: every call to a paid model passes here first, whichever path LiteLLM takes to it
(the plan's first choice, a fallback hop, the cascade's verify).

It clamps max_tokens to the configured cap (Cerebras reserves them up front), reserves the
request's prompt + max_tokens against the headroom of that group's Cerebras model (each paid tier
has its own), and holds the worst-case cost on every
budget of the caller, all or nothing. What it grants is a `Ticket` that travels in the call's
metadata and is settled by the log event of that call; what it refuses is a `Refusal` with a reason
code. A store that cannot be reached refuses (money is safe), it never waves a call through.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from glm_saver.books.budgets import BudgetBook, BudgetRefusal
from glm_saver.books.headroom import Admission, CloudHeadroom, Reservation
from glm_saver.books.store import StoreUnavailable
from glm_saver.deployments import Prices
from glm_saver.settings import RateLimitSettings

logger = logging.getLogger(__name__)

# Metadata key under which a call carries its ticket.
TICKET_KEY = "glm_saver_ticket"
# The loop's timers may fire a hair early: a wait for Cerebras' reset sleeps a little past it.
_RESET_WAIT_SLACK = 0.05


class Ticket(BaseModel):
    """What the gate granted one call to a paid group."""

    id: str
    group: str
    key: str  # who pays (an alias or a key hash label, never a key)
    max_tokens: int  # the clamp the call is held to
    cost_usd: float  # the worst-case cost held on the key's budgets
    reservation: Reservation | None = None  # Cerebras headroom, when rate limits are on
    depth: int = 0  # LiteLLM's fallback depth of the hop the ticket is for


@dataclass(frozen=True)
class Refusal:
    """Why a paid call may not go now."""

    reason: str  # rate-limit-tokens | rate-limit-day | rate-limit-429 | rate-limit-probe | budget | store-down
    detail: str
    retry_in: float | None = None
    budget: BudgetRefusal | None = None


def clamp(asked: int | None, cap: int) -> int:
    return cap if asked is None else max(1, min(asked, cap))


class SettledTickets:
    """The tickets given back or charged, by id: each once, whichever path comes first (its
    answer's log event, its failure's, a broken stream, the next hop of a fallback). The headroom's
    reservations are a count of tokens in flight: one given back twice would admit more than
    Cerebras allows. Bounded: a ticket settles within its request; the oldest ids go first."""

    def __init__(self, kept: int = 16384) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._kept = kept

    def first(self, ticket: Ticket) -> bool:
        """True the first time a ticket is settled; False ever after."""
        if ticket.id in self._ids:
            return False
        self._ids[ticket.id] = None
        if len(self._ids) > self._kept:
            self._ids.popitem(last=False)
        return True


class CloudGate:
    def __init__(
        self,
        headroom: CloudHeadroom | None,
        budgets: BudgetBook,
        prices_of: Callable[[str], Prices],
        rate_limits: RateLimitSettings,
    ) -> None:
        self.headroom = headroom
        self._budgets = budgets
        self._prices_of = prices_of
        self._rate_limits = rate_limits
        self.settled = SettledTickets()

    def clamp(self, asked: int | None) -> int:
        return clamp(asked, self._rate_limits.max_tokens_cap)

    async def admit(
        self, key: str, group: str, prompt_tokens: int, asked_max_tokens: int | None, depth: int = 0, cheaper_left: bool = False
    ) -> Ticket | Refusal:
        """The ticket for one paid call: its clamp, its headroom reservation and its budget holds.

        `cheaper_left`: the caller will ask a cheaper paid model if the budget refuses this one, so
        a refusal does not count the budget as full (no alerts)."""
        max_tokens = self.clamp(asked_max_tokens)
        ticket = Ticket(
            id=uuid.uuid4().hex,
            group=group,
            key=key,
            max_tokens=max_tokens,
            cost_usd=self._prices_of(group).cost(prompt_tokens, max_tokens),
            depth=depth,
        )
        try:
            return await self._admit(ticket, prompt_tokens + max_tokens, cheaper_left)
        except StoreUnavailable as err:
            return Refusal("store-down", f"{err}; paid models are off until it answers")

    async def _admit(self, ticket: Ticket, tokens: int, cheaper_left: bool) -> Ticket | Refusal:
        if self.headroom is not None:
            admission = await self._reserve(tokens, ticket.group)
            if not admission.admitted:
                return Refusal(admission.reason, admission.detail, admission.retry_in)
            ticket = ticket.model_copy(update={"reservation": admission.reservation})
        refused = await self._budgets.hold(ticket.key, ticket.id, ticket.cost_usd, full_when_refused=not cheaper_left)
        if refused is not None:
            await self._release_headroom(ticket)
            return Refusal("budget", refused.detail, budget=refused)
        return ticket

    async def _reserve(self, tokens: int, group: str) -> Admission:
        assert self.headroom is not None
        admission = await self.headroom.admit(tokens, group)
        wait = admission.retry_in
        if not admission.admitted and wait is not None and wait <= self._rate_limits.wait_for_reset_seconds:
            # Configured: a short wait for Cerebras beats a weaker answer.
            await asyncio.sleep(wait + _RESET_WAIT_SLACK)
            admission = await self.headroom.admit(tokens, group)
        return admission

    async def give_back(self, ticket: Ticket, whose: str) -> None:
        """A call that is over without an answer (`whose`, for the log): its headroom and its holds
        are free again, once. With the store down they stay until they expire: settled all the same,
        so no later path gives them back twice."""
        if not self.settled.first(ticket):
            return
        try:
            await self._release_headroom(ticket)
            await self._budgets.release(ticket.key, ticket.id)
        except StoreUnavailable as err:
            logger.error("glm_saver: %s holds were not given back: %s (they expire on their own)", whose, err)

    async def _release_headroom(self, ticket: Ticket) -> None:
        if self.headroom is not None and ticket.reservation is not None:
            await self.headroom.release(ticket.reservation)
