"""LiteLLM's /metrics refusal text becomes OpenAI's error shape (the proxy's side: tests/e2e/test_keys.py)."""

import json

from glm_saver.layers.metrics_refusal import openai_refusal

ADVICE = " To allow unauthenticated access, set `litellm_settings.require_auth_for_metrics_endpoint: false` in your proxy_config.yaml."


def _litellm_refusal(reason: str) -> bytes:
    return json.dumps(f"Unauthorized access to metrics endpoint: {reason}{ADVICE}").encode()


def test_a_missing_key_keeps_the_auths_reason_without_the_advice_to_drop_the_auth() -> None:
    error = json.loads(openai_refusal(_litellm_refusal("Authentication Error: no API key was sent")))["error"]
    assert error == {
        "message": "Authentication Error: no API key was sent (/metrics needs the master key)",
        "type": "auth_error",
        "param": "api_key",
        "code": "401",
    }


def test_a_client_keys_reason_names_the_master_key_once() -> None:
    reason = "key 'alice' may only call chat completions, completions and the model list; /metrics needs the master key"
    assert json.loads(openai_refusal(_litellm_refusal(reason)))["error"]["message"] == reason


def test_a_body_already_in_openais_shape_is_kept() -> None:
    body = json.dumps({"error": {"message": "x", "type": "auth_error", "param": None, "code": "401"}}).encode()
    assert openai_refusal(body) == body
