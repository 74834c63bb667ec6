"""A Cerebras stream that breaks after some text was sent, through a real proxy.

The client keeps the text it got and the stream ends with an error event (LiteLLM's answer to a
broken stream; no other model continues it). What the gate held for the call, its headroom
reservation, is given back exactly once, its budget hold becomes the charge of what it spent (the
prompt and the text sent, as Cerebras bills them), and the failure is counted in /stats
`upstream_failures` and logged once, whether the stream was the plan's own route or a fallback hop
after local failed (LiteLLM logs only a request's first failure, and a stream that already reached
the client has no deployment failure hook).

One proxy in front of a fake Cerebras of its own, with a global budget (to see holds in /stats),
paced so text reaches the client before the cut. LiteLLM's deployment cooldown is off, as a
cooldown would only hide the tier whose books these tests read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.books import CEREBRAS_IN, CEREBRAS_OUT, books
from tests.e2e.held import DEADLINE, failures, grew, proxy_showing_holds, settled
from tests.e2e.polling import poll
from tests.e2e.proxy import CEREBRAS_KEY, MASTER_KEY, Proxy
from tests.fakes import tokens
from tests.fakes.upstream import FakeUpstream

SIMPLE = "hello, what is a tuple?"  # the plan sends it local; local's 500 sends it to Cerebras
# LiteLLM counts a prompt with a few tokens of chat framing per message, which the fake leaves out.
FRAMING_TOKENS = 12
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
REPLY = "Hello from breaking."  # what the fake Cerebras answers, in full


@pytest.fixture(scope="module")
def breaking() -> Iterator[FakeUpstream]:
    """A fake Cerebras that reports its limits on every answer and streams at 20 tokens/s (unpaced,
    LiteLLM may still hold the first text chunk when the connection drops, and rightly answer
    from the other model instead)."""
    with FakeUpstream("cerebras", name="breaking", tokens_per_minute=1_000_000, tokens_per_second=20) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], breaking: FakeUpstream) -> Proxy:
    return proxy_showing_holds(start_proxy, breaking)


@pytest.fixture(autouse=True)
def _cerebras_probed(proxy: Proxy, breaking: FakeUpstream, local_upstream: FakeUpstream) -> Iterator[None]:
    """Each test starts with Cerebras' limits known and nothing held, and leaves both models answering."""
    breaking.reset()
    assert ask(proxy, route="cerebras")[0].headers["x-glm-saver-route"] == "cerebras"
    settled(proxy)
    breaking.reset_records()
    yield
    breaking.reset()
    local_upstream.reset()


def ask(proxy: Proxy, *, route: str | None = None) -> tuple[httpx.Response, list[Any]]:
    """A streamed request, and each `data:` payload of its stream (parsed; "[DONE]" kept as a string)."""
    body = {"model": "glm-saver", "messages": [{"role": "user", "content": SIMPLE}], "stream": True}
    headers = {**ADMIN, **({"x-glm-saver-route": route} if route else {})}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=60) as response:
        raw = response.read().decode()
    payloads = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    return response, [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]


def text_of(events: list[Any]) -> str:
    chunks = [event for event in events if isinstance(event, dict) and "choices" in event]
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])


def cerebras_failures(grown: dict[str, int]) -> dict[str, int]:
    """Cerebras' failures (named by status or error class: which depends on whether LiteLLM's log
    event or the stream's own end reports the cut)."""
    return {name: count for name, count in grown.items() if name.startswith("cerebras:")}


def failure_warnings(proxy: Proxy) -> list[str]:
    return [line for line in proxy.log().splitlines() if "WARNING" in line and "cerebras failed with" in line]


def assert_cut_after_text(response: httpx.Response, events: list[Any]) -> None:
    """The text sent before the cut, then an error event as the stream's last: no [DONE], no other model."""
    assert response.status_code == 200 and response.headers["x-glm-saver-route"] == "cerebras"
    text = text_of(events)
    assert text and REPLY.startswith(text) and text != REPLY
    assert isinstance(events[-1], dict) and set(events[-1]) == {"error"} and events[-1]["error"]["message"]


def assert_settled_once(proxy: Proxy, before: dict[str, int], warned: int, others: dict[str, int]) -> None:
    """Nothing held for Cerebras any more; the cut counted once in /stats (besides the `others`
    failures of the request) and logged once, and still once after Cerebras answered again."""
    settled(proxy)
    grown = poll(lambda: (lambda g: g if cerebras_failures(g) else None)(grew(before, failures(proxy))), "the cut counted", DEADLINE)
    assert sum(cerebras_failures(grown).values()) == 1
    assert {name: count for name, count in grown.items() if not name.startswith("cerebras:")} == others
    poll(lambda: len(failure_warnings(proxy)) > warned, "a warning for the cut", DEADLINE)
    reply, answered = ask(proxy, route="cerebras")
    assert (reply.headers["x-glm-saver-route"], text_of(answered), answered[-1]) == ("cerebras", REPLY, "[DONE]")
    settled(proxy)
    assert len(failure_warnings(proxy)) == warned + 1
    assert sum(cerebras_failures(grew(before, failures(proxy))).values()) == 1
    assert CEREBRAS_KEY not in proxy.log()


@pytest.mark.parametrize("fallback", [False, True], ids=["routed", "fallback-hop"])
def test_a_cerebras_stream_cut_after_text_gives_back_what_it_held_and_is_counted_once(
    proxy: Proxy, breaking: FakeUpstream, local_upstream: FakeUpstream, fallback: bool
) -> None:
    before, warned = failures(proxy), len(failure_warnings(proxy))
    if fallback:
        local_upstream.inject("500")
    breaking.inject("reset_midstream", after_chunks=2)
    response, events = ask(proxy, route=None if fallback else "cerebras")
    assert_cut_after_text(response, events)
    assert [r.outcome for r in breaking.requests] == ["fault:reset_midstream"]
    assert [r.status for r in local_upstream.requests] == ([500] if fallback else [])
    assert_settled_once(proxy, before, warned, {"local:500": 1} if fallback else {})


@pytest.mark.parametrize("round_", range(3))  # the failure's log task races the fallback hop: a few rounds
def test_a_routed_cerebras_stream_cut_before_any_text_is_answered_by_local_and_gives_back_what_it_held(
    proxy: Proxy, breaking: FakeUpstream, local_upstream: FakeUpstream, round_: int
) -> None:
    """LiteLLM falls back at once and logs the failure from a task that may run only after the
    local hop began: the failure is still Cerebras', counted once, and its holds are given back."""
    before, warned = failures(proxy), len(failure_warnings(proxy))
    breaking.inject("reset_midstream", after_chunks=0)  # the role chunk, then the cut
    response, events = ask(proxy, route="cerebras")
    assert (response.status_code, text_of(events), events[-1]) == (200, "Hello from local.", "[DONE]")
    assert [r.outcome for r in breaking.requests] == ["fault:reset_midstream"] and len(local_upstream.requests) == 1
    assert_settled_once(proxy, before, warned, {})


def test_a_fallback_hops_cerebras_stream_cut_before_any_text_gives_back_what_it_held_and_is_counted_once(
    proxy: Proxy, breaking: FakeUpstream, local_upstream: FakeUpstream
) -> None:
    """Local failed and Cerebras' stream breaks before its first text: no fallback is left, the
    stream ends with an error event after Cerebras' role chunk."""
    before, warned = failures(proxy), len(failure_warnings(proxy))
    local_upstream.inject("500")
    breaking.inject("reset_midstream", after_chunks=0)  # the role chunk, then the cut
    response, events = ask(proxy)
    assert response.status_code == 200 and [r.outcome for r in breaking.requests] == ["fault:reset_midstream"]
    assert (text_of(events), set(events[-1])) == ("", {"error"})
    assert_settled_once(proxy, before, warned, {"local:500": 1})


def cerebras_books(proxy: Proxy) -> dict[str, float]:
    snapshot = books(proxy)
    cerebras = snapshot["by_model"].get("cerebras", {})
    fields = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")
    return {**{field: cerebras.get(field, 0) for field in fields}, "budget_spent_usd": snapshot["budgets"]["global"]["spent_usd"]}


@pytest.mark.parametrize("fallback", [False, True], ids=["routed", "fallback-hop"])
def test_a_cerebras_stream_cut_after_text_is_booked_for_the_prompt_and_the_text_it_sent(
    proxy: Proxy, breaking: FakeUpstream, local_upstream: FakeUpstream, fallback: bool
) -> None:
    before = cerebras_books(proxy)
    if fallback:
        local_upstream.inject("500")
    breaking.inject("reset_midstream", after_chunks=2)
    response, events = ask(proxy, route=None if fallback else "cerebras")
    assert_cut_after_text(response, events)
    settled(proxy)
    after = poll(lambda: (lambda b: b if b["requests"] > before["requests"] else None)(cerebras_books(proxy)), "the cut booked", DEADLINE)
    grown = {field: after[field] - before[field] for field in after}
    (cut,) = breaking.requests
    sent_prompt = tokens.count_prompt_tokens(cut.body)
    assert grown["requests"] == 1
    assert grown["completion_tokens"] == tokens.count_tokens(text_of(events))
    assert sent_prompt <= grown["prompt_tokens"] <= sent_prompt + FRAMING_TOKENS
    cost = grown["prompt_tokens"] * CEREBRAS_IN + grown["completion_tokens"] * CEREBRAS_OUT
    assert grown["cost_usd"] == pytest.approx(cost) and grown["budget_spent_usd"] == pytest.approx(cost)
