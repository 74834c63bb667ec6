"""What a fake answers, as plain data: no I/O here, so the shapes are easy to read and test.

``plan_answer`` decides the answer to a chat request (text or tool call, tokens, finish reason);
``completion_body`` and ``stream_chunks`` render it in the OpenAI wire format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.fakes import tokens

# Cerebras' default and cap for completion tokens on the chat API (see the Cerebras notes).
MAX_COMPLETION_TOKENS = 16384
DEFAULT_LOGPROB = -0.1


@dataclass(frozen=True)
class ReplyRule:
    """Answer ``reply`` when ``match`` is a substring of the last user message."""

    match: str
    reply: str
    logprob: float = DEFAULT_LOGPROB

    @classmethod
    def of(cls, rule: ReplyRule | tuple[Any, ...] | list[Any]) -> ReplyRule:
        """Accept ``(match, reply)`` or ``(match, reply, logprob)`` tuples (and JSON lists)."""
        return rule if isinstance(rule, ReplyRule) else cls(*rule)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as a string like OpenAI sends it


@dataclass(frozen=True)
class Answer:
    content: str | None  # None when the answer is a tool call
    tool_call: ToolCall | None
    finish_reason: str  # "stop", "length" or "tool_calls"
    prompt_tokens: int
    completion_tokens: int  # of one choice
    n: int = 1
    logprob: float = DEFAULT_LOGPROB
    logprobs: bool = False
    top_logprobs: int = 0
    reasoning: str | None = None  # a reasoning model's thinking, sent before the content
    reasoning_tokens: int = 0  # of one choice; part of max_tokens and of completion_tokens

    @property
    def usage(self) -> dict[str, Any]:
        # OpenAI's convention, which Cerebras follows: completion_tokens includes the reasoning
        # tokens, and completion_tokens_details says how many of them were reasoning.
        completion = (self.completion_tokens + self.reasoning_tokens) * self.n
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        if self.reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens * self.n}
        return usage


@dataclass(frozen=True)
class Envelope:
    """The fields every completion object and chunk repeats."""

    id: str
    created: int
    model: str


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` wins over the older ``max_tokens``, like on OpenAI."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def reservation(body: dict[str, Any], prompt_tokens: int) -> int:
    """Tokens Cerebras reserves up front: the prompt plus the most the answer may use."""
    asked = requested_max_tokens(body)
    most = MAX_COMPLETION_TOKENS if asked is None else min(asked, MAX_COMPLETION_TOKENS)
    return prompt_tokens + max(most, 0)


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return tokens.message_text(message)
    return ""


def _chosen_tool(body: dict[str, Any], preferred: str | None = None) -> dict[str, Any] | None:
    """The tool to call, or None when the request should get text: the one the request's
    ``tool_choice`` names, else ``preferred`` when it is offered, else the first one offered.

    A tool is called only right after a user turn: once a tool result (``role: tool``) is the
    last message, the agent loop expects the model to say something, which ends the loop.
    """
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and "function" in t]
    messages = body.get("messages") or []
    choice = body.get("tool_choice", "auto")
    if not tools or not messages or choice == "none":
        return None
    if not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        for tool in tools:
            if tool["function"].get("name") == wanted:
                return tool["function"]
    return next((tool["function"] for tool in tools if tool["function"].get("name") == preferred), tools[0]["function"])


_EXAMPLE_VALUES: dict[str, Any] = {
    "string": "example",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


def example_arguments(parameters: dict[str, Any] | None) -> str:
    """A small JSON object that fits the schema's required properties (or its first one), strings
    as long as their ``minLength`` asks (a client that validates arguments accepts it)."""
    properties = (parameters or {}).get("properties") or {}
    names = (parameters or {}).get("required") or list(properties)[:1]
    arguments = {}
    for name in names:
        schema = properties.get(name) or {}
        kind = schema.get("type", "string")
        value = _EXAMPLE_VALUES.get(kind if isinstance(kind, str) else "string", "example")
        if isinstance(value, str):
            value = value.ljust(int(schema.get("minLength") or 0), ".")
        arguments[name] = value
    return json.dumps(arguments)


def plan_answer(
    body: dict[str, Any],
    *,
    default_reply: str,
    rules: list[ReplyRule],
    call_id: str,
    reasoning: str | None = None,
    tool: str | None = None,
) -> Answer:
    """Decide the (deterministic) answer to a chat request.

    With ``reasoning`` the fake is a reasoning model: that text is thought first and takes its
    tokens out of max_tokens, so a small max_tokens leaves nothing for the content (which then
    comes back empty with finish_reason "length", as public reports of GLM-4.7 describe).
    """
    prompt_tokens = tokens.count_prompt_tokens(body)
    user_text = last_user_text(body)
    rule = next((r for r in rules if r.match in user_text), None)
    common: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "n": max(int(body.get("n") or 1), 1),
        "logprob": rule.logprob if rule else DEFAULT_LOGPROB,
        "logprobs": bool(body.get("logprobs")),
        "top_logprobs": int(body.get("top_logprobs") or 0),
    }
    limit = requested_max_tokens(body)
    limit = MAX_COMPLETION_TOKENS if limit is None else min(limit, MAX_COMPLETION_TOKENS)
    if reasoning is not None:
        thought, thought_tokens, thought_cut = tokens.truncate(reasoning, limit)
        common.update(reasoning=thought, reasoning_tokens=thought_tokens)
        limit -= thought_tokens
        if thought_cut or limit <= 0:
            # The budget went on thinking: nothing is left for the answer.
            return Answer("", None, "length", completion_tokens=0, **common)
    chosen = _chosen_tool(body, tool)
    if chosen is not None:
        # Arguments are never cut by max_tokens: a tool call must stay valid JSON.
        call = ToolCall(call_id, str(chosen.get("name", "")), example_arguments(chosen.get("parameters")))
        used = tokens.count_tokens(call.name) + tokens.count_tokens(call.arguments)
        return Answer(None, call, "tool_calls", completion_tokens=used, **common)
    reply = rule.reply if rule else default_reply
    text, used, cut = tokens.truncate(reply, limit)
    return Answer(text, None, "length" if cut else "stop", completion_tokens=used, **common)


# -- rendering ------------------------------------------------------------------------------------


def _logprob_entries(answer: Answer, token_strings: list[str]) -> list[dict[str, Any]]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    def top(token: str) -> list[dict[str, Any]]:
        # The chosen token first, then made-up, less likely alternatives; empty unless asked.
        alternatives = [entry(f"alt{i}", answer.logprob - i) for i in range(1, answer.top_logprobs)]
        return [entry(token, answer.logprob), *alternatives][: answer.top_logprobs]

    return [{**entry(token, answer.logprob), "top_logprobs": top(token)} for token in token_strings]


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def completion_body(answer: Answer, envelope: Envelope) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.reasoning is not None:
        message["reasoning_content"] = answer.reasoning
    logprobs = None
    if answer.tool_call is not None:
        message["tool_calls"] = [_tool_call_json(answer.tool_call)]
    elif answer.logprobs:
        strings = [s for _, piece_strings in tokens.split_tokens(answer.content or "") for s in piece_strings]
        logprobs = {"content": _logprob_entries(answer, strings)}
    choice = {
        "message": message,
        "logprobs": logprobs,
        "finish_reason": answer.finish_reason,
    }
    return {
        "id": envelope.id,
        "object": "chat.completion",
        "created": envelope.created,
        "model": envelope.model,
        "choices": [{"index": i, **choice} for i in range(answer.n)],
        "usage": answer.usage,
    }


def _chunk(envelope: Envelope, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": envelope.id,
        "object": "chat.completion.chunk",
        "created": envelope.created,
        "model": envelope.model,
        "choices": choices,
        **extra,
    }


def _split_in(text: str, parts: int) -> list[str]:
    size = -(-len(text) // parts)  # ceil, so there are at most ``parts`` pieces
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _deltas(answer: Answer) -> list[tuple[dict[str, Any], list[str]]]:
    """The deltas of one choice, before the finish: [(delta, token strings for logprobs)].

    A reasoning model streams its thinking (``reasoning_content`` deltas) before anything else.
    """
    thinking: list[tuple[dict[str, Any], list[str]]] = []
    if answer.reasoning is not None:
        thinking = [({"role": "assistant", "content": None}, [])]
        thinking += [({"reasoning_content": piece}, []) for piece, _ in tokens.split_tokens(answer.reasoning)]
    call = answer.tool_call
    if call is not None:
        header = {
            "index": 0,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        deltas: list[tuple[dict[str, Any], list[str]]] = [
            *thinking,
            ({"tool_calls": [header]} if thinking else {"role": "assistant", "content": None, "tool_calls": [header]}, []),
        ]
        # Split the arguments over several chunks, as real servers do: clients must concatenate.
        for piece in _split_in(call.arguments, 3):
            deltas.append(({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, []))
        return deltas
    deltas = [*thinking, ({"content": ""} if thinking else {"role": "assistant", "content": ""}, [])]
    deltas += [({"content": piece}, strings) for piece, strings in tokens.split_tokens(answer.content or "")]
    return deltas


def stream_chunks(answer: Answer, envelope: Envelope) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``chat.completion.chunk`` objects of a stream, as (opening and content, finish).

    Kept apart so a fault can stop after the content. The usage chunk is ``usage_chunk``.
    """
    body: list[dict[str, Any]] = []
    for delta, strings in _deltas(answer):
        for index in range(answer.n):
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            if answer.logprobs and strings:
                choice["logprobs"] = {"content": _logprob_entries(answer, strings)}
            body.append(_chunk(envelope, [choice]))
    finish = [_chunk(envelope, [{"index": i, "delta": {}, "logprobs": None, "finish_reason": answer.finish_reason}]) for i in range(answer.n)]
    return body, finish


def usage_chunk(answer: Answer, envelope: Envelope) -> dict[str, Any]:
    """The last chunk of an ``include_usage`` stream: no choices, only usage."""
    return _chunk(envelope, [], usage=answer.usage)


# Fields Cerebras accepts on an assistant turn of the history; any other one is a 400.
ASSISTANT_FIELDS = frozenset({"role", "content", "name", "tool_calls"})


def refused_history_field(body: dict[str, Any]) -> tuple[int, str] | None:
    """The first (message index, field) of an assistant turn that Cerebras refuses, if any.

    Agents such as Cline send the history back as they got it, ``reasoning_content`` included;
    Cerebras validates messages strictly and answers 400 for such a turn (public reports).
    """
    for index, message in enumerate(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "assistant":
            extra = sorted(set(message) - ASSISTANT_FIELDS)
            if extra:
                return index, extra[0]
    return None
