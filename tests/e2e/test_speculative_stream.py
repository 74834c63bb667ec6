"""End to end: a streamed cascade commits on a prefix and streams the rest live (issue 13).

One proxy (parallel_speculative, 2 drafts, commit_tokens 4, keep-alive every 0.2 s) in front of the
session's fakes. The fake local model is paused mid-answer (after the commit point) where a test
needs the cascade to be caught in the act: the client must already hold the first words while the
draft is still being written, see keep-alive comments while it is silent, and a client that hangs
up must be seen by the upstream as a cancel. No sleeps: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from tests import cline_shapes as cline
from tests.e2e.proxy import MASTER_KEY, Proxy
from tests.fakes.answers import ReplyRule
from tests.fakes.upstream import FakeUpstream

COMMIT = 4
SURE_LONG = "Explain what a Python list comprehension is"
UNSURE_LONG = "Explain the trade-offs of eventual consistency"
LIST_ANSWER = "A list comprehension builds a new list from an iterable in one expression, with an optional filter."
CONSISTENCY_DRAFT = "Eventual consistency means replicas may disagree for a while but converge later on."
CONSISTENCY_CLOUD = "Replicas accept writes independently and converge; reads may be stale meanwhile."
LOCAL_RULES = [ReplyRule("list comprehension", LIST_ANSWER, -0.05), ReplyRule("eventual consistency", CONSISTENCY_DRAFT, -0.9)]
CLOUD_RULES = [ReplyRule("eventual consistency", CONSISTENCY_CLOUD)]


@pytest.fixture(scope="module")
def scripted(local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> Iterator[None]:
    """The session's fakes answer by the scripts above for this module, then as before."""
    with local_upstream.replying(LOCAL_RULES), cerebras_upstream.replying(CLOUD_RULES):
        yield


@pytest.fixture(scope="module")
def live(start_proxy: Callable[..., Proxy], scripted: None) -> Proxy:
    return start_proxy(
        glm_saver={
            "strategy": "parallel_speculative",
            "speculative": {
                "max_concurrent_drafts": 2,
                "parallel_retry_seconds": 0,
                "commit_tokens": COMMIT,
                "keepalive_seconds": 0.2,
                "speculate_with_tools": True,
            },
        }
    )


class Tee(httpx.HTTPTransport):
    """The raw bytes of every response, as the OpenAI client reads them (to see SSE comments)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = bytearray()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        inner = response.stream

        raw = self.raw

        class Recorded(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for part in inner:
                    raw.extend(part)
                    yield part

            def close(self) -> None:
                inner.close()

        response.stream = Recorded()
        return response


@dataclass
class Reader:
    """A streamed answer read by the real OpenAI client in a thread, so the test can look at it
    (and at the upstreams) while it is still coming."""

    proxy: Proxy
    body: dict[str, Any]
    tee: Tee = field(default_factory=Tee)
    deltas: queue.Queue[Any] = field(default_factory=queue.Queue)
    text: str = ""
    chunks: list[Any] = field(default_factory=list)
    headers: httpx.Headers | None = None
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        client = openai.OpenAI(
            base_url=f"{self.proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60, http_client=httpx.Client(transport=self.tee, timeout=60)
        )
        self.thread = threading.Thread(target=self._read, args=(client,), daemon=True)
        self.thread.start()

    def _read(self, client: openai.OpenAI) -> None:
        try:
            raw = client.chat.completions.with_raw_response.create(model="glm-saver", stream=True, **self.body)
            self.headers = raw.headers
            stream = raw.parse()
            for chunk in stream:
                self.chunks.append(chunk)
                self.text += "".join(choice.delta.content or "" for choice in chunk.choices)
                if self.stop.is_set():
                    stream.close()  # the client hangs up mid-answer
                    return
        except BaseException as err:  # noqa: BLE001 - whatever failed is reported to the test
            self.error = err

    def finish(self) -> Reader:
        self.thread.join(60)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self

    @property
    def usage(self) -> Any:
        return self.chunks[-1].usage if self.chunks else None

    def tool_calls(self) -> list[tuple[str, str]]:
        calls: dict[int, list[str]] = {}
        for delta in (d for chunk in self.chunks for choice in chunk.choices for d in choice.delta.tool_calls or []):
            call = calls.setdefault(delta.index, ["", ""])
            call[0] += (delta.function.name or "") if delta.function else ""
            call[1] += (delta.function.arguments or "") if delta.function else ""
        return [(name, arguments) for name, arguments in calls.values()]


def until(ready: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"{what} not met within {timeout}s")


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "stream_options": {"include_usage": True}, **extra}


def stats(proxy: Proxy) -> dict[str, Any]:
    response = httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def test_a_trusted_prefix_reaches_the_client_while_the_draft_is_still_written(
    live: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    local_upstream.pause(after=COMMIT + 3)  # past the commit point, well before the end
    reader = Reader(live, ask(SURE_LONG))
    until(lambda: local_upstream.paused >= 1, what="a draft paused mid-answer")
    until(lambda: len(reader.text) > 0, what="first words at the client")
    # The first words are out while the committed draft has not finished (it is held mid-answer).
    assert LIST_ANSWER.startswith(reader.text) and reader.text != LIST_ANSWER
    assert any(r.outcome == "pending" for r in local_upstream.requests)
    # While the local model is silent the stream carries SSE comments; the OpenAI client skips them.
    until(lambda: b": keep-alive" in reader.tee.raw, what="a keep-alive comment")
    local_upstream.resume()
    reader.finish()
    assert reader.headers is not None and reader.headers["x-glm-saver-route"] == "draft-accepted"
    assert reader.headers["x-glm-saver-reason"].startswith("confident: ") and f"committed on {COMMIT} tokens" in reader.headers["x-glm-saver-reason"]
    assert reader.text == LIST_ANSWER
    # Two drafts streamed; the one not chosen was cancelled at the commit point.
    assert len(local_upstream.requests) == 2 and all(r.body.get("stream") for r in local_upstream.requests)
    until(lambda: sorted(r.outcome for r in local_upstream.requests) == ["client_disconnected", "ok"], what="the other draft cancelled")
    [served] = local_upstream.served
    assert reader.usage is not None and (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (served.prompt_tokens, served.completion_tokens)
    assert not cerebras_upstream.requests


def test_the_books_count_a_committed_draft_once_at_what_the_local_model_produced(live: Proxy, local_upstream: FakeUpstream) -> None:
    before = stats(live)["books"]
    local_upstream.pause(after=COMMIT + 3)
    reader = Reader(live, ask(SURE_LONG))
    until(lambda: any(r.outcome == "client_disconnected" for r in local_upstream.requests), what="the other draft cancelled")
    local_upstream.resume()
    reader.finish()
    assert reader.text == LIST_ANSWER
    [served] = local_upstream.served

    def grew(books: dict[str, Any], table: str, name: str, what: str) -> int:
        return books[table].get(name, {}).get(what, 0) - before[table].get(name, {}).get(what, 0)

    def booked() -> dict[str, Any] | None:
        books = stats(live)["books"]
        return books if grew(books, "by_route", "draft-accepted", "requests") >= 1 and grew(books, "by_role", "draft", "calls") >= 1 else None

    after = until(booked, what="the answer booked")
    assert grew(after, "by_route", "draft-accepted", "requests") == 1
    # Tokens: the winning draft's, as the local server served them, counted once (the answer replays it).
    assert grew(after, "by_role", "draft", "completion_tokens") == served.completion_tokens
    assert after["totals"]["completion_tokens"] - before["totals"]["completion_tokens"] == served.completion_tokens
    # The saving is what Cerebras would have cost for the tokens really produced.
    saved = after["by_route"]["draft-accepted"]["savings_usd"] - before["by_route"].get("draft-accepted", {}).get("savings_usd", 0)
    assert saved == pytest.approx(served.prompt_tokens * 2.25e-6 + served.completion_tokens * 2.75e-6, rel=1e-6)


def test_an_unsure_prefix_goes_to_cerebras_live_and_the_drafts_are_cancelled(
    live: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    local_upstream.pause(after=COMMIT + 2)
    reader = Reader(live, ask(UNSURE_LONG)).finish()
    assert reader.headers is not None and reader.headers["x-glm-saver-route"] == "cloud"
    assert reader.headers["x-glm-saver-reason"].startswith("unsure-prefix: ")
    assert reader.text == CONSISTENCY_CLOUD
    [request] = cerebras_upstream.requests
    assert request.body["messages"] == [{"role": "user", "content": UNSURE_LONG}] and request.body.get("stream") is True
    assert reader.usage is not None and reader.usage.completion_tokens > 0
    until(lambda: [r.outcome for r in local_upstream.requests] == ["client_disconnected"] * 2, what="both drafts cancelled")


def test_a_client_that_hangs_up_mid_answer_cancels_the_draft_and_only_what_it_got_is_booked(
    live: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    def answers_booked() -> tuple[int, float]:
        row = stats(live)["books"]["by_route"].get("draft-accepted", {})
        return row.get("requests", 0), row.get("cloud_cost_usd", 0.0)

    # A whole answer first, for what its row is worth against always-Cerebras.
    before = answers_booked()
    Reader(live, ask(SURE_LONG)).finish()
    whole = until(lambda: (now := answers_booked())[0] > before[0] and now, what="the whole answer booked")
    local_upstream.reset_records()
    local_upstream.pause(after=COMMIT + 3)
    body = {"model": "glm-saver", "stream": True, **ask(SURE_LONG)}
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", headers={"authorization": f"Bearer {MASTER_KEY}"}, json=body, timeout=60) as response:
        assert response.headers["x-glm-saver-route"] == "draft-accepted"
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":' in line and '"content":""' not in line.replace(" ", ""):
                break  # the first words are here: hang up while the draft is still being written
    until(lambda: all(r.outcome == "client_disconnected" for r in local_upstream.requests), what="the upstream saw the cancel")
    assert not local_upstream.served and not cerebras_upstream.requests
    # LiteLLM books what was streamed before the hang-up: at the tokens sent, less than a whole answer.
    cut = until(lambda: (now := answers_booked())[0] > whole[0] and now, what="the cut answer booked")
    assert 0 < cut[1] - whole[1] < whole[1] - before[1]


def test_tool_call_deltas_of_a_committed_draft_reach_the_client(live: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> None:
    body = {"messages": cline.vscode_task("Fix the typo in the README title"), "tools": [cline.READ_FILE_TOOL], "stream_options": {"include_usage": True}}
    local_upstream.pause(after=COMMIT)  # at the commit point, before the finish chunk
    reader = Reader(live, body)
    until(lambda: local_upstream.paused >= 1, what="a draft paused mid-call")
    local_upstream.resume()
    reader.finish()
    assert reader.headers is not None and reader.headers["x-glm-saver-route"] == "draft-accepted"
    [(name, arguments)] = reader.tool_calls()
    assert name == "read_file" and isinstance(json.loads(arguments), dict)
    assert any(c.choices and c.choices[0].finish_reason == "tool_calls" for c in reader.chunks)
    assert not cerebras_upstream.requests


def test_a_live_answer_ends_with_usage_only_when_asked(live: Proxy) -> None:
    reader = Reader(live, {"messages": [{"role": "user", "content": SURE_LONG}]}).finish()
    assert reader.text == LIST_ANSWER
    assert all(chunk.usage is None for chunk in reader.chunks)


def test_a_client_that_hangs_up_on_the_cloud_answer_cancels_it_and_its_reservation_is_released(live: Proxy, cerebras_upstream: FakeUpstream) -> None:
    def in_flight() -> tuple[int, int]:
        headroom = stats(live)["cerebras_headroom"]
        return headroom["reserved_tokens_in_flight"], headroom["requests_in_flight"]

    cerebras_upstream.pause(after=3)  # Cerebras is mid-answer when the client hangs up
    body = {"model": "glm-saver", "stream": True, **ask(UNSURE_LONG)}
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", headers={"authorization": f"Bearer {MASTER_KEY}"}, json=body, timeout=60) as response:
        assert response.headers["x-glm-saver-route"] == "cloud"
        until(lambda: cerebras_upstream.paused >= 1, what="cerebras paused mid-answer")
        tokens, requests = in_flight()
        assert tokens > 0 and requests == 1  # the plan's reservation, held while Cerebras answers
    until(lambda: [r.outcome for r in cerebras_upstream.requests] == ["client_disconnected"], what="cerebras saw the cancel")
    until(lambda: in_flight() == (0, 0), what="the reservation released")
