"""The ledger books every answer exactly once, also when the store suspends (as Redis does) or fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from glm_saver.books import ledger as ledger_module
from glm_saver.books.ledger import Books, Ledger
from glm_saver.books.store import MemoryStore, StoreUnavailable
from glm_saver.events import CallRecord
from glm_saver.settings import GlmSaverSettings

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


class SuspendingStore(MemoryStore[M]):
    """Gives the loop a turn before each update, like a network store; can be switched off."""

    def __init__(self, model: type[M]) -> None:
        super().__init__(model)
        self.model = model
        self.down = False

    async def update(self, key: str, change: Callable[[M], tuple[M, R]]) -> R:
        await asyncio.sleep(0)
        if self.down:
            raise StoreUnavailable("the redis state store is unreachable (ConnectionError)")
        return await super().update(key, change)


def _record(caller: str = "alice") -> CallRecord:
    return CallRecord(group="local", tag=None, internal=False, role="final", caller=caller, ticket=None, headers=None, prompt_tokens=10, completion_tokens=2)


@pytest.fixture()
def stores(monkeypatch: pytest.MonkeyPatch) -> list[SuspendingStore[Any]]:
    made: list[SuspendingStore[Any]] = []

    def build(model: type[Any], *args: Any, **kwargs: Any) -> SuspendingStore[Any]:
        made.append(SuspendingStore(model))
        return made[-1]

    monkeypatch.setattr(ledger_module, "build_store", build)
    return made


def _ledger(tmp_path: Path) -> Ledger:
    config = {"model_list": [{"model_name": name, "litellm_params": {"model": f"openai/{name}"}} for name in ("local", "cerebras", "glm-saver")]}
    return Ledger(GlmSaverSettings(state="memory"), config, tmp_path)


def test_concurrent_answers_are_each_booked_once(tmp_path: Path, stores: list[SuspendingStore[Any]]) -> None:
    ledger = _ledger(tmp_path)

    async def burst() -> dict[str, Any]:
        await asyncio.gather(*(ledger.record(_record()) for _ in range(25)))
        return await ledger.describe()

    totals = asyncio.run(burst())["totals"]
    assert (totals["requests"], totals["prompt_tokens"], totals["completion_tokens"]) == (25, 250, 50)


def test_answers_given_while_the_store_is_down_are_booked_when_it_is_back(tmp_path: Path, stores: list[SuspendingStore[Any]]) -> None:
    ledger = _ledger(tmp_path)
    (books,) = [store for store in stores if store.model is Books]

    async def outage() -> dict[str, Any]:
        books.down = True
        for _ in range(3):
            await ledger.record(_record())
        assert ledger.unbooked == 3
        books.down = False  # no new request comes: the ledger retries on its own
        deadline = asyncio.get_running_loop().time() + 10
        while ledger.unbooked and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return await ledger.describe()

    described = asyncio.run(outage())
    assert (described["unbooked"], described["totals"]["requests"]) == (0, 3)
