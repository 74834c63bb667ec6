"""A key refused on /metrics gets its 401 in OpenAI's error shape, like every other route's.

LiteLLM's metrics auth (proxy/middleware/prometheus_auth_middleware.py) answers a missing, wrong
or client key with a bare JSON string that also suggests turning the endpoint's auth off. This
ASGI layer rewrites only that answer, keeping the auth's own reason; every other response passes
untouched.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_METRICS = "/metrics"
_PREFIX = "Unauthorized access to metrics endpoint: "
_ADVICE = " To allow unauthenticated access"  # LiteLLM's tip to drop the auth: not ours to give


def _is_metrics(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    return scope.get("type") == "http" and (path == _METRICS or path.startswith(_METRICS + "/"))


def openai_refusal(body: bytes) -> bytes:
    """LiteLLM's refusal text as {"error": {...}}; a body already in that shape is kept as it is."""
    try:
        said = json.loads(body)
    except ValueError:
        said = body.decode(errors="replace")
    if isinstance(said, dict) and "error" in said:
        return body
    reason = str(said).removeprefix(_PREFIX).split(_ADVICE, 1)[0].strip() or "Authentication Error"
    message = reason if "master key" in reason else f"{reason} (/metrics needs the master key)"  # a client key's reason says so already
    error = {"message": message, "type": "auth_error", "param": "api_key", "code": "401"}
    return json.dumps({"error": error}).encode()


class MetricsRefusalLayer:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_metrics(scope):
            await self.app(scope, receive, send)
            return
        held: list[Message] = []  # a 401's start and body parts, until the body is complete

        async def send_refusal_reshaped(message: Message) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 401:
                held.append(message)
                return
            if not held or message["type"] != "http.response.body":
                await send(message)
                return
            held.append(message)
            if message.get("more_body"):
                return
            body = openai_refusal(b"".join(part.get("body", b"") for part in held[1:]))
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({**held[0], "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_refusal_reshaped)
