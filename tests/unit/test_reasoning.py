"""The pure reasoning rules: what Cerebras may see of a history, and when an answer is empty because
reasoning spent the budget."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator

import litellm

from glm_saver.reasoning import EmptyAnswer, guard_stream, history_for_cerebras, reasoning_text, reasoning_tokens, room_for_retry, spent_on_reasoning, with_room

HISTORY = [
    {"role": "system", "content": "You are Cline."},
    {"role": "user", "content": "Fix it."},
    {"role": "assistant", "content": "Done.", "reasoning_content": "Let me think.", "refusal": None},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "ok"},
]


def test_history_loses_only_the_fields_cerebras_refuses_on_assistant_turns() -> None:
    sent = copy.deepcopy(HISTORY)
    cleaned = history_for_cerebras(sent)
    assert cleaned is not None
    assert cleaned[2] == {"role": "assistant", "content": "Done."}
    assert cleaned[0] is sent[0] and cleaned[3] is sent[3] and cleaned[4] is sent[4]  # untouched turns are the client's own
    assert sent == HISTORY  # the client's messages are not changed


def test_a_history_without_refused_fields_is_left_alone() -> None:
    assert history_for_cerebras([m for i, m in enumerate(HISTORY) if i != 2]) is None


def test_a_legacy_function_call_and_its_result_become_the_tool_call_and_tool_result_they_stand_for() -> None:
    call = {"name": "f", "arguments": "{}"}
    sent = [
        {"role": "user", "content": "Fix it."},
        {"role": "assistant", "content": None, "function_call": call},
        {"role": "function", "name": "f", "content": "ok"},
    ]
    cleaned = history_for_cerebras(copy.deepcopy(sent))
    assert cleaned == [
        sent[0],
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_legacy_1", "type": "function", "function": call}]},
        {"role": "tool", "tool_call_id": "call_legacy_1", "content": "ok"},
    ]


def test_a_function_message_that_answers_no_legacy_call_is_left_alone() -> None:
    assert history_for_cerebras([{"role": "user", "content": "Fix it."}, {"role": "function", "name": "f", "content": "ok"}]) is None


def test_reasoning_tokens_are_read_from_the_completion_details() -> None:
    usage = litellm.Usage(prompt_tokens=5, completion_tokens=30, total_tokens=35, completion_tokens_details={"reasoning_tokens": 25})
    assert reasoning_tokens(usage) == 25
    assert reasoning_tokens({"completion_tokens": 3}) == 0
    assert reasoning_tokens(None) == 0


def _response(content: str | None, finish: str, **message: object) -> litellm.ModelResponse:
    return litellm.ModelResponse(choices=[{"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": finish}])


def test_an_empty_answer_cut_for_length_is_spent_on_reasoning() -> None:
    assert spent_on_reasoning(_response("", "length", reasoning_content="thinking..."))
    assert spent_on_reasoning(_response(None, "length"))


def test_an_answer_with_content_or_a_tool_call_or_a_normal_stop_is_not() -> None:
    assert not spent_on_reasoning(_response("Hi", "length"))
    assert not spent_on_reasoning(_response("", "stop"))
    call = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert not spent_on_reasoning(_response(None, "length", tool_calls=call))


def test_reasoning_text_comes_from_either_field() -> None:
    assert reasoning_text({"reasoning_content": "a"}) == "a" and reasoning_text({"reasoning": "b"}) == "b" and reasoning_text({}) == ""


def test_the_retry_gets_more_room_but_never_past_the_clamp() -> None:
    assert room_for_retry(100, 4096, 16384) == 4196
    assert room_for_retry(16000, 4096, 16384) == 16384
    assert room_for_retry(16384, 4096, 16384) is None
    assert with_room(50, 4096) == 4146 and with_room(None, 4096) is None


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _through_guard(chunks: list[dict]) -> tuple[list[dict], Exception | None]:
    async def source() -> AsyncIterator[dict]:
        for chunk in chunks:
            yield chunk

    async def run() -> tuple[list[dict], Exception | None]:
        seen: list[dict] = []
        try:
            async for chunk in guard_stream(source(), "cerebras"):
                seen.append(chunk)
        except EmptyAnswer as err:
            return seen, err
        return seen, None

    return asyncio.run(run())


def test_a_stream_with_content_passes_through_unchanged() -> None:
    chunks = [_chunk({"reasoning_content": "hmm"}), _chunk({"content": "Hi"}), _chunk({}, "length"), {"choices": [], "usage": {"completion_tokens": 3}}]
    assert _through_guard(chunks) == (chunks, None)


def test_a_stream_of_only_reasoning_cut_for_length_ends_with_an_error_instead_of_its_finish() -> None:
    thinking = [_chunk({"role": "assistant", "content": None}), _chunk({"reasoning_content": "hmm"})]
    seen, error = _through_guard([*thinking, _chunk({}, "length"), {"choices": [], "usage": {"completion_tokens": 3}}])
    assert seen == thinking  # the thinking streamed live; no finish, no usage
    assert error is not None and "spent all of max_tokens on reasoning" in str(error)


def test_a_tool_call_stream_cut_for_length_is_an_answer() -> None:
    chunks = [_chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}]}), _chunk({}, "length")]
    assert _through_guard(chunks) == (chunks, None)
