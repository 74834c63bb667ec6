"""Issue 11: Redis (the shared store) stopped mid-run and started again on the same port.

While the store is down, a request that would go to Cerebras is answered locally when it fits (no
Cerebras budget can be checked or reserved), one too big for local gets a 503 naming the store, and
/health says the store is down. Once Redis is back, without a proxy restart, Cerebras answers again
and the books hold the requests answered while Redis was down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import polling
from tests.e2e.books import CEREBRAS_IN, CEREBRAS_OUT
from tests.e2e.proxy import MASTER_KEY, Proxy, free_port
from tests.e2e.redis_server import running_redis, stalled
from tests.fakes.upstream import FakeUpstream

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
TO_CEREBRAS = {**ADMIN, "x-glm-saver-route": "cerebras"}
SIMPLE = "hello, what is a tuple?"
BIG = "Fix the typo. " + "lorem ipsum dolor sit amet " * 1700  # ~10K tokens: over the local window only
DEADLINE = 30.0  # seconds a polled condition may take (a reconnect, a write-behind) on a busy machine


def chat(proxy: Proxy, text: str, headers: dict[str, str]) -> httpx.Response:
    body = {"model": "glm-saver", "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def health(proxy: Proxy) -> dict[str, Any]:
    return httpx.get(f"{proxy.url}/health", timeout=10).json()


def books(proxy: Proxy) -> dict[str, Any] | None:
    response = httpx.get(f"{proxy.url}/stats", headers=ADMIN, timeout=10)
    return response.json()["books"] if response.status_code == 200 else None


def poll(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    return polling.poll(condition, what, timeout)


def store_is_down(described: dict[str, Any]) -> bool:
    store = described.get("store")
    if isinstance(store, dict):
        return not store.get("ok", True) or store.get("status") == "down"
    return store in (False, "down")


@pytest.fixture()
def redis_port() -> int:
    return free_port()


@pytest.fixture()
def store_proxy(tmp_path: Path, start_proxy: Callable[..., Proxy], redis_port: int) -> Iterator[tuple[Proxy, Path]]:
    with running_redis(tmp_path, port=redis_port) as url:
        proxy = start_proxy(glm_saver={"state": "redis", "redis_url": url})
    yield proxy, tmp_path  # Redis is stopped here, before the proxy sent it anything


def test_redis_down_answers_locally_refuses_what_local_cannot_take_and_recovers_when_it_is_back(
    store_proxy: tuple[Proxy, Path], redis_port: int, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    proxy, directory = store_proxy
    answered = 0

    # Down: what would go to Cerebras is answered locally when it fits.
    fits = chat(proxy, SIMPLE, TO_CEREBRAS)
    assert fits.status_code == 200, fits.text[:300]
    assert fits.headers.get("x-glm-saver-route") == "local", f"answered by {fits.json()['model']} ({fits.headers.get('x-glm-saver-reason')})"
    assert fits.json()["choices"][0]["message"]["content"] == "Hello from local."
    answered += 1
    assert cerebras_upstream.requests == [], "a request reached Cerebras while its budget store was down"

    # Down: too big for local, and Cerebras cannot be budgeted: a 503 that names the store.
    too_big = chat(proxy, BIG, TO_CEREBRAS)
    assert too_big.status_code == 503, too_big.text[:300]
    message = too_big.json()["error"]["message"].lower()
    assert "redis" in message or "store" in message, message
    assert cerebras_upstream.requests == []
    assert all(r.body["messages"][-1]["content"] != BIG for r in local_upstream.requests), "the big prompt was sent local"

    described = health(proxy)
    assert "store" in described, described
    assert store_is_down(described), described["store"]

    # Back on the same port, same proxy process: Cerebras answers again.
    with running_redis(directory, port=redis_port):

        def cerebras_answers() -> bool:
            nonlocal answered
            response = chat(proxy, SIMPLE, TO_CEREBRAS)
            assert response.status_code == 200, response.text[:300]
            answered += 1
            return response.headers["x-glm-saver-route"] == "cerebras"

        poll(cerebras_answers, "a request answered by Cerebras after Redis came back")
        poll(lambda: not store_is_down(health(proxy)), "/health reporting the store up again")
        # The restarted Redis kept nothing: every request in the books was answered during or after the outage.
        poll(lambda: (books(proxy) or {}).get("totals", {}).get("requests") == answered, f"the books holding all {answered} answered requests")
        assert books(proxy)["totals"]["requests"] == answered


def test_an_answer_whose_booking_timed_out_while_redis_stalled_is_booked_and_charged_once(
    tmp_path: Path, start_proxy: Callable[..., Proxy], cerebras_upstream: FakeUpstream
) -> None:
    """Redis slower than the store's timeout counts as down, yet it still runs what it was sent once it
    catches up: the booking the proxy gave up on, and then keeps to book again, must count once."""
    with running_redis(tmp_path) as url:
        budget = {"limit_usd": 100.0, "period": "daily", "action": "reject"}
        proxy = start_proxy(glm_saver={"state": "redis", "redis_url": url, "budget": budget})
        # One answer booked first: Redis then knows the books' scripts, as it does in a running proxy.
        assert chat(proxy, SIMPLE, TO_CEREBRAS).headers.get("x-glm-saver-route") == "cerebras"
        poll(lambda: (books(proxy) or {}).get("totals", {}).get("requests") == 1, "the first answer booked")
        answered: list[httpx.Response] = []
        cerebras_upstream.hold()
        asking = threading.Thread(target=lambda: answered.append(chat(proxy, SIMPLE, TO_CEREBRAS)))
        asking.start()
        cerebras_upstream.wait_until(lambda fake: len(fake.requests) == 2, timeout=DEADLINE)
        with stalled(url):
            cerebras_upstream.release()
            asking.join()
            poll(lambda: (books(proxy) or {}).get("unbooked") == 1, "the answer waiting to be booked while Redis stalls")
        assert (answered[0].status_code, answered[0].headers.get("x-glm-saver-route")) == (200, "cerebras"), answered[0].text[:300]
        booked = poll(lambda: (lambda held: held if held and held.get("unbooked") == 0 else None)(books(proxy)), "the answer booked once Redis caught up")
        cost = sum(served.prompt_tokens * CEREBRAS_IN + served.completion_tokens * CEREBRAS_OUT for served in cerebras_upstream.served)
        assert len(cerebras_upstream.served) == 2
        assert (booked["totals"]["requests"], booked["totals"]["cost_usd"]) == (2, pytest.approx(cost, rel=1e-9))
        assert (booked["budgets"]["global"]["spent_usd"], booked["budgets"]["global"]["held_usd"]) == (pytest.approx(cost, rel=1e-9), 0)
        assert booked["budgets"]["global"]["spent_usd"] == pytest.approx(cost, rel=1e-9)
