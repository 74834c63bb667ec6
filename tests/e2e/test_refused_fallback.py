"""A request whose model failed and whose fallback the plugin refused (budget, rate limits, a
Cerebras at rest after a 429): the client gets the refusal's status (429 budget_exceeded, 429 with
retry-after) in OpenAI's error shape, with a message that says what happened, not LiteLLM's 500.

Real `litellm` proxy processes in front of the fake upstreams, asked through the OpenAI client.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.e2e.proxy import MASTER_KEY, Proxy
from tests.fakes.upstream import FakeUpstream

SIMPLE = "hello, what is a tuple?"  # the classifier sends it local
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"
ALICE = "sk-refused-alice-0a1b2c3d"
# Far below one Cerebras call's worst case (prompt + 16384 max_tokens at $2.75/M: ~$0.045).
SMALL_BUDGET = {"limit_usd": 0.0001, "period": "daily", "action": "local"}


def client_for(proxy: Proxy, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=60)


def ask(client: openai.OpenAI, text: str, stream: bool) -> None:
    reply = client.chat.completions.create(model="glm-saver", messages=[{"role": "user", "content": text}], stream=stream)
    if stream:
        list(reply)  # type: ignore[arg-type]


def assert_plain_error(error: openai.APIStatusError, upstreams: tuple[FakeUpstream, ...]) -> str:
    """OpenAI's error shape, no upstream address in it; returns the message."""
    body = error.response.json()
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    shown = error.response.text
    assert "http://" not in shown and "127.0.0.1" not in shown, shown
    for upstream in upstreams:
        assert not re.search(rf":{upstream.port}(?!\d)", shown), shown
    return str(body["error"]["message"])


ALICE_KEYS = [{"alias": "alice", "key_sha256": hashlib.sha256(ALICE.encode()).hexdigest(), "budget": SMALL_BUDGET}]


@pytest.fixture(scope="module", params=[False, True], ids=["two-tiers", "three-tiers"])
def budgeted(request: pytest.FixtureRequest, start_proxy: Callable[..., Proxy]) -> tuple[Proxy, str]:
    """A proxy with key alice's small budget, and the paid tiers local falls back to (the shipped
    three: cerebras-oss, then cerebras)."""
    three = bool(request.param)
    return start_proxy(tiers=three, glm_saver={"keys": ALICE_KEYS}), "cerebras-oss, cerebras" if three else "cerebras"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_local_failing_with_the_fallback_over_budget_is_a_429_budget_exceeded(
    budgeted: tuple[Proxy, str], local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool
) -> None:
    proxy, fallbacks = budgeted
    local_upstream.inject("500")
    with pytest.raises(openai.RateLimitError) as raised:
        ask(client_for(proxy, ALICE), SIMPLE, stream)
    assert_budget_exceeded(raised.value, (local_upstream, cerebras_upstream), fallbacks)
    assert [r.status for r in local_upstream.requests] == [500]
    assert cerebras_upstream.requests == []


def assert_budget_exceeded(error: openai.APIStatusError, upstreams: tuple[FakeUpstream, ...], refused: str) -> None:
    assert error.status_code == 429
    assert error.response.json()["error"]["type"] == "budget_exceeded"
    message = assert_plain_error(error, upstreams)
    assert message.startswith(f"local answered 500, and the fallback to {refused} was refused: budget key:alice has"), message
    assert message.endswith("it renews with the next daily period"), message
    assert "LiteLLM" not in message and "litellm" not in message, message


def assert_rate_limited(error: openai.APIStatusError, upstreams: tuple[FakeUpstream, ...], why: str) -> int:
    """A 429 rate_limit_error whose message says why; returns its retry-after."""
    assert error.status_code == 429
    assert error.response.json()["error"]["type"] == "rate_limit_error"
    message = assert_plain_error(error, upstreams)
    assert message.startswith(f"local answered 500, and the fallback to cerebras was refused: {why}"), message
    retry_after = int(error.response.headers["retry-after"])
    assert message.endswith(f"retry in {retry_after}s"), message
    return retry_after


@pytest.fixture(scope="module")
def resting(start_proxy: Callable[..., Proxy], local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> Proxy:
    """A proxy whose Cerebras answered 429 with retry-after 30: it rests for the module's tests."""
    proxy = start_proxy()
    cerebras_upstream.inject("429", retry_after=30)
    answered = client_for(proxy).chat.completions.with_raw_response.create(model="glm-saver", messages=[{"role": "user", "content": COMPLEX}])
    assert answered.headers["x-glm-saver-route"] == "local"  # the 429 fell back to local
    cerebras_upstream.reset()
    return proxy


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_local_failing_while_cerebras_rests_after_a_429_is_a_429_with_retry_after(
    resting: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool
) -> None:
    local_upstream.inject("500")
    with pytest.raises(openai.RateLimitError) as raised:
        ask(client_for(resting), SIMPLE, stream)
    retry_after = assert_rate_limited(raised.value, (local_upstream, cerebras_upstream), "cerebras answered 429 and rests for")
    assert 1 <= retry_after <= 30
    assert [r.status for r in local_upstream.requests] == [500]
    assert cerebras_upstream.requests == []


@pytest.fixture()
def probing(start_proxy: Callable[..., Proxy], cerebras_upstream: FakeUpstream) -> Iterator[Proxy]:
    """A fresh proxy (Cerebras' limits unknown) whose one probe of them is held in flight at Cerebras."""
    proxy = start_proxy()
    cerebras_upstream.hold()
    with ThreadPoolExecutor(1) as pool:
        probe = pool.submit(ask, client_for(proxy), COMPLEX, False)
        try:
            cerebras_upstream.wait_until(lambda fake: fake.in_flight == 1, timeout=30)
            yield proxy
        finally:
            cerebras_upstream.release()
        probe.result(timeout=60)


def test_local_failing_while_the_one_probe_of_cerebras_limits_is_out_is_a_429(
    probing: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    local_upstream.inject("500")
    with pytest.raises(openai.RateLimitError) as raised:
        ask(client_for(probing), SIMPLE, False)
    assert_rate_limited(raised.value, (local_upstream, cerebras_upstream), "cerebras limits unknown until the first answer returns")
    assert [r.status for r in local_upstream.requests] == [500]
    assert len(cerebras_upstream.requests) == 1  # the probe only
