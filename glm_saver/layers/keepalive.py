"""Keep-alives before the first byte of a streamed cascade, under headers that are true.

A streamed cascade decides inside LiteLLM's pre-call hook (drafts read to the commit point, maybe a
verify): LiteLLM writes nothing until it has the first chunk. Its own way to write earlier
(`litellm_settings.sse_keepalive_ping_interval_seconds`, `open_sse_before_first_byte` in
proxy/common_request_processing.py) opens the response with none of the response headers, ours
included, and does it for every slow stream. So this ASGI layer sits in front of the app instead.

Every completion request gets a `Wire` (a context variable, seen by the hooks the request runs
through). A streamed cascade `hold`s it with the headers that are true when it starts
(`x-glm-saver-route: cascade`, the strategy). If the app has not started its response
`open_after` seconds later, the layer starts it: 200, `text/event-stream`, those headers, then an
SSE comment (`: keep-alive`) every `every` seconds until the app's response comes. Its status line
and headers can no longer go out; its route headers are written as SSE comments instead
(`: x-glm-saver-route: draft-accepted`), then its body; an error answer becomes an SSE error event,
as LiteLLM does for a failure after its own keep-alives. A cascade that decides in time leaves the
response exactly as the app makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from contextvars import ContextVar

from starlette.types import Message, Receive, Scope, Send

from glm_saver.layers.stack import CompletionLayer

logger = logging.getLogger(__name__)

# An SSE comment: clients skip it, proxies and clients see a live connection.
KEEPALIVE = b": keep-alive\n\n"
_SSE_HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))
# The app's headers that still reach the client, as comments, when the response opened early.
_REPEATED = frozenset({b"x-glm-saver-route", b"x-glm-saver-reason"})


class Wire:
    """One request's way to its client: a hook below may keep it alive before the app answers."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = asyncio.Lock()  # the keeper and the app never write at once
        self._keeper: asyncio.Task[None] | None = None
        self._started = False  # the app sent its response start
        self._opened = False  # this layer started the response, before the app
        self._late: Message | None = None  # the app's start, once it came after the opening
        self._held_body = bytearray()  # a late error answer, turned into an SSE event at its end
        self._ended = False

    def hold(self, headers: Mapping[str, str], open_after: float, every: float) -> None:
        """Open the response with `headers` if the app is still silent after `open_after` seconds."""
        if self._keeper is None and not self._started:
            self._keeper = asyncio.ensure_future(self._keep(headers, open_after, every))

    async def _keep(self, headers: Mapping[str, str], open_after: float, every: float) -> None:
        await asyncio.sleep(open_after)
        async with self._lock:
            if self._started:
                return
            extra = tuple((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items())
            await self._send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, *extra]})
            self._opened = True
        logger.info("glm_saver: the cascade was still deciding after %.1fs; the stream opened with keep-alives", open_after)
        while True:
            async with self._lock:
                if self._started:
                    return
                await self._send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
            await asyncio.sleep(every)

    async def send(self, message: Message) -> None:
        """The app's messages: as they are, or, once the response opened early, fitted to it."""
        if message["type"] == "http.response.start":
            async with self._lock:
                self._started = True
                if self._keeper is not None:
                    self._keeper.cancel()  # waiting for the lock or asleep: never mid-write
                if not self._opened:
                    await self._send(message)
                    return
                self._late = message
                await self._body(_header_comments(message))
            return
        if message["type"] != "http.response.body" or self._late is None:
            await self._send(message)
            return
        if _is_stream(self._late):
            await self._body(message.get("body", b""), more=bool(message.get("more_body")))
            return
        self._held_body += message.get("body", b"")
        if not message.get("more_body"):
            await self._body(_error_event(bytes(self._held_body)), more=False)

    async def _body(self, data: bytes, more: bool = True) -> None:
        self._ended = not more
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def close(self) -> None:
        """The app is done: stop the keeper; end a response it opened and the app never finished."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(BaseException):
                await self._keeper
        if self._opened and not self._ended:
            with contextlib.suppress(Exception):  # the client may be gone already
                await self._body(_error_event(b'{"error": {"message": "glm_saver: the request failed", "type": "server_error", "code": "500"}}'), more=False)


WIRE: ContextVar[Wire | None] = ContextVar("glm_saver_wire", default=None)


def hold_open(headers: Mapping[str, str], open_after: float, every: float) -> None:
    """For a hook that may keep its request waiting: keep-alives under `headers` if it does."""
    wire = WIRE.get()
    if wire is not None:
        wire.hold(headers, open_after, every)


def _header_comments(start: Message) -> bytes:
    # Header values hold no line breaks (HTTP forbids them), so each is one comment line.
    lines = [f": {name.decode('latin-1')}: {value.decode('latin-1')}\n" for name, value in start.get("headers") or [] if name.lower() in _REPEATED]
    return ("".join(lines) + "\n").encode() if lines else b""


def _is_stream(start: Message) -> bool:
    content_type = next((value for name, value in start.get("headers") or [] if name.lower() == b"content-type"), b"")
    return int(start.get("status", 200)) == 200 and content_type.startswith(b"text/event-stream")


def _error_event(body: bytes) -> bytes:
    """An answer that is not a stream, sent once the stream is open: LiteLLM's late-error frames."""
    return b"data: " + (body.strip() or b"{}") + b"\n\ndata: [DONE]\n\n"


class KeepAliveLayer(CompletionLayer):
    async def completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        wire = Wire(send)
        token = WIRE.set(wire)
        try:
            await self.app(scope, receive, wire.send)
        finally:
            WIRE.reset(token)
            await wire.close()
