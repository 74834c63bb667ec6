"""Reasoning models on Cerebras end to end: a real proxy in front of a fake Cerebras that thinks
(`reasoning_content` before content, reasoning tokens in usage) and refuses reasoning in the history."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests import cline_shapes as cline
from tests.e2e.books import CEREBRAS_IN, CEREBRAS_OUT, books, books_holding
from tests.e2e.proxy import MASTER_KEY, Proxy
from tests.fakes import count_tokens
from tests.fakes.answers import ReplyRule
from tests.fakes.upstream import FakeUpstream

COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"
THOUGHT = "The user wants the lock fixed. I look at the scheduler first, then the lock, then answer."
THOUGHT_TOKENS = count_tokens(THOUGHT)
RETRY_ROOM = 4096  # the shipped default of glm_saver.reasoning.<group>.retry_room


@pytest.fixture(scope="module")
def thinker() -> Iterator[FakeUpstream]:
    with FakeUpstream("cerebras", model="zai-glm-4.7", reasoning=THOUGHT) as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def _fresh(thinker: FakeUpstream) -> Iterator[None]:
    thinker.reset()
    yield
    thinker.configure(reasoning=THOUGHT, replies=[])


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], thinker: FakeUpstream) -> Proxy:
    # One proxy for the module; its reasoning default is the config's, which the client can override.
    proxy = start_proxy(cerebras=thinker, glm_saver={"reasoning": {"cerebras": {"effort": "low"}}})
    warm_up(proxy)
    return proxy


def warm_up(proxy: Proxy) -> None:
    """One answer from Cerebras first: until one comes back the gate lets a single call at a time
    probe its unknown limits, and a retry is a second call."""
    openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60).chat.completions.create(model="cerebras", messages=ask())


@pytest.fixture(scope="module")
def client(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)


def ask(text: str = COMPLEX) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def history_with_reasoning() -> list[dict[str, Any]]:
    """A later turn as Cline's CLI sends it (plain-string contents, which LiteLLM forwards as they
    are): the assistant's earlier answer comes back with its reasoning."""
    system, task, reminder = cline.cli_task(COMPLEX)
    return [
        system,
        task,
        {"role": "assistant", "content": "I will read the scheduler first.", "reasoning_content": THOUGHT},
        {"role": "user", "content": f"{COMPLEX}, and keep the tests green"},
        reminder,
    ]


def received_by_cerebras(client: openai.OpenAI, thinker: FakeUpstream, sent: list[dict[str, Any]], stream: bool, **params: Any) -> dict[str, Any]:
    """The body Cerebras answered for a glm-saver request the plan sent there."""
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=sent, stream=stream, **params)
    answer = raw.parse()
    if stream:
        list(answer)
    assert raw.headers["x-glm-saver-route"] == "cerebras"
    (request,) = thinker.requests
    assert request.status == 200
    body: dict[str, Any] = request.body
    return body


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_reasoning_in_the_history_is_removed_before_cerebras_and_nothing_else_changes(client: openai.OpenAI, thinker: FakeUpstream, stream: bool) -> None:
    sent = history_with_reasoning()
    body = received_by_cerebras(client, thinker, sent, stream, tools=[cline.READ_FILE_TOOL])
    received = body["messages"]
    assert received[2] == {"role": "assistant", "content": "I will read the scheduler first."}
    assert [m for i, m in enumerate(received) if i != 2] == [m for i, m in enumerate(sent) if i != 2]
    assert body["tools"] == [cline.READ_FILE_TOOL]


def test_a_cline_stream_keeps_reasoning_deltas_content_tool_calls_and_usage(client: openai.OpenAI, thinker: FakeUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="glm-saver",
        messages=cline.vscode_task(COMPLEX),
        stream=True,
        stream_options={"include_usage": True},
        tools=[cline.READ_FILE_TOOL],
        tool_choice="auto",
        max_tokens=16384,
    )
    chunks = list(raw.parse())
    assert raw.headers["x-glm-saver-route"] == "cerebras"
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    first_call = next(i for i, delta in enumerate(deltas) if delta.tool_calls)
    assert "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas[:first_call]) == THOUGHT
    arguments = "".join(call.function.arguments or "" for delta in deltas for call in delta.tool_calls or [] if call.function)
    assert json.loads(arguments) == {"path": "example"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    (served,) = thinker.served
    usage = [chunk.usage for chunk in chunks if chunk.usage][-1]
    assert (usage.prompt_tokens, usage.completion_tokens) == (served.prompt_tokens, served.completion_tokens)
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == served.reasoning_tokens == THOUGHT_TOKENS


def test_a_plain_stream_keeps_reasoning_before_the_content(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="glm-saver", messages=ask(), stream=True))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    first_content = next(i for i, delta in enumerate(deltas) if delta.content)
    assert "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas[:first_content]) == THOUGHT
    assert "".join(delta.content or "" for delta in deltas) == "Hello from cerebras."


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_books_charge_reasoning_tokens_once_as_output_and_show_them(proxy: Proxy, client: openai.OpenAI, thinker: FakeUpstream, stream: bool) -> None:
    before = books(proxy)
    extra = {"stream_options": {"include_usage": True}} if stream else {}
    answer = client.chat.completions.create(model="glm-saver", messages=ask(), stream=stream, **extra)
    if stream:
        list(answer)
    after = books_holding(proxy, before["totals"]["calls"] + 1, of="calls")
    (served,) = thinker.served
    assert served.reasoning_tokens == THOUGHT_TOKENS and served.completion_tokens > THOUGHT_TOKENS

    def grew(field: str) -> float:
        return after["by_model"]["cerebras"][field] - before["by_model"].get("cerebras", {}).get(field, 0)

    assert grew("completion_tokens") == served.completion_tokens  # reasoning included, once
    assert grew("reasoning_tokens") == served.reasoning_tokens
    assert grew("cost_usd") == pytest.approx(served.prompt_tokens * CEREBRAS_IN + served.completion_tokens * CEREBRAS_OUT, rel=1e-9)
    assert after["totals"]["reasoning_tokens"] - before["totals"]["reasoning_tokens"] == served.reasoning_tokens


def test_reasoning_effort_of_the_client_wins_over_the_config_default(client: openai.OpenAI, thinker: FakeUpstream) -> None:
    client.chat.completions.create(model="glm-saver", messages=ask())
    client.chat.completions.create(model="glm-saver", messages=ask(), reasoning_effort="high")
    assert [request.body.get("reasoning_effort") for request in thinker.requests] == ["low", "high"]


def test_an_answer_left_empty_by_reasoning_is_asked_again_with_room_and_the_client_gets_the_answer(
    proxy: Proxy, client: openai.OpenAI, thinker: FakeUpstream
) -> None:
    before = books(proxy)
    small = THOUGHT_TOKENS - 2  # all of it goes on thinking
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=ask(), max_tokens=small)
    assert raw.parse().choices[0].message.content == "Hello from cerebras."
    assert [request.body.get("max_tokens") for request in thinker.requests] == [small, small + RETRY_ROOM]
    first, second = thinker.served
    assert (first.finish_reason, first.content) == ("length", "")
    after = books_holding(proxy, before["totals"]["calls"] + 2, of="calls")
    # Both calls are paid for; the client made one request.
    assert after["totals"]["requests"] - before["totals"]["requests"] == 1
    assert after["by_role"]["retry"]["calls"] - before["by_role"].get("retry", {}).get("calls", 0) == 1
    paid = sum(a.prompt_tokens * CEREBRAS_IN + a.completion_tokens * CEREBRAS_OUT for a in (first, second))
    assert after["by_model"]["cerebras"]["cost_usd"] - before["by_model"]["cerebras"]["cost_usd"] == pytest.approx(paid, rel=1e-9)


def test_an_answer_left_empty_at_the_clamp_is_a_502_that_says_why_not_an_empty_answer(client: openai.OpenAI, thinker: FakeUpstream) -> None:
    thinker.configure(reasoning=THOUGHT * 1000)  # more thinking than the 16K clamp allows
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="glm-saver", messages=ask())
    assert raised.value.status_code == 502
    assert "spent all 16384 max_tokens on reasoning" in raised.value.message and "no room to retry" in raised.value.message
    assert len(thinker.requests) == 1


def test_a_stream_left_empty_by_reasoning_ends_with_an_error_not_an_empty_answer_and_is_still_booked(
    proxy: Proxy, client: openai.OpenAI, thinker: FakeUpstream
) -> None:
    before = books(proxy)
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in client.chat.completions.create(
            model="glm-saver", messages=ask(), stream=True, stream_options={"include_usage": True}, max_tokens=THOUGHT_TOKENS - 2
        ):
            seen.append(chunk)
    assert "spent all of max_tokens on reasoning" in str(raised.value)
    deltas = [chunk.choices[0].delta for chunk in seen if chunk.choices]
    assert "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas)  # the thinking streamed live
    assert not any(delta.content for delta in deltas)
    assert not any(chunk.choices and chunk.choices[0].finish_reason for chunk in seen)  # no clean end
    (served,) = thinker.served
    after = books_holding(proxy, before["totals"]["calls"] + 1, of="calls")
    assert after["by_model"]["cerebras"]["completion_tokens"] - before["by_model"]["cerebras"]["completion_tokens"] == served.completion_tokens


def test_a_fallback_stream_left_empty_by_reasoning_ends_with_an_error_too(client: openai.OpenAI, thinker: FakeUpstream, local_upstream: FakeUpstream) -> None:
    """Local fails, Cerebras answers the fallback hop: its stream is guarded like a routed one."""
    local_upstream.inject(500)
    with pytest.raises(openai.APIError) as raised:
        for _ in client.chat.completions.create(model="glm-saver", messages=ask("hello, what is a tuple?"), stream=True, max_tokens=THOUGHT_TOKENS - 2):
            pass
    assert "spent all of max_tokens on reasoning" in str(raised.value)
    assert [r.status for r in local_upstream.requests] == [500]
    assert len(thinker.served) == 1


# ---- the cascade's verify with a reasoning model -----------------------------------------------

UNSURE = "Which is the largest planet?"
WRONG = "What is 12 * 7?"
DRAFTS = [ReplyRule("largest planet", "Jupiter is the largest planet.", -0.9), ReplyRule("12 * 7", "12 * 7 = 19", -0.9)]
VERDICTS = [ReplyRule("Jupiter is the largest planet.", "ACCEPT"), ReplyRule("12 * 7 = 19", "12 * 7 = 84")]
# The thinking mentions the verdict words: only the content may decide.
VERIFY_THOUGHT = "The draft might deserve ACCEPT, or a correction; I check it before I reply."


@pytest.fixture(scope="module")
def cascade(start_proxy: Callable[..., Proxy], thinker: FakeUpstream, local_upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    saved = local_upstream.options.replies
    local_upstream.configure(replies=DRAFTS)
    proxy = start_proxy(cerebras=thinker, glm_saver={"strategy": "speculative_decoding"})
    warm_up(proxy)
    yield openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)
    local_upstream.configure(replies=saved)


@pytest.fixture()
def verifier(thinker: FakeUpstream) -> FakeUpstream:
    thinker.configure(replies=VERDICTS, reasoning=VERIFY_THOUGHT)
    return thinker


@pytest.mark.parametrize(("text", "label", "answer"), [(UNSURE, "draft-verified", "Jupiter is the largest planet."), (WRONG, "draft-corrected", "12 * 7 = 84")])
def test_the_verdict_is_read_from_the_content_not_from_the_reasoning(
    cascade: openai.OpenAI, verifier: FakeUpstream, text: str, label: str, answer: str
) -> None:
    raw = cascade.chat.completions.with_raw_response.create(model="glm-saver", messages=ask(text))
    assert raw.headers["x-glm-saver-route"] == label
    assert raw.parse().choices[0].message.content == answer
    (verify,) = verifier.requests
    assert verify.body["messages"][-1]["role"] == "user" and "<draft>" in verify.body["messages"][-1]["content"]


def test_the_verify_leaves_room_for_reasoning_on_top_of_the_clients_max_tokens(cascade: openai.OpenAI, verifier: FakeUpstream) -> None:
    raw = cascade.chat.completions.with_raw_response.create(model="glm-saver", messages=ask(UNSURE), max_tokens=12)
    assert raw.headers["x-glm-saver-route"] == "draft-verified"
    assert [request.body["max_tokens"] for request in verifier.requests] == [12 + RETRY_ROOM]


def test_a_verdict_left_empty_by_reasoning_is_asked_again_once_with_room(cascade: openai.OpenAI, verifier: FakeUpstream) -> None:
    long_thought = VERIFY_THOUGHT * 400  # more than one room, less than two
    assert 12 + RETRY_ROOM < count_tokens(long_thought) < 12 + 2 * RETRY_ROOM
    verifier.configure(reasoning=long_thought)
    raw = cascade.chat.completions.with_raw_response.create(model="glm-saver", messages=ask(UNSURE), max_tokens=12)
    assert raw.headers["x-glm-saver-route"] == "draft-verified"
    assert [request.body["max_tokens"] for request in verifier.requests] == [12 + RETRY_ROOM, 12 + 2 * RETRY_ROOM]


def test_a_verdict_still_empty_after_the_retry_is_a_verify_failure_with_the_reason(cascade: openai.OpenAI, verifier: FakeUpstream) -> None:
    verifier.configure(reasoning=VERIFY_THOUGHT * 1200)  # more than the clamp
    assert count_tokens(VERIFY_THOUGHT * 1200) > 16384
    raw = cascade.chat.completions.with_raw_response.create(model="glm-saver", messages=ask(UNSURE))
    assert raw.headers["x-glm-saver-route"] == "draft-accepted"
    assert "reasoning-spent-budget" in raw.headers["x-glm-saver-reason"]
    assert raw.parse().choices[0].message.content == "Jupiter is the largest planet."


def legacy_function_history() -> list[dict[str, Any]]:
    """A later turn of a client on OpenAI's legacy function calling (older LangChain agents): the
    assistant's call is a `function_call`, its result a `function` message."""
    call = {"name": "read_file", "arguments": json.dumps({"path": "scheduler.py"})}
    return [*ask(), {"role": "assistant", "content": None, "function_call": call}, {"role": "function", "name": "read_file", "content": "class Scheduler: ..."}]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_legacy_function_call_in_the_history_reaches_cerebras_as_the_tool_call_it_stands_for(
    client: openai.OpenAI, thinker: FakeUpstream, stream: bool
) -> None:
    sent = legacy_function_history()
    user, assistant, result = received_by_cerebras(client, thinker, sent, stream)["messages"]
    assert user == sent[0]
    (call,) = assistant["tool_calls"]
    assert call["type"] == "function" and call["function"] == sent[1]["function_call"]
    assert result == {"role": "tool", "tool_call_id": call["id"], "content": sent[2]["content"]}
