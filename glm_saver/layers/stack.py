"""The plugin's ASGI layers in front of LiteLLM's app (body_guard.py, keepalive.py here): which requests
they see, and putting a layer in front of the app once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

_COMPLETION_SUFFIXES = ("/chat/completions", "/completions")


def is_completion_post(scope: Scope) -> bool:
    """A POST to a chat or text completion route: the only requests the layers act on."""
    return scope.get("type") == "http" and scope.get("method") == "POST" and str(scope.get("path", "")).endswith(_COMPLETION_SUFFIXES)


class CompletionLayer:
    """A layer that acts on completion POSTs (`completion`) and passes every other request through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_completion_post(scope):
            await self.completion(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


def _stack(app: Any) -> Iterator[Any]:
    layer = app.middleware_stack
    for _ in range(64):  # the stack is a short chain of `.app`s ending at the router
        if layer is None:
            return
        yield layer
        layer = getattr(layer, "app", None)


def install_layer(app: Any, layer: type) -> None:
    """Put `layer` in front of the app's middleware stack (built already once the proxy runs), once:
    a plugin reload finds it in the stack, under any layer installed after it."""
    if any(entry.cls is layer for entry in app.user_middleware) or any(isinstance(each, layer) for each in _stack(app)):
        return
    if app.middleware_stack is None:
        app.add_middleware(layer)
    else:
        app.middleware_stack = layer(app.middleware_stack)
