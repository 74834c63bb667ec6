"""Streamed drafts: read up to the commit point, score the prefix, then stream the rest live.

For a client that streams, the cascade cannot wait for whole drafts: each draft is an internal
streamed call to the local group, read until it has produced `commit_tokens` tokens (one chunk of
content or tool-call delta is one token, as local servers stream them) or finished. The prefixes are
scored; a trusted one becomes the answer. Its chunks, the prefix already read and then the rest as
the local model writes it, are what the client receives (the plugin's streaming iterator hook
replays them in place of the placeholder answer LiteLLM holds). Closing a `LiveDraft` closes the
internal stream, which closes its HTTP connection: the local server sees the cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from glm_saver.cascade.scoring import DraftFacts
from glm_saver.events import SERVED_KEY  # what a live answer really served, for the books
from glm_saver.layers.keepalive import KEEPALIVE  # what the iterator hook yields while the local model is silent

logger = logging.getLogger(__name__)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass
class LiveDraft:
    """One streamed draft: the chunks read so far and the internal stream that goes on."""

    stream: Any  # LiteLLM's CustomStreamWrapper of the internal call (async iterator of chunks)
    chunks: list[Any] = field(default_factory=list)
    content: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # tool calls by index, assembled
    logprobs: list[float] = field(default_factory=list)
    tokens: int = 0  # content / tool-call chunks seen, the local model's tokens
    finish_reason: str | None = None
    usage: Any = None  # the internal stream's usage chunk, once it came
    done: bool = False
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    async def fill(self, commit_tokens: int) -> LiveDraft:
        """Read until `commit_tokens` tokens are in or the draft ended."""
        while not self.done and self.tokens < commit_tokens:
            await self._read_one()
        return self

    async def _read_one(self) -> Any:
        try:
            chunk = await self.stream.__anext__()
        except StopAsyncIteration:
            self.done = True
            return None
        self._take(chunk)
        self.chunks.append(chunk)
        return chunk

    def _take(self, chunk: Any) -> None:
        """Fold one chunk into what the draft says so far."""
        usage = _get(chunk, "usage")
        if usage is not None and _get(usage, "completion_tokens"):
            self.usage = usage
        for choice in _get(chunk, "choices") or []:
            delta = _get(choice, "delta") or {}
            piece, calls = _get(delta, "content"), _get(delta, "tool_calls") or []
            if piece or calls:
                self.tokens += 1
                self.first_token_at = self.first_token_at or time.monotonic()
            self.content += piece or ""
            for call in calls:
                self._take_call(call)
            for entry in _get(_get(choice, "logprobs"), "content") or []:
                value = _get(entry, "logprob")
                if isinstance(value, (int, float)):
                    self.logprobs.append(float(value))
            self.finish_reason = _get(choice, "finish_reason") or self.finish_reason

    def _take_call(self, call: Any) -> None:
        index = int(_get(call, "index") or 0)
        held = self.calls.setdefault(index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        held["id"] = _get(call, "id") or held["id"]
        function = _get(call, "function") or {}
        held["function"]["name"] += _get(function, "name") or ""
        held["function"]["arguments"] += _get(function, "arguments") or ""

    @property
    def finished(self) -> bool:
        return self.done or self.finish_reason is not None

    @property
    def tool_calls(self) -> tuple[dict[str, Any], ...]:
        return tuple(self.calls[index] for index in sorted(self.calls))

    def text(self) -> str:
        if self.calls:
            calls = "\n".join(f"call tool {c['function']['name']} with arguments {c['function']['arguments']}" for c in self.tool_calls)
            return f"{self.content}\n{calls}".strip()
        return self.content

    def facts(self) -> DraftFacts:
        arguments = tuple(call["function"]["arguments"] for call in self.tool_calls)
        return DraftFacts(self.text(), self.finish_reason, tuple(self.logprobs) or None, arguments, complete=self.finished)

    async def finish(self) -> LiveDraft:
        """Read the draft to its end (a draft that finished before the commit point has little left)."""
        while not self.done:
            await self._read_one()
        return self

    async def replay(self, include_usage: bool, keepalive_seconds: float) -> AsyncIterator[Any]:
        """The prefix read so far, then the rest as it comes; an SSE comment while the model is silent."""
        for chunk in self.chunks:
            if _wanted(chunk, include_usage):
                yield chunk
        while not self.done:
            pending = asyncio.ensure_future(self._read_one())
            try:
                while not (await asyncio.wait({pending}, timeout=keepalive_seconds))[0]:
                    yield KEEPALIVE
            finally:
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
            chunk = pending.result()
            if chunk is not None and _wanted(chunk, include_usage):
                yield chunk

    async def close(self) -> None:
        """Stop the internal stream: its connection closes, the local server sees the cancel."""
        self.done = True
        closing = getattr(self.stream, "aclose", None)
        if closing is None:
            return
        try:
            await closing()
        except Exception:  # a stream that fails to close is gone anyway
            logger.debug("glm_saver: closing a draft stream failed", exc_info=True)


def _wanted(chunk: Any, include_usage: bool) -> bool:
    """The client gets the usage chunk only when it asked for one (stream_options.include_usage)."""
    if include_usage:
        return True
    if getattr(chunk, "usage", None) is not None:
        if not (_get(chunk, "choices") or []):
            return False
        with contextlib.suppress(AttributeError, TypeError):
            del chunk.usage
    return True


async def close_all(drafts: list[LiveDraft]) -> None:
    await asyncio.gather(*(draft.close() for draft in drafts), return_exceptions=True)


class LiveAnswers:
    """Drafts committed in the pre-call hook, waiting for their response's streaming iterator hook.

    Keyed by LiteLLM's call id. One that is not claimed in time (the request failed between the two
    hooks) is closed, so no local stream is left running for nobody.
    """

    def __init__(self, unclaimed_seconds: float) -> None:
        self.unclaimed_seconds = unclaimed_seconds
        self._held: dict[str, LiveDraft] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def hold(self, call_id: str, live: LiveDraft) -> None:
        self._held[call_id] = live
        asyncio.get_running_loop().call_later(self.unclaimed_seconds, self._expire, call_id, live)

    def claim(self, call_id: Any) -> LiveDraft | None:
        return self._held.pop(call_id, None) if isinstance(call_id, str) else None

    def _expire(self, call_id: str, live: LiveDraft) -> None:
        if self._held.get(call_id) is live:
            del self._held[call_id]
            logger.warning("glm_saver: a committed draft was never streamed; closing it")
            task = asyncio.ensure_future(live.close())
            self._closing.add(task)  # a reference until it is done, or the loop may drop it
            task.add_done_callback(self._closing.discard)

    def __len__(self) -> int:
        return len(self._held)


async def stream_live(live: LiveDraft, placeholder: Any, metadata: dict[str, Any], include_usage: bool, keepalive_seconds: float) -> AsyncIterator[Any]:
    """Send the committed draft; then let LiteLLM log the answer, with the tokens really produced.

    A client that goes away closes the draft (the local server sees the cancel). LiteLLM then books
    the part already streamed (its disconnect-time billing): it is booked at the tokens the client
    was sent, nothing for the rest the local model never wrote.
    """
    sent = 0
    try:
        async for item in live.replay(include_usage, keepalive_seconds):
            yield item
            sent += _tokens_in(item)
    except BaseException:
        metadata[SERVED_KEY] = {"prompt_tokens": int(_get(live.usage, "prompt_tokens") or 0), "completion_tokens": sent}
        await live.close()
        await _close(placeholder)
        raise
    prompt = int(_get(live.usage, "prompt_tokens") or 0)
    metadata[SERVED_KEY] = {"prompt_tokens": prompt, "completion_tokens": int(_get(live.usage, "completion_tokens") or 0) or live.tokens}
    async for _ in placeholder:  # drained, so LiteLLM logs the client's answer once
        pass


def _tokens_in(item: Any) -> int:
    """1 for a chunk that carries content or a tool-call delta (a local model's token), else 0."""
    if isinstance(item, bytes):
        return 0
    return int(any(_get(_get(choice, "delta") or {}, "content") or _get(_get(choice, "delta") or {}, "tool_calls") for choice in _get(item, "choices") or []))


async def _close(stream: Any) -> None:
    closing = getattr(stream, "aclose", None)
    if closing is not None:
        with contextlib.suppress(Exception):
            await closing()
