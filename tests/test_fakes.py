"""Tests of the fake upstreams themselves, through the real ``openai`` client and plain httpx."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.fakes import FakeClock, FakeUpstream, count_prompt_tokens, count_tokens
from tests.fakes.answers import MAX_COMPLETION_TOKENS

REPO = Path(__file__).resolve().parents[1]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "read_files",
            "description": "Read files from the workspace.",
            "parameters": {
                "type": "object",
                "properties": {
                    "paths": {"type": "array", "items": {"type": "string"}},
                    "why": {"type": "string"},
                },
                "required": ["paths", "why"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "submit_and_exit", "parameters": {"type": "object", "properties": {}}},
    },
]


@pytest.fixture
def local() -> Iterator[FakeUpstream]:
    with FakeUpstream("local") as fake:
        yield fake


@pytest.fixture
def cerebras() -> Iterator[FakeUpstream]:
    with FakeUpstream("cerebras") as fake:
        yield fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client(fake: FakeUpstream, **options: Any) -> openai.OpenAI:
    # No retries: every test wants to see exactly what the fake answered.
    return openai.OpenAI(base_url=fake.url, api_key="test-key", max_retries=0, **options)


def chat(fake: FakeUpstream, **body: Any) -> httpx.Response:
    body.setdefault("model", "any")
    body.setdefault("messages", USER)
    return httpx.post(f"{fake.url}/chat/completions", json=body, timeout=10)


def sse_payloads(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]


# -- answers --------------------------------------------------------------------------------------


def test_non_stream_answer_and_usage(local: FakeUpstream) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": "You are terse."}, *USER]
    with client(local) as c:
        completion = c.chat.completions.create(model="whatever", messages=messages)

    assert completion.model == "local-model"
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-") and completion.created > 0
    assert completion.choices[0].message.content == "Hello from local."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_tokens("You are terse.") + count_tokens("Say hello.")
    assert completion.usage.completion_tokens == count_tokens("Hello from local.")
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    [request] = local.requests
    assert (request.path, request.status, request.outcome) == ("/v1/chat/completions", 200, "ok")
    assert request.body["messages"] == messages
    assert request.headers["authorization"] == "Bearer test-key"
    [served] = local.served
    assert (served.prompt_tokens, served.completion_tokens, served.stream) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        False,
    )


def test_prompt_tokens_count_tool_schemas_and_tool_calls() -> None:
    body = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "sys"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "result"},
        ],
        "tools": TOOLS,
    }
    expected = count_tokens("sys") + count_tokens("f") + count_tokens("{}") + count_tokens("result") + count_tokens(json.dumps(TOOLS))
    assert count_prompt_tokens(body) == expected


def test_reply_rules_match_the_last_user_message() -> None:
    rules = [("refactor", "Here is the refactor."), ("hello", "Hi!")]
    with FakeUpstream("local", name="gpu box", replies=rules) as fake:
        history = [{"role": "user", "content": "please refactor"}, {"role": "assistant", "content": "ok"}]
        assert chat(fake, messages=[*history, {"role": "user", "content": "hello there"}]).json()["choices"][0]["message"]["content"] == "Hi!"
        assert chat(fake, messages=history[:1]).json()["choices"][0]["message"]["content"] == "Here is the refactor."
        assert chat(fake, messages=[{"role": "user", "content": "?"}]).json()["choices"][0]["message"]["content"] == "Hello from gpu box."


def test_max_tokens_truncates_with_finish_reason_length(local: FakeUpstream) -> None:
    local.configure(reply="one two three four five six")
    body = chat(local, max_tokens=3).json()
    assert body["choices"][0]["message"]["content"] == "one two three"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    # max_completion_tokens wins over max_tokens, as on OpenAI.
    assert chat(local, max_tokens=3, max_completion_tokens=2).json()["usage"]["completion_tokens"] == 2


def test_n_gives_identical_choices(local: FakeUpstream) -> None:
    body = chat(local, n=3).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in body["choices"]} == {"Hello from local."}
    assert body["usage"]["completion_tokens"] == 3 * count_tokens("Hello from local.")


def test_models_and_health(cerebras: FakeUpstream) -> None:
    with client(cerebras) as c:
        assert [m.id for m in c.models.list()] == ["zai-glm-4.6"]
    assert httpx.get(f"{cerebras.base_url}/health").json()["status"] == "ok"
    assert httpx.get(f"{cerebras.url}/nothing-here").status_code == 404
    assert [r.path for r in cerebras.other_requests] == ["/v1/models", "/v1/nothing-here"]
    assert cerebras.requests == []
    # LiteLLM's model-info refresh (GET /v1/models) is not something a client's call caused.
    assert [r.path for r in cerebras.prompted_requests] == ["/v1/nothing-here"]


def test_api_key_is_enforced_when_set() -> None:
    with FakeUpstream("local", api_key="secret") as fake:
        with client(fake) as c, pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model="m", messages=USER)
        with openai.OpenAI(base_url=fake.url, api_key="secret", max_retries=0) as c:
            assert c.chat.completions.create(model="m", messages=USER).choices


# -- streaming ------------------------------------------------------------------------------------


def test_cerebras_stream_always_ends_with_a_usage_chunk(cerebras: FakeUpstream) -> None:
    with client(cerebras) as c:
        chunks = list(c.chat.completions.create(model="m", messages=USER, stream=True))

    assert chunks[0].choices[0].delta.role == "assistant"
    content = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(content) > 1, "the reply must be spread over several chunks"
    assert "".join(content) == "Hello from cerebras."
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_tokens("Hello from cerebras.")
    assert cerebras.served[0].stream is True


@pytest.mark.parametrize("include_usage", [False, True])
def test_local_stream_has_usage_only_when_asked(local: FakeUpstream, include_usage: bool) -> None:
    response = chat(local, stream=True, stream_options={"include_usage": include_usage})
    payloads = sse_payloads(response)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert payloads[-1] == "[DONE]"
    last = json.loads(payloads[-2])
    if include_usage:
        assert last["choices"] == [] and last["usage"]["prompt_tokens"] == count_tokens("Say hello.")
    else:
        assert last["choices"][0]["finish_reason"] == "stop" and "usage" not in last


def test_stream_usage_can_be_turned_off_for_cerebras() -> None:
    with FakeUpstream("cerebras", stream_usage=False) as fake:
        payloads = sse_payloads(chat(fake, stream=True, stream_options={"include_usage": True}))
    assert all("usage" not in json.loads(p) for p in payloads[:-1])


def test_stream_splits_multibyte_text_without_breaking_it() -> None:
    reply = "Grüße aus Köln 🌍 — ok"
    with FakeUpstream("local", reply=reply) as fake:
        payloads = sse_payloads(chat(fake, stream=True))
    pieces = [json.loads(p)["choices"][0]["delta"].get("content") or "" for p in payloads[:-1]]
    assert "".join(pieces) == reply
    assert "\ufffd" not in "".join(pieces)


# -- tools ----------------------------------------------------------------------------------------


def test_tool_call_non_stream(cerebras: FakeUpstream) -> None:
    with client(cerebras) as c:
        completion = c.chat.completions.create(model="m", messages=USER, tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "read_files"
    assert json.loads(call.function.arguments) == {"paths": [], "why": "example"}
    assert cerebras.served[0].tool_call == "read_files"


def test_tool_call_stream_deltas_reassemble_to_valid_json(cerebras: FakeUpstream) -> None:
    with client(cerebras) as c:
        chunks = list(c.chat.completions.create(model="m", messages=USER, tools=TOOLS, stream=True))

    deltas = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or []]
    first, rest = deltas[0], deltas[1:]
    assert first.index == 0 and first.id and first.id.startswith("call_") and first.type == "function"
    assert first.function is not None and first.function.name == "read_files" and first.function.arguments == ""
    assert len(rest) >= 2, "arguments must come in several pieces"
    arguments = "".join(d.function.arguments or "" for d in rest if d.function)
    assert json.loads(arguments) == {"paths": [], "why": "example"}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"


def test_named_tool_choice_is_honoured(local: FakeUpstream) -> None:
    choice = {"type": "function", "function": {"name": "submit_and_exit"}}
    call = chat(local, tools=TOOLS, tool_choice=choice).json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "submit_and_exit", "arguments": "{}"}


def test_tool_result_and_tool_choice_none_get_text(local: FakeUpstream) -> None:
    after_tool = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read_files", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
    ]
    for body in (
        chat(local, messages=after_tool, tools=TOOLS).json(),
        chat(local, tools=TOOLS, tool_choice="none").json(),
    ):
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["choices"][0]["message"]["content"] == "Hello from local."


# -- logprobs -------------------------------------------------------------------------------------


def test_logprobs_per_token_with_the_rule_value() -> None:
    with FakeUpstream("local", replies=[("unsure", "Maybe so.", -2.5)]) as fake:
        body = chat(fake, messages=[{"role": "user", "content": "unsure?"}], logprobs=True, top_logprobs=2).json()
        plain = chat(fake, logprobs=True).json()
        streamed = sse_payloads(chat(fake, messages=[{"role": "user", "content": "unsure?"}], stream=True, logprobs=True))

    entries = body["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == "Maybe so."
    assert len(entries) == count_tokens("Maybe so.")
    assert {e["logprob"] for e in entries} == {-2.5}
    assert all(len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["token"] == e["token"] for e in entries)
    assert {e["logprob"] for e in plain["choices"][0]["logprobs"]["content"]} == {-0.1}
    stream_entries = [e for p in streamed[:-1] for c in json.loads(p)["choices"] for e in (c["logprobs"] or {}).get("content", [])]
    assert "".join(e["token"] for e in stream_entries) == "Maybe so."


# -- Cerebras quotas ------------------------------------------------------------------------------

RATE_HEADERS = {
    "x-ratelimit-limit-requests-day",
    "x-ratelimit-remaining-requests-day",
    "x-ratelimit-reset-requests-day",
    "x-ratelimit-limit-tokens-minute",
    "x-ratelimit-remaining-tokens-minute",
    "x-ratelimit-reset-tokens-minute",
}


def test_quota_is_reserved_up_front_and_429_until_the_window_advances(clock: FakeClock) -> None:
    with FakeUpstream("cerebras", tokens_per_minute=20_000, requests_per_day=100, clock=clock) as fake:
        prompt = count_tokens("Say hello.")
        first = chat(fake, max_tokens=16_384)
        assert first.status_code == 200
        assert set(first.headers) >= RATE_HEADERS
        assert int(first.headers["x-ratelimit-remaining-tokens-minute"]) == 20_000 - prompt - 16_384
        assert int(first.headers["x-ratelimit-remaining-requests-day"]) == 99
        assert float(first.headers["x-ratelimit-reset-tokens-minute"]) == 60.0

        clock.advance(10.5)
        second = chat(fake, max_tokens=16_384)
        assert second.status_code == 429
        assert second.headers["retry-after"] == "50"  # ceil(49.5)
        assert set(second.headers) >= RATE_HEADERS
        assert float(second.headers["x-ratelimit-reset-tokens-minute"]) == pytest.approx(49.5)
        assert float(second.headers["x-ratelimit-reset-requests-day"]) == pytest.approx(86_389.5)
        assert second.json() == {
            "message": "Tokens per minute limit exceeded - too many tokens processed.",
            "type": "rate_limit_error",
            "param": None,
            "code": "token_quota_exceeded",
        }
        # A small request still fits in what is left of the minute.
        assert chat(fake, max_tokens=100).status_code == 200

        fake.advance_window()
        assert chat(fake, max_tokens=16_384).status_code == 200
        assert fake.rate_limited == 1
        assert [(w["tokens_reserved"], w["requests_rejected"]) for w in fake.windows] == [
            (2 * prompt + 16_384 + 100, 1),
            (prompt + 16_384, 0),
        ]


def test_openai_client_sees_a_rate_limit_error_with_retry_after() -> None:
    with FakeUpstream("cerebras", tokens_per_minute=20_000) as fake, client(fake) as c:
        c.chat.completions.create(model="m", messages=USER, max_tokens=16_384)
        with pytest.raises(openai.RateLimitError) as caught:
            c.chat.completions.create(model="m", messages=USER, max_tokens=16_384)
    headers = caught.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert 0 < float(headers["x-ratelimit-reset-tokens-minute"]) <= 60


def test_reservation_defaults_to_and_is_capped_at_16k() -> None:
    with FakeUpstream("cerebras", tokens_per_minute=1_000_000) as fake:
        chat(fake)
        chat(fake, max_tokens=200_000)
        chat(fake, max_completion_tokens=10)
    prompt = count_tokens("Say hello.")
    assert [s.reserved for s in fake.served] == [prompt + MAX_COMPLETION_TOKENS] * 2 + [prompt + 10]


def test_the_window_resets_by_itself_after_window_seconds(clock: FakeClock) -> None:
    with FakeUpstream("cerebras", tokens_per_minute=20_000, window_seconds=5, clock=clock) as fake:
        assert chat(fake).status_code == 200
        assert chat(fake).status_code == 429
        clock.advance(5)
        response = chat(fake)
    assert response.status_code == 200
    assert float(response.headers["x-ratelimit-reset-tokens-minute"]) == 5.0
    assert len(fake.windows) == 2


def test_refund_unused_gives_back_what_the_answer_did_not_use() -> None:
    with FakeUpstream("cerebras", tokens_per_minute=50_000, refund_unused=True) as fake:
        chat(fake)
        remaining = int(chat(fake, max_tokens=1).headers["x-ratelimit-remaining-tokens-minute"])
        used = fake.served[0].prompt_tokens + fake.served[0].completion_tokens
    # The second response reports its own reservation, not yet refunded.
    assert remaining == 50_000 - used - (count_tokens("Say hello.") + 1)
    assert fake.windows[0]["tokens_refunded"] > 0


def test_requests_per_day_run_out(clock: FakeClock) -> None:
    with FakeUpstream("cerebras", requests_per_day=2, day_seconds=100, clock=clock) as fake:
        assert [chat(fake).status_code for _ in range(2)] == [200, 200]
        clock.advance(30)
        refused = chat(fake)
        assert refused.status_code == 429
        assert refused.json()["code"] == "request_quota_exceeded"
        assert refused.headers["retry-after"] == "70"
        assert refused.headers["x-ratelimit-remaining-requests-day"] == "0"
        # Only the enabled limits are reported.
        assert "x-ratelimit-limit-tokens-minute" not in refused.headers
        fake.advance_day()
        assert chat(fake).status_code == 200


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("400", openai.BadRequestError),
        ("401", openai.AuthenticationError),
        ("403", openai.PermissionDeniedError),
        ("429", openai.RateLimitError),
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
    ],
)
def test_error_faults_hit_only_the_next_requests(cerebras: FakeUpstream, mode: str, error: type[openai.APIStatusError]) -> None:
    cerebras.inject(mode, count=2, **({"retry_after": 7} if mode == "429" else {}))
    with client(cerebras) as c:
        for _ in range(2):
            with pytest.raises(error) as caught:
                c.chat.completions.create(model="m", messages=USER)
            assert caught.value.status_code == int(mode)
        assert c.chat.completions.create(model="m", messages=USER).choices
    if mode == "429":
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]  # openai types the error body as object
    assert [r.outcome for r in cerebras.requests] == [f"fault:{mode}"] * 2 + ["ok"]


def test_local_errors_are_nested_like_openai(local: FakeUpstream) -> None:
    local.inject(500)
    assert chat(local).json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("stream", [False, True])
def test_not_json_fault(local: FakeUpstream, stream: bool) -> None:
    local.inject("not_json")
    # The openai client lets the JSON error through unwrapped.
    with client(local) as c, pytest.raises(json.JSONDecodeError):
        response = c.chat.completions.create(model="m", messages=USER, stream=stream)
        if stream:
            list(response)


def test_reset_midstream_sends_some_content_then_drops_the_connection() -> None:
    with FakeUpstream("local", reply="one two three four five six") as fake, client(fake) as c:
        fake.inject("reset_midstream", after_chunks=2)
        seen: list[str] = []
        with pytest.raises(openai.APIConnectionError):
            for chunk in c.chat.completions.create(model="m", messages=USER, stream=True):
                seen.append(chunk.choices[0].delta.content or "")
        assert "".join(seen) == "one two"
        fake.inject("reset_midstream")
        with pytest.raises(openai.APIConnectionError):
            c.chat.completions.create(model="m", messages=USER)
        assert [r.outcome for r in fake.requests] == ["fault:reset_midstream"] * 2
        assert fake.served == []


def test_no_done_ends_the_stream_cleanly_without_finish(local: FakeUpstream) -> None:
    local.inject("no_done")
    payloads = sse_payloads(chat(local, stream=True, stream_options={"include_usage": True}))
    assert "[DONE]" not in payloads
    chunks = [json.loads(p) for p in payloads]
    assert all(c["choices"] and c["choices"][0]["finish_reason"] is None for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello from local."


def test_slow_first_byte_times_the_client_out_and_the_fake_notices(local: FakeUpstream) -> None:
    local.inject("slow_first_byte", delay=30)
    with client(local, timeout=0.2) as c, pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="m", messages=USER)
    # The fake stops waiting as soon as the client hangs up, long before 30 s.
    local.wait_until(lambda f: f.in_flight == 0)
    assert local.requests[0].outcome == "client_disconnected"


def test_unknown_fault_mode_is_refused(local: FakeUpstream) -> None:
    with pytest.raises(ValueError):
        local.inject("refuse")
    with pytest.raises(ValueError):
        local.inject("429", delay=3)


# -- concurrency, stop and restart ----------------------------------------------------------------


def test_max_concurrency_counts_requests_in_flight_together(local: FakeUpstream) -> None:
    local.hold()
    threads = [threading.Thread(target=chat, args=(local,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    local.wait_until(lambda f: f.in_flight == 3)
    local.release()
    for thread in threads:
        thread.join()
    assert local.max_concurrency == 3 and local.in_flight == 0
    assert len(local.served) == 3


def test_max_concurrency_with_latency_and_asyncio() -> None:
    async def two_at_once(fake: FakeUpstream) -> None:
        async with openai.AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0) as c:
            await asyncio.gather(*(c.chat.completions.create(model="m", messages=USER) for _ in range(2)))

    with FakeUpstream("cerebras", latency=0.3) as fake:
        asyncio.run(two_at_once(fake))
    assert fake.max_concurrency >= 2


def test_stop_then_start_keeps_the_port_and_refuses_in_between(local: FakeUpstream) -> None:
    url = local.url
    local.stop()
    with pytest.raises(httpx.ConnectError):
        chat(local)
    local.start()
    assert local.url == url
    assert chat(local).status_code == 200


def test_stop_drops_requests_in_flight(local: FakeUpstream) -> None:
    local.hold()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            chat(local, stream=True)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    local.wait_until(lambda f: f.in_flight == 1)
    local.stop()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], httpx.RemoteProtocolError)
    assert local.in_flight == 0


def test_reset_records(local: FakeUpstream) -> None:
    chat(local)
    local.inject("500")
    local.reset_records()
    assert (local.requests, local.served, local.max_concurrency) == ([], [], 0)
    assert len(local.pending_faults) == 1
    local.reset()
    assert local.pending_faults == []


# -- control API and command line -----------------------------------------------------------------


def test_control_api_drives_a_fake_over_http(clock: FakeClock) -> None:
    with FakeUpstream("cerebras", tokens_per_minute=20_000, clock=clock) as fake:
        control = f"{fake.base_url}/_control"
        assert httpx.post(f"{control}/faults", json={"mode": "503", "count": 1}).json()["pending_faults"] == [{"mode": "503", "params": {}}]
        assert chat(fake).status_code == 503
        assert chat(fake).status_code == 200
        assert chat(fake).status_code == 429
        httpx.post(f"{control}/ratelimit", json={"advance_window": True}).raise_for_status()
        assert chat(fake).status_code == 200
        httpx.post(f"{control}/options", json={"reply": "Changed."}).raise_for_status()
        assert chat(fake, max_tokens=10).json()["choices"][0]["message"]["content"] == "Changed."

        state = httpx.get(f"{control}/state").json()
        assert [r["status"] for r in state["requests"]] == [503, 200, 429, 200, 200]
        assert state["rate_limited"] == 1 and state["limits"]["tokens_per_minute"] == 20_000
        assert [w["requests_admitted"] for w in state["windows"]] == [1, 2]

        summary = httpx.get(f"{control}/state", params={"records": 0}).json()
        assert "requests" not in summary and summary["counts"]["requests"] == 5

        assert httpx.post(f"{control}/faults", json={"mode": "nope"}).status_code == 400
        httpx.post(f"{control}/reset").raise_for_status()
        assert httpx.get(f"{control}/state").json()["requests"] == []


def test_command_line_prints_the_url_first_and_serves_until_killed() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.upstream",
            "--kind",
            "cerebras",
            "--name",
            "cli",
            "--rule",
            "ping=>pong",
            "--tokens-per-minute",
            "30000",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        response = httpx.post(
            f"{url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 10},
        )
        assert response.json()["choices"][0]["message"]["content"] == "pong"
        assert response.headers["x-ratelimit-limit-tokens-minute"] == "30000"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Warning" not in stderr, stderr


def test_wait_until_times_out(local: FakeUpstream) -> None:
    with pytest.raises(TimeoutError):
        local.wait_until(lambda f: f.in_flight > 0, timeout=0.05)


def test_retry_after_is_a_whole_number_of_seconds_rounded_up(clock: FakeClock) -> None:
    with FakeUpstream("cerebras", tokens_per_minute=100, window_seconds=1.5, clock=clock) as fake:
        response = chat(fake, max_tokens=1_000)
    assert response.status_code == 429
    assert response.headers["retry-after"] == str(math.ceil(1.5))


# -- reasoning models -----------------------------------------------------------------------------

THOUGHT = "The user wants a greeting. A short one will do, so I answer briefly."


def test_reasoning_fake_streams_thinking_before_content_and_reports_reasoning_tokens() -> None:
    with FakeUpstream("cerebras", reasoning=THOUGHT) as fake, client(fake) as c:
        chunks = list(c.chat.completions.create(model="m", messages=USER, stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    kinds = ["reasoning" if getattr(d, "reasoning_content", None) else "content" for d in deltas if getattr(d, "reasoning_content", None) or d.content]
    assert kinds == sorted(kinds, key=lambda kind: kind != "reasoning") and "reasoning" in kinds and "content" in kinds
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == THOUGHT
    assert "".join(d.content or "" for d in deltas) == "Hello from cerebras."
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == count_tokens(THOUGHT)
    # OpenAI's convention: completion tokens include the reasoning tokens.
    assert usage.completion_tokens == count_tokens(THOUGHT) + count_tokens("Hello from cerebras.")
    assert fake.served[0].reasoning_tokens == count_tokens(THOUGHT)


def test_reasoning_fake_non_stream_carries_reasoning_content_beside_the_content() -> None:
    with FakeUpstream("cerebras", reasoning=THOUGHT) as fake:
        body = chat(fake).json()
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == THOUGHT and message["content"] == "Hello from cerebras."
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": count_tokens(THOUGHT)}


def test_reasoning_that_uses_the_whole_budget_leaves_the_content_empty() -> None:
    budget = count_tokens(THOUGHT) - 3
    with FakeUpstream("cerebras", reasoning=THOUGHT) as fake:
        body = chat(fake, max_tokens=budget).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == "" and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == budget == body["usage"]["completion_tokens_details"]["reasoning_tokens"]


def test_reasoning_comes_before_a_tool_call_in_a_stream() -> None:
    with FakeUpstream("cerebras", reasoning=THOUGHT) as fake, client(fake) as c:
        chunks = list(c.chat.completions.create(model="m", messages=USER, tools=TOOLS, stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    first_call = next(i for i, d in enumerate(deltas) if d.tool_calls)
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas[:first_call]) == THOUGHT
    arguments = "".join(c.function.arguments or "" for d in deltas for c in d.tool_calls or [] if c.function)
    assert json.loads(arguments) == {"paths": [], "why": "example"}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_cerebras_refuses_a_history_whose_assistant_turn_carries_reasoning(cerebras: FakeUpstream, field: str) -> None:
    history = [*USER, {"role": "assistant", "content": "Hi.", field: "I thought about it."}, {"role": "user", "content": "Again."}]
    with client(cerebras) as c, pytest.raises(openai.BadRequestError) as raised:
        c.chat.completions.create(model="m", messages=history)
    assert raised.value.status_code == 400
    assert raised.value.body["message"] == f"messages.1.assistant.{field}: property 'messages.1.assistant.{field}' is unsupported"
    assert raised.value.body["type"] == "invalid_request_error" and not cerebras.served


def test_local_fake_accepts_reasoning_in_the_history(local: FakeUpstream) -> None:
    history = [*USER, {"role": "assistant", "content": "Hi.", "reasoning_content": "hmm"}, {"role": "user", "content": "Again."}]
    assert chat(local, messages=history).status_code == 200
