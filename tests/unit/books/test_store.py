"""The SQLite store keeps state across a restart; changes are written behind, never lost at exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from glm_saver.books.ledger import Books, Charge
from glm_saver.books.store import SqliteStore, StoreUnavailable, raise_first, redis_url, side_by_side
from glm_saver.settings import ConfigError, parse_settings

CHARGE = Charge("cerebras", "cerebras", "smart_routing", "alice", "final", 100, 20, 0.000280, 0.000280)


def test_sqlite_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "books.sqlite"
    store = SqliteStore(Books, path, "books")

    async def spend() -> None:
        for _ in range(3):
            await store.update("books", lambda books: (books.add(CHARGE), None))

    asyncio.run(spend())
    store.flush()  # what the exit hook does
    reopened = SqliteStore(Books, path, "books")
    totals = asyncio.run(reopened.read("books")).totals
    assert (totals.requests, totals.prompt_tokens) == (3, 300)
    assert totals.cost_usd == 3 * CHARGE.cost


def test_namespaces_in_one_file_are_apart(tmp_path: Path) -> None:
    path = tmp_path / "books.sqlite"
    books = SqliteStore(Books, path, "books")
    asyncio.run(books.update("books", lambda b: (b.add(CHARGE), None)))
    books.flush()
    assert asyncio.run(SqliteStore(Books, path, "other").read("books")).totals.requests == 0


def test_the_write_behind_runs_on_the_writer_thread_and_flush_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "books.sqlite"
    store = SqliteStore(Books, path, "books")

    async def spend_then_flush_behind() -> None:
        await store.update("books", lambda books: (books.add(CHARGE), None))
        store._flush_behind()  # what the loop's timer runs: hands the rows over, does not wait

    asyncio.run(spend_then_flush_behind())
    store.flush()  # waits for the writer thread's transaction
    assert asyncio.run(SqliteStore(Books, path, "books").read("books")).totals.requests == 1


@pytest.mark.parametrize("at_once", [True, False])
def test_updates_side_by_side_all_run_though_one_fails_and_its_error_comes_back(at_once: bool) -> None:
    done: list[str] = []

    async def step(name: str) -> str:
        if name == "fails":
            raise StoreUnavailable("redis is down")
        done.append(name)
        return name

    results = asyncio.run(side_by_side([step("books"), step("fails"), step("history")], at_once=at_once))
    assert done == ["books", "history"]
    assert results[0] == "books" and results[2] == "history"
    with pytest.raises(StoreUnavailable, match="redis is down"):
        raise_first(results)


def test_a_redis_url_from_the_environment_that_redis_refuses_stops_the_start_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", "http://:s3cret-pw@cache.example:6379")
    settings = parse_settings({"state": "redis", "redis_url": "os.environ/TEST_REDIS_URL"})
    with pytest.raises(ConfigError) as raised:
        redis_url(settings, {})
    assert "glm_saver.redis_url: os.environ/TEST_REDIS_URL must hold a redis://" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)
    monkeypatch.setenv("TEST_REDIS_URL", "rediss://:s3cret-pw@cache.example:6379")
    assert redis_url(settings, {}) == "rediss://:s3cret-pw@cache.example:6379"
