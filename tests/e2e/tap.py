"""A pass-through HTTP tap in front of a REAL server: records what crosses it, unchanged.

    with Tap(embedded.url) as tap:              # point the proxy's local group at tap.url + "/v1"
        tap.hold_until(3)                       # forward nothing until 3 requests are in flight
        ...
        tap.exchanges                           # [(request json, status, response json)], in order
        tap.max_in_flight

Holding proves concurrency without timing: if requests came one after another, the count would
never reach 3 and the hold would give up after its deadline, leaving max_in_flight below 3.
Bodies are forwarded whole (no streaming): it taps the cascade's internal non-streamed calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

HOLD_DEADLINE = 30.0


class Tap:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[tuple[Any, int, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._hold_for = 0
        self._released: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold_until(self, count: int) -> None:
        with self._lock:
            self._hold_for = count

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            arrived = self.in_flight
        try:
            await self._maybe_hold(arrived)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with httpx.AsyncClient(timeout=120) as client:
                answer = await client.request(request.method, f"{self.upstream}{request.url.path}", content=body, headers=headers)
        finally:
            with self._lock:
                self.in_flight -= 1
        with self._lock:
            self.exchanges.append((_json(body), answer.status_code, _json(answer.content)))
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in ("content-length", "content-encoding", "transfer-encoding", "connection")}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    async def _maybe_hold(self, arrived: int) -> None:
        if self._hold_for <= 0:
            return
        if self._released is None:
            self._released = asyncio.Event()
        if arrived >= self._hold_for:
            self._hold_for = 0
            self._released.set()
            return
        with contextlib.suppress(asyncio.TimeoutError):  # give up holding; max_in_flight tells the test what happened
            await asyncio.wait_for(self._released.wait(), HOLD_DEADLINE)

    def __enter__(self) -> Self:
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", loop="asyncio"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the tap did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server and self._thread:
            self._server.should_exit = True
            self._thread.join(timeout=10)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
