"""Records and small synchronisation pieces shared by the fake's server thread and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

# Modes that replace the answer with an error; the others spoil an otherwise normal answer.
ERROR_FAULTS = ("400", "401", "403", "429", "500", "503", "not_json")
STREAM_FAULTS = ("reset_midstream", "no_done", "slow_first_byte")
FAULT_MODES = ERROR_FAULTS + STREAM_FAULTS
# Parameters each mode understands; anything else is a typo and is refused.
FAULT_PARAMS: dict[str, set[str]] = {
    "400": set(),
    "401": set(),
    "403": set(),
    "429": {"retry_after"},
    "500": set(),
    "503": set(),
    "not_json": set(),
    "reset_midstream": {"after_chunks"},
    "no_done": set(),
    "slow_first_byte": {"delay"},
}


@dataclass(frozen=True)
class Fault:
    mode: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def checked(cls, mode: str | int, params: dict[str, Any]) -> Fault:
        mode = str(mode)
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(FAULT_MODES)}")
        unknown = set(params) - FAULT_PARAMS[mode]
        if unknown:
            raise ValueError(f"fault {mode!r} takes no parameter(s) {sorted(unknown)}")
        return cls(mode, dict(params))


@dataclass
class RecordedRequest:
    """One request as the fake saw it. ``status`` is None while it is still being answered."""

    path: str
    method: str
    body: Any  # the parsed JSON body, or None if it was not JSON
    headers: dict[str, str]  # lower-cased names
    status: int | None = None
    # "pending", "ok", "rate_limited", "fault:<mode>", "client_disconnected" (the client hung up,
    # or ``stop`` dropped the connection), "bad_request", "unauthorized", "not_found".
    outcome: str = "pending"


@dataclass(frozen=True)
class ServedAnswer:
    """A chat answer that was delivered completely."""

    model: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int  # of all choices together, as in ``usage``
    finish_reason: str
    content: str | None  # None for a tool call
    tool_call: str | None  # the called tool's name
    reserved: int  # tokens the quota reserved for it (prompt + max completion)
    reasoning_tokens: int = 0  # of completion_tokens, how many went on reasoning


class Gate:
    """Holds answers back while closed (``FakeUpstream.hold``) so tests can see requests in flight.

    Closed and opened from any thread; waited on from the server's event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def open(self) -> None:
        with self._lock:
            self._closed = False
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            # RuntimeError: the server stopped meanwhile, its loop is closed and nothing waits.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    def waiter(self) -> asyncio.Future[None] | None:
        """A future that resolves when the gate opens, or None if it is open."""
        with self._lock:
            if not self._closed:
                return None
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
            return future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
