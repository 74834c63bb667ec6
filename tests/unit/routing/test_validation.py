"""The chat request check: what passes, and how a problem names its field; the text completion's prompt check."""

from __future__ import annotations

from typing import Any

import pytest

from glm_saver.routing.validation import request_problem, text_prompt_problem
from tests import cline_shapes as cline

ASK = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": cline.vscode_task("fix the bug")},
        {
            "messages": [
                *ASK,
                {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
                {"role": "tool", "tool_call_id": "1", "content": "ok"},
            ]
        },
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]},
        {"messages": ASK, "stop": "\n", "temperature": 0, "top_p": 1, "max_tokens": 131072, "n": 2, "stream": True, "tools": []},
        {"messages": ASK, "stop": ["a", "b"], "presence_penalty": -2.0, "anything_else": {"is": "LiteLLM's"}},
    ],
    ids=["cline-task", "tool-round", "image-part", "every-number", "stop-list-and-unknown-field"],
)
def test_well_formed_requests_pass(body: dict[str, Any]) -> None:
    assert request_problem(body) is None


@pytest.mark.parametrize(
    ("body", "param", "said"),
    [
        (
            {"messages": [*ASK, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": 7}]}]},
            "messages[1].content[1].text",
            "valid string (got 7)",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]", "a text part needs its text"),
        ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages[0].content", "a string or a list of content parts"),
        ({"messages": ASK, "stop": ["a", 1]}, "stop[1]", "valid string"),
        ({"messages": ASK, "temperature": True}, "temperature", "valid number"),
        ({"messages": ASK, "max_tokens": 2.5}, "max_tokens", "valid integer"),
        ({"messages": ASK, "frequency_penalty": 3}, "frequency_penalty", "less than or equal to 2"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0]", "a user message needs its content"),
        ({"messages": [{"role": "system"}, *ASK]}, "messages[0]", "a system message needs its content"),
        ({"messages": [*ASK, {"role": "tool", "content": "ok"}]}, "messages[1]", "needs the tool_call_id"),
        ({"messages": [*ASK, {"role": "tool", "content": "ok", "tool_call_id": 3}]}, "messages[1].tool_call_id", "valid string (got 3)"),
    ],
    ids=[
        "deep-part",
        "text-part-without-text",
        "content-an-object",
        "stop-item",
        "bool-temperature",
        "float-max-tokens",
        "penalty-range",
        "user-content-null",
        "system-without-content",
        "tool-without-call-id",
        "tool-call-id-a-number",
    ],
)
def test_a_problem_names_its_field_and_says_what_is_wrong(body: dict[str, Any], param: str, said: str) -> None:
    problem = request_problem(body)
    assert problem is not None
    assert problem.param == param
    assert problem.message.startswith(f"{param}: ") and said in problem.message


def test_a_wrong_value_is_echoed_cut_short() -> None:
    problem = request_problem({"messages": [{"role": "x" * 500, "content": "hi"}]})
    assert problem is not None and "x" * 39 in problem.message and "x" * 41 not in problem.message


@pytest.mark.parametrize("prompt", ["hi", ["hi", "there"], []], ids=["string", "strings", "no-strings"])
def test_a_text_prompt_passes(prompt: Any) -> None:
    assert text_prompt_problem({"prompt": prompt}) is None


@pytest.mark.parametrize(
    "body", [{"prompt": [1, 2]}, {"prompt": [[1], [2]]}, {"prompt": ["hi", 3]}, {"prompt": None}, {}], ids=["tokens", "token-lists", "mixed", "null", "missing"]
)
def test_a_prompt_that_is_not_text_is_a_problem_of_the_prompt(body: dict[str, Any]) -> None:
    problem = text_prompt_problem(body)
    assert problem is not None and problem.param == "prompt" and "token ids" in problem.message
