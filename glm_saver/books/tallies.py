"""Where the books' tallies live: one document in memory (and SQLite behind it), or counters in a
Redis hash that every proxy increments.

With Redis the books are not one serialized document rewritten (under WATCH) per answer: each
answer is one EVALSHA of a script that increments the affected counters (HINCRBY / HINCRBYFLOAT)
in a hash, atomically and in one round trip, however many proxies write at once. Table rows are
capped the same way in both (see ledger.MAX_ROWS): a name past the cap is booked under "other".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from glm_saver.books.ledger import FINAL, MAX_ROWS, TABLES, Books, Charge, Tally
from glm_saver.books.store import REDIS_KEY_PREFIX, REDIS_TTL_SECONDS, LinkScript, RedisLink, Store, hash_fields

BOOKS_KEY = "books"
# Field names in the hash: table, row and counter joined by a separator no name is expected to hold.
SEP = "\x1f"
TOTALS = "totals"

# KEYS[1]: the hash, KEYS[2]: the answer's booked mark. ARGV[1]: row cap, ARGV[2]: TTL, ARGV[3..8]:
# calls, requests, prompt and completion tokens, cost, cloud cost; then pairs of (table, row name).
# Returns the totals' cost and cloud cost after the increment (for the savings gauge). An answer
# whose mark is set was booked already (a run the proxy gave up on, applied when Redis caught up):
# nothing is added again.
_ADD = """
local key, sep = KEYS[1], '\\31'
local cap, ttl = tonumber(ARGV[1]), ARGV[2]
local function totals()
  return {redis.call('HGET', key, 'totals' .. sep .. 'cost_usd') or '0', redis.call('HGET', key, 'totals' .. sep .. 'cloud_cost_usd') or '0'}
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[9]) then return totals() end
local ints = {{'calls', ARGV[3]}, {'requests', ARGV[4]}, {'prompt_tokens', ARGV[5]}, {'completion_tokens', ARGV[6]}}
local floats = {{'cost_usd', ARGV[7]}, {'cloud_cost_usd', ARGV[8]}}
local function add(row)
  for _, pair in ipairs(ints) do
    if pair[2] ~= '0' then redis.call('HINCRBY', key, row .. sep .. pair[1], pair[2]) end
  end
  for _, pair in ipairs(floats) do
    if tonumber(pair[2]) ~= 0 then redis.call('HINCRBYFLOAT', key, row .. sep .. pair[1], pair[2]) end
  end
end
add('totals')
for i = 10, #ARGV, 2 do
  local table_, name = ARGV[i], ARGV[i + 1]
  local row = table_ .. sep .. name
  if redis.call('HEXISTS', key, row .. sep .. 'calls') == 0 then
    local rows = tonumber(redis.call('HINCRBY', key, '#rows' .. sep .. table_, 0))
    if rows >= cap then
      row = table_ .. sep .. 'other'
    else
      redis.call('HINCRBY', key, '#rows' .. sep .. table_, 1)
    end
  end
  add(row)
end
redis.call('EXPIRE', key, ttl)
return totals()
"""
# How long an answer's booked mark is kept: the queue books it again within seconds of Redis
# answering, which is also when Redis applies a run the proxy gave up on.
BOOKED_MARK_SECONDS = 600


class TallyStore(Protocol):
    async def add(self, charge: Charge, answer: str) -> Tally:
        """Book one answer (`answer`: its id; booked once however often it is sent); returns the totals after it."""
        ...

    async def read(self) -> Books: ...


class DocumentTallies:
    """The books as one document in a memory or SQLite store (one proxy: no round trips)."""

    def __init__(self, store: Store[Books]) -> None:
        self._store = store

    async def add(self, charge: Charge, answer: str) -> Tally:
        # In memory or SQLite an update is applied or not: no run given up on is applied later.
        return await self._store.update(BOOKS_KEY, lambda books: (books.add(charge), books.totals.model_copy()))

    async def read(self) -> Books:
        return await self._store.read(BOOKS_KEY)


INT_FIELDS = frozenset({"requests", "calls", "prompt_tokens", "completion_tokens"})
FLOAT_FIELDS = frozenset({"cost_usd", "cloud_cost_usd"})


def _arguments(charge: Charge) -> list[Any]:
    counted = charge.counts_tokens
    return [
        MAX_ROWS,
        REDIS_TTL_SECONDS,
        1,
        int(charge.role == FINAL),
        charge.prompt_tokens if counted else 0,
        charge.completion_tokens if counted else 0,
        repr(float(charge.cost)),
        repr(float(charge.cloud_cost)),
        BOOKED_MARK_SECONDS,
        *[part for row in charge.rows() for part in row],
    ]


def books_from_hash(fields: dict[str, str]) -> Books:
    """Rebuild the Books document from the hash's counters (the /stats shape)."""
    tallies: dict[tuple[str, str], dict[str, Any]] = {}
    for field, value in fields.items():
        if field.startswith("#"):
            continue
        table, _, rest = field.partition(SEP)
        name, _, counter = rest.rpartition(SEP)
        if table == TOTALS:
            name, counter = "", rest
        if counter in INT_FIELDS:
            tallies.setdefault((table, name), {})[counter] = int(value)
        elif counter in FLOAT_FIELDS:
            tallies.setdefault((table, name), {})[counter] = float(value)
    books = Books(totals=Tally(**tallies.pop((TOTALS, ""), {})))
    for (table, name), counters in sorted(tallies.items()):
        if table in TABLES:
            getattr(books, table)[name] = Tally(**counters)
    return books


class RedisTallies:
    """The books as counters in one Redis hash: one round trip per answer, no WATCH, no retries."""

    def __init__(self, link: RedisLink, namespace: str = BOOKS_KEY) -> None:
        self._link = link
        self._key = f"{REDIS_KEY_PREFIX}{namespace}:{BOOKS_KEY}:tallies"
        self._marks = f"{REDIS_KEY_PREFIX}{namespace}:{BOOKS_KEY}:booked:"

    async def add(self, charge: Charge, answer: str) -> Tally:
        cost, cloud_cost = await self._link.run(_ADD_SCRIPT, [self._key, self._marks + answer], _arguments(charge))
        return Tally(cost_usd=float(cost), cloud_cost_usd=float(cloud_cost))

    async def read(self) -> Books:
        fields = await self._link.call("HGETALL", self._key)
        return books_from_hash(hash_fields(fields))


_ADD_SCRIPT = LinkScript(_ADD)


def build_tallies(document_store: Callable[[], Store[Books]], redis: RedisLink | None) -> TallyStore:
    return RedisTallies(redis) if redis is not None else DocumentTallies(document_store())
