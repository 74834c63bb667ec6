"""Upstream faults through a real proxy: who answers, that nothing hangs, and that the books stay right.

One proxy with short deployment timeouts (`timeout` / `stream_timeout` in model_list) serves every
test. Each fault is injected into the session's fakes; afterwards the faulty model answers again
(the proxy keeps serving), and /stats `books` holds exactly one record per answered request and no
cost for a failed call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.books import CEREBRAS_IN, CEREBRAS_OUT
from tests.e2e.conftest import CLOUD_WINDOW, LOCAL_WINDOW
from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config
from tests.fakes.upstream import FakeUpstream

TIMEOUT = 4  # seconds, each deployment's timeout and stream_timeout
SLOW = 60.0  # a first byte this late would hang the client if the proxy waited for it
CLIENT_TIMEOUT = 30.0  # well under SLOW: a proxy that waits for the slow upstream fails the test
SIMPLE = "hello, what is a tuple?"
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    text: str  # the answer's text (streams: the deltas joined)
    events: list[Any]  # streams: each `data:` payload, parsed ("[DONE]" kept as a string)
    error: dict[str, Any] | None  # a JSON error body, or a stream's error event


@pytest.fixture(scope="module")
def fault_proxy(start_proxy: Callable[..., Proxy], local_upstream: FakeUpstream) -> Proxy:
    config = proxy_config(local_upstream.url, local_window=LOCAL_WINDOW, cloud_window=CLOUD_WINDOW)
    for entry in config["model_list"]:  # the cerebras entries share one params dict (a YAML anchor)
        entry["litellm_params"].update(timeout=TIMEOUT, stream_timeout=TIMEOUT)
    return start_proxy(model_list=config["model_list"])


@pytest.fixture(autouse=True)
def _both_upstreams_up(local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> Iterator[None]:
    """A test that stops a fake starts it again even when it fails half-way."""
    yield
    for upstream in (local_upstream, cerebras_upstream):
        if upstream._server is None:
            upstream.start()


def chat(proxy: Proxy, text: str, *, stream: bool, route: str | None = None) -> Reply:
    body = {"model": "glm-saver", "messages": [{"role": "user", "content": text}], "stream": stream}
    headers = {**ADMIN, **({"x-glm-saver-route": route} if route else {})}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=CLIENT_TIMEOUT) as response:
        raw = response.read().decode()
    if response.status_code != 200 or not stream:
        data = json.loads(raw)
        error = data.get("error") if response.status_code != 200 else None
        text = "" if error else data["choices"][0]["message"]["content"]
        return Reply(response.status_code, response.headers, text, [], error)
    events = [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]" for line in raw.splitlines() if line.startswith("data: ")]
    chunks = [event for event in events if isinstance(event, dict) and "choices" in event]
    text = "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])
    error = next((event["error"] for event in events if isinstance(event, dict) and "error" in event), None)
    return Reply(response.status_code, response.headers, text, events, error)


def stats(proxy: Proxy) -> dict[str, Any]:
    return httpx.get(f"{proxy.url}/stats", headers=ADMIN, timeout=10).json()


def wait_for_requests(proxy: Proxy, count: int, timeout: float = 15.0) -> dict[str, Any]:
    """The books once they hold `count` client requests (success events are logged after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        books = stats(proxy)["books"]
        if books["totals"]["requests"] >= count or time.monotonic() > deadline:
            return books
        time.sleep(0.05)


def cost(books: dict[str, Any], model: str) -> float:
    return books["by_model"].get(model, {}).get("cost_usd", 0.0)


def wait_until_cerebras_rests_no_more(proxy: Proxy, timeout: float = 15.0) -> None:
    """After a 429, Cerebras rests until its retry-after; later tests want it back."""
    deadline = time.monotonic() + timeout
    while stats(proxy)["cerebras_headroom"]["exhausted_for"] > 0:
        assert time.monotonic() < deadline, "cerebras still resting"
        time.sleep(0.1)


def assert_serves_normally(proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    """Both models answer again, each as itself (no fault or cooldown left over)."""
    for route, upstream in (("cerebras", cerebras_upstream), ("local", local_upstream)):
        reply = chat(proxy, SIMPLE, stream=False, route=route)
        assert (reply.status, reply.headers["x-glm-saver-route"], reply.text) == (200, route, f"Hello from {route}.")
        assert upstream.requests[-1].status == 200


CEREBRAS_FAULTS = [
    ("429", {"retry_after": 1}),
    ("500", {}),
    ("503", {}),
    ("not_json", {}),
    ("slow_first_byte", {"delay": SLOW}),
    ("refused", {}),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("mode", "params"), CEREBRAS_FAULTS, ids=[mode for mode, _ in CEREBRAS_FAULTS])
def test_a_cerebras_fault_before_any_text_is_answered_in_full_by_local(
    fault_proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, mode: str, params: dict[str, Any], stream: bool
) -> None:
    before = wait_for_requests(fault_proxy, 0)
    if mode == "refused":
        cerebras_upstream.stop()
    else:
        cerebras_upstream.inject(mode, **params)
    try:
        reply = chat(fault_proxy, COMPLEX, stream=stream)  # the classifier sends it to Cerebras
    finally:
        if mode == "refused":
            cerebras_upstream.start()
    assert (reply.status, reply.error, reply.text) == (200, None, "Hello from local.")
    assert reply.headers["x-glm-saver-route"] == "local"
    assert reply.headers["x-glm-saver-reason"].startswith("fallback: cerebras failed")
    if stream:
        assert reply.events[-1] == "[DONE]"
    if mode == "refused":
        assert cerebras_upstream.requests == []
    else:
        assert cerebras_upstream.requests[0].outcome in (f"fault:{mode}", "client_disconnected")
    after = wait_for_requests(fault_proxy, before["totals"]["requests"] + 1)
    assert after["totals"]["requests"] == before["totals"]["requests"] + 1
    assert after["by_model"]["local"]["requests"] == before["by_model"].get("local", {}).get("requests", 0) + 1
    assert cost(after, "cerebras") == cost(before, "cerebras")  # the failed call cost nothing

    if mode == "429":
        wait_until_cerebras_rests_no_more(fault_proxy)
    assert_serves_normally(fault_proxy, local_upstream, cerebras_upstream)


def test_a_slow_first_byte_is_given_up_at_the_deployments_timeout(fault_proxy: Proxy, cerebras_upstream: FakeUpstream) -> None:
    cerebras_upstream.inject("slow_first_byte", delay=SLOW)
    reply = chat(fault_proxy, COMPLEX, stream=True)  # CLIENT_TIMEOUT < SLOW: a wait would raise here
    assert reply.text == "Hello from local."
    # The proxy hung up on the slow upstream rather than leaving the request in flight there.
    cerebras_upstream.wait_until(lambda fake: fake.in_flight == 0, timeout=10)
    assert cerebras_upstream.requests[0].outcome == "client_disconnected"


def test_a_local_fault_is_answered_in_full_by_cerebras(fault_proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    before = wait_for_requests(fault_proxy, 0)
    local_upstream.inject("500")
    reply = chat(fault_proxy, SIMPLE, stream=True)  # the classifier sends it local
    assert (reply.status, reply.text) == (200, "Hello from cerebras.")
    assert reply.headers["x-glm-saver-reason"].startswith("fallback: local failed")
    after = wait_for_requests(fault_proxy, before["totals"]["requests"] + 1)
    assert after["totals"]["requests"] == before["totals"]["requests"] + 1
    assert cost(after, "cerebras") > cost(before, "cerebras")  # Cerebras' answer is paid for
    assert_serves_normally(fault_proxy, local_upstream, cerebras_upstream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_local_down_while_cerebras_is_fine_is_answered_by_cerebras(
    fault_proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool
) -> None:
    before = wait_for_requests(fault_proxy, 0)
    local_upstream.stop()
    try:
        reply = chat(fault_proxy, SIMPLE, stream=stream)
    finally:
        local_upstream.start()
    assert (reply.status, reply.text, reply.headers["x-glm-saver-route"]) == (200, "Hello from cerebras.", "cerebras")
    after = wait_for_requests(fault_proxy, before["totals"]["requests"] + 1)
    assert after["totals"]["requests"] == before["totals"]["requests"] + 1
    assert_serves_normally(fault_proxy, local_upstream, cerebras_upstream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_both_down_is_a_clear_503_in_openai_shape_and_books_nothing(
    fault_proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool
) -> None:
    before = wait_for_requests(fault_proxy, 0)
    local_upstream.stop()
    cerebras_upstream.stop()
    try:
        reply = chat(fault_proxy, SIMPLE, stream=stream)
    finally:
        local_upstream.start()
        cerebras_upstream.start()
    assert reply.status == 503
    assert reply.error is not None and {"message", "type", "code"} <= set(reply.error)
    assert "local" in reply.error["message"] and "cerebras" in reply.error["message"]
    assert_serves_normally(fault_proxy, local_upstream, cerebras_upstream)
    after = wait_for_requests(fault_proxy, before["totals"]["requests"] + 2)
    assert after["totals"]["requests"] == before["totals"]["requests"] + 2  # the two answers after, only


@pytest.fixture()
def paced_cerebras(cerebras_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """Cerebras streaming at 20 tokens/s: text reaches the client well before the cut that follows it
    (unpaced, LiteLLM may still be holding the first text chunk when the connection drops, and then
    rightly answers from the other model)."""
    cerebras_upstream.configure(tokens_per_second=20)
    try:
        yield cerebras_upstream
    finally:
        cerebras_upstream.configure(tokens_per_second=None)


def test_a_stream_cut_after_text_was_sent_ends_with_an_error_event_not_another_model(
    fault_proxy: Proxy, local_upstream: FakeUpstream, paced_cerebras: FakeUpstream
) -> None:
    cerebras_upstream = paced_cerebras
    before = wait_for_requests(fault_proxy, 0)
    cerebras_upstream.inject("reset_midstream", after_chunks=2)
    reply = chat(fault_proxy, COMPLEX, stream=True)
    assert reply.status == 200 and reply.headers["x-glm-saver-route"] == "cerebras"
    assert reply.text and "Hello from cerebras.".startswith(reply.text) and reply.text != "Hello from cerebras."
    assert reply.error is not None and reply.error["message"]
    assert reply.events[-1] == {"error": reply.error}  # the last event: no [DONE], nothing after it
    assert local_upstream.requests == []  # not silently continued by the other model
    # The OpenAI client surfaces it as an error, after the text it already showed.
    cerebras_upstream.inject("reset_midstream", after_chunks=2)
    client = openai.OpenAI(base_url=f"{fault_proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=CLIENT_TIMEOUT)
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="glm-saver", messages=[{"role": "user", "content": COMPLEX}], stream=True):
            seen += [choice.delta.content or "" for choice in chunk.choices]
    assert "".join(seen) == reply.text
    assert_serves_normally(fault_proxy, local_upstream, cerebras_upstream)
    # The two cut streams are booked too, for what they spent (test_broken_streams.py has the figures).
    after = wait_for_requests(fault_proxy, before["totals"]["requests"] + 4)
    assert after["totals"]["requests"] == before["totals"]["requests"] + 4
    assert cost(after, "cerebras") - cost(before, "cerebras") > cost_of_one_cerebras_answer(cerebras_upstream)


def cost_of_one_cerebras_answer(cerebras_upstream: FakeUpstream) -> float:
    (answer,) = cerebras_upstream.served  # only assert_serves_normally's answer was delivered
    return answer.prompt_tokens * CEREBRAS_IN + answer.completion_tokens * CEREBRAS_OUT


def test_a_stream_that_ends_without_done_still_delivers_its_text_once_in_the_books(fault_proxy: Proxy, cerebras_upstream: FakeUpstream) -> None:
    before = wait_for_requests(fault_proxy, 0)
    cerebras_upstream.inject("no_done")
    reply = chat(fault_proxy, COMPLEX, stream=True)
    # Every text chunk had arrived; LiteLLM closes the stream properly for the client.
    assert (reply.status, reply.error, reply.text) == (200, None, "Hello from cerebras.")
    assert reply.events[-1] == "[DONE]"
    after = wait_for_requests(fault_proxy, before["totals"]["requests"] + 1)
    assert after["totals"]["requests"] == before["totals"]["requests"] + 1
    assert cost(after, "cerebras") > cost(before, "cerebras")
