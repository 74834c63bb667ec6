"""Cerebras-style quotas: tokens per minute reserved up front, requests per day.

Both are fixed windows that open at the first request after the previous one closed, as Cerebras
reports them (``x-ratelimit-reset-*`` counts down from the first request). A request reserves
``prompt_tokens + max completion tokens`` before anything is generated; with the default
``refund_unused=False`` the reservation is spent even if the answer is short, which is what makes a
huge ``max_tokens`` burn the minute budget.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


class FakeClock:
    """A manual clock for tests: ``clock.advance(61)`` instead of waiting a minute."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class WindowStats:
    """What happened in one token window; a benchmark divides spent tokens by the limit."""

    index: int
    started_at: float
    tokens_limit: int | None
    tokens_reserved: int = 0
    tokens_refunded: int = 0
    requests_admitted: int = 0
    requests_rejected: int = 0

    @property
    def tokens_spent(self) -> int:
        return self.tokens_reserved - self.tokens_refunded


@dataclass(frozen=True)
class Admission:
    allowed: bool
    headers: dict[str, str]
    window_index: int = -1  # the token window the reservation was charged to, for refunds
    retry_after: int | None = None  # only when refused
    code: str | None = None  # "token_quota_exceeded" or "request_quota_exceeded"
    message: str | None = None


@dataclass
class _Window:
    started_at: float | None = None  # None: not open; the next request opens it
    used: int = 0


@dataclass
class RateLimiter:
    """Thread-safe: requests are admitted on the server thread, tests advance windows from theirs."""

    tokens_per_minute: int | None = None
    requests_per_day: int | None = None
    window_seconds: float = 60.0
    day_seconds: float = 86400.0
    clock: Clock = time.monotonic
    _minute: _Window = field(default_factory=_Window)
    _day: _Window = field(default_factory=_Window)
    _windows: list[WindowStats] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def enabled(self) -> bool:
        return self.tokens_per_minute is not None or self.requests_per_day is not None

    def admit(self, reservation: int) -> Admission:
        """Reserve ``reservation`` tokens and one request, or refuse like Cerebras does."""
        with self._lock:
            now = self.clock()
            self._roll(now)
            stats = self._windows[-1]
            if self.requests_per_day is not None and self._day.used >= self.requests_per_day:
                stats.requests_rejected += 1
                return self._refusal(
                    now,
                    self._seconds_left(self._day, self.day_seconds, now),
                    "request_quota_exceeded",
                    "Requests per day limit exceeded - too many requests sent.",
                )
            if self.tokens_per_minute is not None and self._minute.used + reservation > self.tokens_per_minute:
                stats.requests_rejected += 1
                return self._refusal(
                    now,
                    self._seconds_left(self._minute, self.window_seconds, now),
                    "token_quota_exceeded",
                    "Tokens per minute limit exceeded - too many tokens processed.",
                )
            self._minute.used += reservation
            self._day.used += 1
            stats.tokens_reserved += reservation
            stats.requests_admitted += 1
            return Admission(True, self._headers(now), window_index=stats.index)

    def refund(self, window_index: int, tokens: int) -> None:
        """Give back unused reserved tokens, if their window is still the current one."""
        with self._lock:
            if tokens <= 0 or not self._windows or self._windows[-1].index != window_index:
                return
            if self._minute.started_at is None:
                return
            tokens = min(tokens, self._minute.used)
            self._minute.used -= tokens
            self._windows[-1].tokens_refunded += tokens

    def headers(self) -> dict[str, str]:
        """The current headers without admitting anything (for answers that skip the quota)."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            return self._headers(now)

    def advance_window(self) -> None:
        """Close the token window now, so the next request gets a fresh minute budget."""
        with self._lock:
            self._minute = _Window()

    def advance_day(self) -> None:
        with self._lock:
            self._day = _Window()

    def reset(self) -> None:
        """Forget all windows and their statistics."""
        with self._lock:
            self._minute, self._day, self._windows = _Window(), _Window(), []

    def update(self, **changes: object) -> None:
        """Change limits or window lengths on the fly (the open windows keep their usage)."""
        allowed = {"tokens_per_minute", "requests_per_day", "window_seconds", "day_seconds"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown rate-limit settings: {sorted(unknown)}")
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def windows(self) -> list[WindowStats]:
        with self._lock:
            return [dataclasses.replace(w) for w in self._windows]

    # -- internals, called with the lock held --------------------------------------------------

    def _expire(self, now: float) -> None:
        for window, length in ((self._minute, self.window_seconds), (self._day, self.day_seconds)):
            if window.started_at is not None and now >= window.started_at + length:
                window.started_at, window.used = None, 0

    def _roll(self, now: float) -> None:
        self._expire(now)
        if self._day.started_at is None:
            self._day.started_at = now
        if self._minute.started_at is None:
            self._minute.started_at = now
            self._windows.append(WindowStats(len(self._windows), now, self.tokens_per_minute))

    @staticmethod
    def _seconds_left(window: _Window, length: float, now: float) -> float:
        if window.started_at is None:
            return length
        return max(window.started_at + length - now, 0.0)

    def _refusal(self, now: float, wait: float, code: str, message: str) -> Admission:
        return Admission(
            False,
            self._headers(now),
            retry_after=max(1, math.ceil(wait)),
            code=code,
            message=message,
        )

    def _headers(self, now: float) -> dict[str, str]:
        # Only the enabled limits are reported; a fake with no limits sends no such headers.
        headers: dict[str, str] = {}
        if self.requests_per_day is not None:
            left = self._seconds_left(self._day, self.day_seconds, now)
            headers["x-ratelimit-limit-requests-day"] = str(self.requests_per_day)
            headers["x-ratelimit-remaining-requests-day"] = str(max(self.requests_per_day - self._day.used, 0))
            headers["x-ratelimit-reset-requests-day"] = f"{left:.2f}"
        if self.tokens_per_minute is not None:
            left = self._seconds_left(self._minute, self.window_seconds, now)
            headers["x-ratelimit-limit-tokens-minute"] = str(self.tokens_per_minute)
            headers["x-ratelimit-remaining-tokens-minute"] = str(max(self.tokens_per_minute - self._minute.used, 0))
            headers["x-ratelimit-reset-tokens-minute"] = f"{left:.2f}"
        return headers
