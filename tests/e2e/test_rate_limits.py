"""Rate-aware routing end to end: the client never sees Cerebras' 429 while the local model is up.

The fake Cerebras enforces a tokens-per-minute budget the way Cerebras does (reservation of input +
max completion tokens up front, headers on every answer, 429 + retry-after when over). Windows are
a few seconds long so that "after the reset" is reached by waiting for the real reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.proxy import MASTER_KEY, Proxy, metric
from tests.e2e.redis_server import running_redis
from tests.fakes.upstream import FakeUpstream

COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"
WINDOW_SECONDS = 10.0
TOKENS_PER_MINUTE = 60_000  # three requests reserving ~16.4K tokens each fit, a fourth does not
RESET_TIMEOUT = 30.0


def client_for(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)


def complex_chat(proxy: Proxy, *, stream: bool = False, model: str = "glm-saver", **params: Any) -> tuple[int, str, str, str]:
    """One complex ask; returns status, route header, reason header and the answer text."""
    raw = client_for(proxy).chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": COMPLEX}], stream=stream, **params)
    parsed = raw.parse()
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) if stream else parsed.choices[0].message.content
    return raw.status_code, raw.headers.get("x-glm-saver-route", ""), raw.headers.get("x-glm-saver-reason", ""), text


def stats(proxy: Proxy) -> dict[str, Any]:
    return httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()


def wait_until(condition: Callable[[], bool], timeout: float = RESET_TIMEOUT) -> None:
    """Poll a condition that becomes true when a real reset time passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy()


def test_max_tokens_for_cerebras_is_clamped_to_the_cap(proxy: Proxy, cerebras_upstream: FakeUpstream) -> None:
    status, route, _, _ = complex_chat(proxy, max_tokens=131072)
    assert (status, route) == (200, "cerebras")
    assert cerebras_upstream.requests[0].body["max_tokens"] == 16384


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_429_is_answered_by_local_and_cerebras_rests_until_retry_after(
    proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool
) -> None:
    cerebras_upstream.inject("429", retry_after=5)  # long enough for the checks below on a busy machine
    status, route, reason, text = complex_chat(proxy, stream=stream)
    assert (status, route, text) == (200, "local", "Hello from local.")
    assert reason.startswith("fallback: cerebras failed")

    # While exhausted, neither routed nor direct requests reach Cerebras; all are answered by local.
    status, route, reason, text = complex_chat(proxy, stream=stream)
    assert (status, route, text) == (200, "local", "Hello from local.")
    assert reason.startswith("rate-limit-429")
    direct = client_for(proxy).chat.completions.create(model="cerebras", messages=[{"role": "user", "content": "hi"}])
    assert direct.choices[0].message.content == "Hello from local."
    assert [r.status for r in cerebras_upstream.requests] == [429]
    # The 429 is counted by the failure event, which may be logged after the response: poll for it.
    wait_until(lambda: stats(proxy)["cerebras_429s"] >= 1)
    snapshot = stats(proxy)
    assert snapshot["cerebras_429s"] >= 1 and snapshot["rate_limit_shifts"]["rate-limit-429"] >= 1
    assert metric(proxy, 'glm_saver_cerebras_rate_limited_total{group="cerebras"}') >= 1
    assert metric(proxy, 'glm_saver_rate_limit_shifts_total{reason="rate-limit-429"}') >= 1

    wait_until(lambda: stats(proxy)["cerebras_headroom"]["exhausted_for"] == 0)
    status, route, _, text = complex_chat(proxy, stream=stream)
    assert (status, route, text) == (200, "cerebras", "Hello from cerebras.")


def burst(proxies: list[Proxy], count: int) -> list[tuple[int, str, str, str]]:
    """`count` complex asks at once, spread over the proxies."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda i: complex_chat(proxies[i % len(proxies)], max_tokens=16384), range(count)))


def assert_burst_served_without_429(results: list[tuple[int, str, str, str]], cerebras: FakeUpstream) -> None:
    """Every client got 200 from the model the headers name, and Cerebras answered no 429 at all."""
    assert all(status == 200 for status, *_ in results)
    assert cerebras.rate_limited == 0, [(r.status, r.outcome) for r in cerebras.requests if r.status == 429]
    assert {route for _, route, _, _ in results} <= {"local", "cerebras"}
    for _, route, reason, text in results:
        assert text == f"Hello from {route}."
        if route == "local":
            assert reason.startswith("rate-limit-"), reason


@pytest.fixture()
def limited_cerebras() -> Iterator[FakeUpstream]:
    with FakeUpstream("cerebras", tokens_per_minute=TOKENS_PER_MINUTE, window_seconds=WINDOW_SECONDS, requests_per_day=10_000) as upstream:
        yield upstream


def test_burst_bigger_than_the_minute_budget_is_all_200_and_never_earns_a_429(start_proxy: Callable[..., Proxy], limited_cerebras: FakeUpstream) -> None:
    proxy = start_proxy(cerebras=limited_cerebras)
    assert complex_chat(proxy)[1] == "cerebras"  # the first answer tells the plugin the limits

    results = burst([proxy], 10)
    assert_burst_served_without_429(results, limited_cerebras)
    assert limited_cerebras.rate_limited == 0
    sent_in_window = len(limited_cerebras.requests)
    assert sent_in_window >= 2  # the budget was used, not avoided

    # The budget is known to be spent: nothing more goes to Cerebras before the reset.
    status, route, reason, _ = complex_chat(proxy, max_tokens=16384)
    assert (status, route) == (200, "local") and reason.startswith("rate-limit-tokens: cerebras has "), reason
    assert len(limited_cerebras.requests) == sent_in_window

    # After the reset, traffic returns to Cerebras.
    wait_until(lambda: complex_chat(proxy, max_tokens=16384)[1] == "cerebras")
    assert limited_cerebras.rate_limited == 0
    assert len(limited_cerebras.windows) >= 2


def test_two_proxies_sharing_redis_stay_under_the_limit_together(tmp_path: Path, start_proxy: Callable[..., Proxy], limited_cerebras: FakeUpstream) -> None:
    with running_redis(tmp_path) as redis_url:
        shared = {"glm_saver": {"state": "redis", "redis_url": redis_url}}
        proxies = [start_proxy(cerebras=limited_cerebras, **shared), start_proxy(cerebras=limited_cerebras, **shared)]
        assert complex_chat(proxies[0], max_tokens=16384)[1] == "cerebras"  # one probe learns the limits for both
        for _ in range(2):  # two windows, each opened by a request that Cerebras answered
            results = burst(proxies, 12)
            assert_burst_served_without_429(results, limited_cerebras)
            assert sum(route == "cerebras" for _, route, _, _ in results) >= 1, [r[1:3] for r in results]
            wait_until(lambda: complex_chat(proxies[1], max_tokens=16384)[1] == "cerebras")
        per_window_429 = [window["requests_rejected"] for window in limited_cerebras.windows]
        assert per_window_429 and max(per_window_429) == 0, per_window_429  # shared reservations: not one 429
        assert limited_cerebras.rate_limited == 0
        assert all(stats(p)["cerebras_headroom"]["tokens_limit_minute"] == TOKENS_PER_MINUTE for p in proxies)


def test_waits_for_a_near_reset_instead_of_going_local_when_configured(start_proxy: Callable[..., Proxy]) -> None:
    with FakeUpstream("cerebras", tokens_per_minute=40_000, window_seconds=3.0) as cerebras:  # two requests fit
        proxy = start_proxy(cerebras=cerebras, glm_saver={"rate_limits": {"wait_for_reset_seconds": 10}})
        routes = [complex_chat(proxy, max_tokens=16384)[1] for _ in range(3)]
        assert routes == ["cerebras"] * 3  # the third waited for the reset rather than going local
        assert cerebras.rate_limited == 0
        assert [w["requests_admitted"] for w in cerebras.windows][:2] == [2, 1]
