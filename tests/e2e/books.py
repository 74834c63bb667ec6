"""The proxy's books as /stats shows them, and waiting for an answer to be booked."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.polling import poll
from tests.e2e.proxy import MASTER_KEY, Proxy

CEREBRAS_IN, CEREBRAS_OUT = 2.25e-6, 2.75e-6  # the shipped config's Cerebras prices per token


def books(proxy: Proxy) -> dict[str, Any]:
    books: dict[str, Any] = httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()["books"]
    return books


def books_holding(proxy: Proxy, count: int, of: str = "requests", timeout: float = 20.0) -> dict[str, Any]:
    """The books once their total `of` (requests, calls) reaches `count`: an answer is booked by the
    log event that follows the response, so a read right after the response may not see it yet."""
    holding: dict[str, Any] = poll(lambda: (current := books(proxy))["totals"][of] >= count and current, f"the books holding {count} {of}", timeout)
    return holding
