"""End to end: the real proxy routes glm-saver requests between the fake local model and fake Cerebras."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests import cline_shapes as cline
from tests.e2e.proxy import MASTER_KEY, Proxy
from tests.fakes.upstream import FakeUpstream

SIMPLE = "hello, what is a tuple?"
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat(
    client: openai.OpenAI, messages: list[dict[str, Any]], *, stream: bool = False, headers: dict[str, str] | None = None, **params: Any
) -> tuple[httpx.Headers, str, list[Any]]:
    """One chat call; returns the response headers, the answer text and (for streams) the chunks."""
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=messages, stream=stream, extra_headers=headers, **params)
    parsed = raw.parse()
    if not stream:
        return raw.headers, parsed.choices[0].message.content or "", []
    chunks = list(parsed)
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    return raw.headers, text, chunks


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_simple_ask_is_answered_by_local(client: openai.OpenAI, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool) -> None:
    headers, text, _ = chat(client, ask(SIMPLE), stream=stream)
    assert headers["x-glm-saver-route"] == "local"
    assert headers["x-glm-saver-reason"].startswith("classifier-simple")
    assert text == "Hello from local."
    assert len(local_upstream.requests) == 1 and not cerebras_upstream.requests


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_complex_ask_is_answered_by_cerebras(client: openai.OpenAI, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool) -> None:
    headers, text, _ = chat(client, ask(COMPLEX), stream=stream)
    assert headers["x-glm-saver-route"] == "cerebras"
    assert "race condition" in headers["x-glm-saver-reason"]
    assert text == "Hello from cerebras."
    assert len(cerebras_upstream.requests) == 1 and not local_upstream.requests


def _local_max_output(proxy: Proxy) -> int:
    (entry,) = [entry for entry in proxy.config["model_list"] if entry["model_name"] == "local"]
    return int(entry["model_info"]["max_output_tokens"])


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_above_what_local_can_send_is_cut_to_its_max_output(proxy: Proxy, client: openai.OpenAI, local_upstream: FakeUpstream, name: str) -> None:
    cap = _local_max_output(proxy)
    headers, _, _ = chat(client, ask(SIMPLE), **{name: cap + 4000})
    assert headers["x-glm-saver-route"] == "local"
    assert local_upstream.requests[-1].body[name] == cap


def test_max_tokens_within_what_local_can_send_is_passed_as_asked(proxy: Proxy, client: openai.OpenAI, local_upstream: FakeUpstream) -> None:
    chat(client, ask(SIMPLE), max_tokens=_local_max_output(proxy) - 1)
    assert local_upstream.requests[-1].body["max_tokens"] == _local_max_output(proxy) - 1


@pytest.mark.parametrize(("model", "text"), [("glm-saver", COMPLEX), ("cerebras", SIMPLE)], ids=["routed", "direct"])
def test_a_null_max_completion_tokens_leaves_cerebras_the_max_tokens_the_client_set(
    client: openai.OpenAI, cerebras_upstream: FakeUpstream, model: str, text: str
) -> None:
    """Clients that send every field send the unset one as null; the clamp must not take null for
    "no limit" (Cerebras reserves the whole max_tokens of its quota up front)."""
    client.chat.completions.create(model=model, messages=ask(text), max_tokens=100, max_completion_tokens=None)
    (request,) = cerebras_upstream.requests
    assert request.body["max_tokens"] == 100
    assert cerebras_upstream.served[0].reserved == cerebras_upstream.served[0].prompt_tokens + 100


def _reassembled_tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    return calls


@pytest.mark.parametrize(("task", "route"), [("Fix the typo in the README title", "local"), (COMPLEX, "cerebras")])
def test_cline_request_streams_back_intact_with_tool_calls_and_usage(client: openai.OpenAI, task: str, route: str) -> None:
    headers, _, chunks = chat(
        client,
        cline.vscode_task(task),
        stream=True,
        stream_options={"include_usage": True},
        tools=[cline.READ_FILE_TOOL],
        tool_choice="auto",
        max_tokens=16384,
    )
    assert headers["x-glm-saver-route"] == route
    calls = _reassembled_tool_calls(chunks)
    assert list(calls) == [0]
    assert calls[0]["name"] == "read_file" and calls[0]["id"]
    assert isinstance(json.loads(calls[0]["arguments"]), dict)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    usage = [chunk.usage for chunk in chunks if chunk.usage]
    assert usage and usage[-1].prompt_tokens > 1000 and usage[-1].completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", ["500", "503"])
def test_cerebras_failure_is_answered_by_local(
    client: openai.OpenAI, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, fault: str, stream: bool
) -> None:
    cerebras_upstream.inject(fault)
    headers, text, _ = chat(client, ask(COMPLEX), stream=stream)
    assert text == "Hello from local."
    assert headers["x-glm-saver-route"] == "local"
    assert headers["x-glm-saver-reason"].startswith("fallback: cerebras failed")
    assert [r.status for r in cerebras_upstream.requests] == [int(fault)]
    assert len(local_upstream.requests) == 1


@pytest.mark.parametrize(("text", "override"), [(SIMPLE, "cerebras"), (COMPLEX, "local"), (COMPLEX, "LOCAL")])
def test_override_header_picks_the_model(client: openai.OpenAI, text: str, override: str) -> None:
    headers, answer, _ = chat(client, ask(text), headers={"x-glm-saver-route": override})
    wanted = override.strip().lower()
    assert headers["x-glm-saver-route"] == wanted
    assert headers["x-glm-saver-reason"].startswith("override")
    assert answer == f"Hello from {wanted}."


def test_invalid_override_header_is_a_400_and_reaches_no_upstream(client: openai.OpenAI, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, ask(SIMPLE), headers={"x-glm-saver-route": "gpt-5"})
    error = raised.value.body
    assert "x-glm-saver-route" in error["message"] and error["type"] == "invalid_request_error"
    assert not local_upstream.requests and not cerebras_upstream.requests


@pytest.mark.parametrize("group", ["local", "cerebras"])
def test_naming_a_group_directly_is_not_rerouted(client: openai.OpenAI, group: str) -> None:
    text = SIMPLE if group == "cerebras" else COMPLEX  # the opposite of what the classifier would pick
    raw = client.chat.completions.with_raw_response.create(model=group, messages=ask(text))
    assert raw.parse().choices[0].message.content == f"Hello from {group}."
    assert "x-glm-saver-route" not in raw.headers


def test_prompt_too_big_for_local_goes_to_cerebras(client: openai.OpenAI) -> None:
    big = "Fix the typo. " + "lorem ipsum dolor sit amet " * 2000  # ~12K tokens: over local's 8K window
    headers, text, _ = chat(client, ask(big), headers={"x-glm-saver-route": "local"})
    assert headers["x-glm-saver-route"] == "cerebras"
    assert headers["x-glm-saver-reason"].startswith("context-window")
    assert text == "Hello from cerebras."


def test_prompt_too_big_for_every_model_is_a_clear_400(client: openai.OpenAI, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    huge = "lorem ipsum dolor sit amet " * 8000  # ~48K tokens: over both windows
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, ask(huge))
    assert "context window" in raised.value.body["message"]
    assert not local_upstream.requests and not cerebras_upstream.requests


def _post(proxy: Proxy, body: bytes | str, key: str | None = MASTER_KEY) -> httpx.Response:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(f"{proxy.url}/v1/chat/completions", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "glm-saver", "messages": [',
        json.dumps({"model": "no-such-model", "messages": ask(SIMPLE)}),
    ],
    ids=["malformed-json", "unknown-model"],
)
def test_bad_requests_get_a_4xx_in_openai_shape_and_the_proxy_keeps_serving(
    proxy: Proxy, client: openai.OpenAI, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, body: bytes | str
) -> None:
    response = _post(proxy, body)
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert error["message"] and "type" in error
    assert not local_upstream.requests and not cerebras_upstream.requests
    _, text, _ = chat(client, ask(SIMPLE))
    assert text == "Hello from local."


def test_health_needs_no_key_and_calls_no_upstream(proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    response = httpx.get(f"{proxy.url}/health", timeout=10)
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok" and health["strategy"] == "smart_routing"
    assert health["cerebras"]["configured"] is True
    assert not local_upstream.requests and not cerebras_upstream.requests


def test_stats_need_a_key_and_count_routes_strategies_and_reasons(proxy: Proxy, client: openai.OpenAI) -> None:
    assert httpx.get(f"{proxy.url}/stats", timeout=10).status_code == 401
    # Without a database LiteLLM refuses an unknown key with 400 "No connected db." rather than 401.
    wrong_key = httpx.get(f"{proxy.url}/stats", headers={"authorization": "Bearer sk-wrong"}, timeout=10)
    assert wrong_key.status_code in (400, 401) and "by_route" not in wrong_key.text
    before = httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()
    chat(client, ask(SIMPLE))
    chat(client, ask(COMPLEX), stream=True)
    after = httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()

    def grew(section: str, key: str) -> int:
        return after[section].get(key, 0) - before[section].get(key, 0)

    assert (grew("by_route", "local"), grew("by_route", "cerebras")) == (1, 1)
    assert grew("by_strategy", "smart_routing") == 2
    assert (grew("by_reason", "classifier-simple"), grew("by_reason", "classifier-complex")) == (1, 1)


def test_models_and_model_info_list_the_entry_model_with_prices(proxy: Proxy, client: openai.OpenAI) -> None:
    assert "glm-saver" in {model.id for model in client.models.list()}
    info = httpx.get(f"{proxy.url}/v1/model/info", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()["data"]
    entry = next(item for item in info if item["model_name"] == "glm-saver")
    assert entry["model_info"]["max_output_tokens"] == 16384
    assert entry["model_info"]["input_cost_per_token"] == pytest.approx(2.25e-6)
    assert entry["model_info"]["output_cost_per_token"] == pytest.approx(2.75e-6)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_logprobs_asked_of_a_request_cerebras_answers_reach_it_and_come_back(client: openai.OpenAI, cerebras_upstream: FakeUpstream, stream: bool) -> None:
    """Cerebras serves logprobs and top_logprobs; a client asking for them gets them whoever answers."""
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=ask(COMPLEX), stream=stream, logprobs=True, top_logprobs=2)
    parsed = raw.parse()
    choices = [choice for chunk in parsed for choice in chunk.choices] if stream else parsed.choices
    entries = [entry for choice in choices if choice.logprobs for entry in choice.logprobs.content or []]
    assert raw.headers["x-glm-saver-route"] == "cerebras"
    (request,) = cerebras_upstream.requests
    assert (request.body.get("logprobs"), request.body.get("top_logprobs")) == (True, 2)
    assert entries and all(len(entry.top_logprobs) == 2 for entry in entries)


def test_a_text_completions_logprobs_count_is_not_sent_to_cerebras_chat_api(proxy: Proxy, cerebras_upstream: FakeUpstream) -> None:
    """A text completion's `logprobs` is a count (legacy API); LiteLLM turns the request into a chat
    request for Cerebras, whose `logprobs` is a boolean, and brings no logprobs back to a text answer."""
    body = {"model": "cerebras", "prompt": SIMPLE, "max_tokens": 8, "logprobs": 2}
    response = httpx.post(f"{proxy.url}/v1/completions", json=body, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == "Hello from cerebras."
    (request,) = cerebras_upstream.requests
    assert "logprobs" not in request.body and "top_logprobs" not in request.body
