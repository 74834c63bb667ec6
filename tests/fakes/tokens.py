"""The one token-counting rule of the fakes: tiktoken ``cl100k_base``, no per-message overhead.

cl100k_base is what ``litellm.token_counter`` falls back to for models it does not know (such as
``zai-glm-4.6`` behind an ``openai/`` prefix), so a plugin that estimates prompt sizes with litellm
sees the same numbers as the fake, give or take litellm's few tokens of per-message overhead.

Rule (used for ``usage`` and for the Cerebras quota reservation):
  prompt_tokens     = sum of the tokens of every message's text (string content or the text of
                      its text parts; system, user, assistant and tool messages alike), plus the
                      name and arguments of every tool call in assistant messages, plus the tokens
                      of ``json.dumps(tools)`` when the request has tools.
  completion_tokens = tokens of the reply text, or of the tool call's name plus its arguments.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import threading
from pathlib import Path
from typing import Any

import tiktoken

_ENV_LOCK = threading.Lock()


def _litellm_tokenizer_dir() -> Path | None:
    # find_spec locates litellm without importing it (importing litellm takes seconds).
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
    return directory if directory.is_dir() else None


@functools.cache
def encoding() -> tiktoken.Encoding:
    """cl100k_base, loaded offline from the copy of the BPE file that litellm ships."""
    directory = _litellm_tokenizer_dir()
    if directory is None:
        return tiktoken.get_encoding("cl100k_base")
    # tiktoken reads TIKTOKEN_CACHE_DIR only while loading; set it just for that moment so the
    # rest of the process (and an in-process litellm) keeps its own setting.
    with _ENV_LOCK:
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
        try:
            return tiktoken.get_encoding("cl100k_base")
        finally:
            if previous is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous


def encode(text: str) -> list[int]:
    # disallowed_special=() so texts that happen to contain "<|endoftext|>" count as plain text.
    return encoding().encode(text, disallowed_special=())


def count_tokens(text: str) -> int:
    return len(encode(text))


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text")
    return ""


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """prompt_tokens of a chat request, by the rule in the module docstring."""
    total = 0
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += count_tokens(message_text(message))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            total += count_tokens(str(function.get("name", "")))
            total += count_tokens(str(function.get("arguments", "")))
    if body.get("tools"):
        total += count_tokens(json.dumps(body["tools"]))
    return total


def truncate(text: str, max_tokens: int) -> tuple[str, int, bool]:
    """Cut ``text`` to at most ``max_tokens`` tokens: (text, token count, was it cut)."""
    tokens = encode(text)
    if len(tokens) <= max_tokens:
        return text, len(tokens), False
    kept = tokens[: max(max_tokens, 0)]
    # errors="ignore" drops a multi-byte character that the cut split in two.
    return encoding().decode_bytes(kept).decode("utf-8", errors="ignore"), len(kept), True


def split_tokens(text: str) -> list[tuple[str, list[str]]]:
    """Split ``text`` into stream pieces of about one token each: [(piece, its token strings)].

    A token can hold half of a multi-byte character, so bytes are buffered until they decode;
    the pieces always join back to ``text`` exactly.
    """
    pieces: list[tuple[str, list[str]]] = []
    buffer = b""
    token_strings: list[str] = []
    for token_bytes in encoding().decode_tokens_bytes(encode(text)):
        buffer += token_bytes
        token_strings.append(token_bytes.decode("utf-8", errors="replace"))
        try:
            piece = buffer.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pieces.append((piece, token_strings))
        buffer, token_strings = b"", []
    if buffer:
        pieces.append((buffer.decode("utf-8", errors="replace"), token_strings))
    return pieces
