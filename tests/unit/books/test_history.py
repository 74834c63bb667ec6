"""The per-minute history: buckets by minute, a window that bounds what is kept, stores that keep it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from glm_saver.books.history import BUCKET_SECONDS, RECENT_DECISIONS, History, Slot
from glm_saver.books.ledger import FINAL, Charge
from glm_saver.books.store import MemoryStore, SqliteStore
from glm_saver.events import CallRecord

T = TypeVar("T")

START = 1_800_000_000.0 - 1_800_000_000.0 % 3600  # the start of an hour


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def charge(route: str = "local", group: str = "local", cost: float = 0.0, cloud_cost: float = 0.001, role: str = FINAL) -> Charge:
    return Charge(
        group=group, route=route, strategy="smart_routing", key="alice", role=role, prompt_tokens=10, completion_tokens=5, cost=cost, cloud_cost=cloud_cost
    )


def record(group: str = "local", reason: str | None = "classifier-simple", status: int | None = None, headers: dict | None = None) -> CallRecord:
    tag = {"route": group, "reason": reason} if reason else None
    return CallRecord(group=group, tag=tag, internal=False, role=FINAL, caller="alice", ticket=None, headers=headers, status=status)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def test_answers_fill_their_minute_by_route_reason_and_path() -> None:
    clock = Clock()
    history = History(MemoryStore(Slot), 60, ["local", "cerebras"], clock)
    run(history.observe(record(), charge()))
    run(history.observe(record("cerebras", "classifier-complex"), charge("cerebras", "cerebras", cost=0.002, cloud_cost=0.002)))
    run(history.observe(record("local", None), charge("draft-accepted")))
    run(history.observe(record("local", None), charge("draft", role="draft", cloud_cost=0.0)))  # an internal call costs only
    clock.now += BUCKET_SECONDS
    run(history.observe(record("cerebras", status=429, headers={"retry-after": "3"}), None))
    first, second = run(history.series())
    assert first["minute"] == START and second["minute"] == START + BUCKET_SECONDS
    assert first["requests"] == 3 and first["calls"] == 4
    assert first["by_route"] == {"local": 1, "cerebras": 1, "draft-accepted": 1}
    assert first["by_reason"] == {"classifier-simple": 1, "classifier-complex": 1, "direct": 1}
    assert first["by_path"] == {"local": 1, "cerebras": 1, "draft": 1}
    assert first["cost_usd"] == 0.002 and first["cloud_cost_usd"] == 0.004 and first["savings_usd"] == 0.002
    assert second["requests"] == 0 and second["failures"] == 1 and second["rate_limited"] == 1


def test_with_more_than_two_tiers_the_path_is_each_tier_by_its_name() -> None:
    history = History(MemoryStore(Slot), 60, ["local", "cerebras-oss", "glm"], Clock())
    run(history.observe(record(), charge()))
    for group, route in (("cerebras-oss", "cerebras-oss"), ("cerebras-oss", "cerebras-oss"), ("glm", "cerebras"), ("glm-saver", "direct")):
        run(history.observe(record(group, "classifier-complex"), charge(route, group, cost=0.001)))
    run(history.observe(record("local", None), charge("draft-accepted")))
    (bucket,) = run(history.series())
    # The strongest tier is `cerebras` whatever its group; an entry model answered directly is the strongest model.
    assert bucket["by_path"] == {"local": 1, "cerebras-oss": 2, "cerebras": 2, "draft": 1}


def test_the_window_bounds_what_is_read_and_what_is_kept() -> None:
    clock = Clock()
    store: MemoryStore[Slot] = MemoryStore(Slot)
    history = History(store, 90, ["local", "cerebras"], clock)
    for _ in range(6 * 60):  # six hours, one answer a minute
        run(history.observe(record(), charge()))
        clock.now += BUCKET_SECONDS
    series = run(history.series())
    assert len(series) == 89 and series[-1]["minute"] == clock.now - BUCKET_SECONDS  # this minute has none yet
    assert len(store._values) == 3  # a fixed ring of slots: ceil(90 / 60) + 1
    assert sum(len(slot.buckets) for slot in store._values.values()) <= 3 * 60


def test_recent_decisions_are_a_bounded_ring_newest_first_without_prompt_or_key() -> None:
    history = History(MemoryStore(Slot), 60, ["local", "cerebras"], Clock())
    for index in range(RECENT_DECISIONS + 5):
        run(history.observe(record(), charge(cost=index)))
    recent = history.recent()
    assert len(recent) == RECENT_DECISIONS and recent[0]["cost_usd"] == RECENT_DECISIONS + 4
    assert set(recent[0]) == {"time", "key", "route", "reason", "answered_by", "prompt_tokens", "completion_tokens", "cost_usd"}
    assert recent[0]["key"] == "alice"


def test_sqlite_keeps_the_history_across_a_restart(tmp_path: Path) -> None:
    clock = Clock()

    async def write() -> None:
        store = SqliteStore(Slot, tmp_path / "books.sqlite", "history")
        await History(store, 60, ["local", "cerebras"], clock).observe(record(), charge())
        store.flush()

    run(write())
    again = History(SqliteStore(Slot, tmp_path / "books.sqlite", "history"), 60, ["local", "cerebras"], clock)
    assert [bucket["requests"] for bucket in run(again.series())] == [1]
