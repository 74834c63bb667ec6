"""The cascade's pure pieces: confidence bands, the verify prompt, verdicts, call parameters and
metadata, failure names, the parallel gate; and when the strategies ask for a cascade at all."""

import hashlib
import json
import os

import httpx
import pytest
from pydantic import ValidationError

from glm_saver.cascade.speculator import (
    CALL_KEY,
    Draft,
    ParallelGate,
    band,
    build_mock,
    call_metadata,
    caller_label,
    draft_from_response,
    draft_params,
    failure_kind,
    is_acceptance,
    verify_messages,
    verify_params,
)
from glm_saver.classifier import Classification
from glm_saver.request import RequestView
from glm_saver.routing.gate import Ticket, clamp
from glm_saver.routing.policy import decide
from glm_saver.routing.tiers import Route, Tiers
from glm_saver.settings import SpeculativeSettings

# build_mock imports litellm: keep it from reaching for the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OPTIONS = SpeculativeSettings(min_confidence=0.8, verify_min_confidence=0.4)


@pytest.mark.parametrize(("confidence", "expected"), [(1.0, "accept"), (0.8, "accept"), (0.79, "verify"), (0.4, "verify"), (0.39, "cloud"), (0.0, "cloud")])
def test_confidence_bands(confidence: float, expected: str) -> None:
    assert band(confidence, OPTIONS) == expected


def test_bands_can_be_collapsed_to_never_verify() -> None:
    options = SpeculativeSettings(min_confidence=0.6, verify_min_confidence=0.6)
    assert (band(0.6, options), band(0.59, options)) == ("accept", "cloud")


def test_bands_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="must not exceed"):
        SpeculativeSettings(min_confidence=0.3, verify_min_confidence=0.5)


def test_verify_prompt_keeps_the_conversation_and_adds_the_draft_in_a_new_user_turn() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 12 * 7?"}]
    sent = verify_messages(messages, Draft(content="12 * 7 = 19"))
    assert sent[:2] == messages
    assert sent[2]["role"] == "user"
    assert "<draft>\n12 * 7 = 19\n</draft>" in sent[2]["content"] and "ACCEPT" in sent[2]["content"]
    assert len(messages) == 2  # the client's list is not touched


def test_a_tool_call_draft_is_shown_to_the_verifier_by_name_and_arguments() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}
    sent = verify_messages([{"role": "user", "content": "open a.py"}], Draft(content=None, tool_calls=(call,)))
    assert 'call tool read_file with arguments {"path": "a.py"}' in sent[-1]["content"]


@pytest.mark.parametrize(
    ("text", "accepted"), [("ACCEPT", True), (" accept. ", True), ("**ACCEPTED**", True), ("ACCEPT, but 84 not 19", False), ("84", False), ("", False)]
)
def test_only_a_bare_accept_accepts_the_draft(text: str, accepted: bool) -> None:
    assert is_acceptance(Draft(content=text)) is accepted


def test_a_tool_call_verdict_is_a_correction() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "accept", "arguments": "{}"}}
    assert not is_acceptance(Draft(content="ACCEPT", tool_calls=(call,)))


def test_draft_is_read_from_an_openai_shaped_response_with_logprobs() -> None:
    response = {
        "choices": [
            {
                "message": {"role": "assistant", "content": "Paris."},
                "finish_reason": "stop",
                "logprobs": {"content": [{"token": "Paris", "logprob": -0.1}, {"token": ".", "logprob": -0.3}]},
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2},
    }
    draft = draft_from_response(response)
    assert (draft.content, draft.finish_reason, draft.logprobs, draft.prompt_tokens, draft.completion_tokens) == ("Paris.", "stop", (-0.1, -0.3), 12, 2)


def test_draft_without_choices_is_empty() -> None:
    assert draft_from_response({"choices": []}).text == ""


def test_mock_answer_carries_the_text_tool_calls_and_usage_of_one_call() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
    mock = build_mock(Draft(content=None, tool_calls=(call,), completion_tokens=4), prompt_tokens=30)
    assert mock.choices[0].message.tool_calls[0].function.name == "read_file"
    assert mock.choices[0].finish_reason == "tool_calls"
    assert (mock.usage.prompt_tokens, mock.usage.completion_tokens, mock.usage.total_tokens) == (30, 4, 34)


def _view(**data: object) -> RequestView:
    return RequestView.from_data({"messages": [{"role": "user", "content": "hi"}], **data})


def test_draft_params_bound_the_draft_and_ask_for_logprobs() -> None:
    data = {"temperature": 0.1, "max_tokens": 5000, "stream": True, "stream_options": {"include_usage": True}, "top_p": 0.9}
    params = draft_params(data, _view(**data), SpeculativeSettings(max_draft_tokens=256), parallel=False)
    assert params == {"temperature": 0.1, "top_p": 0.9, "max_tokens": 256, "logprobs": True}


def test_parallel_drafts_are_sampled_for_variety() -> None:
    data = {"temperature": 0.0, "max_tokens": 100}
    params = draft_params(data, _view(**data), SpeculativeSettings(draft_temperature=0.8, request_logprobs=False), parallel=True)
    assert params == {"temperature": 0.8, "max_tokens": 100}


def test_the_gate_clamps_max_tokens_for_cerebras() -> None:
    assert clamp(None, 16384) == 16384
    assert clamp(100_000, 16384) == 16384
    assert clamp(100, 16384) == 100


def test_verify_params_ask_for_what_the_gate_granted() -> None:
    ticket = Ticket(id="t", group="cerebras", key="k", max_tokens=4096, cost_usd=0.01)
    assert verify_params({"max_tokens": 100_000, "temperature": 0.2}, ticket) == {"max_tokens": 4096, "temperature": 0.2}


def test_internal_calls_name_the_caller_and_their_role_but_not_the_key() -> None:
    key_hash = hashlib.sha256(b"sk-secret").hexdigest()
    data = {"litellm_call_id": "abc", "metadata": {"user_api_key": key_hash, "user_api_key_hash": key_hash, "user_api_key_auth": object(), "glm_saver": {}}}
    metadata = call_metadata(data, "verify")
    assert metadata["user_api_key_hash"] == key_hash  # LiteLLM's own logs attribute the call to the key
    assert "user_api_key_auth" not in metadata and "glm_saver" not in metadata
    assert metadata[CALL_KEY] == {"role": "verify", "caller": caller_label(data["metadata"]), "request_id": "abc"}
    assert key_hash not in json.dumps(metadata[CALL_KEY])


def test_caller_label_prefers_the_alias_and_never_shows_a_raw_key() -> None:
    key_hash = hashlib.sha256(b"sk-virtual").hexdigest()
    assert caller_label({"user_api_key_alias": "team-a", "user_api_key": key_hash}) == "team-a"
    assert caller_label({"user_api_key_hash": key_hash}) == f"key-{key_hash[:12]}"
    assert caller_label({"user_api_key": "litellm_proxy_master_key"}) == "master-key"
    label = caller_label({"user_api_key": "sk-raw"})
    assert label.startswith("key-") and "sk-raw" not in label
    assert caller_label({}) == "unknown"


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status_code = status


class APIConnectionError(Exception):
    pass


def _chained_connect_error() -> Exception:
    """How the openai client reports a refused connection: its wrapper around httpx's ConnectError."""
    try:
        try:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        except httpx.ConnectError as cause:
            raise APIConnectionError("upstream call failed") from cause
    except APIConnectionError as err:
        return err


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TimeoutError(), "timeout"),
        (_Status(429), "rate-limited"),
        (_Status(503), "busy"),
        (_Status(500), "http-500"),
        (APIConnectionError("Connection error."), "unreachable"),
        (_chained_connect_error(), "unreachable"),
    ],
)
def test_failures_get_short_prompt_free_names(error: Exception, kind: str) -> None:
    assert failure_kind(error) == kind


def test_parallel_gate_closes_for_the_configured_time_after_a_refusal() -> None:
    now = [100.0]
    gate = ParallelGate(60, clock=lambda: now[0])
    assert gate.allows()
    gate.refuse()
    now[0] = 159.9
    assert not gate.allows()
    now[0] = 160.0
    assert gate.allows()


# ---- when the strategies ask for the cascade ------------------------------------------------------

WINDOWS = Tiers.of_two(local=1000, cloud=100_000)


def verdict(label: str) -> Classification:
    return Classification(score=0.9 if label == "complex" else 0.1, label=label, reasons=["test"])


def never_classify() -> Classification:
    raise AssertionError("the classifier must not run for this decision")


@pytest.mark.parametrize("strategy", ["speculative_decoding", "parallel_speculative"])
def test_speculative_strategies_always_draft_locally_first(strategy: str) -> None:
    decision = decide(strategy, 10, WINDOWS, never_classify)
    assert (decision.route, decision.reason, decision.speculate) == ("local", "speculative", True)


@pytest.mark.parametrize(("label", "speculate"), [("simple", False), ("complex", True)])
def test_smart_speculative_sends_simple_asks_local_and_complex_ones_through_the_cascade(label: str, speculate: bool) -> None:
    decision = decide("smart_speculative", 10, WINDOWS, lambda: verdict(label))
    assert (decision.route, decision.speculate) == ("local", speculate)


@pytest.mark.parametrize("label", ["simple", "complex"])
def test_requests_with_tools_are_routed_as_smart_routing_by_default(label: str) -> None:
    decision = decide("parallel_speculative", 10, WINDOWS, lambda: verdict(label), has_tools=True)
    assert not decision.speculate
    assert (decision.route, decision.reason) == ("cerebras" if label == "complex" else "local", f"classifier-{label}")
    assert "tools are not speculated" in decision.detail


def test_tools_can_be_speculated_when_configured() -> None:
    assert decide("parallel_speculative", 10, WINDOWS, never_classify, has_tools=True, speculate_with_tools=True).speculate


def test_a_prompt_too_big_for_local_is_not_speculated() -> None:
    decision = decide("parallel_speculative", 5000, WINDOWS, never_classify)
    assert (decision.route, decision.reason, decision.speculate) == ("cerebras", "context-window", False)


@pytest.mark.parametrize("override", ["local", "cerebras"])
def test_override_header_wins_over_speculation(override: Route) -> None:
    decision = decide("parallel_speculative", 10, WINDOWS, never_classify, override=override)
    assert (decision.route, decision.speculate) == (override, False)
