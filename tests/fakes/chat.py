"""``POST /v1/chat/completions`` of a fake: quotas, faults, pacing, JSON and SSE answers.

Written against raw ASGI ``send`` rather than Starlette responses because several faults need to
misbehave at the wire level: stop half-way through a body, or end a stream without ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from tests.fakes import answers
from tests.fakes.answers import Answer, Envelope
from tests.fakes.ratelimit import Admission
from tests.fakes.state import ERROR_FAULTS, Fault, RecordedRequest, ServedAnswer

if TYPE_CHECKING:
    from tests.fakes.upstream import FakeUpstream, Options

_UNFINISHED = "ASGI callable returned without completing response."


class _QuietIntendedAborts(logging.Filter):
    """``reset_midstream`` returns without finishing the response on purpose: uvicorn then drops
    the connection, which is the point, and logs an error about it, which is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _UNFINISHED


logging.getLogger("uvicorn.error").addFilter(_QuietIntendedAborts())


def error_body(kind: str, message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """Cerebras puts the error fields at the top level; local servers (llama.cpp, vLLM, Ollama)
    nest them under ``error`` like OpenAI."""
    error = {"message": message, "type": type_, "param": param, "code": code}
    return error if kind == "cerebras" else {"error": error}


async def _until_disconnect(receive: Receive) -> None:
    # Once the body is read, the next message is the client hanging up (uvicorn also reports it
    # when the response is complete, by which time nobody waits for this any more).
    while (await receive())["type"] != "http.disconnect":
        pass


# The refusals of a request as such (Cerebras' message, type and code), which no other model answers better.
_CLIENT_ERRORS: dict[str, tuple[str, str, str]] = {
    "400": ("Invalid request: max_tokens is too large.", "invalid_request_error", "invalid_request"),
    "401": ("Wrong API Key", "invalid_request_error", "wrong_api_key"),
    "403": ("This API key may not use this model.", "permission_denied_error", "permission_denied"),
}


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


class ChatEndpoint:
    """The ASGI app behind the chat route. A class, so Starlette hands it raw ``send``."""

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        record, seq = self.fake._begin_chat(request.url.path, request.method, body, dict(request.headers))
        # Watch for the client hanging up, so waits and streams stop early and a request whose
        # client is gone does not stay "in flight".
        hangup = asyncio.ensure_future(_until_disconnect(receive))
        exchange = _Exchange(self.fake, self.fake._options_snapshot(), body, record, seq, send, hangup)
        status, outcome = 500, "server_error"
        try:
            status, outcome = await exchange.run()
        finally:
            hangup.cancel()
            exchange.settle(status, outcome)  # if no complete answer went out


class _Exchange:
    """One chat request being answered. ``run`` returns (status, outcome) for the record.

    The records are settled (status, outcome, served answer, in-flight count) just *before* the
    last byte of a complete answer is sent: a test that holds its answer must find them final.
    """

    def __init__(
        self,
        fake: FakeUpstream,
        options: Options,
        body: Any,
        record: RecordedRequest,
        seq: int,
        send: Send,
        hangup: asyncio.Future[None],
    ) -> None:
        self.fake, self.options, self.body, self.record = fake, options, body, record
        self.send, self.hangup = send, hangup
        self.envelope = Envelope(f"chatcmpl-{fake.slug}-{seq}", fake._created(), fake.model)
        self.call_id = f"call_{fake.slug}_{seq}"
        self.rate_headers: dict[str, str] = {}
        self.settled = False
        self.refund: tuple[int, int] | None = None  # (token window, tokens) to give back once served

    def settle(self, status: int, outcome: str, served: ServedAnswer | None = None) -> None:
        if self.settled:
            return
        self.settled = True
        if served is not None:
            self.fake._record_served(served)
            if self.refund is not None:
                self.fake.limiter.refund(*self.refund)
        self.fake._finish(self.record, status, outcome)

    async def run(self) -> tuple[int, str]:
        key = self.options.api_key
        if key is not None and self.record.headers.get("authorization") != f"Bearer {key}":
            return await self._error(
                401,
                "unauthorized",
                "Wrong API Key",
                "invalid_request_error",
                "wrong_api_key",
                param="api_key",
            )
        if not isinstance(self.body, dict) or not isinstance(self.body.get("messages"), list):
            return await self._error(
                400,
                "bad_request",
                "Request body must be JSON with a messages list.",
                "invalid_request_error",
                "invalid_request",
            )
        refused = answers.refused_history_field(self.body) if self.fake.kind == "cerebras" else None
        if refused is not None:
            index, field = refused
            where = f"messages.{index}.assistant.{field}"
            return await self._error(
                400, "bad_request", f"{where}: property '{where}' is unsupported", "invalid_request_error", "wrong_api_format", param="validation_error"
            )
        # The fault is taken on arrival: it always hits exactly the next request(s).
        fault = self.fake._next_fault()
        if fault is not None and fault.mode in ERROR_FAULTS:
            return await self._fault_error(fault)

        answer = answers.plan_answer(
            self.body,
            default_reply=self.options.reply,
            rules=self.options.replies,
            call_id=self.call_id,
            reasoning=self.options.reasoning,
            tool=self.options.tool,
        )
        reserved = answers.reservation(self.body, answer.prompt_tokens)
        limiter = self.fake.limiter
        admission = limiter.admit(reserved) if limiter.enabled else Admission(True, {})
        self.rate_headers = admission.headers
        if not admission.allowed:
            self.fake._count_rate_limited()
            return await self._error(
                429,
                "rate_limited",
                admission.message or "",
                "rate_limit_error",
                admission.code,
                retry_after=admission.retry_after,
            )

        if not await self._held_back(fault):
            return 200, "client_disconnected"
        stream = bool(self.body.get("stream"))
        if self.options.refund_unused and admission.window_index >= 0:
            self.refund = (admission.window_index, reserved - answer.usage["total_tokens"])
        served = self._served(answer, stream, reserved)
        if stream:
            return await self._stream(answer, fault, served)
        return await self._complete(answer, fault, served)

    # -- waiting --------------------------------------------------------------------------------

    async def _wait(self, seconds: float) -> bool:
        """Wait, unless the client hangs up first. True if the client is still there."""
        if seconds > 0 and not self.hangup.done():
            await asyncio.wait({self.hangup}, timeout=seconds)
        return not self.hangup.done()

    async def _held_back(self, fault: Fault | None) -> bool:
        """Everything that delays the first byte: the hold gate, latency, a slow_first_byte."""
        gate = self.fake._gate.waiter()
        if gate is not None:
            await asyncio.wait({gate, self.hangup}, return_when=asyncio.FIRST_COMPLETED)
            gate.cancel()
        delay = self.options.latency
        if fault is not None and fault.mode == "slow_first_byte":
            delay += float(fault.params.get("delay", 2.0))
        return await self._wait(delay)

    async def _paused(self) -> bool:
        """Wait at the pause gate (mid-stream), unless the client hangs up. True if it is still there."""
        gate = self.fake._pause_gate.waiter()
        if gate is None:
            return not self.hangup.done()
        self.fake._pausing(+1)
        try:
            await asyncio.wait({gate, self.hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gate.cancel()
            self.fake._pausing(-1)
        return not self.hangup.done()

    def _pace(self, token_count: int) -> float:
        tps = self.options.tokens_per_second
        return token_count / tps if tps else 0.0

    # -- sending --------------------------------------------------------------------------------

    async def _start(self, status: int, headers: dict[str, str]) -> None:
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in {**headers, **self.rate_headers}.items()]
        await self.send({"type": "http.response.start", "status": status, "headers": raw})

    async def _body(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def _last(self, data: bytes, status: int, outcome: str, served: ServedAnswer | None = None) -> tuple[int, str]:
        """Send the end of a response, settling the records first."""
        self.settle(status, outcome, served)
        await self.send({"type": "http.response.body", "body": data, "more_body": False})
        return status, outcome

    async def _json(
        self,
        status: int,
        outcome: str,
        payload: Any,
        headers: dict[str, str] | None = None,
        served: ServedAnswer | None = None,
    ) -> tuple[int, str]:
        data = json.dumps(payload).encode()
        await self._start(status, {"content-type": "application/json", "content-length": str(len(data)), **(headers or {})})
        return await self._last(data, status, outcome, served)

    async def _error(
        self,
        status: int,
        outcome: str,
        message: str,
        type_: str,
        code: str | None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> tuple[int, str]:
        headers = {} if retry_after is None else {"retry-after": str(retry_after)}
        return await self._json(status, outcome, error_body(self.fake.kind, message, type_, code, param), headers)

    async def _fault_error(self, fault: Fault) -> tuple[int, str]:
        # Errors skip the quota but still report it, as every Cerebras response does.
        if self.fake.limiter.enabled:
            self.rate_headers = self.fake.limiter.headers()
        outcome = f"fault:{fault.mode}"
        if fault.mode == "429":
            self.fake._count_rate_limited()
            return await self._error(
                429,
                outcome,
                "Tokens per minute limit exceeded - too many tokens processed.",
                "rate_limit_error",
                "token_quota_exceeded",
                retry_after=int(fault.params.get("retry_after", 1)),
            )
        if fault.mode in _CLIENT_ERRORS:
            return await self._error(int(fault.mode), outcome, *_CLIENT_ERRORS[fault.mode])
        if fault.mode == "500":
            return await self._error(500, outcome, "Internal server error", "server_error", "internal_server_error")
        if fault.mode == "503":
            return await self._error(503, outcome, "Service unavailable", "server_error", "service_unavailable")
        # not_json: what a misconfigured gateway in front of the model may send with status 200.
        page = "<html><body>502 Bad Gateway</body></html>"
        if self.body.get("stream"):
            await self._start(200, {"content-type": "text/event-stream; charset=utf-8"})
            return await self._last(_sse(page), 200, outcome)
        await self._start(200, {"content-type": "application/json", "content-length": str(len(page))})
        return await self._last(page.encode(), 200, outcome)

    async def _complete(self, answer: Answer, fault: Fault | None, served: ServedAnswer) -> tuple[int, str]:
        if not await self._wait(self._pace(answer.usage["completion_tokens"])):
            return 200, "client_disconnected"
        payload = answers.completion_body(answer, self.envelope)
        if fault is not None and fault.mode == "reset_midstream":
            # Promise the whole body, send half, and return: uvicorn drops the connection.
            data = json.dumps(payload).encode()
            await self._start(200, {"content-type": "application/json", "content-length": str(len(data))})
            await self._body(data[: len(data) // 2])
            return 200, "fault:reset_midstream"
        # no_done has no meaning without a stream: such a request gets a normal answer.
        return await self._json(200, "ok", payload, served=served)

    def _stream_usage(self) -> bool:
        # Cerebras always ends a stream with usage; OpenAI-style local servers only when asked.
        if not self.options.stream_usage:
            return False
        if self.fake.kind == "cerebras":
            return True
        return bool((self.body.get("stream_options") or {}).get("include_usage"))

    async def _stream(self, answer: Answer, fault: Fault | None, served: ServedAnswer) -> tuple[int, str]:
        opening, finish = answers.stream_chunks(answer, self.envelope)
        mode = fault.mode if fault is not None else None
        if fault is not None and mode == "reset_midstream":
            # Keep the role chunk and ``after_chunks`` more, by default about half of the content.
            keep = fault.params.get("after_chunks")
            opening = opening[: 1 + (int(keep) if keep is not None else max(1, (len(opening) - 1) // 2))]
        await self._start(200, {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"})
        for sent, chunk in enumerate(opening, start=1):
            if self.hangup.done():
                return 200, "client_disconnected"
            await self._body(_sse(chunk))
            if not await self._wait(self._pace(_chunk_tokens(chunk))):
                return 200, "client_disconnected"
            if sent == self.options.pause_after and not await self._paused():
                return 200, "client_disconnected"
        if mode == "reset_midstream":
            return 200, "fault:reset_midstream"  # unfinished: uvicorn drops the connection
        if mode == "no_done":
            return await self._last(b"", 200, "fault:no_done")  # a clean end, but no finish, usage or [DONE]
        closing = finish + ([answers.usage_chunk(answer, self.envelope)] if self._stream_usage() else [])
        for chunk in closing:
            await self._body(_sse(chunk))
        return await self._last(_sse("[DONE]"), 200, "ok", served)

    def _served(self, answer: Answer, stream: bool, reserved: int) -> ServedAnswer:
        usage = answer.usage
        return ServedAnswer(
            model=self.fake.model,
            stream=stream,
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            finish_reason=answer.finish_reason,
            content=answer.content,
            tool_call=answer.tool_call.name if answer.tool_call else None,
            reserved=reserved,
            reasoning_tokens=answer.reasoning_tokens * answer.n,
        )


def _chunk_tokens(chunk: dict[str, Any]) -> int:
    """About how many tokens a chunk carries, for pacing: one per content piece."""
    delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
    return 1 if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content") else 0
