"""A proxy started with no CEREBRAS_API_KEY: Cerebras is reported as not configured and every ask is
answered locally, without a single call to Cerebras (no stream of failing requests and fallbacks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import CLOUD_WINDOW, LOCAL_WINDOW
from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config
from tests.fakes.upstream import FakeUpstream

COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"


@pytest.fixture(scope="module")
def keyless_proxy(tmp_path_factory: pytest.TempPathFactory, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> Iterator[Proxy]:
    proxy = Proxy(directory=Path(tmp_path_factory.mktemp("keyless")), cerebras_url=cerebras_upstream.url, cerebras_key=None)
    proxy.start(proxy_config(local_upstream.url, local_window=LOCAL_WINDOW, cloud_window=CLOUD_WINDOW))
    yield proxy
    proxy.stop()


@pytest.fixture()
def keyless_client(keyless_proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{keyless_proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_complex_ask_goes_local_saying_cerebras_is_not_configured(
    keyless_client: openai.OpenAI, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool
) -> None:
    raw = keyless_client.chat.completions.with_raw_response.create(model="glm-saver", messages=[{"role": "user", "content": COMPLEX}], stream=stream)
    parsed = raw.parse()
    text = "".join(c.delta.content or "" for chunk in parsed for c in chunk.choices) if stream else parsed.choices[0].message.content
    assert text == "Hello from local."
    assert raw.headers["x-glm-saver-route"] == "local"
    assert raw.headers["x-glm-saver-reason"].startswith("cerebras-not-configured: cerebras has no API key (wanted cerebras: classifier-complex)")
    assert cerebras_upstream.requests == []


def test_override_to_cerebras_also_answers_locally(keyless_client: openai.OpenAI, cerebras_upstream: FakeUpstream) -> None:
    raw = keyless_client.chat.completions.with_raw_response.create(
        model="glm-saver", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-glm-saver-route": "cerebras"}
    )
    assert raw.headers["x-glm-saver-route"] == "local"
    assert raw.headers["x-glm-saver-reason"].startswith("cerebras-not-configured")
    assert cerebras_upstream.requests == []


def test_prompt_too_big_for_local_is_a_clear_400_not_a_cerebras_call(keyless_client: openai.OpenAI, cerebras_upstream: FakeUpstream) -> None:
    huge = "word " * (LOCAL_WINDOW * 2)  # fits Cerebras' window, not the local one
    with pytest.raises(openai.BadRequestError) as raised:
        keyless_client.chat.completions.create(model="glm-saver", messages=[{"role": "user", "content": huge}])
    error = raised.value.body
    assert "cerebras is not configured" in error["message"] and "local model's context window" in error["message"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "messages")
    assert cerebras_upstream.requests == []


def test_health_and_stats_report_cerebras_not_configured(keyless_proxy: Proxy, keyless_client: openai.OpenAI) -> None:
    keyless_client.chat.completions.create(model="glm-saver", messages=[{"role": "user", "content": COMPLEX}])
    health = httpx.get(f"{keyless_proxy.url}/health").json()
    assert health["cerebras"]["configured"] is False
    stats = httpx.get(f"{keyless_proxy.url}/stats", headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()
    assert stats["cerebras_configured"] is False
    assert stats["by_reason"]["cerebras-not-configured"] >= 1
    assert stats["upstream_failures"] == {}
    assert "cerebras" not in stats["answered_by"]
