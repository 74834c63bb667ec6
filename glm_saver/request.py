"""What a chat request says: the user's latest ask (Cline-aware), its size, tools, stream, max_tokens.

Cline wraps the user's words in `<task>`, `<feedback>` or `<answer>` and appends a long
`<environment_details>` block; its CLI sends the plain task plus `[SYSTEM] ...` reminders of its own;
tool results come back as user text (`[read_file for 'x'] Result:`) or as `role: tool` messages.
Only the user's own words say how hard the ask is. The system prompt never does, but its size still
counts when checking the context window.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from glm_saver.tokens import MESSAGE_OVERHEAD_TOKENS, count_tokens

_ASK_TAGS = re.compile(r"<(task|feedback|answer)>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
_ENVIRONMENT = re.compile(r"<environment_details>.*?(</environment_details>|\Z)", re.DOTALL | re.IGNORECASE)
# A Cline tool result in text form: "[read_file for 'src/app.py'] Result:" up to the next part.
_TOOL_RESULT = re.compile(r"^\s*\[[^\]\n]{1,200}\]\s*Result:", re.IGNORECASE)
_CLI_REMINDER = re.compile(r"^\s*\[SYSTEM\]")


def content_text(content: Any) -> list[str]:
    """The text parts of a message's content (a string or a list of OpenAI content parts)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [part["text"] for part in content if isinstance(part, Mapping) and isinstance(part.get("text"), str)]
    return []


def _ask_in_part(text: str) -> str:
    tagged = [match.group(2).strip() for match in _ASK_TAGS.finditer(text)]
    if tagged:
        return "\n".join(tagged)
    if _TOOL_RESULT.match(text) or _CLI_REMINDER.match(text):
        return ""
    return _ENVIRONMENT.sub("", text).strip()


def ask_in_message(message: Mapping[str, Any]) -> str:
    """The user's own words in one user message ('' when it holds none)."""
    parts = (_ask_in_part(text) for text in content_text(message.get("content")))
    return "\n".join(part for part in parts if part)


def latest_ask(messages: Iterable[Any]) -> str:
    """The newest user message that carries the user's own words.

    Turns that only return tool results or Cline's reminders continue the earlier ask, so the
    search walks back to the ask they serve.
    """
    for message in reversed(list(messages)):
        if isinstance(message, Mapping) and message.get("role") == "user":
            ask = ask_in_message(message)
            if ask:
                return ask
    return ""


def has_images(messages: Iterable[Any]) -> bool:
    """Whether any message carries an image part (the whole history goes to the model that answers)."""
    return any(
        isinstance(part, Mapping) and part.get("type") == "image_url"
        for message in messages
        if isinstance(message, Mapping) and isinstance(message.get("content"), list)
        for part in message["content"]
    )


def prompt_tokens(messages: Iterable[Any], tools: Any = None) -> int:
    """Tokens of the whole prompt, system and tool schemas included (for context-window checks)."""
    total = 0
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        total += MESSAGE_OVERHEAD_TOKENS + sum(count_tokens(text) for text in content_text(message.get("content")))
        if message.get("tool_calls"):
            total += count_tokens(json.dumps(message["tool_calls"], sort_keys=True, default=str))
    if tools:
        total += count_tokens(json.dumps(tools, sort_keys=True, default=str))
    return total


def max_tokens_field(params: Mapping[str, Any]) -> str:
    """The field that sets a request's output limit: `max_completion_tokens` when it is set (not
    null: clients that send every field send the unset one as null), else `max_tokens`."""
    return "max_completion_tokens" if params.get("max_completion_tokens") is not None else "max_tokens"


def asked_max_tokens(params: Mapping[str, Any]) -> int | None:
    """The output limit a request asks for, None when it sets none."""
    value = params.get(max_tokens_field(params))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class RequestView:
    """The facts about one chat request that routing needs."""

    messages: list[dict[str, Any]]
    ask: str
    prompt_tokens: int
    has_tools: bool
    stream: bool
    max_tokens: int | None
    images: bool = False  # an image part in any message: only a model that takes images may answer

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> RequestView:
        messages = data.get("messages")
        messages = messages if isinstance(messages, list) else []
        tools = data.get("tools") or data.get("functions")
        return cls(
            messages=messages,
            ask=latest_ask(messages),
            prompt_tokens=prompt_tokens(messages, tools),
            has_tools=bool(tools),
            stream=bool(data.get("stream")),
            max_tokens=asked_max_tokens(data),
            images=has_images(messages),
        )
