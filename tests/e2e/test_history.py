"""The per-minute history in `/stats` through real proxies: it survives a restart with SQLite and
is one history for several proxies on one Redis."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.e2e.proxy import MASTER_KEY, Proxy
from tests.e2e.redis_server import running_redis

SIMPLE = "hello, what is a tuple?"
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"
WAIT_SECONDS = 30.0


def ask(proxy: Proxy, text: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)
    client.chat.completions.create(model="glm-saver", messages=[{"role": "user", "content": text}], max_tokens=64)


def history(proxy: Proxy) -> dict[str, Any]:
    return httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()["history"]


def requests_in(series: list[dict[str, Any]]) -> int:
    return sum(bucket["requests"] for bucket in series)


def history_holding(proxy: Proxy, requests: int) -> list[dict[str, Any]]:
    """The series once it holds `requests` answers (booked by the log event after the response)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        series = history(proxy)["series"]
        if requests_in(series) >= requests:
            return series
        assert time.monotonic() < deadline, f"the history holds {requests_in(series)} requests, not {requests}"
        time.sleep(0.05)


def written_behind(path: Path, requests: int) -> None:
    """Wait until SQLite holds the history's `requests` (written within a second, not at each update),
    so the restart below tests reading it back, not whether a loaded machine let the exit flush run."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT value FROM state WHERE key LIKE 'history:%'").fetchall()
        if requests_written(rows) >= requests:
            return
        assert time.monotonic() < deadline, f"SQLite holds {requests_written(rows)} of the history's {requests} requests"
        time.sleep(0.05)


def requests_written(rows: list[tuple[str]]) -> int:
    return sum(bucket["requests"] for (value,) in rows for bucket in json.loads(value)["buckets"].values())


def test_the_history_matches_the_books_and_survives_a_restart(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(glm_saver={"history_minutes": 120})
    ask(proxy, SIMPLE)
    ask(proxy, COMPLEX)
    series = history_holding(proxy, 2)
    described = history(proxy)
    assert described["window_minutes"] == 120 and described["bucket_seconds"] == 60
    books = httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()["books"]["totals"]
    assert sum(bucket["cost_usd"] for bucket in series) == books["cost_usd"]
    assert sum(bucket["cloud_cost_usd"] for bucket in series) == books["cloud_cost_usd"]
    assert sum(bucket["by_path"].get("cerebras", 0) for bucket in series) == 1
    assert all(bucket["minute"] % 60 == 0 for bucket in series)

    written_behind(proxy.directory / "glm-saver-books.sqlite", 2)
    proxy.stop()
    proxy.start(proxy.config)
    assert history(proxy)["series"] == series


def test_two_proxies_on_one_redis_show_one_history(tmp_path: Path, start_proxy: Callable[..., Proxy]) -> None:
    with running_redis(tmp_path) as redis_url:
        shared = {"glm_saver": {"state": "redis", "redis_url": redis_url}}
        first, second = start_proxy(**shared), start_proxy(**shared)
        ask(first, SIMPLE)
        ask(second, COMPLEX)
        ask(first, SIMPLE)
        series = history_holding(first, 3)
        assert history_holding(second, 3) == series
        assert sum(bucket["by_path"].get("local", 0) for bucket in series) == 2
