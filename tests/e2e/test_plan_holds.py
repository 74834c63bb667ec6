"""Issue 11, "One plan per request": the plan the plugin makes for a request holds on every path.

Budgets hold on every route a key reaches (direct `cerebras`, text completions); keys reach only the
routes the plan covers; a spent `local` budget or a too-big prompt never ends on Cerebras / local by
way of LiteLLM's fallbacks; a fallback hop to Cerebras is clamped; a verify call reserves headroom;
concurrent requests at the edge of a budget on two proxies do not overspend it together; bad JSON
bodies, unreachable upstreams and a bad `alert_webhook` are answered cleanly.

Each test goes through real `litellm` proxy processes in front of the fake upstreams (and a real
redis-server where state is shared).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import polling
from tests.e2e.books import CEREBRAS_IN, CEREBRAS_OUT
from tests.e2e.held import settled
from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config, run_proxy_until_exit
from tests.e2e.redis_server import running_redis
from tests.fakes.answers import ReplyRule, requested_max_tokens
from tests.fakes.tokens import count_tokens
from tests.fakes.upstream import FakeUpstream

MAX_TOKENS_CAP = 16384  # the shipped rate_limits.max_tokens_cap
SIMPLE = "hello, what is a tuple?"
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"
# ~10K tokens: over the local window (8192), inside the cloud window (32768).
BIG = "Fix the typo. " + "lorem ipsum dolor sit amet " * 1700
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
DEADLINE = 20.0  # seconds a polled condition may take on a busy 2-core machine

SPENDER, SAVER, PLAIN = "sk-plan-spender-0a1b2c3d", "sk-plan-saver-4e5f6a7b", "sk-plan-plain-8c9d0e1f"
TINY = 0.0002  # $: a few small Cerebras answers (~$0.00006 each here) spend it
KEYS = [
    {"alias": "spender", "key_sha256": hashlib.sha256(SPENDER.encode()).hexdigest(), "budget": {"limit_usd": TINY, "period": "daily", "action": "reject"}},
    {"alias": "saver", "key_sha256": hashlib.sha256(SAVER.encode()).hexdigest(), "budget": {"limit_usd": TINY, "period": "daily", "action": "local"}},
    {"alias": "plain", "key_sha256": hashlib.sha256(PLAIN.encode()).hexdigest()},
]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def post(proxy: Proxy, path: str, body: Any, headers: dict[str, str], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{proxy.url}{path}", json=body, headers=headers, timeout=timeout)


def chat_body(text: str, model: str = "glm-saver", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def openai_error(response: httpx.Response) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), response.text
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"].strip()
    return error


def stats(proxy: Proxy) -> dict[str, Any]:
    response = httpx.get(f"{proxy.url}/stats", headers=ADMIN, timeout=10)
    response.raise_for_status()
    return response.json()


def poll(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    return polling.poll(condition, what, timeout)


def cerebras_cost(prompt: int, completion: int) -> float:
    return prompt * CEREBRAS_IN + completion * CEREBRAS_OUT


def sent_max_tokens(request_body: dict[str, Any]) -> int | None:
    value = request_body.get("max_completion_tokens", request_body.get("max_tokens"))
    return None if value is None else int(value)


def wait_until_cerebras_rests_no_more(proxy: Proxy) -> None:
    poll(lambda: stats(proxy)["cerebras_headroom"]["exhausted_for"] == 0, "cerebras still resting after a 429")


@pytest.fixture(autouse=True)
def _both_upstreams_up(local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> Iterator[None]:
    """A test that stops a fake starts it again even when it fails half-way."""
    yield
    for upstream in (local_upstream, cerebras_upstream):
        if not upstream.running:
            upstream.start()


# ---- one proxy with three config keys: a `reject` budget, a `local` budget, no budget ------------


@pytest.fixture(scope="module")
def keyed(start_proxy: Callable[..., Proxy]) -> Proxy:
    # No cooldowns: an upstream error one test provokes on purpose (a 404 for /v1/completions from
    # the fakes, which serve chat only) must not leave a group cooling down for the next test.
    return start_proxy(glm_saver={"keys": KEYS}, router_settings={"disable_cooldowns": True})


def spend_key_budget(proxy: Proxy, key: str, alias: str) -> None:
    """Small Cerebras answers under `key` until its plan says the budget is spent: the books show it
    used up, or the next request is refused (`reject`) or sent local (`local`) for the budget.
    max_tokens is small so that a request whose worst case is reserved up front still fits at first."""
    budget = f"key:{alias}"
    for _ in range(20):
        if stats(proxy)["books"]["budgets"][budget]["used"] >= 1:
            return
        before = stats(proxy)["books"]["totals"]["requests"]
        answered = post(proxy, "/v1/chat/completions", chat_body(COMPLEX, max_tokens=5), {**bearer(key), "x-glm-saver-route": "cerebras"})
        if answered.status_code == 429:
            assert openai_error(answered)["type"] == "budget_exceeded", answered.text
            return
        assert answered.status_code == 200, answered.text
        if answered.headers.get("x-glm-saver-route") == "local":
            assert answered.headers["x-glm-saver-reason"].startswith("budget"), answered.headers["x-glm-saver-reason"]
            return
        poll(lambda before=before: stats(proxy)["books"]["totals"]["requests"] > before, "the answer in the books")
    raise AssertionError(f"budget {budget} never ran out")


@pytest.fixture()
def spent_reject_key(keyed: Proxy, cerebras_upstream: FakeUpstream) -> Proxy:
    spend_key_budget(keyed, SPENDER, "spender")
    cerebras_upstream.reset_records()
    return keyed


@pytest.fixture()
def spent_local_key(keyed: Proxy, cerebras_upstream: FakeUpstream, local_upstream: FakeUpstream) -> Proxy:
    spend_key_budget(keyed, SAVER, "saver")
    cerebras_upstream.reset_records()
    local_upstream.reset_records()
    return keyed


# Asks that can only be answered by Cerebras (a complex ask for glm-saver: a simple one may rightly
# be answered locally while the budget still has a little left).
SPENT_BUDGET_ASKS = {
    "chat-cerebras": ("/v1/chat/completions", chat_body(SIMPLE, model="cerebras")),
    "text-completion-glm-saver": ("/v1/completions", {"model": "glm-saver", "prompt": COMPLEX, "max_tokens": 16}),
    "text-completion-cerebras": ("/v1/completions", {"model": "cerebras", "prompt": SIMPLE, "max_tokens": 16}),
}


@pytest.mark.parametrize("name", list(SPENT_BUDGET_ASKS))
def test_a_spent_reject_budget_refuses_every_route_to_cerebras_with_429(spent_reject_key: Proxy, cerebras_upstream: FakeUpstream, name: str) -> None:
    path, body = SPENT_BUDGET_ASKS[name]
    response = post(spent_reject_key, path, body, bearer(SPENDER))
    assert response.status_code == 429, f"{response.status_code}: {response.text[:300]}"
    assert openai_error(response)["type"] == "budget_exceeded"
    assert cerebras_upstream.prompted_requests == []


# Routes a config key may reach (answered by something other than 401/403).
KEY_ROUTES = [
    ("POST", "/v1/chat/completions", chat_body(SIMPLE, model="local")),
    ("POST", "/chat/completions", chat_body(SIMPLE, model="local")),
    ("POST", "/v1/completions", {"model": "local", "prompt": SIMPLE, "max_tokens": 16}),
    ("POST", "/completions", {"model": "local", "prompt": SIMPLE, "max_tokens": 16}),
    ("GET", "/v1/models", None),
    ("GET", "/models", None),
    ("GET", "/v1/model/info", None),
    ("GET", "/model/info", None),
]
# Model routes outside the plan: a config key gets 403.
OTHER_ROUTES = [
    ("POST", "/v1/responses", {"model": "glm-saver", "input": SIMPLE}),
    ("POST", "/v1/messages", {"model": "glm-saver", "max_tokens": 16, "messages": [{"role": "user", "content": SIMPLE}]}),
    ("POST", "/v1/embeddings", {"model": "glm-saver", "input": SIMPLE}),
    ("GET", "/v1/files", None),
    ("GET", "/v1/batches", None),
    ("POST", "/anthropic/v1/messages", {"model": "glm-saver", "max_tokens": 16, "messages": [{"role": "user", "content": SIMPLE}]}),
    ("POST", "/openai/v1/chat/completions", chat_body(SIMPLE)),
]


def call(proxy: Proxy, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(method, f"{proxy.url}{path}", json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(("method", "path", "body"), KEY_ROUTES, ids=[f"{m} {p}" for m, p, _ in KEY_ROUTES])
def test_a_config_key_reaches_chat_completion_and_model_list_routes(keyed: Proxy, method: str, path: str, body: Any) -> None:
    response = call(keyed, method, path, body, bearer(PLAIN))
    assert response.status_code not in (401, 403), f"{response.status_code}: {response.text[:300]}"


@pytest.mark.parametrize(("method", "path", "body"), OTHER_ROUTES, ids=[f"{m} {p}" for m, p, _ in OTHER_ROUTES])
def test_a_config_key_gets_403_on_every_other_model_route(
    keyed: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, method: str, path: str, body: Any
) -> None:
    response = call(keyed, method, path, body, bearer(PLAIN))
    assert response.status_code == 403, f"{response.status_code}: {response.text[:300]}"
    openai_error(response)
    for upstream in (local_upstream, cerebras_upstream):
        assert upstream.prompted_requests == []


@pytest.mark.parametrize(("method", "path", "body"), [OTHER_ROUTES[0], OTHER_ROUTES[3]], ids=["POST /v1/responses", "GET /v1/files"])
def test_the_master_key_still_reaches_the_other_model_routes(keyed: Proxy, method: str, path: str, body: Any) -> None:
    response = call(keyed, method, path, body, ADMIN)
    assert response.status_code not in (401, 403), f"{response.status_code}: {response.text[:300]}"


def test_a_spent_local_budget_with_local_down_is_an_error_never_a_cerebras_answer(
    spent_local_key: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    local_upstream.stop()
    try:
        response = post(spent_local_key, "/v1/chat/completions", chat_body(SIMPLE), bearer(SAVER))
    finally:
        local_upstream.start()
    # Spent: no fallback is planned and local is unreachable (503); left too small for Cerebras'
    # worst case: the fallback hop is refused (429 budget_exceeded). Never LiteLLM's 500.
    error = openai_error(response)
    assert response.status_code in (429, 503), f"{response.status_code}: {response.text[:300]}"
    assert response.status_code == 503 or error["type"] == "budget_exceeded", error
    assert cerebras_upstream.requests == [], "the spent budget's request reached Cerebras"


# ---- the session's proxy (shipped config) ---------------------------------------------------------


@pytest.mark.parametrize(("mode", "params"), [("500", {}), ("429", {"retry_after": 1})], ids=["500", "429"])
def test_a_prompt_too_big_for_local_is_not_sent_local_when_cerebras_fails(
    proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, mode: str, params: dict[str, Any]
) -> None:
    cerebras_upstream.inject(mode, **params)
    try:
        response = post(proxy, "/v1/chat/completions", chat_body(BIG), ADMIN)
        assert response.status_code != 200, f"answered {response.headers.get('x-glm-saver-route')}: {response.text[:200]}"
        openai_error(response)
        assert [r.status for r in cerebras_upstream.requests] == [int(mode)]
        assert local_upstream.requests == [], "a prompt over the local window was sent local"
    finally:
        if mode == "429":
            wait_until_cerebras_rests_no_more(proxy)


@pytest.mark.parametrize(
    ("model", "headers"),
    [("local", {}), ("glm-saver", {"x-glm-saver-route": "local"})],
    ids=["model-local", "glm-saver-routed-local"],
)
def test_a_fallback_hop_to_cerebras_is_clamped_to_the_cap(
    proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, model: str, headers: dict[str, str]
) -> None:
    local_upstream.inject("500")
    response = post(proxy, "/v1/chat/completions", chat_body(SIMPLE, model=model, max_tokens=131072), {**ADMIN, **headers})
    assert [r.status for r in local_upstream.requests] == [500]
    assert response.status_code == 200, response.text[:300]
    assert response.json()["choices"][0]["message"]["content"] == "Hello from cerebras."
    (hop,) = cerebras_upstream.requests
    asked = sent_max_tokens(hop.body)
    assert asked is not None and asked <= MAX_TOKENS_CAP, f"the fallback hop asked Cerebras for max_tokens={asked}"


# What a client may tuck into `extra_body` (which LiteLLM merges over the request it sends, past the
# plan and the gate): fields the clamp, the headroom reservation and the budget hold are sized from.
SMUGGLED = {
    "max_tokens": {"max_tokens": 131072},
    "max_completion_tokens": {"max_completion_tokens": 131072},
    "n": {"n": 4},
    "messages": {"messages": [{"role": "user", "content": BIG}]},
    "tools": {"tools": [{"type": "function", "function": {"name": "f", "description": BIG, "parameters": {"type": "object"}}}]},
    "stream": {"stream": True},
}


@pytest.mark.parametrize("name", list(SMUGGLED))
def test_extra_body_cannot_change_the_request_the_gate_held_cerebras_for(keyed: Proxy, cerebras_upstream: FakeUpstream, name: str) -> None:
    body = chat_body(SIMPLE, model="cerebras", max_tokens=16, extra_body=SMUGGLED[name])
    response = post(keyed, "/v1/chat/completions", body, bearer(PLAIN))
    assert response.status_code == 200, response.text[:300]
    (sent,) = cerebras_upstream.requests
    assert requested_max_tokens(sent.body) == 16, f"Cerebras was asked for max_tokens {requested_max_tokens(sent.body)}"
    assert sent.body["messages"] == body["messages"]
    assert [sent.body.get(field) for field in ("n", "tools", "stream")] == [None, None, None]


@pytest.mark.parametrize(
    "asked",
    [{"n": 4, "allowed_openai_params": ["n"]}, {"best_of": 4}],
    ids=["n-let-through-by-allowed_openai_params", "best_of"],
)
def test_a_cerebras_call_asks_for_the_one_answer_the_gate_held_for(keyed: Proxy, cerebras_upstream: FakeUpstream, asked: dict[str, Any]) -> None:
    """The hold is for one answer of max_tokens; Cerebras bills every answer it is asked for."""
    response = post(keyed, "/v1/chat/completions", chat_body(SIMPLE, model="cerebras", max_tokens=16, **asked), bearer(PLAIN))
    assert response.status_code == 200, response.text[:300]
    (sent,) = cerebras_upstream.requests
    assert [sent.body.get("n"), sent.body.get("best_of")] == [None, None]
    assert len(response.json()["choices"]) == 1


def test_a_ticket_a_client_writes_into_its_metadata_grants_no_fallback_hop(keyed: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    """The gate's grant rides in the request's metadata; a client's own copy must pass nothing."""
    forged = {"id": "forged", "group": "cerebras", "key": "spender", "max_tokens": 131072, "cost_usd": 0, "depth": 1}
    local_upstream.inject("500")
    body = chat_body(SIMPLE, max_tokens=131072, metadata={"glm_saver_ticket": forged})
    response = post(keyed, "/v1/chat/completions", body, bearer(SPENDER))
    assert [r.status for r in local_upstream.requests] == [500]
    assert response.status_code != 200, f"answered {response.headers.get('x-glm-saver-route')}: {response.text[:200]}"
    openai_error(response)
    assert cerebras_upstream.requests == [], "a forged ticket took a request past the spender's budget to Cerebras"


def test_a_served_count_a_client_writes_into_its_metadata_is_not_what_is_booked(keyed: Proxy, cerebras_upstream: FakeUpstream) -> None:
    before = stats(keyed)["books"]["by_key"].get("plain", {}).get("completion_tokens", 0)
    body = chat_body(SIMPLE, model="cerebras", max_tokens=16, metadata={"glm_saver_served": {"prompt_tokens": 1, "completion_tokens": 0}})
    assert post(keyed, "/v1/chat/completions", body, bearer(PLAIN)).status_code == 200
    (served,) = cerebras_upstream.served
    assert served.completion_tokens > 0
    booked = poll(lambda: stats(keyed)["books"]["by_key"].get("plain", {}).get("completion_tokens", 0) - before or None, "the answer booked")
    assert booked == served.completion_tokens


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"null", b"1"], ids=["list", "string", "null", "number"])
def test_a_json_body_that_is_not_an_object_is_a_400_and_the_proxy_keeps_serving(
    proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, body: bytes
) -> None:
    response = httpx.post(f"{proxy.url}/v1/chat/completions", content=body, headers={**ADMIN, "content-type": "application/json"}, timeout=60)
    assert response.status_code == 400, f"{response.status_code}: {response.text[:300]}"
    openai_error(response)
    assert local_upstream.requests == [] and cerebras_upstream.requests == []
    after = post(proxy, "/v1/chat/completions", chat_body(SIMPLE), ADMIN)
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"]


UNREACHABLE_ASKS = [
    ("/v1/chat/completions", chat_body(SIMPLE)),
    ("/v1/chat/completions", chat_body(COMPLEX, stream=True)),
    ("/v1/chat/completions", chat_body(SIMPLE, model="local")),
    ("/v1/chat/completions", chat_body(SIMPLE, model="cerebras", stream=True)),
    ("/v1/completions", {"model": "glm-saver", "prompt": SIMPLE, "max_tokens": 16}),
]


def test_errors_do_not_reveal_the_upstreams_urls(proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    local_upstream.stop()
    cerebras_upstream.stop()
    try:
        answers = [post(proxy, path, body, ADMIN) for path, body in UNREACHABLE_ASKS]
    finally:
        local_upstream.start()
        cerebras_upstream.start()
    for (path, body), response in zip(UNREACHABLE_ASKS, answers, strict=True):
        what = f"{path} {body['model']} stream={body.get('stream', False)}"
        shown = response.text + "\n" + "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        assert response.status_code >= 500 or "error" in response.text, f"{what}: {response.status_code} {response.text[:200]}"
        for upstream in (local_upstream, cerebras_upstream):
            assert not re.search(rf":{upstream.port}(?!\d)", shown), f"{what} shows an upstream's port: {shown[:600]}"
        assert "http://" not in shown and "127.0.0.1" not in shown, f"{what}: {shown[:600]}"


# ---- a bad alert_webhook stops the start ------------------------------------------------------------


@pytest.mark.parametrize("webhook", ["ftp://x", "not a url"])
def test_a_bad_alert_webhook_stops_startup_naming_the_key(tmp_path: Path, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, webhook: str) -> None:
    config = proxy_config(local_upstream.url)
    config["glm_saver"] = {"alert_webhook": webhook}
    try:
        finished = run_proxy_until_exit(tmp_path, config, cerebras_upstream.url, timeout=60)
    except subprocess.TimeoutExpired as running:
        raise AssertionError(f"the proxy started with alert_webhook {webhook!r}") from running
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output[-2000:]
    assert "glm_saver.alert_webhook" in output, output[-2000:]


# ---- speculative: a verify is clamped and reserves headroom ---------------------------------------

UNSURE = "Which is the largest planet?"
UNSURE_DRAFT = "Jupiter is the largest planet."
VERIFY_TOKENS_PER_MINUTE = 40_000  # one verify (~16.4K reserved) fits; after two more, none does


@pytest.fixture(scope="module")
def verify_cerebras() -> Iterator[FakeUpstream]:
    # The window outlasts the test: what the fake says is left stays left.
    with FakeUpstream("cerebras", replies=[ReplyRule(UNSURE_DRAFT, "ACCEPT")], tokens_per_minute=VERIFY_TOKENS_PER_MINUTE, window_seconds=3600.0) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def speculative(start_proxy: Callable[..., Proxy], verify_cerebras: FakeUpstream, local_upstream: FakeUpstream) -> Iterator[Proxy]:
    saved = local_upstream.options
    # An unsure right draft: in the verify band.
    local_upstream.configure(replies=[ReplyRule("largest planet", UNSURE_DRAFT, -0.9)])
    try:
        yield start_proxy(cerebras=verify_cerebras, glm_saver={"strategy": "speculative_decoding"})
    finally:
        local_upstream.configure(replies=saved.replies)


def verify_requests(cerebras: FakeUpstream) -> list[Any]:
    return [r for r in cerebras.requests if "<draft>" in str(r.body["messages"][-1]["content"])]


def test_a_verify_asks_for_at_most_the_cap_and_is_skipped_without_headroom(speculative: Proxy, verify_cerebras: FakeUpstream) -> None:
    unsure = chat_body(UNSURE, max_tokens=131072)
    # A verify that is sent asks Cerebras for no more than the cap.
    first = post(speculative, "/v1/chat/completions", unsure, ADMIN)
    assert first.status_code == 200, first.text[:300]
    assert first.headers["x-glm-saver-route"] == "draft-verified", first.headers.get("x-glm-saver-reason")
    (verify,) = verify_requests(verify_cerebras)
    asked = sent_max_tokens(verify.body)
    assert asked is not None and asked <= MAX_TOKENS_CAP, f"the verify asked for max_tokens={asked}"

    # Spend the minute until the plugin itself says Cerebras has no room for a capped request.
    for _ in range(4):
        spent = post(speculative, "/v1/chat/completions", chat_body(COMPLEX, max_tokens=MAX_TOKENS_CAP), {**ADMIN, "x-glm-saver-route": "cerebras"})
        assert spent.status_code == 200, spent.text[:300]
        if spent.headers["x-glm-saver-route"] == "local":
            assert spent.headers["x-glm-saver-reason"].startswith("rate-limit-tokens"), spent.headers["x-glm-saver-reason"]
            break
    else:
        raise AssertionError("the minute's tokens never ran out")
    verify_cerebras.reset_records()

    skipped = post(speculative, "/v1/chat/completions", chat_body(UNSURE, max_tokens=MAX_TOKENS_CAP), ADMIN)
    assert skipped.status_code == 200, skipped.text[:300]
    reason = skipped.headers["x-glm-saver-reason"]
    assert verify_requests(verify_cerebras) == [], f"a verify was sent without headroom ({reason})"
    assert verify_cerebras.rate_limited == 0
    assert skipped.headers["x-glm-saver-route"] == "draft-accepted", reason
    assert skipped.json()["choices"][0]["message"]["content"] == UNSURE_DRAFT
    assert "verify-skipped" in reason or "rate-limit" in reason, reason


VERIFY_TIMEOUT = 2.0  # seconds (speculative.verify_timeout): a verify slower than this is given up
SLOW = 60.0  # a first byte this late outlasts the verify timeout


@pytest.fixture(scope="module")
def impatient(start_proxy: Callable[..., Proxy], local_upstream: FakeUpstream) -> Iterator[Proxy]:
    """A cascade that gives a verify up after VERIFY_TIMEOUT, with a global budget (its holds show in /stats)."""
    saved = local_upstream.options
    local_upstream.configure(replies=[ReplyRule("largest planet", UNSURE_DRAFT, -0.9)])
    cascade = {"strategy": "speculative_decoding", "speculative": {"verify_timeout": VERIFY_TIMEOUT}}
    try:
        yield start_proxy(glm_saver={**cascade, "budget": {"limit_usd": 100.0, "period": "daily", "action": "reject"}})
    finally:
        local_upstream.configure(replies=saved.replies)


def test_a_verify_given_up_at_its_timeout_gives_back_its_reservation_and_its_hold(impatient: Proxy, cerebras_upstream: FakeUpstream) -> None:
    cerebras_upstream.inject("slow_first_byte", delay=SLOW)
    response = post(impatient, "/v1/chat/completions", chat_body(UNSURE), ADMIN)
    assert response.status_code == 200, response.text[:300]
    assert "verify-failed" in response.headers["x-glm-saver-reason"], response.headers["x-glm-saver-reason"]
    assert len(verify_requests(cerebras_upstream)) == 1
    settled(impatient)


# ---- two proxies on one Redis, a burst at 99% of a `reject` budget --------------------------------

PRE_SPEND = "Summarise this. " + "lorem ipsum dolor sit amet " * 1200  # ~7K tokens: most of the budget
BURST = 20
BURST_MAX_TOKENS = 8  # "Hello from cerebras." is shorter: each answer's worst case is known
CEREBRAS_REPLY = "Hello from cerebras."


def _burst_request_cost() -> float:
    return cerebras_cost(count_tokens(SIMPLE), count_tokens(CEREBRAS_REPLY))


def _budget_limit() -> float:
    """The pre-spend is 99% of it: a few burst requests fit in what is left, not twenty."""
    return cerebras_cost(count_tokens(PRE_SPEND), count_tokens(CEREBRAS_REPLY)) / 0.99


def test_a_burst_at_99_percent_of_a_reject_budget_on_two_proxies_does_not_overspend(
    tmp_path: Path, start_proxy: Callable[..., Proxy], cerebras_upstream: FakeUpstream
) -> None:
    limit = _budget_limit()
    worst_case = cerebras_cost(count_tokens(SIMPLE), BURST_MAX_TOKENS)
    assert 2 * worst_case < limit * 0.01 < BURST * _burst_request_cost()  # the scenario: some fit, not all
    with running_redis(tmp_path) as redis_url:
        shared = {"glm_saver": {"state": "redis", "redis_url": redis_url, "budget": {"limit_usd": limit, "period": "daily", "action": "reject"}}}
        proxies = [start_proxy(**shared), start_proxy(**shared)]
        cloud = {**ADMIN, "x-glm-saver-route": "cerebras"}
        # Small max_tokens: its worst case fits the budget even if reserved up front.
        pre = post(proxies[0], "/v1/chat/completions", chat_body(PRE_SPEND, max_tokens=BURST_MAX_TOKENS), cloud)
        assert (pre.status_code, pre.headers["x-glm-saver-route"]) == (200, "cerebras"), pre.text[:300]
        poll(lambda: stats(proxies[1])["books"]["totals"]["requests"] == 1, "the pre-spend in the shared books")
        used = stats(proxies[1])["books"]["budgets"]["global"]["used"]
        assert used == pytest.approx(0.99, abs=0.002), used

        body = chat_body(SIMPLE, max_tokens=BURST_MAX_TOKENS)
        with ThreadPoolExecutor(max_workers=BURST) as pool:
            responses = list(pool.map(lambda i: post(proxies[i % 2], "/v1/chat/completions", body, cloud), range(BURST)))

        answered = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(answered) + len(refused) == BURST, [(r.status_code, r.text[:100]) for r in responses]
        assert refused, "no request of the burst was refused"
        assert all(openai_error(r)["type"] == "budget_exceeded" for r in refused)
        poll(
            lambda: all(stats(p)["books"]["totals"]["requests"] == 1 + len(answered) for p in proxies),
            "every answered request in the shared books",
        )
        budget = stats(proxies[0])["books"]["budgets"]["global"]
        served_cost = sum(cerebras_cost(a.prompt_tokens, a.completion_tokens) for a in cerebras_upstream.served)
        assert len(cerebras_upstream.served) == 1 + len(answered)
        assert budget["spent_usd"] <= limit, f"spent ${budget['spent_usd']:.6f} of ${limit:.6f} ({len(answered)} of {BURST} answered)"
        assert served_cost <= limit, f"answers cost ${served_cost:.6f} of ${limit:.6f} ({len(answered)} of {BURST} answered)"
        assert budget["spent_usd"] == pytest.approx(served_cost, rel=1e-9)
