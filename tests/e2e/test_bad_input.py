"""Bad input through a real proxy: a clear 4xx in OpenAI's error shape, no upstream call, and the
proxy keeps serving; valid but unusual input (unicode, control characters) is answered; a plugin
that breaks fails open instead of turning a valid request into a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import CLOUD_WINDOW, LOCAL_WINDOW
from tests.e2e.polling import poll
from tests.e2e.proxy import MASTER_KEY, REPO, Proxy, proxy_config
from tests.fakes.upstream import FakeUpstream

ADMIN = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
ASK = [{"role": "user", "content": "hello, what is a tuple?"}]


def post(proxy: Proxy, body: bytes | dict[str, Any], headers: dict[str, Any] | None = None) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{proxy.url}/v1/chat/completions", content=raw, headers={**ADMIN, **(headers or {})}, timeout=120)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}} with a readable message."""
    error = response.json()["error"]
    assert {"message", "type", "code"} <= set(error)
    assert isinstance(error["message"], str) and error["message"].strip()
    return error


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "glm-saver", "messages": ASK, **fields}


# (body, words the error message must contain)
INVALID: dict[str, tuple[bytes | dict[str, Any], tuple[str, ...]]] = {
    "malformed-json": (b'{"model": "glm-saver", "messages": [', ("JSON",)),
    "lone-surrogate": (b'{"model": "glm-saver", "messages": [{"role": "user", "content": "\\ud800"}]}', ("JSON",)),
    "empty-body": (b"", ("messages",)),
    "missing-messages": ({"model": "glm-saver"}, ("messages",)),
    "null-messages": (chat(messages=None), ("messages",)),
    "empty-messages": (chat(messages=[]), ("messages", "empty")),
    "messages-a-string": (chat(messages="hi"), ("messages",)),
    "message-a-string": (chat(messages=["hi"]), ("messages[0]",)),
    "unknown-role": (chat(messages=[{"role": "wizard", "content": "hi"}]), ("messages[0].role", "wizard")),
    "missing-role": (chat(messages=[{"content": "hi"}]), ("messages[0].role",)),
    "content-a-number": (chat(messages=[{"role": "user", "content": 5}]), ("messages[0].content",)),
    "unknown-content-part": (chat(messages=[{"role": "user", "content": [{"type": "hologram", "data": "x"}]}]), ("hologram",)),
    "content-part-a-string": (chat(messages=[{"role": "user", "content": ["x"]}]), ("messages[0].content[0]",)),
    "user-content-null": (chat(messages=[{"role": "user", "content": None}]), ("messages[0]", "content")),
    "tool-without-call-id": (chat(messages=[*ASK, {"role": "tool", "content": "ok"}]), ("messages[1]", "tool_call_id")),
    "text-part-without-text": (chat(messages=[{"role": "user", "content": [{"type": "text", "text": 7}]}]), ("text",)),
    "absurd-max-tokens": (chat(max_tokens=10**12), ("max_tokens",)),
    "negative-max-tokens": (chat(max_tokens=-5), ("max_tokens",)),
    "zero-max-completion-tokens": (chat(max_completion_tokens=0), ("max_completion_tokens",)),
    "max-tokens-a-string": (chat(max_tokens="lots"), ("max_tokens",)),
    "absurd-temperature": (chat(temperature=1e9), ("temperature",)),
    "negative-temperature": (chat(temperature=-3), ("temperature",)),
    "top-p-a-string": (chat(top_p="high"), ("top_p",)),
    "negative-n": (chat(n=-1), ("n",)),
    "stream-a-string": (chat(stream="yes"), ("stream",)),
    "tools-a-string": (chat(tools="all"), ("tools",)),
    "model-a-number": (chat(model=5), ("model",)),
    "unknown-model": (chat(model="gpt-9"), ("gpt-9",)),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_input_is_a_clear_4xx_and_reaches_no_upstream(proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, name: str) -> None:
    body, words = INVALID[name]
    response = post(proxy, body)
    assert 400 <= response.status_code < 500, response.text
    message = error_of(response)["message"]
    for word in words:
        assert word in message
    assert local_upstream.requests == [] and cerebras_upstream.requests == []


def test_the_proxy_keeps_serving_after_every_kind_of_bad_input(proxy: Proxy, local_upstream: FakeUpstream) -> None:
    for body, _ in INVALID.values():
        assert post(proxy, body).status_code < 500
    response = post(proxy, chat())
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello from local."
    assert len(local_upstream.requests) == 1


def test_a_10_mb_prompt_is_a_400_context_length_exceeded_without_an_upstream_call(
    proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    huge = "lorem ipsum " * (10 * 1024 * 1024 // 12)
    response = post(proxy, chat(messages=[{"role": "user", "content": huge}]))
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages" and "context window" in error["message"]
    assert error["code"] == "context_length_exceeded"  # OpenAI's code, which clients match on
    assert local_upstream.requests == [] and cerebras_upstream.requests == []
    assert huge[:200] not in response.text  # the prompt is not echoed back


@pytest.mark.parametrize(
    "text",
    ["héllo ☃ 😀 中文 עברית", "tab\there\r\nnull\x00 bell\x07 escape\x1b[31m del\x7f", "\u200b\ufeff\u202e zero width and bidi"],
    ids=["unicode", "control-characters", "invisible-characters"],
)
def test_unicode_and_control_characters_are_answered_and_passed_on_intact(proxy: Proxy, local_upstream: FakeUpstream, text: str) -> None:
    response = post(proxy, chat(messages=[{"role": "user", "content": text}]), {"x-glm-saver-route": "local"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello from local."
    assert local_upstream.requests[0].body["messages"][-1]["content"] == text


@pytest.mark.parametrize("value", [b"gpt-5", b"", b"cloud", b"local,cerebras", b"l\xf6cal"], ids=["unknown", "empty", "near-miss", "both", "latin-1"])
def test_an_invalid_override_header_is_a_400_naming_the_header(
    proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, value: bytes
) -> None:
    response = post(proxy, chat(), {"x-glm-saver-route": value})
    assert response.status_code == 400
    error = error_of(response)
    assert "x-glm-saver-route" in error["message"] and error["type"] == "invalid_request_error"
    assert local_upstream.requests == [] and cerebras_upstream.requests == []


@pytest.fixture(scope="module")
def broken_plugin_proxy(tmp_path_factory: pytest.TempPathFactory, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> Iterator[Proxy]:
    """A proxy whose (custom) classifier raises on every request."""
    config = proxy_config(
        local_upstream.url,
        local_window=LOCAL_WINDOW,
        cloud_window=CLOUD_WINDOW,
        glm_saver={"classifier": {"custom": "tests.fakes.broken_classifier.BrokenClassifier"}},
    )
    proxy = Proxy(directory=Path(tmp_path_factory.mktemp("broken")), cerebras_url=cerebras_upstream.url, extra_env={"PYTHONPATH": str(REPO)})
    try:
        yield proxy.start(config)
    finally:
        proxy.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_plugin_exception_fails_open_to_plain_litellm_routing_never_a_500(broken_plugin_proxy: Proxy, cerebras_upstream: FakeUpstream, stream: bool) -> None:
    response = post(broken_plugin_proxy, chat(stream=stream))
    assert response.status_code == 200, response.text
    assert "x-glm-saver-route" not in response.headers  # the plugin did not route it
    # glm-saver's own deployment (Cerebras, in the shipped config) answered it.
    assert [(r.status, r.outcome) for r in cerebras_upstream.requests] == [(200, "ok")]
    stats = httpx.get(f"{broken_plugin_proxy.url}/stats", headers=ADMIN, timeout=10).json()
    assert stats["plugin_errors"] >= 1
    log = broken_plugin_proxy.directory / "glm-saver.log"
    poll(lambda: "routing failed" in log.read_text(), "the failure in glm-saver.log (written by the log thread)", 20)


def test_a_broken_plugin_still_rejects_invalid_input_with_a_4xx(broken_plugin_proxy: Proxy, cerebras_upstream: FakeUpstream) -> None:
    response = post(broken_plugin_proxy, chat(messages=[{"role": "wizard", "content": "hi"}]))
    assert response.status_code == 400
    assert cerebras_upstream.requests == []


@pytest.mark.parametrize("prompt", [[1734, 374, 264], [[1734, 374], [264]]], ids=["token-ids", "lists-of-token-ids"])
def test_a_text_completion_of_token_ids_for_cerebras_is_a_400_naming_the_prompt(proxy: Proxy, cerebras_upstream: FakeUpstream, prompt: list[Any]) -> None:
    """Cerebras' chat API, which LiteLLM turns text completions into, takes text only."""
    body = {"model": "cerebras", "prompt": prompt, "max_tokens": 8}
    response = httpx.post(f"{proxy.url}/v1/completions", json=body, headers=ADMIN, timeout=60)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == "prompt" and "prompt" in error["message"]
    assert cerebras_upstream.requests == []
