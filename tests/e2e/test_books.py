"""The books end to end: costs at the configured prices, savings, budgets with alerts, persistence."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.books import CEREBRAS_IN, CEREBRAS_OUT, books, books_holding
from tests.e2e.polling import poll
from tests.e2e.proxy import MASTER_KEY, Proxy, metric
from tests.e2e.redis_server import running_redis
from tests.fakes.upstream import FakeUpstream

SIMPLE = "hello, what is a tuple?"
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"


def ask(proxy: Proxy, text: str, *, stream: bool = False, key: str = MASTER_KEY, **params: Any) -> httpx.Headers:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=[{"role": "user", "content": text}], stream=stream, **params)
    parsed = raw.parse()
    if stream:
        list(parsed)
    return raw.headers


def cerebras_cost(prompt: int, completion: int) -> float:
    return prompt * CEREBRAS_IN + completion * CEREBRAS_OUT


def served_tokens(*upstreams: FakeUpstream) -> tuple[int, int]:
    served = [answer for upstream in upstreams for answer in upstream.served]
    return sum(a.prompt_tokens for a in served), sum(a.completion_tokens for a in served)


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy()


@pytest.mark.parametrize(
    ("text", "stream", "fault", "answered_by"),
    [
        (SIMPLE, False, None, "local"),
        (SIMPLE, True, None, "local"),
        (COMPLEX, False, None, "cerebras"),
        (COMPLEX, True, None, "cerebras"),
        (COMPLEX, False, "500", "local"),
        (COMPLEX, True, "500", "local"),
    ],
    ids=["local", "local-stream", "cerebras", "cerebras-stream", "fallback", "fallback-stream"],
)
def test_each_request_costs_exactly_the_configured_price(
    proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, text: str, stream: bool, fault: str | None, answered_by: str
) -> None:
    if fault:
        cerebras_upstream.inject(fault)
    before = books(proxy)["totals"]
    # Streams ask for the usage chunk, as Cline does: then every upstream reports its own count.
    headers = ask(proxy, text, stream=stream, stream_options={"include_usage": True} if stream else None)
    after = books_holding(proxy, before["requests"] + 1)["totals"]
    assert headers["x-glm-saver-route"] == answered_by
    upstream = cerebras_upstream if answered_by == "cerebras" else local_upstream
    (answer,) = upstream.served
    cost = cerebras_cost(answer.prompt_tokens, answer.completion_tokens) if answered_by == "cerebras" else 0.0
    cloud_equivalent = cerebras_cost(answer.prompt_tokens, answer.completion_tokens)
    assert after["requests"] - before["requests"] == 1
    assert after["prompt_tokens"] - before["prompt_tokens"] == answer.prompt_tokens
    assert after["completion_tokens"] - before["completion_tokens"] == answer.completion_tokens
    assert after["cost_usd"] - before["cost_usd"] == pytest.approx(cost, rel=1e-9, abs=1e-15)
    assert after["savings_usd"] - before["savings_usd"] == pytest.approx(cloud_equivalent - cost, rel=1e-9, abs=1e-15)


def test_a_stream_asked_for_in_extra_body_is_answered_and_booked_at_the_configured_price(proxy: Proxy, cerebras_upstream: FakeUpstream) -> None:
    """LiteLLM merges a client's `extra_body` over what it sends: a stream asked for there reached
    Cerebras (which bills it) while LiteLLM waited for JSON, failed, and booked the call as free."""
    before = books(proxy)["totals"]
    body = {"model": "glm-saver", "messages": [{"role": "user", "content": COMPLEX}], "extra_body": {"stream": True}}
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=60)
    assert (response.status_code, response.headers.get("x-glm-saver-route")) == (200, "cerebras"), response.text[:300]
    after = books_holding(proxy, before["requests"] + 1)["totals"]
    prompt, completion = served_tokens(cerebras_upstream)
    assert after["cost_usd"] - before["cost_usd"] == pytest.approx(cerebras_cost(prompt, completion), rel=1e-9, abs=1e-15)


def test_a_cerebras_stream_without_usage_is_counted_from_its_text(proxy: Proxy, cerebras_upstream: FakeUpstream) -> None:
    cerebras_upstream.configure(stream_usage=False)
    try:
        described = books(proxy)
        before = described["by_model"].get("cerebras", {"completion_tokens": 0, "cost_usd": 0.0})
        ask(proxy, COMPLEX, stream=True)
        after = books_holding(proxy, described["totals"]["requests"] + 1)["by_model"]["cerebras"]
    finally:
        cerebras_upstream.configure(stream_usage=True)
    (answer,) = cerebras_upstream.served
    assert after["completion_tokens"] - before["completion_tokens"] == answer.completion_tokens > 0
    assert after["cost_usd"] - before["cost_usd"] > 0


def test_totals_equal_what_the_upstreams_served_and_are_split_by_model_route_and_strategy(
    proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    before = books(proxy)
    for text, stream in ((SIMPLE, False), (COMPLEX, True), (COMPLEX, False), (SIMPLE, True)):
        ask(proxy, text, stream=stream, stream_options={"include_usage": True} if stream else None)
    after = books_holding(proxy, before["totals"]["requests"] + 4)

    def grew(table: str, name: str, field: str) -> float:
        return after[table].get(name, {}).get(field, 0) - before[table].get(name, {}).get(field, 0)

    local_prompt, local_completion = served_tokens(local_upstream)
    cloud_prompt, cloud_completion = served_tokens(cerebras_upstream)
    assert grew("by_model", "local", "prompt_tokens") == local_prompt
    assert grew("by_model", "cerebras", "completion_tokens") == cloud_completion
    assert after["totals"]["prompt_tokens"] - before["totals"]["prompt_tokens"] == local_prompt + cloud_prompt
    assert grew("by_model", "cerebras", "cost_usd") == pytest.approx(cerebras_cost(cloud_prompt, cloud_completion), rel=1e-9)
    assert grew("by_model", "local", "cost_usd") == 0
    assert grew("by_model", "local", "savings_usd") == pytest.approx(cerebras_cost(local_prompt, local_completion), rel=1e-9)
    assert (grew("by_route", "local", "requests"), grew("by_route", "cerebras", "requests")) == (2, 2)
    assert grew("by_strategy", "smart_routing", "requests") == 4
    assert grew("by_key", "master-key", "requests") == 4


class WebhookReceiver:
    """A local HTTP endpoint that keeps the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received


@pytest.fixture()
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


# A budget holds each Cerebras request's worst case (prompt + max_tokens) while it is in flight: a
# small max_tokens lets these tiny budgets take a few requests before they are full.
SMALL_ANSWER = 16


def spend_until_budget_is_gone(proxy: Proxy, limit: int = 20) -> None:
    for _ in range(limit):
        if ask(proxy, COMPLEX, max_tokens=SMALL_ANSWER)["x-glm-saver-route"] == "local":
            return
    raise AssertionError("the budget never ran out")


def test_budget_alerts_fire_once_each_then_local_answers_at_no_cost_and_spend_survives_a_restart(
    start_proxy: Callable[..., Proxy], cerebras_upstream: FakeUpstream, webhook: WebhookReceiver
) -> None:
    # One complex ask costs about $0.00006 here: the budget lasts a few requests.
    budget = {"limit_usd": 0.0002, "period": "daily", "action": "local"}
    proxy = start_proxy(glm_saver={"budget": budget, "alert_webhook": webhook.url})
    spend_until_budget_is_gone(proxy)
    for _ in range(3):  # spending stops; nothing fires twice
        headers = ask(proxy, COMPLEX, max_tokens=SMALL_ANSWER)
        assert headers["x-glm-saver-route"] == "local" and headers["x-glm-saver-reason"].startswith("budget")
        assert "of $0.0002" in headers["x-glm-saver-reason"]  # the limit as set, not rounded to "$0.00"
    used = books(proxy)["budgets"]["global"]
    # Full: it could not take the next request's worst case, so every alert has fired; never past the limit.
    assert 0 < used["spent_usd"] <= 0.0002 and used["alerts_fired"] == [0.5, 0.8, 1.0]

    alerts = webhook.wait_for(3)
    assert sorted(alert["threshold"] for alert in alerts) == [0.5, 0.8, 1.0]
    assert {alert["budget"] for alert in alerts} == {"global"}
    for threshold in ("0.5", "0.8", "1"):
        assert metric(proxy, f'glm_saver_budget_alerts_total{{budget="global",threshold="{threshold}"}}') == 1
    poll(lambda: proxy.log().count("budget global reached") >= 3, "the three alerts in the proxy's log (written by the log thread)", 20)
    log = proxy.log()
    for percent in ("50%", "80%", "100%"):
        assert log.count(f"budget global reached {percent}") == 1
    assert len(re.findall(r"budget global reached \d+% \(\$0\.000\d+ of \$0\.0002, daily", log)) == 3  # spend and limit in dollars, no exponent

    cloud_requests = len(cerebras_upstream.requests)
    before = books(proxy)["totals"]
    assert ask(proxy, COMPLEX)["x-glm-saver-route"] == "local"
    assert books_holding(proxy, before["requests"] + 1)["totals"]["cost_usd"] == before["cost_usd"]
    assert len(cerebras_upstream.requests) == cloud_requests

    config = proxy.config
    proxy.stop()
    proxy.start(config)
    assert books(proxy)["budgets"]["global"]["spent_usd"] == pytest.approx(used["spent_usd"])
    assert ask(proxy, COMPLEX)["x-glm-saver-route"] == "local"


def test_reject_action_answers_429_once_the_budget_cannot_take_a_request(start_proxy: Callable[..., Proxy], cerebras_upstream: FakeUpstream) -> None:
    proxy = start_proxy(glm_saver={"budget": {"limit_usd": 0.0001, "action": "reject"}})
    with pytest.raises(openai.RateLimitError) as raised:
        for _ in range(20):
            ask(proxy, COMPLEX, max_tokens=SMALL_ANSWER // 2)
    assert re.search(r"budget global has \$0\.\d+ of \$0\.0001 left \(monthly\); the request may cost \$0\.0000[1-9]", raised.value.body["message"])
    assert raised.value.body["type"] == "budget_exceeded"
    served = len(cerebras_upstream.requests)
    assert served >= 1
    with pytest.raises(openai.RateLimitError):  # a request with no max_tokens may cost up to 16K tokens
        ask(proxy, COMPLEX)
    assert ask(proxy, SIMPLE)["x-glm-saver-route"] == "local"  # free answers still flow
    assert len(cerebras_upstream.requests) == served
    assert 0 < books(proxy)["budgets"]["global"]["spent_usd"] <= 0.0001


def test_two_proxies_on_one_redis_enforce_one_budget(tmp_path: Path, start_proxy: Callable[..., Proxy], cerebras_upstream: FakeUpstream) -> None:
    with running_redis(tmp_path) as redis_url:
        shared = {"glm_saver": {"state": "redis", "redis_url": redis_url, "budget": {"limit_usd": 0.0003, "action": "local"}}}
        proxies = [start_proxy(**shared), start_proxy(**shared)]
        routes = [ask(proxies[i % 2], COMPLEX, max_tokens=SMALL_ANSWER)["x-glm-saver-route"] for i in range(12)]
        first_local = routes.index("local")
        assert set(routes[first_local:]) == {"local"}  # once spent, spent for both
        spent = [books_holding(p, len(routes))["budgets"]["global"]["spent_usd"] for p in proxies]
        assert spent[0] == spent[1] == pytest.approx(cerebras_cost(*served_tokens(cerebras_upstream)), rel=1e-9)
        # Together they overshoot by at most the request that crossed the line, not one per proxy.
        assert len(cerebras_upstream.served) == first_local


def test_per_key_budgets_stop_one_key_while_the_other_is_still_served_by_cerebras(start_proxy: Callable[..., Proxy]) -> None:
    alice, bob = "sk-alice-budget-test-1111", "sk-bob-budget-test-2222"
    keys = [
        {"alias": "alice", "key_sha256": hashlib.sha256(alice.encode()).hexdigest(), "budget": {"limit_usd": 0.0001, "action": "local"}},
        {"alias": "bob", "key_sha256": hashlib.sha256(bob.encode()).hexdigest(), "budget": {"limit_usd": 1.0}},
    ]
    proxy = start_proxy(glm_saver={"keys": keys})
    routes = [ask(proxy, COMPLEX, key=alice, max_tokens=SMALL_ANSWER // 2)["x-glm-saver-route"] for _ in range(6)]
    assert routes[0] == "cerebras" and routes[-1] == "local"
    assert ask(proxy, COMPLEX, key=alice, max_tokens=SMALL_ANSWER // 2)["x-glm-saver-reason"].startswith("budget: budget key:alice has $")
    assert ask(proxy, COMPLEX, key=bob)["x-glm-saver-route"] == "cerebras"
    described = books_holding(proxy, 8)
    assert 0 < described["budgets"]["key:alice"]["spent_usd"] <= 0.0001
    assert described["by_key"]["bob"]["requests"] == 1 and described["by_key"]["alice"]["requests"] == 7
    with pytest.raises(openai.AuthenticationError):
        ask(proxy, SIMPLE, key="sk-nobody-0000")
