"""The Redis state: the books and the history as counters in hashes (one script call per answer),
the compare-and-set store shared by several proxies, commands started together sharing one round
trip, and tables that stay bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from glm_saver.books.history import History, RedisMinutes, Slot
from glm_saver.books.ledger import MAX_ROWS, OTHER, Books, Charge, answer_id
from glm_saver.books.store import MAX_WATCH_RETRIES, MemoryStore, RedisLink, RedisStore, StoreUnavailable
from glm_saver.books.tallies import RedisTallies
from tests.e2e.redis_server import running_redis
from tests.unit.books.test_history import START, Clock, record
from tests.unit.books.test_history import charge as history_charge

CHARGE = Charge("cerebras", "cerebras", "smart_routing", "alice", "final", 100, 20, 0.000280, 0.000280)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(Path(tmp_path_factory.mktemp("redis"))) as url:
        yield url


@pytest.fixture(autouse=True)
def _empty(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushall()


def _reads(client: redis.Redis) -> int:
    """Requests the server has read from its clients so far (each round trip is one), INFO's included."""
    return int(client.info("stats")["total_reads_processed"])


def _charge(key: str, cost: float = 0.001) -> Charge:
    return Charge("cerebras", "cerebras", "smart_routing", key, "final", 10, 5, cost, cost)


def test_the_hash_books_what_the_document_books(redis_url: str) -> None:
    async def book() -> tuple[Books, Books]:
        tallies = RedisTallies(RedisLink(redis_url))
        document = Books()
        for charge in (CHARGE, _charge("bob"), Charge("local", "local", "smart_routing", "bob", "draft", 7, 3, 0.0, 0.0, counts_tokens=False)):
            await tallies.add(charge, answer_id())
            document.add(charge)
        return await tallies.read(), document

    from_redis, expected = asyncio.run(book())

    assert from_redis.view()["totals"] == pytest.approx(expected.view()["totals"])
    for table in ("by_model", "by_key", "by_route", "by_strategy", "by_role"):
        assert from_redis.view()[table].keys() == expected.view()[table].keys()
        for name, row in expected.view()[table].items():
            assert from_redis.view()[table][name] == pytest.approx(row)


def test_an_answer_sent_again_is_booked_once(redis_url: str) -> None:
    """A run the proxy gave up on, applied when Redis caught up, and then the same answer from the queue."""

    async def book() -> Books:
        tallies = RedisTallies(RedisLink(redis_url))
        again = answer_id()
        for answer in (again, again, answer_id()):
            await tallies.add(CHARGE, answer)
        return await tallies.read()

    assert asyncio.run(book()).totals.calls == 2


def test_an_answer_costs_one_command_on_the_server_side_of_one_round_trip(redis_url: str) -> None:
    async def book() -> None:
        tallies = RedisTallies(RedisLink(redis_url))
        await tallies.add(CHARGE, answer_id())  # loads the script once (EVALSHA answers NOSCRIPT, then EVAL)
        before = redis.Redis.from_url(redis_url).info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        for _ in range(5):
            await tallies.add(CHARGE, answer_id())
        after = redis.Redis.from_url(redis_url).info("commandstats")["cmdstat_evalsha"]["calls"]
        assert after - before == 5

    asyncio.run(book())


def test_tables_are_capped_and_fold_new_names_into_other(redis_url: str) -> None:
    keys = [f"caller-{n}" for n in range(MAX_ROWS + 5)]

    async def book() -> Books:
        tallies = RedisTallies(RedisLink(redis_url))
        for key in keys:
            await tallies.add(_charge(key), answer_id())
        await tallies.add(_charge(keys[0]), answer_id())  # a name with its own row keeps it
        return await tallies.read()

    from_redis = asyncio.run(book())
    document = Books()
    for key in [*keys, keys[0]]:
        document.add(_charge(key))
    for books in (from_redis, document):
        assert len(books.by_key) == MAX_ROWS + 1
        assert books.by_key[OTHER].requests == 5
        assert books.by_key[keys[0]].requests == 2
        assert books.totals.requests == MAX_ROWS + 6


def test_two_proxies_updating_one_key_lose_no_update(redis_url: str) -> None:
    """Both start from stale guesses of each other's writes; compare-and-set recomputes, never overwrites."""

    async def run() -> Books:
        first, second = (RedisStore(Books, redis_url, "books") for _ in range(2))

        async def spend(store: RedisStore[Books]) -> None:
            for _ in range(40):
                await store.update("doc", lambda books: (books.add(CHARGE), None))

        await asyncio.gather(spend(first), spend(second))
        return await first.read("doc")

    assert asyncio.run(run()).totals.requests == 80


def test_an_update_with_a_fresh_guess_is_one_round_trip(redis_url: str) -> None:
    async def run() -> int:
        store = RedisStore(Books, redis_url, "books")
        await store.update("doc", lambda books: (books.add(CHARGE), None))  # loads the script
        counter = redis.Redis.from_url(redis_url)
        before = _reads(counter)
        for _ in range(5):
            await store.update("doc", lambda books: (books.add(CHARGE), None))
        return _reads(counter) - before - 1  # the second INFO is read too

    assert asyncio.run(run()) == 5


def test_retries_are_bounded_and_end_as_store_unavailable(redis_url: str) -> None:
    """A key another writer changes before every attempt: the update gives up, it never spins."""

    async def run() -> int:
        store = RedisStore(Books, redis_url, "books")
        rival = redis.Redis.from_url(redis_url)
        attempts = 0

        def change(books: Books) -> tuple[Books, None]:
            nonlocal attempts
            attempts += 1
            rival.set("glm_saver:books:doc", Books().add(_charge(f"rival-{attempts}")).model_dump_json())
            return books.add(CHARGE), None

        with pytest.raises(StoreUnavailable):
            await store.update("doc", change)
        return attempts

    assert asyncio.run(run()) == MAX_WATCH_RETRIES


def test_updates_started_together_share_one_round_trip(redis_url: str) -> None:
    """The books, the history and two documents of one answer, started side by side: one pipeline."""

    async def run() -> int:
        store = RedisStore(Books, redis_url, "books")  # on this process's one link to the URL
        tallies, minutes = RedisTallies(store.link), RedisMinutes(store.link, 60)
        work = (tallies.add(CHARGE, answer_id()), minutes.add(START, {"requests": 1}), store.update("a", _add), store.update("b", _add))
        await asyncio.gather(*work)  # loads the scripts
        counter = redis.Redis.from_url(redis_url)
        before = _reads(counter)
        await asyncio.gather(tallies.add(CHARGE, answer_id()), minutes.add(START, {"requests": 1}), store.update("a", _add), store.update("b", _add))
        return _reads(counter) - before - 1  # the second INFO is read too

    assert asyncio.run(run()) == 1


def _add(books: Books) -> tuple[Books, None]:
    return books.add(CHARGE), None


def test_an_update_of_several_keys_writes_all_or_recomputes_all(redis_url: str) -> None:
    """A rival changes one of the two keys between this proxy's read and its write: nothing is
    written from the stale guess, both are recomputed on what Redis holds."""

    async def run() -> tuple[int, int, int]:
        store = RedisStore(Books, redis_url, "books")
        await store.update_all(["a", "b"], lambda both: ([books.add(CHARGE) for books in both], None))
        redis.Redis.from_url(redis_url).set("glm_saver:books:b", Books().add(_charge("rival")).add(_charge("rival")).model_dump_json())
        attempts = 0

        def change(both: list[Books]) -> tuple[list[Books], None]:
            nonlocal attempts
            attempts += 1
            return [books.add(CHARGE) for books in both], None

        await store.update_all(["a", "b"], change)
        return attempts, (await store.read("a")).totals.requests, (await store.read("b")).totals.requests

    assert asyncio.run(run()) == (2, 2, 3)


def test_the_redis_history_shows_what_the_slot_history_shows(redis_url: str) -> None:
    clock = Clock(START + 3540)  # the last minute of an hour, then the first of the next
    on_redis, in_memory = History(RedisLink(redis_url), 90, ["local", "cerebras"], clock), History(MemoryStore(Slot), 90, ["local", "cerebras"], clock)

    async def observe(history: History) -> list[dict[str, object]]:
        await history.observe(record(), history_charge(cost=0.0))
        await history.observe(record("cerebras", "classifier-complex"), history_charge("cerebras", "cerebras", cost=0.002, cloud_cost=0.002))
        await history.observe(record("local", None), history_charge("draft", role="draft", cloud_cost=0.0))
        clock.now += 60
        await history.observe(record("cerebras", status=429, headers={"retry-after": "3"}), None)
        series = await history.series()
        clock.now -= 60
        return series

    async def both() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        return await observe(on_redis), await observe(in_memory)

    from_redis, expected = asyncio.run(both())
    assert [bucket["requests"] for bucket in expected] == [2, 0] and expected[1]["rate_limited"] == 1
    assert len(from_redis) == len(expected)
    for mine, theirs in zip(from_redis, expected, strict=True):
        money = ("cost_usd", "cloud_cost_usd", "savings_usd")
        assert {k: v for k, v in mine.items() if k not in money} == {k: v for k, v in theirs.items() if k not in money}
        assert [mine[k] for k in money] == pytest.approx([theirs[k] for k in money])


def test_updates_of_one_key_waiting_for_their_turn_go_in_one_write(redis_url: str) -> None:
    """Ten answers changing the same document at once: every change kept, in one round trip."""

    async def run() -> tuple[int, int, list[int]]:
        store = RedisStore(Books, redis_url, "books")
        await store.update("doc", _add)  # loads the script
        counter = redis.Redis.from_url(redis_url)
        before = _reads(counter)

        def add_and_count(books: Books) -> tuple[Books, int]:
            books.add(CHARGE)
            return books, books.totals.requests

        counts = await asyncio.gather(*(store.update("doc", add_and_count) for _ in range(10)))
        trips = _reads(counter) - before - 1  # the second INFO is read too
        return trips, (await store.read("doc")).totals.requests, counts

    trips, requests, counts = asyncio.run(run())
    assert (trips, requests) == (1, 11)
    assert counts == list(range(2, 12))  # each change saw the ones before it
