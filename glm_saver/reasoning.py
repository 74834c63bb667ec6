"""Reasoning models on Cerebras (GLM-4.7, gpt-oss-120b): what the plugin must know about their output.

Pure functions, no I/O. The plugin calls them at its boundaries:
  - the deployment hook, for every call to a paid group: the history without the fields Cerebras
    refuses on assistant turns (agents such as Cline send `reasoning_content` back, Cerebras
    answers 400), and the group's default `reasoning_effort` when the client set none;
  - the answers it gets back (the client's non-streamed answer, the cascade's verify): whether an
    answer is empty because reasoning used the whole max_tokens budget, and how much room a
    single retry gets;
  - the events reader: how many of an answer's completion tokens were reasoning.

Usage convention (OpenAI's, which Cerebras follows and LiteLLM's cost code assumes):
`completion_tokens` already includes `completion_tokens_details.reasoning_tokens`. Reasoning is
therefore billed as output once, through completion_tokens; the reasoning count is only shown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

# What Cerebras accepts on an assistant turn of the history; anything else (reasoning_content,
# reasoning, thinking_blocks, the OpenAI SDK's refusal/annotations/audio) may be refused with a 400.
ASSISTANT_FIELDS = frozenset({"role", "content", "name", "tool_calls"})


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a pydantic/OpenAI object or of a dict alike."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def history_for_cerebras(messages: Sequence[Any]) -> list[Any] | None:
    """The messages with every assistant turn cut down to the fields Cerebras accepts, or None
    when nothing needs removing (the caller then leaves the request exactly as the client sent it).
    A legacy `function_call` turn and the `function` message answering it become the tool call and
    tool result they stand for, not an empty turn. The client's own message objects are never
    changed: changed turns are new dicts."""
    changed = False
    cleaned: list[Any] = []
    legacy_call: str | None = None  # the id given to the latest legacy call, until its result
    for index, message in enumerate(messages):
        if isinstance(message, Mapping) and message.get("role") == "assistant" and set(message) - ASSISTANT_FIELDS:
            turn = {key: value for key, value in message.items() if key in ASSISTANT_FIELDS}
            legacy_call = _as_tool_call(turn, message.get("function_call"), f"call_legacy_{index}")
            cleaned.append(turn)
            changed = True
        elif isinstance(message, Mapping) and message.get("role") == "function" and legacy_call is not None:
            cleaned.append({"role": "tool", "tool_call_id": legacy_call, "content": message.get("content")})
            legacy_call = None
            changed = True
        else:
            cleaned.append(message)
    return cleaned if changed else None


def _as_tool_call(turn: dict[str, Any], function_call: Any, call_id: str) -> str | None:
    """Give a turn that made a legacy function call that call as its one tool call; its id, if so."""
    if not isinstance(function_call, Mapping) or turn.get("tool_calls"):
        return None
    turn["tool_calls"] = [{"id": call_id, "type": "function", "function": dict(function_call)}]
    return call_id


def reasoning_tokens(usage: Any) -> int:
    """How many of an answer's completion tokens were reasoning (0 when the usage does not say)."""
    details = _get(usage, "completion_tokens_details")
    value = _get(details, "reasoning_tokens") if details is not None else None
    if value is None:
        value = _get(usage, "reasoning_tokens")  # some providers put it at the top level
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


def reasoning_text(message: Any) -> str:
    """The reasoning a message or delta carries (`reasoning_content`, or `reasoning`)."""
    for name in ("reasoning_content", "reasoning"):
        value = _get(message, name)
        if isinstance(value, str) and value:
            return value
    return ""


def spent_on_reasoning(response: Any) -> bool:
    """Whether an answer came back empty because reasoning used the max_tokens budget: stopped
    for length with no content and no tool call. Such an answer must never reach a client (Cline
    shows an empty answer as a connection error)."""
    choices = _get(response, "choices") or []
    if not choices:
        return False
    choice = choices[0]
    message = _get(choice, "message") or _get(choice, "delta") or {}
    content = _get(message, "content")
    empty = not (isinstance(content, str) and content.strip()) and not _get(message, "tool_calls")
    return bool(empty and _get(choice, "finish_reason") == "length")


def room_for_retry(used: int, extra: int, cap: int) -> int | None:
    """max_tokens for the one retry of an answer whose budget `used` went on reasoning: `extra`
    more tokens, never past the clamp `cap`; None when there is no more room to give."""
    room = min(used + extra, cap)
    return room if room > used else None


def with_room(asked: int | None, extra: int) -> int | None:
    """max_tokens for an internal call whose visible answer needs `asked` tokens: room for the
    reasoning on top (None stays None: the gate's clamp applies)."""
    return None if asked is None else asked + extra


class EmptyAnswer(Exception):
    """A model answered, but reasoning used the whole budget and left nothing for the client."""


def _chunk_facts(chunk: Any) -> tuple[bool, str | None]:
    """Whether a stream chunk carries an answer (content or a tool call), and its finish reason."""
    choices = _get(chunk, "choices") or []
    if not choices:
        return False, None
    delta = _get(choices[0], "delta") or {}
    content = _get(delta, "content")
    answered = bool(isinstance(content, str) and content) or bool(_get(delta, "tool_calls"))
    return answered, _get(choices[0], "finish_reason")


async def guard_stream(chunks: AsyncIterator[Any], group: str) -> AsyncIterator[Any]:
    """A client stream, unchanged, unless it ends for length having carried nothing but reasoning:
    then, instead of its finish (and usage) chunks, the stream ends with an error that says why,
    so a client never takes an empty answer for a finished one. Everything else passes through
    as it comes (reasoning deltas stream live)."""
    answered = False
    held: list[Any] = []
    async for chunk in chunks:
        has_answer, finish = _chunk_facts(chunk)
        answered = answered or has_answer
        if held or (finish == "length" and not answered):
            held.append(chunk)  # the end of an empty answer: kept back, never sent
            continue
        yield chunk
    if held:
        raise EmptyAnswer(f"{group} spent all of max_tokens on reasoning and returned no answer; raise max_tokens or lower reasoning_effort")
