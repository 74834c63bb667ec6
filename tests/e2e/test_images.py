"""A request with image input goes only to a model that takes images (`model_info.supports_vision`,
or LiteLLM's map, says so), through the gate like any paid call; when no model it may be routed to
takes images it is a 400 in OpenAI's error shape before any model is called (the text-only local
model answered 500 'image input is not supported', which clients retry).

Real `litellm` proxy processes asked through the OpenAI client: in front of the real embedded model
(text only, as `glm-saver up` serves it), and in front of the fakes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import openai
import pytest

from tests.e2e.conftest import CLOUD_WINDOW, LOCAL_WINDOW
from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config
from tests.fakes.upstream import FakeUpstream

# A 1x1 PNG: what Cline sends for a pasted screenshot, only smaller.
PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WITH_IMAGE = [{"role": "user", "content": [{"type": "text", "text": "hello, what is in this picture?"}, {"type": "image_url", "image_url": {"url": PIXEL}}]}]
MAX_TOKENS_CAP = 16384  # the shipped rate_limits.max_tokens_cap
SAVER = "sk-images-saver-0a1b2c3d"


def client_for(proxy: Proxy, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=120)


def assert_images_refused(error: openai.APIStatusError) -> None:
    assert error.status_code == 400
    body = error.response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(body), body
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", "messages", "image_input_not_supported")
    assert "images" in body["message"] and "supports_vision" in body["message"], body["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_image_for_the_text_only_embedded_model_is_a_400_not_a_500(embedded_proxy: Proxy, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client_for(embedded_proxy).chat.completions.create(model="glm-saver", messages=WITH_IMAGE, max_tokens=8, stream=stream)  # type: ignore[arg-type]
    assert_images_refused(raised.value)
    # The proxy keeps serving text.
    answer = client_for(embedded_proxy).chat.completions.create(model="glm-saver", messages=[{"role": "user", "content": "hello"}], max_tokens=8)
    assert answer.choices[0].message.content is not None


@pytest.mark.parametrize("model", ["glm-saver", "local", "cerebras"])
def test_an_image_no_configured_model_takes_is_a_400_before_any_model_is_called(
    proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, model: str
) -> None:
    """The shipped config: neither the local model nor Cerebras' GLM says it takes images."""
    with pytest.raises(openai.BadRequestError) as raised:
        client_for(proxy).chat.completions.create(model=model, messages=WITH_IMAGE)  # type: ignore[arg-type]
    assert_images_refused(raised.value)
    assert local_upstream.requests == [] and cerebras_upstream.requests == []


@pytest.fixture(scope="module")
def vision_proxy(start_proxy: Callable[..., Proxy], local_upstream: FakeUpstream) -> Proxy:
    """Cerebras says it takes images (model_info.supports_vision: true), the local model does not;
    key `saver` has a budget far below one Cerebras call's worst case (~$0.045)."""
    config = proxy_config(local_upstream.url, local_window=LOCAL_WINDOW, cloud_window=CLOUD_WINDOW)
    for entry in config["model_list"]:
        if entry["model_name"] == "cerebras":
            entry["model_info"] = {**entry["model_info"], "supports_vision": True}
    keys = [{"alias": "saver", "key_sha256": hashlib.sha256(SAVER.encode()).hexdigest(), "budget": {"limit_usd": 0.0001, "period": "daily", "action": "local"}}]
    return start_proxy(model_list=config["model_list"], glm_saver={"keys": keys})


def test_a_simple_ask_with_an_image_goes_to_the_model_that_takes_images_clamped(
    vision_proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    raw = client_for(vision_proxy).chat.completions.with_raw_response.create(model="glm-saver", messages=WITH_IMAGE, max_tokens=131072)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == "Hello from cerebras."
    assert raw.headers["x-glm-saver-route"] == "cerebras"
    assert raw.headers["x-glm-saver-reason"].startswith("images: local does not take images"), raw.headers["x-glm-saver-reason"]
    assert local_upstream.requests == []
    (call,) = cerebras_upstream.requests
    assert call.body["messages"][0]["content"][1]["type"] == "image_url"
    assert call.body.get("max_completion_tokens", call.body.get("max_tokens")) <= MAX_TOKENS_CAP


def test_an_image_is_never_sent_to_the_local_model_when_cerebras_fails(
    vision_proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    cerebras_upstream.inject("500")
    with pytest.raises(openai.APIStatusError) as raised:
        client_for(vision_proxy).chat.completions.create(model="glm-saver", messages=WITH_IMAGE)  # type: ignore[arg-type]
    assert raised.value.status_code >= 500
    assert [r.status for r in cerebras_upstream.requests] == [500]
    assert local_upstream.requests == [], "an image went to the text-only local model"


def test_an_image_the_budget_cannot_take_to_cerebras_is_a_429_budget_exceeded(
    vision_proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    """Budget action `local` cannot answer locally: the local model does not take images."""
    with pytest.raises(openai.RateLimitError) as raised:
        client_for(vision_proxy, SAVER).chat.completions.create(model="glm-saver", messages=WITH_IMAGE)  # type: ignore[arg-type]
    assert raised.value.response.json()["error"]["type"] == "budget_exceeded"
    assert local_upstream.requests == [] and cerebras_upstream.requests == []
