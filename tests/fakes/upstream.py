"""Fake OpenAI-compatible upstreams: a local model server and Cerebras, for end-to-end tests.

    with FakeUpstream("cerebras", tokens_per_minute=20_000) as cerebras:
        client = openai.OpenAI(base_url=cerebras.url, api_key="unused")
        client.chat.completions.create(model="zai-glm-4.6", messages=[...])
        assert cerebras.served[0].completion_tokens == 5

Each fake runs uvicorn on a daemon thread of the test process; what it saw is readable as plain
attributes (copies taken under a lock). The same state can be read and driven over HTTP under
``/_control/`` when the fake runs in another process (benchmarks):

    python -m tests.fakes.upstream --kind cerebras --port 0 --tokens-per-minute 30000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import re
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.answers import ReplyRule
from tests.fakes.chat import ChatEndpoint, error_body
from tests.fakes.ratelimit import Clock, RateLimiter
from tests.fakes.state import Fault, Gate, RecordedRequest, ServedAnswer

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

Kind = Literal["local", "cerebras"]
DEFAULT_MODELS: dict[str, str] = {"cerebras": "zai-glm-4.6", "local": "local-model"}
_START_TIMEOUT = 10.0


@dataclass
class Options:
    """How a fake answers; changeable while it runs (``configure`` or ``/_control/options``)."""

    reply: str
    replies: list[ReplyRule]
    stream_usage: bool = True  # False: streams never end with a usage chunk, even when asked
    latency: float = 0.0  # seconds before the first byte of every answer
    tokens_per_second: float | None = None  # pace of generation; None: as fast as possible
    refund_unused: bool = False  # give the unused part of a quota reservation back
    api_key: str | None = None  # if set, answer 401 unless "Authorization: Bearer <api_key>"
    pause_after: int | None = None  # streams stop after this many chunks while ``pause`` holds them
    reasoning: str | None = None  # a reasoning model: this thinking comes before every answer
    tool: str | None = None  # the tool an answer calls when the request offers it (None: the first)


class _Server(uvicorn.Server):
    """uvicorn that stops at once, which keeps test set-up and tear-down fast.

    Stock uvicorn notices ``should_exit`` on a 0.1 s tick and then lets open connections finish;
    this one is woken by ``request_exit`` and drops every connection, streams in progress
    included, because a stopped fake stands for a server that died ("local is down").
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def request_exit(self) -> None:
        self.should_exit = True
        if self._loop is not None:
            # RuntimeError: the loop has ended already, nothing to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._exit.set)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    async def main_loop(self) -> None:
        await self.on_tick(0)  # sets the Date and Server headers once
        if not self.should_exit:
            await self._exit.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # also closes the listening socket
        for connection in list(self.server_state.connections):
            connection.transport.abort()
        # Handlers see their client gone and return; whatever is left is cancelled by asyncio.run.
        if self.server_state.tasks:
            await asyncio.wait(list(self.server_state.tasks), timeout=2)


class FakeUpstream:
    """One fake OpenAI-compatible server. See the module docstring and ``state()`` for what it keeps."""

    def __init__(
        self,
        kind: Kind,
        name: str | None = None,
        model: str | None = None,
        *,
        reply: str | None = None,
        replies: Sequence[ReplyRule | tuple[Any, ...]] = (),
        stream_usage: bool = True,
        latency: float = 0.0,
        tokens_per_second: float | None = None,
        tokens_per_minute: int | None = None,
        requests_per_day: int | None = None,
        window_seconds: float = 60.0,
        day_seconds: float = 86400.0,
        refund_unused: bool = False,
        api_key: str | None = None,
        reasoning: str | None = None,
        clock: Clock = time.monotonic,
        port: int = 0,
    ) -> None:
        if kind not in DEFAULT_MODELS:
            raise ValueError(f"kind must be 'local' or 'cerebras', not {kind!r}")
        self.kind: Kind = kind
        self.name = name or kind
        self.model = model or DEFAULT_MODELS[kind]
        self.slug = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-") or kind
        self.limiter = RateLimiter(tokens_per_minute, requests_per_day, window_seconds, day_seconds, clock)
        self.app = create_app(self)
        self._options = Options(
            reply=f"Hello from {self.name}." if reply is None else reply,
            replies=[ReplyRule.of(rule) for rule in replies],
            stream_usage=stream_usage,
            latency=latency,
            tokens_per_second=tokens_per_second,
            refund_unused=refund_unused,
            api_key=api_key,
            reasoning=reasoning,
        )
        self._port = port
        # One re-entrant condition guards all records, so ``wait_until`` predicates can read
        # properties (which take the lock again) while being woken on every change.
        self._cond = threading.Condition(threading.RLock())
        self._requests: list[RecordedRequest] = []
        self._other_requests: list[RecordedRequest] = []
        self._served: list[ServedAnswer] = []
        self._faults: deque[Fault] = deque()
        self._in_flight = 0
        self._max_concurrency = 0
        self._rate_limited = 0
        self._seq = 0
        self._gate = Gate()
        self._pause_gate = Gate()
        self._paused = 0  # streams waiting at the pause
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve on 127.0.0.1 (a free port the first time, the same port after a ``stop``)."""
        if self._server is not None:
            raise RuntimeError(f"fake upstream {self.name!r} is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # SO_REUSEADDR lets a restarted fake take its port back while connections of its
        # previous run still sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off", http="h11", loop="asyncio")
        server = _Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"fake-upstream-{self.slug}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        self._wait_until_serving(server, thread)
        return self

    def _wait_until_serving(self, server: _Server, thread: threading.Thread) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if not thread.is_alive():
                self._server = self._thread = None
                raise RuntimeError(f"fake upstream {self.name!r} failed to start")
            if server.started:
                try:
                    socket.create_connection(("127.0.0.1", self._port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.005)  # a poll interval, not a guess at how long startup takes
        self.stop()
        raise TimeoutError(f"fake upstream {self.name!r} did not start within {_START_TIMEOUT}s")

    def stop(self) -> None:
        """Stop serving: open connections are dropped; the port is kept for ``start``."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.request_exit()
        thread.join(timeout=_START_TIMEOUT)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, ending in /v1 (what litellm's ``api_base`` wants)."""
        return f"{self.base_url}/v1"

    # -- records (copies; safe to read from any thread) -----------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Chat-completion requests in arrival order; ``status`` is None while in flight."""
        with self._cond:
            return [dataclasses.replace(r) for r in self._requests]

    @property
    def other_requests(self) -> list[RecordedRequest]:
        """Requests to anything else under /v1 or unknown paths (not /health or /_control)."""
        with self._cond:
            return [dataclasses.replace(r) for r in self._other_requests]

    @property
    def prompted_requests(self) -> list[RecordedRequest]:
        """Every request a client's call could have caused: all but LiteLLM's model-info refresh,
        a ``GET /v1/models`` it sends each deployment at startup and every 300 s on its own clock."""
        return self.requests + [r for r in self.other_requests if (r.method, r.path) != ("GET", "/v1/models")]

    @property
    def served(self) -> list[ServedAnswer]:
        with self._cond:
            return list(self._served)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @property
    def max_concurrency(self) -> int:
        with self._cond:
            return self._max_concurrency

    @property
    def rate_limited(self) -> int:
        """429s answered, by the quota or by an injected "429" fault."""
        with self._cond:
            return self._rate_limited

    @property
    def pending_faults(self) -> list[Fault]:
        with self._cond:
            return list(self._faults)

    @property
    def windows(self) -> list[dict[str, Any]]:
        """Per token window: limit, tokens reserved/refunded/spent, requests admitted/rejected."""
        return [{**dataclasses.asdict(w), "tokens_spent": w.tokens_spent} for w in self.limiter.windows()]

    @property
    def options(self) -> Options:
        return self._options_snapshot()

    def wait_until(self, predicate: Callable[[FakeUpstream], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate(self)`` holds, woken by every change of the records."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"condition not met on fake upstream {self.name!r} within {timeout}s")

    def state(self, records: bool = True) -> dict[str, Any]:
        """Everything above as JSON-able data (what ``GET /_control/state`` returns).

        ``records=False`` leaves out the request and answer lists, which hold whole request
        bodies and grow large in a benchmark; the counters and windows stay.
        """
        with self._cond:
            options = dataclasses.asdict(self._options)
            lists: dict[str, list[Any]] = {
                "requests": self._requests,
                "other_requests": self._other_requests,
                "served": self._served,
            }
            return {
                "name": self.name,
                "kind": self.kind,
                "model": self.model,
                "url": self.url,
                "in_flight": self._in_flight,
                "max_concurrency": self._max_concurrency,
                "rate_limited": self._rate_limited,
                "held": self._gate.closed,
                "counts": {name: len(items) for name, items in lists.items()},
                **{name: [dataclasses.asdict(i) for i in items] for name, items in lists.items() if records},
                "pending_faults": [dataclasses.asdict(f) for f in self._faults],
                "limits": {
                    "tokens_per_minute": self.limiter.tokens_per_minute,
                    "requests_per_day": self.limiter.requests_per_day,
                    "window_seconds": self.limiter.window_seconds,
                    "day_seconds": self.limiter.day_seconds,
                },
                "windows": self.windows,
                "options": {**options, "api_key": None if options["api_key"] is None else "***"},
            }

    # -- driving --------------------------------------------------------------------------------

    def inject(self, mode: str | int, count: int = 1, **params: Any) -> None:
        """Make the next ``count`` chat requests fail with ``mode`` (see state.FAULT_PARAMS)."""
        fault = Fault.checked(mode, params)
        with self._cond:
            self._faults.extend([fault] * count)
            self._cond.notify_all()

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()
            self._cond.notify_all()

    def hold(self) -> None:
        """Keep answers back (requests stay in flight) until ``release``."""
        self._gate.close()

    def release(self) -> None:
        self._gate.open()

    def pause(self, after: int) -> None:
        """Streams stop after ``after`` chunks (mid-answer, like a slow model) until ``resume``."""
        self.configure(pause_after=after)
        self._pause_gate.close()

    def resume(self) -> None:
        self._pause_gate.open()

    @property
    def paused(self) -> int:
        with self._cond:
            return self._paused

    def _pausing(self, delta: int) -> None:
        with self._cond:
            self._paused += delta
            self._cond.notify_all()

    def advance_window(self) -> None:
        """End the current token window now, as if its minute had passed."""
        self.limiter.advance_window()

    def advance_day(self) -> None:
        self.limiter.advance_day()

    def set_rate_limits(self, **changes: Any) -> None:
        """Change tokens_per_minute, requests_per_day, window_seconds or day_seconds; None disables."""
        refund = changes.pop("refund_unused", None)
        self.limiter.update(**changes)
        if refund is not None:
            self.configure(refund_unused=bool(refund))

    def configure(self, **changes: Any) -> None:
        """Change any field of ``Options`` (reply, replies, latency, ...) while running."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(Options)}
        if unknown:
            raise ValueError(f"unknown options: {sorted(unknown)}")
        if "replies" in changes:
            changes["replies"] = [ReplyRule.of(rule) for rule in changes["replies"]]
        with self._cond:
            self._options = dataclasses.replace(self._options, **changes)

    @contextlib.contextmanager
    def replying(self, rules: Sequence[Any]) -> Iterator[None]:
        """Answer by `rules` inside the block, then with the replies and latency it had before."""
        saved = self.options
        self.configure(replies=rules)
        try:
            yield
        finally:
            self.configure(replies=saved.replies, latency=saved.latency)

    def reset_records(self) -> None:
        """Forget requests, answers and counters (requests in flight still count as in flight)."""
        with self._cond:
            self._requests.clear()
            self._other_requests.clear()
            self._served.clear()
            self._max_concurrency = self._in_flight
            self._rate_limited = 0
            self._cond.notify_all()

    def reset(self) -> None:
        """reset_records, plus no pending faults, no hold, and fresh quota windows."""
        self.reset_records()
        self.clear_faults()
        self.release()
        self.resume()
        self.configure(pause_after=None)
        self.limiter.reset()

    # -- hooks for the request handlers ---------------------------------------------------------

    def _created(self) -> int:
        return int(time.time())

    def _options_snapshot(self) -> Options:
        with self._cond:
            return dataclasses.replace(self._options)

    def _begin_chat(self, path: str, method: str, body: Any, headers: dict[str, str]) -> tuple[RecordedRequest, int]:
        record = RecordedRequest(path, method, body, headers)
        with self._cond:
            self._requests.append(record)
            self._seq += 1
            self._in_flight += 1
            self._max_concurrency = max(self._max_concurrency, self._in_flight)
            self._cond.notify_all()
            return record, self._seq

    def _finish(self, record: RecordedRequest, status: int, outcome: str) -> None:
        with self._cond:
            record.status, record.outcome = status, outcome
            self._in_flight -= 1
            self._cond.notify_all()

    def _record_other(self, record: RecordedRequest) -> None:
        with self._cond:
            self._other_requests.append(record)
            self._cond.notify_all()

    def _next_fault(self) -> Fault | None:
        with self._cond:
            fault = self._faults.popleft() if self._faults else None
            self._cond.notify_all()
            return fault

    def _count_rate_limited(self) -> None:
        with self._cond:
            self._rate_limited += 1
            self._cond.notify_all()

    def _record_served(self, answer: ServedAnswer) -> None:
        with self._cond:
            self._served.append(answer)
            self._cond.notify_all()


# -- the app --------------------------------------------------------------------------------------


def create_app(fake: FakeUpstream) -> Starlette:
    """The ASGI app of ``fake``: OpenAI routes, /health, and the /_control/ API."""

    async def models(request: Request) -> JSONResponse:
        fake._record_other(RecordedRequest(request.url.path, request.method, None, dict(request.headers), 200, "ok"))
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": fake.model, "object": "model", "created": 0, "owned_by": fake.name}],
            }
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "name": fake.name, "kind": fake.kind})

    async def not_found(request: Request) -> JSONResponse:
        # Recorded so a test can see a client calling a route the fake does not have.
        fake._record_other(RecordedRequest(request.url.path, request.method, None, dict(request.headers), 404, "not_found"))
        body = error_body(fake.kind, f"No route {request.method} {request.url.path}", "invalid_request_error", "not_found")
        return JSONResponse(body, status_code=404)

    async def control_state(request: Request) -> JSONResponse:
        # ?records=0 for counters only
        return JSONResponse(fake.state(records=request.query_params.get("records", "1") not in ("0", "false")))

    async def control_faults(request: Request) -> JSONResponse:
        data = await _json_object(request)
        if data.pop("clear", False):
            fake.clear_faults()
        if "mode" in data:
            fake.inject(data.pop("mode"), int(data.pop("count", 1)), **data)
        return JSONResponse({"pending_faults": [dataclasses.asdict(f) for f in fake.pending_faults]})

    async def control_ratelimit(request: Request) -> JSONResponse:
        data = await _json_object(request)
        advance_window, advance_day = data.pop("advance_window", False), data.pop("advance_day", False)
        fake.set_rate_limits(**data)
        if advance_window:
            fake.advance_window()
        if advance_day:
            fake.advance_day()
        return JSONResponse({"limits": fake.state()["limits"], "windows": fake.windows})

    async def control_options(request: Request) -> JSONResponse:
        fake.configure(**await _json_object(request))
        return JSONResponse(fake.state()["options"])

    async def control_hold(request: Request) -> JSONResponse:
        hold = bool((await _json_object(request)).get("hold", True))
        if hold:
            fake.hold()
        else:
            fake.release()
        return JSONResponse({"held": hold})

    async def control_reset(request: Request) -> JSONResponse:
        fake.reset()
        return JSONResponse({"reset": True})

    any_method = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = [
        Route("/v1/chat/completions", ChatEndpoint(fake), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/_control/state", _control(control_state), methods=["GET"]),
        Route("/_control/faults", _control(control_faults), methods=["POST"]),
        Route("/_control/ratelimit", _control(control_ratelimit), methods=["POST"]),
        Route("/_control/options", _control(control_options), methods=["POST"]),
        Route("/_control/hold", _control(control_hold), methods=["POST"]),
        Route("/_control/reset", _control(control_reset), methods=["POST"]),
        Route("/{path:path}", not_found, methods=any_method),
    ]
    return Starlette(routes=routes)


def _control(
    handler: Callable[[Request], Awaitable[JSONResponse]],
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Answer a bad control request (unknown fault, option or setting) with 400 and the reason."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return wrapped


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    data = json.loads(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


# -- command line ---------------------------------------------------------------------------------


def _rule(text: str) -> ReplyRule:
    match, sep, reply = text.partition("=>")
    if not sep:
        raise argparse.ArgumentTypeError("a reply rule looks like 'SUBSTRING=>REPLY'")
    return ReplyRule(match, reply)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.upstream",
        description="Serve a fake upstream until killed. The first line on stdout is its /v1 URL.",
    )
    parser.add_argument("--kind", choices=sorted(DEFAULT_MODELS), required=True)
    parser.add_argument("--name")
    parser.add_argument("--model")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--reply", help="default reply text")
    parser.add_argument("--rule", type=_rule, action="append", default=[], metavar="SUBSTRING=>REPLY")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--tokens-per-second", type=float)
    parser.add_argument("--tokens-per-minute", type=int)
    parser.add_argument("--requests-per-day", type=int)
    parser.add_argument("--window-seconds", type=float, default=60.0)
    parser.add_argument("--day-seconds", type=float, default=86400.0)
    parser.add_argument("--refund-unused", action="store_true")
    parser.add_argument("--no-stream-usage", dest="stream_usage", action="store_false")
    parser.add_argument("--api-key")
    parser.add_argument("--reasoning", help="be a reasoning model that thinks this text before answering")
    args = parser.parse_args(argv)

    fake = FakeUpstream(
        args.kind,
        args.name,
        args.model,
        reply=args.reply,
        replies=args.rule,
        stream_usage=args.stream_usage,
        latency=args.latency,
        tokens_per_second=args.tokens_per_second,
        tokens_per_minute=args.tokens_per_minute,
        requests_per_day=args.requests_per_day,
        window_seconds=args.window_seconds,
        day_seconds=args.day_seconds,
        refund_unused=args.refund_unused,
        api_key=args.api_key,
        reasoning=args.reasoning,
        port=args.port,
    ).start()
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    print(fake.url, flush=True)
    stopping.wait()
    fake.stop()


if __name__ == "__main__":
    main()
