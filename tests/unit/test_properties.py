"""Property-based: any JSON-shaped request body, however odd, goes through the request view, the
classifier and the validator without an exception, and their results stay in range."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glm_saver.classifier import ComplexityClassifier
from glm_saver.request import RequestView
from glm_saver.routing.validation import MESSAGE_ROLES, request_problem

CLASSIFIER = ComplexityClassifier()  # built once: it loads the shipped learned model

# JSON values of any shape, with text that includes unicode, control characters and Cline's tags.
TEXT = st.text(max_size=200) | st.sampled_from(["<task>fix it</task>", "<environment_details>x", "[read_file for 'a'] Result:", "[SYSTEM] hi"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "hologram"]) | JSON}, optional={"text": TEXT | JSON})
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "user", "assistant", "tool", "wizard"]) | JSON,
        "content": TEXT | st.lists(PART | JSON, max_size=4) | JSON,
        "tool_calls": JSON,
    },
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just("glm-saver") | JSON,
        "messages": st.lists(MESSAGE | JSON, max_size=5) | JSON,
        "tools": JSON,
        "functions": JSON,
        "stream": JSON,
        "max_tokens": st.integers() | JSON,
        "max_completion_tokens": JSON,
        "temperature": JSON,
        "n": JSON,
        "stop": JSON,
    },
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(BODY)
def test_the_request_view_takes_any_body(body: dict[str, Any]) -> None:
    view = RequestView.from_data(body)
    assert view.prompt_tokens >= 0
    assert isinstance(view.ask, str)
    assert view.max_tokens is None or isinstance(view.max_tokens, int)


@FAST
@given(BODY)
def test_the_classifier_takes_any_messages_and_gives_a_verdict_in_range(body: dict[str, Any]) -> None:
    verdict = CLASSIFIER.classify(RequestView.from_data(body).messages)
    assert 0.0 <= verdict.score <= 1.0
    assert verdict.label in ("simple", "complex")


@FAST
@given(st.lists(MESSAGE | JSON, max_size=5))
def test_the_classifier_takes_any_list_directly(messages: list[Any]) -> None:
    assert CLASSIFIER.classify(messages).label in ("simple", "complex")


@FAST
@given(BODY)
def test_the_validator_takes_any_body_and_passes_only_well_formed_messages(body: dict[str, Any]) -> None:
    problem = request_problem(body)
    if problem is None:
        messages = body["messages"]
        assert isinstance(messages, list) and messages
        assert all(isinstance(m, dict) and m.get("role") in MESSAGE_ROLES for m in messages)
    else:
        assert problem.message and problem.param
