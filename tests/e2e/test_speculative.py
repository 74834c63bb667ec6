"""End to end: the draft/verify cascade through a real proxy, in front of scripted fake upstreams.

The fake local model drafts right or wrong answers to known prompts (with per-answer logprobs); the
fake Cerebras answers a verify request by the draft it finds in it: ACCEPT for a right draft, the
correction for a wrong one, and a full answer to a request sent to it directly.
One proxy per strategy (module-scoped: each start costs seconds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests import cline_shapes as cline
from tests.e2e.proxy import MASTER_KEY, Proxy
from tests.fakes.answers import ReplyRule
from tests.fakes.upstream import FakeUpstream

# Asks and what the local model drafts for them (text, logprob of every token).
SURE = "What is the capital of France?"  # right, sure of itself
UNSURE = "Which is the largest planet?"  # right, unsure
WRONG = "What is 12 * 7?"  # wrong, unsure
BROKEN = "Write a python function that reverses a string"  # sure, but the code does not parse
REFUSED = "Prove that the halting problem is undecidable"  # the local model refuses
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"

LOCAL_RULES = [
    ReplyRule("capital of France", "Paris.", -0.05),
    ReplyRule("largest planet", "Jupiter is the largest planet.", -0.9),
    ReplyRule("12 * 7", "12 * 7 = 19", -0.9),
    ReplyRule("reverses a string", "```python\ndef reverse(s) return s[::-1]\n```", -0.05),
    ReplyRule("halting problem", "I'm sorry, but I can't help with that.", -0.05),
    ReplyRule("race condition", "Guard the lock with a fencing token.", -0.9),
]
CORRECT_REVERSE = "```python\ndef reverse(s):\n    return s[::-1]\n```"
FULL_PROOF = "Assume a decider H exists; build D that runs H on itself and does the opposite."
# Draft texts first: they appear only inside verify requests; then the asks themselves.
CLOUD_RULES = [
    ReplyRule("Paris.", "ACCEPT"),
    ReplyRule("Jupiter is the largest planet.", "ACCEPT"),
    ReplyRule("12 * 7 = 19", "12 * 7 = 84"),
    ReplyRule("def reverse(s) return", CORRECT_REVERSE),
    ReplyRule("fencing token", "ACCEPT"),
    ReplyRule("halting problem", FULL_PROOF),
]


@dataclass
class Cascade:
    proxy: Proxy
    client: openai.OpenAI

    def proxy_stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return self.proxy_stats()["speculative"]


@pytest.fixture(scope="module")
def scripted(local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> Iterator[None]:
    """The session's fakes answer by the scripts above for this module, then as before."""
    with local_upstream.replying(LOCAL_RULES), cerebras_upstream.replying(CLOUD_RULES):
        yield


def _cascade(start_proxy: Callable[..., Proxy], **section: Any) -> Cascade:
    proxy = start_proxy(glm_saver=section)
    return Cascade(proxy, openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60))


@pytest.fixture(scope="module")
def parallel(start_proxy: Callable[..., Proxy], scripted: None) -> Cascade:
    # No rate-limit headroom here: an injected 429 must not leave Cerebras "exhausted" for later tests.
    return _cascade(
        start_proxy,
        strategy="parallel_speculative",
        speculative={"max_concurrent_drafts": 3, "parallel_retry_seconds": 0},
        rate_limits={"enabled": False},
    )


@pytest.fixture(scope="module")
def sequential(start_proxy: Callable[..., Proxy], scripted: None) -> Cascade:
    return _cascade(start_proxy, strategy="speculative_decoding", speculative={"speculate_with_tools": True})


@pytest.fixture(scope="module")
def smart(start_proxy: Callable[..., Proxy], scripted: None) -> Cascade:
    return _cascade(start_proxy, strategy="smart_speculative")


@dataclass
class Reply:
    headers: httpx.Headers
    text: str
    tool_calls: list[tuple[str, str]]  # (name, arguments), reassembled from a stream
    chunks: list[Any]
    usage: Any

    @property
    def route(self) -> str:
        return self.headers["x-glm-saver-route"]

    @property
    def reason(self) -> str:
        return self.headers["x-glm-saver-reason"]


def chat(cascade: Cascade, text: str, *, stream: bool = False, **params: Any) -> Reply:
    messages = params.pop("messages", [{"role": "user", "content": text}])
    if stream:
        params.setdefault("stream_options", {"include_usage": True})
    raw = cascade.client.chat.completions.with_raw_response.create(model="glm-saver", messages=messages, stream=stream, **params)
    parsed = raw.parse()
    if not stream:
        message = parsed.choices[0].message
        calls = [(call.function.name, call.function.arguments) for call in message.tool_calls or []]
        return Reply(raw.headers, message.content or "", calls, [], parsed.usage)
    chunks = list(parsed)
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    assembled: dict[int, list[str]] = {}
    for delta in (d for chunk in chunks for choice in chunk.choices for d in choice.delta.tool_calls or []):
        call = assembled.setdefault(delta.index, ["", ""])
        call[0] += (delta.function.name or "") if delta.function else ""
        call[1] += (delta.function.arguments or "") if delta.function else ""
    return Reply(raw.headers, text, [(name, arguments) for name, arguments in assembled.values()], chunks, chunks[-1].usage if chunks else None)


def verify_requests(cerebras: FakeUpstream) -> list[str]:
    """The verify turns Cerebras received (the last user message of each request)."""
    return [r.body["messages"][-1]["content"] for r in cerebras.requests if "<draft>" in str(r.body["messages"][-1]["content"])]


STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


# ---- parallel_speculative -------------------------------------------------------------------------


@STREAMS
def test_confident_drafts_are_the_answer_without_a_cloud_call(
    parallel: Cascade, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool
) -> None:
    reply = chat(parallel, SURE, stream=stream, max_tokens=5000)
    assert (reply.route, reply.text) == ("draft-accepted", "Paris.")
    assert reply.reason.startswith("confident: confidence 0.9") and "best of 3 drafts" in reply.reason
    assert not cerebras_upstream.requests
    drafts = local_upstream.requests
    assert len(drafts) == 3
    # A streamed request drafts in streams (read to the commit point); a JSON one drafts whole.
    assert all(r.body["logprobs"] is True and r.body["max_tokens"] == 1024 and bool(r.body.get("stream")) is stream for r in drafts)
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_a_streamed_answer_ends_with_usage_only_when_asked(parallel: Cascade) -> None:
    reply = chat(parallel, SURE, stream=True, stream_options=None)
    assert reply.text == "Paris."
    assert all(chunk.usage is None for chunk in reply.chunks)
    assert reply.chunks[-1].choices[0].finish_reason == "stop"


@STREAMS
def test_an_unsure_right_draft_is_verified_by_cerebras(parallel: Cascade, cerebras_upstream: FakeUpstream, stream: bool) -> None:
    reply = chat(parallel, UNSURE, stream=stream)
    assert (reply.route, reply.text) == ("draft-verified", "Jupiter is the largest planet.")
    [request] = cerebras_upstream.requests
    assert request.body["messages"][0] == {"role": "user", "content": UNSURE}
    assert "<draft>\nJupiter is the largest planet.\n</draft>" in request.body["messages"][-1]["content"]
    assert not request.body.get("stream")


@STREAMS
def test_a_wrong_draft_is_corrected_by_cerebras(parallel: Cascade, cerebras_upstream: FakeUpstream, stream: bool) -> None:
    reply = chat(parallel, WRONG, stream=stream)
    assert (reply.route, reply.text) == ("draft-corrected", "12 * 7 = 84")
    assert reply.reason.startswith("corrected: cerebras corrected the draft")
    assert len(verify_requests(cerebras_upstream)) == 1


def test_a_confident_draft_whose_code_does_not_parse_is_sent_for_correction(parallel: Cascade) -> None:
    reply = chat(parallel, BROKEN)
    assert (reply.route, reply.text) == ("draft-corrected", CORRECT_REVERSE)
    assert "broken-python" in reply.reason


@STREAMS
def test_a_refusing_draft_sends_the_request_to_cerebras_in_full(parallel: Cascade, cerebras_upstream: FakeUpstream, stream: bool) -> None:
    reply = chat(parallel, REFUSED, stream=stream)
    assert (reply.route, reply.text) == ("cloud", FULL_PROOF)
    assert reply.reason.startswith("low-confidence: confidence 0.00") and "refusal" in reply.reason
    [request] = cerebras_upstream.requests
    assert request.body["messages"] == [{"role": "user", "content": REFUSED}]  # the client's request itself
    assert bool(request.body.get("stream")) is stream
    if stream:
        assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_parallel_drafts_really_run_at_the_same_time(parallel: Cascade, local_upstream: FakeUpstream) -> None:
    local_upstream.hold()  # answers wait until all three drafts are in flight together
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat, parallel, SURE)
        local_upstream.wait_until(lambda fake: fake.in_flight == 3, timeout=30)
        local_upstream.release()
        reply = pending.result(timeout=60)
    assert reply.route == "draft-accepted"
    assert local_upstream.max_concurrency == 3


def test_parallel_drafts_fall_back_to_one_at_a_time_when_local_refuses_them(parallel: Cascade, local_upstream: FakeUpstream) -> None:
    before = parallel.stats()["parallel_fallbacks"]
    local_upstream.inject("503", count=3)  # a server with one slot turns the others away
    reply = chat(parallel, SURE)
    assert (reply.route, reply.text) == ("draft-accepted", "Paris.")
    assert "best of 1 draft" in reply.reason
    assert [r.outcome for r in local_upstream.requests] == ["fault:503"] * 3 + ["ok"]
    assert parallel.stats()["parallel_fallbacks"] == before + 1


@STREAMS
def test_local_down_means_cerebras_answers_in_full(parallel: Cascade, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool) -> None:
    local_upstream.stop()
    try:
        reply = chat(parallel, UNSURE, stream=stream)
    finally:
        local_upstream.start()
    assert reply.route == "cloud"
    assert reply.reason.startswith("drafts-failed: no local draft (unreachable)")
    [request] = cerebras_upstream.requests
    assert request.body["messages"] == [{"role": "user", "content": UNSURE}]


@pytest.mark.parametrize("fault", ["429", "500"])
def test_cerebras_failing_during_verify_returns_the_best_draft(parallel: Cascade, cerebras_upstream: FakeUpstream, fault: str) -> None:
    cerebras_upstream.inject(fault)
    reply = chat(parallel, WRONG)
    assert (reply.route, reply.text) == ("draft-accepted", "12 * 7 = 19")
    kind = "rate-limited" if fault == "429" else "http-500"
    assert reply.reason.startswith(f"verify-failed: cerebras {kind} during verify; draft unverified")
    assert len(cerebras_upstream.requests) == 1  # no retry, no fallback of the verify call to local


@pytest.mark.parametrize("strategy_reason", ["classifier-simple", "classifier-complex"])
def test_requests_with_tools_skip_speculation_by_default(parallel: Cascade, local_upstream: FakeUpstream, strategy_reason: str) -> None:
    task = "Fix the typo in the README title" if strategy_reason == "classifier-simple" else COMPLEX
    reply = chat(parallel, "", messages=cline.vscode_task(task), tools=[cline.READ_FILE_TOOL], stream=True)
    assert reply.route == ("local" if strategy_reason == "classifier-simple" else "cerebras")
    assert reply.reason.startswith(strategy_reason) and "tools are not speculated" in reply.reason
    assert len(local_upstream.requests) == (1 if reply.route == "local" else 0)


def _poll(read: Callable[[], Any], ready: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """Log events arrive after the response: poll /stats until they are counted."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_stats_count_drafts_verifications_savings_and_attribute_internal_calls(parallel: Cascade) -> None:
    before = parallel.stats()
    before_books = parallel.proxy_stats()["books"]
    chat(parallel, SURE)  # accepted: 3 drafts, no cloud call
    chat(parallel, WRONG)  # corrected: 3 drafts and a verify
    chat(parallel, REFUSED)  # cloud: 3 drafts, then the request itself goes to Cerebras
    roles = ("draft", "verify", "final")
    wanted = {"draft": 9, "verify": 1, "final": 3}  # every answer is a final, the cascade's own ones too
    after = _poll(parallel.stats, lambda s: all(s["by_role"][r]["calls"] - before["by_role"][r]["calls"] >= wanted[r] for r in roles))
    assert {r: after["by_role"][r]["calls"] - before["by_role"][r]["calls"] for r in roles} == wanted
    assert after["cascades"] - before["cascades"] == 3
    assert after["drafts_made"] - before["drafts_made"] == 9
    assert after["verifications"] - before["verifications"] == 1
    assert after["corrections"] - before["corrections"] == 1
    assert after["outcomes"]["draft-accepted"] - before["outcomes"].get("draft-accepted", 0) == 1
    assert 0 < after["acceptance_rate"] < 1
    # The cascade's tokens and cost are the books' (booked once): drafts are free, verifies are not.
    assert after["by_role"]["draft"]["cost_usd"] == 0
    assert after["by_role"]["verify"]["cost_usd"] > before["by_role"]["verify"]["cost_usd"]
    assert after["by_role"]["final"]["cost_usd"] > before["by_role"]["final"]["cost_usd"]
    # The accepted and the corrected answers each saved a whole cloud answer (served from local), the
    # verify cost what it cost; the cloud answer saved nothing: the cascade's saving is that sum.
    books = parallel.proxy_stats()["books"]

    def saved(route: str) -> float:
        return books["by_route"][route]["savings_usd"] - before_books["by_route"].get(route, {}).get("savings_usd", 0)

    verify_cost = after["by_role"]["verify"]["cost_usd"] - before["by_role"]["verify"]["cost_usd"]
    assert saved("draft-accepted") > 0 and saved("draft-corrected") > 0 and saved("cloud") == 0
    assert after["cloud_cost_saved"] - before["cloud_cost_saved"] == pytest.approx(saved("draft-accepted") + saved("draft-corrected") - verify_cost, abs=1e-9)
    # Internal calls count for the key that made the request (LiteLLM logs them without it).
    assert list(parallel.proxy_stats()["books"]["by_key"]) == ["master-key"]
    assert MASTER_KEY not in json.dumps(after)


# ---- speculative_decoding: one draft ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ask", "route", "text"),
    [(SURE, "draft-accepted", "Paris."), (UNSURE, "draft-verified", "Jupiter is the largest planet."), (WRONG, "draft-corrected", "12 * 7 = 84")],
)
def test_one_draft_is_accepted_verified_or_corrected_by_its_logprobs(
    sequential: Cascade, local_upstream: FakeUpstream, ask: str, route: str, text: str
) -> None:
    reply = chat(sequential, ask, stream=True)
    assert (reply.route, reply.text) == (route, text)
    [draft] = local_upstream.requests
    assert draft.body["logprobs"] is True and "temperature" not in draft.body  # one draft keeps the client's sampling
    assert reply.usage is not None and reply.usage.total_tokens > 0


@STREAMS
def test_tool_calls_are_speculated_when_configured(sequential: Cascade, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool) -> None:
    reply = chat(sequential, "", messages=cline.vscode_task("Fix the typo in the README title"), tools=[cline.READ_FILE_TOOL], stream=stream)
    # A tool-call draft has no logprobs: confidence is the prior, so Cerebras checks it (and, being
    # a fake, answers with its own tool call: a correction).
    assert reply.route == "draft-corrected"
    assert len(local_upstream.requests) == 1 and local_upstream.requests[0].body["tools"]
    assert len(verify_requests(cerebras_upstream)) == 1
    [(name, arguments)] = reply.tool_calls
    assert name == "read_file" and isinstance(json.loads(arguments), dict)


def test_after_a_429_cerebras_is_left_alone_and_drafts_go_unverified(sequential: Cascade, cerebras_upstream: FakeUpstream) -> None:
    # Last test of this proxy: the 429 marks Cerebras exhausted for a minute (rate-limit headroom).
    cerebras_upstream.inject("429", retry_after=60)
    seen = sequential.proxy_stats()["cerebras_429s"]
    first = chat(sequential, WRONG)
    assert (first.route, first.text) == ("draft-accepted", "12 * 7 = 19")
    assert first.reason.startswith("verify-failed: cerebras rate-limited")
    _poll(sequential.proxy_stats, lambda s: s["cerebras_429s"] > seen)  # the failure event is logged after the answer
    second = chat(sequential, UNSURE)
    assert (second.route, second.text) == ("draft-accepted", "Jupiter is the largest planet.")
    assert second.reason.startswith("verify-skipped: cerebras has no headroom")
    assert len(cerebras_upstream.requests) == 1


# ---- smart_speculative ---------------------------------------------------------------------------------


def test_smart_speculative_answers_simple_asks_locally_without_a_cascade(smart: Cascade, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    before = smart.stats()["cascades"]
    reply = chat(smart, "hello, what is a tuple?")
    assert (reply.route, reply.text) == ("local", "Hello from local.")
    assert reply.reason.startswith("classifier-simple")
    assert len(local_upstream.requests) == 1 and not cerebras_upstream.requests
    assert smart.stats()["cascades"] == before


@STREAMS
def test_smart_speculative_puts_complex_asks_through_the_cascade(smart: Cascade, local_upstream: FakeUpstream, stream: bool) -> None:
    reply = chat(smart, COMPLEX, stream=stream)
    assert (reply.route, reply.text) == ("draft-verified", "Guard the lock with a fencing token.")
    assert len(local_upstream.requests) == 3


def test_internal_calls_are_booked_at_the_configured_prices_for_the_calling_key(
    parallel: Cascade, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    before = parallel.proxy_stats()["books"]
    assert chat(parallel, WRONG).route == "draft-corrected"  # 3 drafts on local, one verify on Cerebras

    def grew(table: str, name: str, field: str, books: dict[str, Any]) -> float:
        return books[table].get(name, {}).get(field, 0) - before[table].get(name, {}).get(field, 0)

    after = _poll(lambda: parallel.proxy_stats()["books"], lambda b: grew("by_key", "master-key", "calls", b) >= 5)  # log events are async
    (verify,) = cerebras_upstream.served
    drafts = local_upstream.served
    assert grew("by_role", "draft", "calls", after) == len(drafts) == 3
    assert grew("by_role", "draft", "cost_usd", after) == 0
    assert grew("by_role", "verify", "cost_usd", after) == pytest.approx(verify.prompt_tokens * 2.25e-6 + verify.completion_tokens * 2.75e-6, rel=1e-9)
    assert grew("by_key", "master-key", "calls", after) == 5  # 3 drafts, the verify and the answer itself
    # Tokens are what the upstreams served (the answer replays a draft already counted).
    served_prompt = verify.prompt_tokens + sum(d.prompt_tokens for d in drafts)
    assert after["totals"]["prompt_tokens"] - before["totals"]["prompt_tokens"] == served_prompt
