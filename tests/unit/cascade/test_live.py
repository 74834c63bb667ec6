"""A streamed draft read to its commit point, scored on its prefix, replayed with keep-alives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import litellm

from glm_saver.cascade.live import KEEPALIVE, LiveAnswers, LiveDraft
from glm_saver.cascade.scoring import DraftFacts, red_flags


def chunk(content: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None, calls: list[dict[str, Any]] | None = None) -> Any:
    delta: dict[str, Any] = {"content": content}
    if calls:
        delta["tool_calls"] = calls
    choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []
    made = litellm.ModelResponseStream(choices=choices)
    if usage is not None:
        made.usage = litellm.Usage(**usage)
    return made


class Paced:
    """An internal stream whose chunks the test lets out one gate at a time; records its close."""

    def __init__(self, chunks: list[Any], gates: dict[int, asyncio.Event] | None = None) -> None:
        self.chunks, self.gates, self.sent, self.closed = chunks, gates or {}, 0, False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self.closed or self.sent >= len(self.chunks):
            raise StopAsyncIteration
        gate = self.gates.get(self.sent)
        if gate is not None:
            await gate.wait()
        self.sent += 1
        return self.chunks[self.sent - 1]

    async def aclose(self) -> None:
        self.closed = True


WORDS = ["Lists ", "are ", "built ", "from ", "iterables ", "in ", "one ", "line."]


def answer_chunks() -> list[Any]:
    return [chunk(""), *(chunk(word) for word in WORDS), chunk(finish="stop"), chunk(usage={"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17})]


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


def text_of(items: list[Any]) -> str:
    return "".join(choice.delta.content or "" for item in items if not isinstance(item, bytes) for choice in item.choices)


def test_a_draft_is_read_to_the_commit_point_and_no_further() -> None:
    async def run() -> LiveDraft:
        return await LiveDraft(Paced(answer_chunks())).fill(3)

    live = asyncio.run(run())
    assert (live.tokens, live.content, live.finished) == (3, "Lists are built ", False)
    assert live.facts().complete is False


def test_a_draft_shorter_than_the_commit_point_is_finished_with_its_usage() -> None:
    async def run() -> LiveDraft:
        return await (await LiveDraft(Paced(answer_chunks())).fill(48)).finish()

    live = asyncio.run(run())
    assert live.finished and live.content == "".join(WORDS) and live.usage.completion_tokens == 8


def test_replay_sends_the_prefix_then_the_rest_with_keepalives_while_silent() -> None:
    async def run() -> tuple[list[Any], Paced]:
        gate = asyncio.Event()
        stream = Paced(answer_chunks(), {5: gate})
        live = await LiveDraft(stream).fill(3)
        items: list[Any] = []
        async for item in live.replay(include_usage=True, keepalive_seconds=0.01):
            items.append(item)
            if item == KEEPALIVE:
                gate.set()  # the model speaks again once a keep-alive went out
        return items, stream

    items, _ = asyncio.run(run())
    assert KEEPALIVE in items
    assert text_of(items) == "".join(WORDS)
    assert items[-1].usage.completion_tokens == 8


def test_replay_leaves_the_usage_chunk_out_unless_asked() -> None:
    async def run() -> list[Any]:
        live = await LiveDraft(Paced(answer_chunks())).fill(3)
        return await collect(live.replay(include_usage=False, keepalive_seconds=5))

    items = asyncio.run(run())
    assert text_of(items) == "".join(WORDS) and all(getattr(item, "usage", None) is None for item in items)


def test_closing_a_draft_closes_its_stream() -> None:
    async def run() -> Paced:
        stream = Paced(answer_chunks())
        await (await LiveDraft(stream).fill(2)).close()
        return stream

    assert asyncio.run(run()).closed


def test_tool_call_deltas_are_assembled_for_scoring() -> None:
    calls = [
        chunk(calls=[{"index": 0, "id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": ""}}]),
        chunk(calls=[{"index": 0, "function": {"arguments": '{"path": '}}]),
    ]

    async def run() -> LiveDraft:
        return await LiveDraft(Paced(calls)).fill(2)

    live = asyncio.run(run())
    assert live.tool_calls[0]["function"] == {"name": "read_file", "arguments": '{"path": '}
    # Unfinished JSON is not held against a prefix; the same arguments in a whole draft are.
    assert "broken-tool-call" not in red_flags(live.facts())
    assert "broken-tool-call" in red_flags(DraftFacts(live.text(), "tool_calls", None, ('{"path": ',)))


def test_an_open_code_fence_is_not_held_against_a_prefix() -> None:
    text = "Here:\n```python\ndef f(x):\n    return"
    assert "unclosed-code" not in red_flags(DraftFacts(text, complete=False))
    assert "unclosed-code" in red_flags(DraftFacts(text))


def test_a_committed_draft_never_claimed_is_closed() -> None:
    async def run() -> Paced:
        stream = Paced(answer_chunks())
        answers = LiveAnswers(unclaimed_seconds=0.01)
        answers.hold("call-1", await LiveDraft(stream).fill(1))
        deadline = asyncio.get_running_loop().time() + 5
        while not stream.closed and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert answers.claim("call-1") is None
        return stream

    assert asyncio.run(run()).closed


def test_a_claimed_draft_is_handed_over_once() -> None:
    async def run() -> tuple[Any, Any]:
        answers = LiveAnswers(unclaimed_seconds=60)
        live = LiveDraft(Paced(answer_chunks()))
        answers.hold("call-2", live)
        return answers.claim("call-2"), answers.claim("call-2")

    first, second = asyncio.run(run())
    assert first is not None and second is None
