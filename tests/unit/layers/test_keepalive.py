"""The keep-alive layer: a request that waits past `open_after` gets its stream opened early, under
the headers its hook gave, with keep-alives; one that answers in time is left exactly as it was."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from glm_saver.layers.keepalive import KEEPALIVE, WIRE, KeepAliveLayer, hold_open

DECIDING = {"x-glm-saver-route": "cascade", "x-glm-saver-reason": "cascade-deciding: still drafting"}
ROUTE = [(b"x-glm-saver-route", b"draft-accepted"), (b"x-glm-saver-reason", b"confident: confidence 0.98")]
STREAM_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream"), *ROUTE]}
CHUNK = {"type": "http.response.body", "body": b'data: {"choices": []}\n\n', "more_body": True}
DONE = {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False}


class App:
    """Holds the wire like the cascade does, waits for the test to let it answer, then answers."""

    def __init__(self, answer: list[dict[str, Any]], open_after: float, fail: bool = False) -> None:
        self.answer, self.open_after, self.fail = answer, open_after, fail
        self.decided = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        hold_open(DECIDING, self.open_after, 0.01)
        await self.decided.wait()
        if self.fail:
            raise RuntimeError("the cascade broke")
        for message in self.answer:
            await send(message)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def serve(app: App, wait_for_keepalives: bool, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    served = asyncio.ensure_future(KeepAliveLayer(app)({"type": "http", "method": "POST", "path": path}, receive, send))
    if wait_for_keepalives:
        await until(lambda: sum(m.get("body") == KEEPALIVE for m in sent) >= 2)
    app.decided.set()
    await served
    return sent


def body(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_an_app_that_answers_in_time_sends_its_own_response_unchanged() -> None:
    sent = asyncio.run(serve(App([STREAM_START, CHUNK, DONE], open_after=60), wait_for_keepalives=False))
    assert sent == [STREAM_START, CHUNK, DONE]


def test_a_silent_app_gets_its_stream_opened_with_the_hold_headers_then_keep_alives_then_its_route_as_comments() -> None:
    sent = asyncio.run(serve(App([STREAM_START, CHUNK, DONE], open_after=0.01), wait_for_keepalives=True))
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream") and headers[b"x-glm-saver-route"] == b"cascade"
    assert headers[b"x-glm-saver-reason"] == b"cascade-deciding: still drafting"
    assert [m["type"] for m in sent].count("http.response.start") == 1
    keepalives, rest = body(sent).rsplit(KEEPALIVE, 1)
    assert set(keepalives.split(KEEPALIVE)) == {b""}  # nothing but keep-alives until the app answered
    assert rest == b": x-glm-saver-route: draft-accepted\n: x-glm-saver-reason: confident: confidence 0.98\n\n" + CHUNK["body"] + DONE["body"]
    assert sent[-1]["more_body"] is False


def test_an_error_answer_after_the_opening_becomes_an_sse_error_event() -> None:
    error = json.dumps({"error": {"message": "no model answered", "type": "server_error", "code": "503"}}).encode()
    answer = [
        {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]},
        {"type": "http.response.body", "body": error},
    ]
    sent = asyncio.run(serve(App(answer, open_after=0.01), wait_for_keepalives=True))
    assert body(sent).endswith(b"data: " + error + b"\n\ndata: [DONE]\n\n")
    assert sent[0]["status"] == 200 and sent[-1]["more_body"] is False


def test_a_failed_app_after_the_opening_leaves_no_stream_unfinished() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        app = App([], open_after=0.01, fail=True)
        served = asyncio.ensure_future(KeepAliveLayer(app)({"type": "http", "method": "POST", "path": "/chat/completions"}, None, send))
        await until(lambda: any(m.get("body") == KEEPALIVE for m in sent))
        app.decided.set()
        with pytest.raises(RuntimeError):
            await served

    asyncio.run(run())
    assert b'"type": "server_error"' in body(sent) and body(sent).endswith(b"data: [DONE]\n\n") and sent[-1]["more_body"] is False


def test_only_completion_posts_get_a_wire() -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(WIRE.get())

    async def run() -> None:
        for method, path in (("GET", "/health"), ("POST", "/key/generate"), ("POST", "/v1/chat/completions")):
            await KeepAliveLayer(app)({"type": "http", "method": method, "path": path}, None, None)  # type: ignore[arg-type]

    asyncio.run(run())
    assert seen[:2] == [None, None] and seen[2] is not None
