"""The user's latest ask is found in every Cline shape; what is not the user's ask is ignored; the
output limit a request asks for."""

import pytest

from glm_saver.request import RequestView, asked_max_tokens, latest_ask, max_tokens_field, prompt_tokens
from tests import cline_shapes as cline


def test_plain_chat_ask_is_the_last_user_message() -> None:
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second"}]
    assert latest_ask(messages) == "second"


def test_vscode_task_counts_and_environment_details_do_not() -> None:
    assert latest_ask(cline.vscode_task("Fix the typo in README")) == "Fix the typo in README"


def test_vscode_tool_result_turn_keeps_the_task_as_the_ask() -> None:
    assert latest_ask(cline.vscode_tool_result_turn("Rename foo to bar")) == "Rename foo to bar"


def test_vscode_feedback_is_the_newest_ask() -> None:
    assert latest_ask(cline.vscode_feedback_turn("Rename foo", "also update the docs")) == "also update the docs"


def test_vscode_answer_tag_counts() -> None:
    messages = [{"role": "user", "content": "<answer>\nyes, use sqlite\n</answer>\n<environment_details>x</environment_details>"}]
    assert latest_ask(messages) == "yes, use sqlite"


def test_cli_system_reminder_is_not_the_ask() -> None:
    assert latest_ask(cline.cli_task("List the files in src")) == "List the files in src"


def test_cli_tool_results_are_not_the_ask() -> None:
    assert latest_ask(cline.cli_tool_result_turn("List the files in src")) == "List the files in src"


def test_system_prompt_never_is_the_ask() -> None:
    assert latest_ask([{"role": "system", "content": "refactor everything"}]) == ""


def test_content_parts_of_unknown_type_are_skipped() -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}, {"type": "text", "text": "what is this"}]}]
    assert latest_ask(messages) == "what is this"


def test_prompt_size_includes_system_prompt_and_tools() -> None:
    messages = cline.vscode_task("hi")
    without_tools = prompt_tokens(messages)
    with_tools = prompt_tokens(messages, [cline.READ_FILE_TOOL])
    assert without_tools > prompt_tokens(messages[1:]) + 1000  # the system prompt is big
    assert with_tools > without_tools


def test_request_view_reads_stream_tools_and_max_tokens() -> None:
    view = RequestView.from_data({"messages": cline.cli_task("hi"), "stream": True, "tools": [cline.READ_FILE_TOOL], "max_tokens": 16384})
    assert (view.ask, view.stream, view.has_tools, view.max_tokens) == ("hi", True, True, 16384)


def test_request_view_tolerates_garbage() -> None:
    view = RequestView.from_data({"messages": "not a list", "max_tokens": "lots"})
    assert (view.ask, view.prompt_tokens, view.max_tokens) == ("", 0, None)


def test_an_image_part_anywhere_in_the_history_makes_the_request_one_with_images() -> None:
    image = {"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:"}}]}
    later = [image, {"role": "assistant", "content": "a cat"}, {"role": "user", "content": "and its colour?"}]
    assert RequestView.from_data({"messages": later}).images
    assert not RequestView.from_data({"messages": [{"role": "user", "content": [{"type": "text", "text": "no image"}]}]}).images


@pytest.mark.parametrize(
    ("params", "field", "asked"),
    [
        ({"max_tokens": 100}, "max_tokens", 100),
        ({"max_completion_tokens": 60, "max_tokens": 100}, "max_completion_tokens", 60),
        ({"max_completion_tokens": None, "max_tokens": 100}, "max_tokens", 100),
        ({"max_completion_tokens": None, "max_tokens": None}, "max_tokens", None),
        ({}, "max_tokens", None),
    ],
    ids=["max_tokens", "the-newer-wins", "null-newer", "both-null", "none"],
)
def test_the_output_limit_is_the_newer_field_unless_it_is_null(params: dict[str, object], field: str, asked: int | None) -> None:
    assert (max_tokens_field(params), asked_max_tokens(params)) == (field, asked)
