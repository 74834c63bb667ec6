"""The ASGI guard in front of the proxy: a JSON body that is not an object is a 400, the rest passes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from glm_saver.layers.body_guard import NonObjectBodyGuard


class App:
    """The wrapped app: records what reached it, answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _post(guard: NonObjectBodyGuard, path: str, chunks: list[bytes]) -> tuple[int, bytes]:
    incoming = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard({"type": "http", "method": "POST", "path": path}, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize(("body", "kind"), [(b"[]", "array"), (b'"x"', "string"), (b"null", "null"), (b"1", "number"), (b" true", "boolean")])
def test_a_json_body_that_is_not_an_object_is_a_400_in_openai_shape(body: bytes, kind: str) -> None:
    app = App()
    status, answer = _post(NonObjectBodyGuard(app), "/v1/chat/completions", [body])
    assert status == 400
    error = json.loads(answer)["error"]
    assert error["type"] == "invalid_request_error" and f"a JSON {kind}" in error["message"]
    assert app.bodies == []  # the proxy never saw it


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/completions"])
def test_an_object_body_reaches_the_app_whole_even_in_chunks(path: str) -> None:
    app = App()
    status, _ = _post(NonObjectBodyGuard(app), path, [b'{"model": "glm-', b'saver"}'])
    assert status == 200 and app.bodies == [b'{"model": "glm-saver"}']


def test_other_routes_and_non_json_bodies_are_left_to_litellm() -> None:
    app = App()
    assert _post(NonObjectBodyGuard(app), "/v1/embeddings", [b"[]"])[0] == 200
    assert _post(NonObjectBodyGuard(app), "/v1/chat/completions", [b"not json"])[0] == 200
    assert app.bodies == [b"[]", b"not json"]
