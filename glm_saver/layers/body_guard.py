"""A request body that is JSON but not an object gets a 400, not LiteLLM's 500.

LiteLLM's auth reads the body as a dict before any plugin hook runs and crashes on `[]`, `"x"` or
`null`. This ASGI layer sits in front of the app: for the completion routes it looks at the body
once and answers such a body itself, in OpenAI's error shape; every other request passes untouched.
"""

from __future__ import annotations

import json

from starlette.types import Message, Receive, Scope, Send

from glm_saver.layers.stack import CompletionLayer


def _error_body(kind: str) -> bytes:
    message = f"the request body must be a JSON object, got a JSON {kind}"
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "400"}}).encode()


def _json_kind(body: bytes) -> str | None:
    """The JSON type of a body that parses but is not an object; None for an object or non-JSON."""
    if body.lstrip()[:1] in (b"{", b""):
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None  # not JSON at all: LiteLLM's own answer stands
    return {list: "array", str: "string", type(None): "null", bool: "boolean"}.get(type(value), "number")


class NonObjectBodyGuard(CompletionLayer):
    async def completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages, body = await _read_body(receive)
        kind = _json_kind(body)
        if kind is not None:
            await _answer_400(send, _error_body(kind))
            return
        await self.app(scope, _replay(messages, receive), send)


async def _read_body(receive: Receive) -> tuple[list[Message], bytes]:
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message.get("type") != "http.request" or not message.get("more_body"):
            break
    return messages, b"".join(m.get("body", b"") for m in messages if m.get("type") == "http.request")


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _answer_400(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
