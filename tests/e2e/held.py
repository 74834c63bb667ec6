"""What a proxy holds for Cerebras (headroom reservations, budget holds) and its failure counts, as
/stats shows them: for the tests that check a failed call gives back what it held, exactly once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.polling import poll
from tests.e2e.proxy import MASTER_KEY, Proxy
from tests.fakes.upstream import FakeUpstream

DEADLINE = 20.0  # seconds a polled condition may take on a busy 2-core machine


def proxy_showing_holds(start_proxy: Callable[..., Proxy], cerebras: FakeUpstream) -> Proxy:
    """A proxy in front of `cerebras` with a global budget (so /stats shows its holds) and LiteLLM's
    deployment cooldown off (a cooldown would only hide the tier whose books the test reads)."""
    return start_proxy(
        cerebras=cerebras,
        router_settings={"disable_cooldowns": True},
        glm_saver={"budget": {"limit_usd": 100.0, "period": "daily", "action": "reject"}},
    )


def stats(proxy: Proxy) -> dict[str, Any]:
    snapshot: dict[str, Any] = httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()
    return snapshot


def held(snapshot: dict[str, Any]) -> tuple[int, int, float]:
    """What is in flight on Cerebras: requests, reserved tokens, and the global budget's hold in USD."""
    headroom = snapshot["cerebras_headroom"]
    return headroom["requests_in_flight"], headroom["reserved_tokens_in_flight"], snapshot["books"]["budgets"]["global"]["held_usd"]


def settled(proxy: Proxy) -> dict[str, Any]:
    """/stats once nothing is held for Cerebras any more."""
    snapshot: dict[str, Any] = poll(lambda: (lambda s: s if held(s) == (0, 0, 0.0) else None)(stats(proxy)), "nothing held for cerebras", DEADLINE)
    return snapshot


def failures(proxy: Proxy) -> dict[str, int]:
    return dict(stats(proxy)["upstream_failures"])


def grew(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: count - before.get(name, 0) for name, count in after.items() if count != before.get(name, 0)}
