"""Checks a routed chat request's shape before any model sees it.

LiteLLM passes many malformed bodies on to the provider code, which fails on them with an
`APIConnectionError` (a 500, or a fallback to the other model that fails the same way). Caught
here, they are a 400 naming the field, and no upstream is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal", "video_url"})
# (lowest, highest) for the numeric sampling parameters, as OpenAI documents them.
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
MAX_CHOICES = 128
# Bigger than any model's context window: a max_tokens above it is a bug in the client. Large but
# plausible values (131072) pass; the plugin clamps them for Cerebras (rate_limits.max_tokens_cap).
MAX_OUTPUT_TOKENS = 1 << 20


@dataclass(frozen=True)
class Invalid:
    """What is wrong, and the request field it is about."""

    message: str
    param: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _content_problem(content: Any, where: str) -> Invalid | None:
    if content is None or isinstance(content, str):
        return None
    if not isinstance(content, list):
        return Invalid(f"{where}.content must be a string or a list of content parts", f"{where}.content")
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        if not isinstance(part, Mapping):
            return Invalid(f"{at} must be an object with a type", at)
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in PART_TYPES:
            return Invalid(f"{at}.type {str(kind)[:40]!r} is not one of: {', '.join(sorted(PART_TYPES))}", f"{at}.type")
        if kind == "text" and not isinstance(part.get("text"), str):
            return Invalid(f"{at}.text must be a string", f"{at}.text")
    return None


def _message_problem(message: Any, index: int) -> Invalid | None:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        return Invalid(f"{where} must be an object with a role and content", where)
    role = message.get("role")
    if not isinstance(role, str) or role not in MESSAGE_ROLES:
        return Invalid(f"{where}.role {str(role)[:40]!r} is not one of: {', '.join(sorted(MESSAGE_ROLES))}", f"{where}.role")
    return _content_problem(message.get("content"), where)


def _messages_problem(messages: Any) -> Invalid | None:
    if not isinstance(messages, list):
        return Invalid("messages must be a list of messages", "messages")
    if not messages:
        return Invalid("messages must not be empty", "messages")
    for index, message in enumerate(messages):
        problem = _message_problem(message, index)
        if problem:
            return problem
    return None


def _numbers_problem(data: Mapping[str, Any]) -> Invalid | None:
    for name in ("max_tokens", "max_completion_tokens"):
        value = data.get(name)
        if value is not None and (not _is_int(value) or not 1 <= value <= MAX_OUTPUT_TOKENS):
            return Invalid(f"{name} must be an integer from 1 to {MAX_OUTPUT_TOKENS}", name)
    for name, (low, high) in RANGES.items():
        value = data.get(name)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            return Invalid(f"{name} must be a number from {low:g} to {high:g}", name)
    n = data.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= MAX_CHOICES):
        return Invalid(f"n must be an integer from 1 to {MAX_CHOICES}", "n")
    return None


def _types_problem(data: Mapping[str, Any]) -> Invalid | None:
    if data.get("stream") is not None and not isinstance(data["stream"], bool):
        return Invalid("stream must be true or false", "stream")
    tools = data.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(tool, Mapping) for tool in tools)):
        return Invalid("tools must be a list of tool objects", "tools")
    stop = data.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        return Invalid("stop must be a string or a list of strings", "stop")
    return None


def request_problem(data: Mapping[str, Any]) -> Invalid | None:
    """The first thing wrong with a chat request, or None if its shape is fine."""
    return _messages_problem(data.get("messages")) or _numbers_problem(data) or _types_problem(data)
