"""Client keys from the config (glm_saver.auth's custom_auth) through a real proxy, no database.

Keys: `alpha` (any model), `beta` (only `glm-saver`) and `gamma` (only `local`); the master key
stays the admin. Only the
master key reads /stats. Afterwards neither the plugin's log file, the proxy's console nor /stats
holds a key or the prompt text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from glm_saver.callers import hash_key
from glm_saver.cli import main
from tests.e2e.polling import poll
from tests.e2e.proxy import CEREBRAS_KEY, MASTER_KEY, Proxy
from tests.fakes.upstream import FakeUpstream

ALPHA = "sk-alpha-e2e-5b0d2f7c91"
BETA = "sk-beta-e2e-3c8e61aa"
GAMMA = "sk-gamma-e2e-90d1b4e2"
UNKNOWN = "sk-unknown-e2e-77aa01"
PROMPT = "PROMPT-MARKER-q7z: what is a tuple"
KEYS = [
    {"alias": "alpha", "key_sha256": hash_key(ALPHA)},
    {"alias": "beta", "key_sha256": hash_key(BETA), "models": ["glm-saver"]},
    {"alias": "gamma", "key_sha256": hash_key(GAMMA), "models": ["local"]},
]
SECRETS = (ALPHA, BETA, GAMMA, UNKNOWN, MASTER_KEY, CEREBRAS_KEY)


@pytest.fixture(scope="module")
def keyed_proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy(glm_saver={"keys": KEYS})


def _client(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=60)


def _chat(proxy: Proxy, headers: dict[str, str], model: str = "glm-saver", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}
    return httpx.post(f"{proxy.url}/v1/chat/completions", headers=headers, json=body, timeout=60)


def _error(response: httpx.Response) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    error = response.json()["error"]
    assert {"message", "type", "code"} <= set(error)
    return error


def test_a_configured_key_works_as_a_bearer_token(keyed_proxy: Proxy) -> None:
    answer = _client(keyed_proxy, ALPHA).chat.completions.create(model="glm-saver", messages=[{"role": "user", "content": PROMPT}])
    assert answer.choices[0].message.content


def test_a_configured_key_works_in_the_x_litellm_api_key_header(keyed_proxy: Proxy) -> None:
    assert _chat(keyed_proxy, {"x-litellm-api-key": BETA}).status_code == 200
    # Cline's LiteLLM provider sends this header; it wins over whatever Authorization says.
    assert _chat(keyed_proxy, {"x-litellm-api-key": ALPHA, "authorization": f"Bearer {UNKNOWN}"}).status_code == 200


def test_an_unknown_key_gets_401_in_openais_error_shape(keyed_proxy: Proxy) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        _client(keyed_proxy, UNKNOWN).chat.completions.create(model="glm-saver", messages=[{"role": "user", "content": PROMPT}])
    assert caught.value.status_code == 401
    response = _chat(keyed_proxy, {"authorization": f"Bearer {UNKNOWN}"})
    error = _error(response)
    assert (response.status_code, error["type"], error["code"]) == (401, "auth_error", "401")
    assert UNKNOWN not in response.text


def test_no_key_gets_401(keyed_proxy: Proxy) -> None:
    response = _chat(keyed_proxy, {})
    assert response.status_code == 401
    assert _error(response)["type"] == "auth_error"


def test_stats_needs_the_master_key(keyed_proxy: Proxy) -> None:
    url = f"{keyed_proxy.url}/stats"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"authorization": f"Bearer {UNKNOWN}"}, timeout=10).status_code == 401
    refused = httpx.get(url, headers={"authorization": f"Bearer {ALPHA}"}, timeout=10)
    assert refused.status_code == 403
    assert "master key" in _error(refused)["message"]
    assert httpx.get(url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).status_code == 200


@pytest.mark.parametrize("key", [None, UNKNOWN, ALPHA], ids=["no-key", "unknown-key", "client-key"])
def test_metrics_refuse_all_but_the_master_key_with_401_in_openais_error_shape(keyed_proxy: Proxy, key: str | None) -> None:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{keyed_proxy.url}/metrics", headers=headers, timeout=10, follow_redirects=True)
    error = _error(response)
    assert (response.status_code, error["type"], error["code"]) == (401, "auth_error", "401")
    assert error["message"].count("master key") == 1
    assert "require_auth_for_metrics_endpoint" not in response.text  # no advice to switch the auth off
    assert key is None or key not in response.text


def test_requests_are_booked_under_the_keys_alias(keyed_proxy: Proxy) -> None:
    assert _chat(keyed_proxy, {"authorization": f"Bearer {ALPHA}"}).status_code == 200
    # Booked by the log event after the response: poll for it.
    deadline = time.monotonic() + 20
    while "alpha" not in (
        by_key := httpx.get(f"{keyed_proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()["books"]["by_key"]
    ):
        assert time.monotonic() < deadline, f"alpha never booked: {sorted(by_key)}"
        time.sleep(0.05)


def test_a_key_limited_to_glm_saver_cannot_call_cerebras_directly(keyed_proxy: Proxy, cerebras_upstream: FakeUpstream) -> None:
    refused = _chat(keyed_proxy, {"authorization": f"Bearer {BETA}"}, model="cerebras")
    assert refused.status_code == 403
    assert _error(refused)["type"] == "key_model_access_denied"
    assert cerebras_upstream.requests == []
    # The plugin's entry model may still send the ask to Cerebras: the limit is on what the key names.
    routed = _chat(keyed_proxy, {"authorization": f"Bearer {BETA}", "x-glm-saver-route": "cerebras"})
    assert routed.status_code == 200
    assert routed.headers["x-glm-saver-route"] == "cerebras"


def test_a_key_limited_to_glm_saver_falls_back_to_cerebras_when_local_fails(
    keyed_proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    local_upstream.inject(500)
    reply = _chat(keyed_proxy, {"authorization": f"Bearer {BETA}"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-glm-saver-route"] != "local"
    assert [r.status for r in local_upstream.requests] == [500]
    assert len(cerebras_upstream.requests) == 1


def test_a_key_limited_to_local_never_falls_back_to_cerebras(keyed_proxy: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    assert _chat(keyed_proxy, {"authorization": f"Bearer {GAMMA}"}, model="local").status_code == 200
    local_upstream.inject(500)
    assert _chat(keyed_proxy, {"authorization": f"Bearer {GAMMA}"}, model="local").status_code >= 500
    assert cerebras_upstream.requests == []


def test_a_key_limited_to_glm_saver_lists_only_glm_saver(keyed_proxy: Proxy) -> None:
    models = _client(keyed_proxy, BETA).models.list()
    assert [model.id for model in models.data] == ["glm-saver"]


def test_the_master_key_still_works_for_everything(keyed_proxy: Proxy) -> None:
    client = _client(keyed_proxy, MASTER_KEY)
    for model in ("glm-saver", "cerebras", "local"):
        assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}]).choices
    assert {"glm-saver", "cerebras", "local"} <= {model.id for model in client.models.list().data}


def test_glm_saver_stats_prints_the_books_with_the_master_key_only(keyed_proxy: Proxy, capsys) -> None:
    assert _chat(keyed_proxy, {"authorization": f"Bearer {ALPHA}"}).status_code == 200
    assert main(["stats", "--url", keyed_proxy.url, "--key", MASTER_KEY]) == 0
    out = capsys.readouterr().out
    assert "By key" in out and "alpha" in out
    assert main(["stats", "--url", keyed_proxy.url, "--key", ALPHA]) == 1
    assert "403" in capsys.readouterr().err


def test_no_key_and_no_prompt_text_in_the_logs_or_stats(keyed_proxy: Proxy, cerebras_upstream: FakeUpstream) -> None:
    # Traffic of every kind first: both header forms, stream and not, Cerebras and local, a
    # fallback after a Cerebras 500, refusals.
    for headers in ({"authorization": f"Bearer {ALPHA}"}, {"x-litellm-api-key": BETA}):
        for route in ("local", "cerebras"):
            for stream in (False, True):
                assert _chat(keyed_proxy, {**headers, "x-glm-saver-route": route}, stream=stream).status_code == 200
    cerebras_upstream.inject(500)
    fell_back = _chat(keyed_proxy, {"authorization": f"Bearer {ALPHA}", "x-glm-saver-route": "cerebras"})
    assert (fell_back.status_code, fell_back.headers["x-glm-saver-route"]) == (200, "local")
    assert _chat(keyed_proxy, {"authorization": f"Bearer {UNKNOWN}"}).status_code == 401
    assert _chat(keyed_proxy, {"authorization": f"Bearer {BETA}"}, model="cerebras").status_code == 403
    # Bad input that carries the prompt, and a stream cut after text was sent (logged as errors).
    wizard = {"model": "glm-saver", "messages": [{"role": "wizard", "content": PROMPT}]}
    assert httpx.post(f"{keyed_proxy.url}/v1/chat/completions", headers={"authorization": f"Bearer {ALPHA}"}, json=wizard, timeout=60).status_code == 400
    cerebras_upstream.inject("reset_midstream", after_chunks=2)
    # A cut stream (answered by local, or ended by an error event if text was already sent): either
    # way the failure is logged, and the grep below checks that log too.
    assert _chat(keyed_proxy, {"authorization": f"Bearer {ALPHA}", "x-glm-saver-route": "cerebras"}, stream=True).status_code == 200

    stats = httpx.get(f"{keyed_proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).text
    metrics = httpx.get(f"{keyed_proxy.url}/metrics", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10, follow_redirects=True)
    assert metrics.status_code == 200 and "glm_saver_requests_total" in metrics.text  # the right page
    log_file = keyed_proxy.directory / "glm-saver.log"  # LoggingSettings.file, beside the config
    # The decisions are there (it is the right file) and the fallback's WARNING, once the log thread wrote them.
    poll(lambda: all(line in log_file.read_text() for line in ("glm-saver -> cerebras", "cerebras failed with 500")), "the plugin log", 20)
    plugin_log = log_file.read_text()
    for name, text in (("plugin log", plugin_log), ("/stats", stats), ("/metrics", metrics.text), ("proxy console", keyed_proxy.log())):
        for secret in SECRETS:
            assert secret not in text, f"a key is in the {name}"
        assert "PROMPT-MARKER" not in text, f"prompt text is in the {name}"
    json.loads(stats)  # still a JSON object


def test_metrics_never_carry_a_key_refused_for_a_model(keyed_proxy: Proxy) -> None:
    assert _chat(keyed_proxy, {"x-litellm-api-key": BETA}).status_code == 200
    assert _chat(keyed_proxy, {"authorization": f"Bearer {BETA}"}, model="cerebras").status_code == 403
    metrics = httpx.get(f"{keyed_proxy.url}/metrics", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10, follow_redirects=True)
    assert metrics.status_code == 200
    leaking = [line for line in metrics.text.splitlines() if BETA in line]
    assert not leaking, leaking[:3]
