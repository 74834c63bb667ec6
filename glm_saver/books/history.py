"""Per-minute history of the books, for the dashboard's charts and `/stats` → `history`.

Each minute that saw traffic is one `Bucket`: requests by route, reason and path (local, cerebras,
draft), what they cost and what always-Cerebras would have cost, tokens, failures and 429s. The
buckets live in the same store as the books (memory, SQLite or Redis), so the charts survive a
restart with SQLite and agree across proxies on Redis.

Bounded without ever deleting a key: an hour of buckets is one value, kept in one of a fixed ring
of slots (`slot:<hour % slots>`); a slot whose hour has passed out of the window is overwritten
when its turn comes again, and reads drop every bucket older than the window. One event is one
`update` of one slot (one round trip on Redis); a read is one `read` per slot.

Recent decisions are a bounded ring in memory (per proxy): time, key alias, route, reason, tokens,
cost. Nothing of a request's content is kept, nor any key: only the alias or label the books use.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from glm_saver.books.ledger import FINAL
from glm_saver.books.store import Store, StoreUnavailable

if TYPE_CHECKING:
    from glm_saver.books.ledger import Charge
    from glm_saver.events import CallRecord

logger = logging.getLogger(__name__)

BUCKET_SECONDS = 60
SLOT_MINUTES = 60  # buckets per stored value
RECENT_DECISIONS = 200  # rows of the recent-decisions ring


class Bucket(BaseModel):
    """One minute of traffic (`minute`: epoch seconds at the start of the minute, UTC)."""

    minute: int
    requests: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cloud_cost_usd: float = 0.0
    by_route: dict[str, int] = Field(default_factory=dict)
    by_reason: dict[str, int] = Field(default_factory=dict)
    by_path: dict[str, int] = Field(default_factory=dict)
    failures: int = 0
    rate_limited: int = 0

    def view(self) -> dict[str, Any]:
        return {**self.model_dump(), "savings_usd": self.cloud_cost_usd - self.cost_usd}


class Slot(BaseModel):
    """An hour of buckets (`hour`: epoch seconds at its start), one stored value."""

    hour: int = -1
    buckets: dict[int, Bucket] = Field(default_factory=dict)


def path_of(route: str, answered: str | None, local_group: str) -> str:
    """The path of a client's answer: a local draft, the local model, or Cerebras."""
    if route.startswith("draft-"):
        return "draft"
    return "local" if answered == local_group else "cerebras"


def _add(counts: dict[str, int], name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


def add_charge(bucket: Bucket, charge: Charge, reason: str, path: str) -> None:
    """A booked call into its minute; the client's answers count as requests, internal calls cost only."""
    bucket.calls += 1
    bucket.cost_usd += charge.cost
    bucket.cloud_cost_usd += charge.cloud_cost
    if charge.counts_tokens:
        bucket.prompt_tokens += charge.prompt_tokens
        bucket.completion_tokens += charge.completion_tokens
    if charge.role == FINAL:
        bucket.requests += 1
        _add(bucket.by_route, charge.route)
        _add(bucket.by_reason, reason)
        _add(bucket.by_path, path)


def add_failure(bucket: Bucket, rate_limited: bool) -> None:
    bucket.failures += 1
    bucket.rate_limited += int(rate_limited)


def changed_slot(slot: Slot, minute: int, change: Callable[[Bucket], None]) -> Slot:
    """The slot with `change` applied to `minute`'s bucket; a slot of an older hour starts empty."""
    hour = minute - minute % (SLOT_MINUTES * BUCKET_SECONDS)
    if slot.hour != hour:
        slot = Slot(hour=hour)
    bucket = slot.buckets.get(minute) or Bucket(minute=minute)
    change(bucket)
    slot.buckets[minute] = bucket
    return slot


class Decision(BaseModel):
    """A row of the recent-decisions table: no prompt text, no key."""

    time: float
    key: str  # alias or short hash label
    route: str
    reason: str
    answered_by: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class History:
    """The per-minute series (in the store) and the recent decisions (in memory)."""

    def __init__(self, store: Store[Slot], minutes: int, local_group: str, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.minutes = minutes
        self._slots = math.ceil(minutes / SLOT_MINUTES) + 1
        self._local_group = local_group
        self._clock = clock
        self._recent: deque[Decision] = deque(maxlen=RECENT_DECISIONS)
        self._lock = threading.Lock()

    def _minute(self) -> int:
        now = int(self._clock())
        return now - now % BUCKET_SECONDS

    def _slot_key(self, minute: int) -> str:
        return f"slot:{(minute // (SLOT_MINUTES * BUCKET_SECONDS)) % self._slots}"

    async def _change(self, change: Callable[[Bucket], None]) -> None:
        minute = self._minute()
        try:
            await self._store.update(self._slot_key(minute), lambda slot: (changed_slot(slot, minute, change), None))
        except StoreUnavailable as err:
            logger.error("glm_saver: the minute's history was not written: %s", err)

    async def observe(self, record: CallRecord, charge: Charge | None) -> None:
        """One logged call: a booked answer (`charge`), or a failure. One store update at most."""
        if charge is not None:
            tag = record.tag or {}
            reason = str(tag.get("reason") or ("direct" if charge.role == FINAL else charge.role))
            path = path_of(charge.route, record.group, self._local_group)
            if charge.role == FINAL:
                self._remember(charge, reason, str(record.group))
            await self._change(lambda bucket: add_charge(bucket, charge, reason, path))
        elif record.status is not None or record.error is not None:
            await self._change(lambda bucket: add_failure(bucket, record.rate_limited))

    def _remember(self, charge: Charge, reason: str, group: str) -> None:
        decision = Decision(
            time=round(self._clock(), 3),
            key=charge.key,
            route=charge.route,
            reason=reason,
            answered_by=group,
            prompt_tokens=charge.prompt_tokens,
            completion_tokens=charge.completion_tokens,
            cost_usd=charge.cost,
        )
        with self._lock:
            self._recent.append(decision)

    def recent(self) -> list[dict[str, Any]]:
        """The recent decisions, newest first."""
        with self._lock:
            return [decision.model_dump() for decision in reversed(self._recent)]

    async def series(self) -> list[dict[str, Any]]:
        """The minutes of the window that saw traffic, oldest first (raises StoreUnavailable)."""
        oldest = self._minute() - (self.minutes - 1) * BUCKET_SECONDS
        buckets: list[Bucket] = []
        for index in range(self._slots):
            slot = await self._store.read(f"slot:{index}")
            buckets += [bucket for minute, bucket in list(slot.buckets.items()) if minute >= oldest]
        return [bucket.view() for bucket in sorted(buckets, key=lambda bucket: bucket.minute)]

    async def describe(self) -> dict[str, Any]:
        return {"window_minutes": self.minutes, "bucket_seconds": BUCKET_SECONDS, "series": await self.series()}
