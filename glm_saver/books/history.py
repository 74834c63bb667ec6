"""Per-minute history of the books, for the dashboard's charts and `/stats` → `history`.

Each minute that saw traffic is one `Bucket`: requests by route, reason and path (local, cerebras,
draft; with more than two tiers each tier by its name), what they cost and what always-Cerebras
would have cost, tokens, failures and 429s. The buckets live in the same store as the books
(memory, SQLite or Redis), so the charts survive a restart with SQLite and agree across proxies
on Redis.

In memory and SQLite, bounded without ever deleting a key: an hour of buckets is one value, kept in
one of a fixed ring of slots (`slot:<hour % slots>`); a slot whose hour has passed out of the
window is overwritten when its turn comes again, and reads drop every bucket older than the
window. On Redis an hour is a hash of counters (`<minute> <counter>` fields) that every proxy
increments (HINCRBY / HINCRBYFLOAT in one script call, no compare-and-set, so proxies never race
and an event never sends the hour's buckets over the wire); the hash expires once its hour has left
the window. One event is one update (one script call); a read is one read per hour of the window,
sent together.

Recent decisions are a bounded ring in memory (per proxy): time, key alias, route, reason, tokens,
cost. Nothing of a request's content is kept, nor any key: only the alias or label the books use.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pydantic import BaseModel, Field

from glm_saver.books.ledger import FINAL
from glm_saver.books.store import REDIS_KEY_PREFIX, LinkScript, RedisLink, Store, StoreUnavailable, hash_fields
from glm_saver.routing.tiers import tier_name_of
from glm_saver.settings import STRONGEST_TIER

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


def path_of(route: str, answered: str | None, paths: dict[str, str]) -> str:
    """The path of a client's answer: a local draft, or the tier that answered; any other group
    (an entry model when the plugin is bypassed) is the strongest model."""
    if route.startswith("draft-"):
        return "draft"
    return paths.get(str(answered), STRONGEST_TIER)


# A bucket's change is a set of counters to add: its fields by name, and the rows of its tables as
# "<table> <row>" (the separator is one no name is expected to hold).
SEP = "\x1f"
Counts = dict[str, float]


def charge_counts(charge: Charge, reason: str, path: str) -> Counts:
    """A booked call's counters; the client's answers count as requests, internal calls cost only."""
    counts: Counts = {"calls": 1, "cost_usd": charge.cost, "cloud_cost_usd": charge.cloud_cost}
    if charge.counts_tokens:
        counts.update(prompt_tokens=charge.prompt_tokens, completion_tokens=charge.completion_tokens)
    if charge.role == FINAL:
        counts.update({"requests": 1, f"by_route{SEP}{charge.route}": 1, f"by_reason{SEP}{reason}": 1, f"by_path{SEP}{path}": 1})
    return counts


def failure_counts(rate_limited: bool) -> Counts:
    return {"failures": 1, "rate_limited": int(rate_limited)}


FLOATS = frozenset({"cost_usd", "cloud_cost_usd"})


def add_counts(bucket: Bucket, counts: Counts) -> None:
    # On the fields' values directly, as Tally.add: pydantic's __setattr__ (no validation is
    # configured for it to run) was most of what an answer's history update cost.
    fields = vars(bucket)
    for name, amount in counts.items():
        table, _, row = name.partition(SEP)
        if row:
            rows: dict[str, int] = fields[table]
            rows[row] = rows.get(row, 0) + int(amount)
        elif name in FLOATS:
            fields[name] += amount
        else:
            fields[name] += int(amount)


def changed_slot(slot: Slot, minute: int, counts: Counts) -> Slot:
    """The slot with `counts` added to `minute`'s bucket; a slot of an older hour starts empty."""
    hour = minute - minute % (SLOT_MINUTES * BUCKET_SECONDS)
    if slot.hour != hour:
        slot = Slot(hour=hour)
    bucket = slot.buckets.get(minute) or Bucket(minute=minute)
    add_counts(bucket, counts)
    slot.buckets[minute] = bucket
    return slot


class Minutes(Protocol):
    async def add(self, minute: int, counts: Counts) -> None: ...

    async def since(self, oldest: int, now: int) -> list[Bucket]:
        """The buckets from `oldest` to `now` (epoch minutes' starts), in any order."""
        ...


class SlotMinutes:
    """The buckets as hour documents in a ring of slots of a memory or SQLite store."""

    def __init__(self, store: Store[Slot], minutes: int) -> None:
        self._store = store
        self._slots = math.ceil(minutes / SLOT_MINUTES) + 1

    def _slot_key(self, minute: int) -> str:
        return f"slot:{(minute // (SLOT_MINUTES * BUCKET_SECONDS)) % self._slots}"

    async def add(self, minute: int, counts: Counts) -> None:
        await self._store.update(self._slot_key(minute), lambda slot: (changed_slot(slot, minute, counts), None))

    async def since(self, oldest: int, now: int) -> list[Bucket]:
        buckets: list[Bucket] = []
        for index in range(self._slots):
            slot = await self._store.read(f"slot:{index}")
            buckets += [bucket for minute, bucket in list(slot.buckets.items()) if minute >= oldest]
        return buckets


# KEYS[1]: the hour's hash; ARGV[1]: its TTL, ARGV[2]: the minute, then pairs of (counter, amount).
_ADD = """
local key, prefix = KEYS[1], ARGV[2] .. '\\31'
for i = 3, #ARGV, 2 do
  if string.find(ARGV[i + 1], '[.eE]') then
    redis.call('HINCRBYFLOAT', key, prefix .. ARGV[i], ARGV[i + 1])
  else
    redis.call('HINCRBY', key, prefix .. ARGV[i], ARGV[i + 1])
  end
end
redis.call('EXPIRE', key, ARGV[1])
"""
_ADD_SCRIPT = LinkScript(_ADD)
HOUR = SLOT_MINUTES * BUCKET_SECONDS


class RedisMinutes:
    """The buckets as counters in one Redis hash per hour, shared by every proxy."""

    def __init__(self, link: RedisLink, minutes: int, namespace: str = "history") -> None:
        self._link = link
        self._prefix = f"{REDIS_KEY_PREFIX}{namespace}:hour:"
        self._ttl = minutes * BUCKET_SECONDS + 2 * HOUR  # the hour stays while any of its minutes is in the window

    async def add(self, minute: int, counts: Counts) -> None:
        pairs = [part for name, amount in counts.items() if amount for part in (name, repr(float(amount)) if name in FLOATS else str(int(amount)))]
        if pairs:
            await self._link.run(_ADD_SCRIPT, [f"{self._prefix}{minute - minute % HOUR}"], [self._ttl, minute, *pairs])

    async def since(self, oldest: int, now: int) -> list[Bucket]:
        hours = range(oldest - oldest % HOUR, now + 1, HOUR)
        replies = await asyncio.gather(*(self._link.call("HGETALL", f"{self._prefix}{hour}") for hour in hours))
        buckets: dict[int, Bucket] = {}
        for reply in replies:
            for field, value in hash_fields(reply).items():
                minute_text, _, name = field.partition(SEP)
                minute = int(minute_text)
                if minute >= oldest:
                    add_counts(buckets.setdefault(minute, Bucket(minute=minute)), {name: float(value)})
        return list(buckets.values())


class Decision(NamedTuple):
    """A row of the recent-decisions table: no prompt text, no key. A tuple, not a model: one is
    made per answer and kept a while, and a tuple takes no validation and is one object for the
    garbage collector to scan, not three."""

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

    def __init__(self, store: Store[Slot] | RedisLink, minutes: int, groups: Sequence[str], clock: Callable[[], float] = time.time) -> None:
        """`groups`: the tiers' model groups, cheapest first."""
        self._minutes: Minutes = RedisMinutes(store, minutes) if isinstance(store, RedisLink) else SlotMinutes(store, minutes)
        self.minutes = minutes
        # The path each tier's group counts under: `local` and `cerebras` with two tiers (as always),
        # each tier by its name with more (`local`, `cerebras-oss`, `cerebras`).
        self._paths = tier_name_of(groups)
        self._clock = clock
        self._recent: deque[Decision] = deque(maxlen=RECENT_DECISIONS)
        self._lock = threading.Lock()

    def _minute(self) -> int:
        now = int(self._clock())
        return now - now % BUCKET_SECONDS

    async def _add(self, counts: Counts) -> None:
        try:
            await self._minutes.add(self._minute(), counts)
        except StoreUnavailable as err:
            logger.error("glm_saver: the minute's history was not written: %s", err)

    async def observe(self, record: CallRecord, charge: Charge | None) -> None:
        """One logged call: a booked answer (`charge`), or a failure. One store update at most."""
        if charge is not None:
            tag = record.tag or {}
            reason = str(tag.get("reason") or ("direct" if charge.role == FINAL else charge.role))
            path = path_of(charge.route, record.group, self._paths)
            if charge.role == FINAL:
                self._remember(charge, reason, str(record.group))
            await self._add(charge_counts(charge, reason, path))
        elif record.status is not None or record.error is not None:
            await self._add(failure_counts(record.rate_limited))

    def _remember(self, charge: Charge, reason: str, group: str) -> None:
        decision = Decision(
            time=round(float(self._clock()), 3),
            key=charge.key,
            route=charge.route,
            reason=reason,
            answered_by=group,
            prompt_tokens=charge.prompt_tokens,
            completion_tokens=charge.completion_tokens,
            cost_usd=float(charge.cost),
        )
        with self._lock:
            self._recent.append(decision)

    def recent(self) -> list[dict[str, Any]]:
        """The recent decisions, newest first."""
        with self._lock:
            return [decision._asdict() for decision in reversed(self._recent)]

    async def series(self) -> list[dict[str, Any]]:
        """The minutes of the window that saw traffic, oldest first (raises StoreUnavailable)."""
        now = self._minute()
        buckets = await self._minutes.since(now - (self.minutes - 1) * BUCKET_SECONDS, now)
        return [bucket.view() for bucket in sorted(buckets, key=lambda bucket: bucket.minute)]

    async def describe(self) -> dict[str, Any]:
        return {"window_minutes": self.minutes, "bucket_seconds": BUCKET_SECONDS, "series": await self.series()}
