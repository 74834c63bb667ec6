"""Cerebras rate-limit headroom: may this request go to Cerebras now without earning a 429?

Cerebras reports its budget on every answer (`x-ratelimit-remaining-tokens-minute`, `-requests-day`,
resets as float seconds) and reserves input + max completion tokens per request up front. A header
is only a snapshot; between answers we add what our own requests in flight have reserved. A 429
marks Cerebras exhausted until its reset. Everything here is a pure function of a `Quota` and the
clock, so one proxy (memory) and several (Redis) share exactly the same rules (see store.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from glm_saver.books.store import Store
from glm_saver.settings import STRONGEST_TIER, RateLimitSettings

# Two header readings whose reset times differ by less than this belong to the same window.
_SAME_WINDOW_SLACK = 1.0


class Quota(BaseModel):
    """What is known about one Cerebras budget. Times are wall-clock epoch seconds (shared via Redis)."""

    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_at: float | None = None
    previous_reset_at: float | None = None  # reset of the minute window before this one
    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_at: float | None = None
    reserved_tokens: int = 0  # our requests in flight in the current minute window
    reserved_requests: int = 0  # our requests in flight (count against the day)
    window: int = 0  # bumped when the minute window turns over; reservations carry it
    exhausted_until: float = 0.0  # after a 429: no request before this
    probed: bool = False  # an answer has come back, so the limits (or their absence) are known
    rate_limited: int = 0  # 429s seen


class Reservation(BaseModel):
    tokens: int
    window: int
    key: str | None = None  # whose quota (a paid tier's group); None: the headroom's own


class HeaderReading(BaseModel):
    """Cerebras' rate-limit headers of one answer (resets as seconds from now)."""

    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset: float | None = None
    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset: float | None = None
    retry_after: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None) -> HeaderReading:
        lowered = {str(name).lower().removeprefix("llm_provider-"): value for name, value in (headers or {}).items()}

        def number(name: str) -> float | None:
            try:
                value = float(lowered[name])
            except (KeyError, TypeError, ValueError):
                return None
            return value if math.isfinite(value) and value >= 0 else None

        def whole(name: str) -> int | None:
            value = number(name)
            return int(value) if value is not None else None

        return cls(
            tokens_limit=whole("x-ratelimit-limit-tokens-minute"),
            tokens_remaining=whole("x-ratelimit-remaining-tokens-minute"),
            tokens_reset=number("x-ratelimit-reset-tokens-minute"),
            requests_limit=whole("x-ratelimit-limit-requests-day"),
            requests_remaining=whole("x-ratelimit-remaining-requests-day"),
            requests_reset=number("x-ratelimit-reset-requests-day"),
            retry_after=number("retry-after"),
        )


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str = "admitted"  # low-cardinality code
    detail: str = ""
    retry_in: float | None = None  # seconds until Cerebras has room again, when known
    reservation: Reservation | None = None


def rolled(quota: Quota, now: float) -> Quota:
    """The quota after any window whose reset time has passed has turned over."""
    changes: dict[str, Any] = {}
    if quota.tokens_reset_at is not None and now >= quota.tokens_reset_at:
        # Reservations of the old window do not count against the new one.
        changes.update(
            tokens_remaining=quota.tokens_limit, tokens_reset_at=None, previous_reset_at=quota.tokens_reset_at, reserved_tokens=0, window=quota.window + 1
        )
    if quota.requests_reset_at is not None and now >= quota.requests_reset_at:
        changes.update(requests_remaining=quota.requests_limit, requests_reset_at=None)
    return quota.model_copy(update=changes) if changes else quota


def _until(moment: float | None, now: float) -> float | None:
    return None if moment is None else max(0.0, moment - now)


def _refusal(quota: Quota, tokens: int, now: float, settings: RateLimitSettings, model: str) -> Admission | None:
    if quota.exhausted_until > now:
        wait = quota.exhausted_until - now
        return Admission(False, "rate-limit-429", f"{model} answered 429; exhausted for {wait:.1f}s more", wait)
    if quota.requests_remaining is not None and quota.requests_remaining - quota.reserved_requests <= settings.day_requests_reserve:
        left = quota.requests_remaining - quota.reserved_requests
        return Admission(False, "rate-limit-day", f"{left} {model} requests left today", _until(quota.requests_reset_at, now))
    if quota.tokens_remaining is not None:
        margin = math.ceil(settings.safety_margin * (quota.tokens_limit or quota.tokens_remaining))
        free = quota.tokens_remaining - quota.reserved_tokens - margin
        if tokens > free:
            detail = f"{model} has {max(free, 0)} tokens left this minute, the request reserves {tokens}"
            return Admission(False, "rate-limit-tokens", detail, _until(quota.tokens_reset_at, now))
    if not quota.probed and quota.reserved_requests > 0:
        return Admission(False, "rate-limit-probe", f"{model} limits unknown until the first answer returns", None)
    return None


def admit(quota: Quota, tokens: int, now: float, settings: RateLimitSettings, model: str = STRONGEST_TIER) -> tuple[Quota, Admission]:
    """Reserve `tokens` if they fit; the returned quota includes the reservation. `model`: the
    tier whose quota it is, which every refusal's detail names once (its callers add no name)."""
    quota = rolled(quota, now)
    refusal = _refusal(quota, tokens, now, settings, model)
    if refusal is not None:
        return quota, refusal
    reserved = quota.model_copy(update={"reserved_tokens": quota.reserved_tokens + tokens, "reserved_requests": quota.reserved_requests + 1})
    return reserved, Admission(True, reservation=Reservation(tokens=tokens, window=quota.window))


def _merge_tokens(quota: Quota, reading: HeaderReading, now: float) -> dict[str, Any]:
    if reading.tokens_remaining is None or reading.tokens_reset is None:
        return {}
    reset_at = now + reading.tokens_reset
    current = quota.tokens_reset_at
    late = (quota.previous_reset_at is not None and reset_at < quota.previous_reset_at + _SAME_WINDOW_SLACK) or (
        current is not None and reset_at < current - _SAME_WINDOW_SLACK
    )
    if late:  # an answer from a window that is already over says nothing about this one
        return {}
    changes: dict[str, Any] = {
        "tokens_remaining": reading.tokens_remaining,
        "tokens_reset_at": reset_at,
        "tokens_limit": reading.tokens_limit or quota.tokens_limit,
    }
    if current is not None and abs(reset_at - current) < _SAME_WINDOW_SLACK:
        # Answers arrive out of order: within a window the lowest reading is the freshest.
        changes["tokens_remaining"] = min(reading.tokens_remaining, quota.tokens_remaining if quota.tokens_remaining is not None else reading.tokens_remaining)
    elif current is not None:  # a newer window began: our old reservations no longer count
        changes.update(window=quota.window + 1, reserved_tokens=0, previous_reset_at=current)
    return changes


def _merge_requests(quota: Quota, reading: HeaderReading, now: float) -> dict[str, Any]:
    if reading.requests_remaining is None:
        return {}
    remaining = reading.requests_remaining
    if quota.requests_remaining is not None and quota.requests_reset_at is not None:
        remaining = min(remaining, quota.requests_remaining)
    reset_at = now + reading.requests_reset if reading.requests_reset is not None else quota.requests_reset_at
    return {"requests_remaining": remaining, "requests_reset_at": reset_at, "requests_limit": reading.requests_limit or quota.requests_limit}


def observe(
    quota: Quota,
    reading: HeaderReading,
    now: float,
    settings: RateLimitSettings,
    reservation: Reservation | None = None,
    rate_limited: bool = False,
    answered: bool = True,
) -> Quota:
    """Fold one answer (or failure) from Cerebras into the quota and release its reservation.
    A failure that reports no limits (a wrong key's 401) leaves them unknown: the next call is the probe."""
    quota = rolled(quota, now)
    changes: dict[str, Any] = {"probed": quota.probed or answered or reading != HeaderReading()}
    if reservation is not None:
        changes["reserved_requests"] = max(0, quota.reserved_requests - 1)
        if reservation.window == quota.window:
            changes["reserved_tokens"] = max(0, quota.reserved_tokens - reservation.tokens)
    quota = quota.model_copy(update=changes)
    quota = quota.model_copy(update={**_merge_tokens(quota, reading, now), **_merge_requests(quota, reading, now)})
    if rate_limited:
        wait = reading.retry_after or reading.tokens_reset or settings.default_retry_after
        quota = quota.model_copy(update={"exhausted_until": max(quota.exhausted_until, now + wait), "rate_limited": quota.rate_limited + 1})
    return quota


def release(quota: Quota, reservation: Reservation, now: float) -> Quota:
    """Give back a reservation whose request never reached Cerebras (no answer, nothing learned)."""
    quota = rolled(quota, now)
    changes: dict[str, Any] = {"reserved_requests": max(0, quota.reserved_requests - 1)}
    if reservation.window == quota.window:
        changes["reserved_tokens"] = max(0, quota.reserved_tokens - reservation.tokens)
    return quota.model_copy(update=changes)


def resting(quota: Quota, now: float, model: str = STRONGEST_TIER) -> Admission | None:
    """Why the model is known to refuse any request right now (a 429 window, or the day's
    requests spent), else None."""
    quota = rolled(quota, now)
    if quota.exhausted_until > now:
        wait = quota.exhausted_until - now
        return Admission(False, "rate-limit-429", f"{model} answered 429 and rests for {wait:.1f}s more", wait)
    if quota.requests_remaining is not None and quota.requests_remaining <= 0:
        return Admission(False, "rate-limit-day", f"{model} has no requests left today", _until(quota.requests_reset_at, now))
    return None


def describe(quota: Quota, now: float) -> dict[str, Any]:
    """The quota as /stats shows it (seconds until resets rather than epoch times)."""
    quota = rolled(quota, now)
    return {
        "tokens_limit_minute": quota.tokens_limit,
        "tokens_remaining_minute": quota.tokens_remaining,
        "tokens_reset_in": _until(quota.tokens_reset_at, now),
        "requests_limit_day": quota.requests_limit,
        "requests_remaining_day": quota.requests_remaining,
        "requests_reset_in": _until(quota.requests_reset_at, now),
        "reserved_tokens_in_flight": quota.reserved_tokens,
        "requests_in_flight": quota.reserved_requests,
        "exhausted_for": _until(quota.exhausted_until, now) if quota.exhausted_until > now else 0.0,
        "rate_limited_seen": quota.rate_limited,
    }


class CloudHeadroom:
    """The headroom of Cerebras' budgets, kept in a store (memory or Redis) shared by the proxies.
    Cerebras limits each model on its own: every group in `groups` (a paid tier) has its own
    quota; any other group (an entry model, the strongest tier's model when bypassed) counts on `key`."""

    def __init__(self, store: Store[Quota], settings: RateLimitSettings, key: str, clock: Callable[[], float] = time.time, groups: Sequence[str] = ()) -> None:
        self._store = store
        self._settings = settings
        self._key = key
        self._clock = clock
        self._groups = frozenset(groups)

    def key_of(self, group: str | None) -> str:
        return group if group in self._groups else self._key

    def _tier_of(self, key: str) -> str:
        """The tier a quota is named by (as in tier_names): the strongest is `cerebras`, another by its group."""
        return STRONGEST_TIER if key == self._key else key

    async def admit(self, tokens: int, group: str | None = None) -> Admission:
        now, key = self._clock(), self.key_of(group)

        def change(quota: Quota) -> tuple[Quota, Admission]:
            quota, admission = admit(quota, tokens, now, self._settings, self._tier_of(key))
            if admission.reservation is not None:
                admission = replace(admission, reservation=admission.reservation.model_copy(update={"key": key}))
            return quota, admission

        return await self._store.update(key, change)

    async def observe(
        self,
        headers: Mapping[str, Any] | None,
        reservation: Reservation | None = None,
        rate_limited: bool = False,
        received_at: float | None = None,
        group: str | None = None,
        answered: bool = True,
    ) -> Quota:
        """`received_at`: when the headers arrived. A stream is logged when it ends, long after its
        headers were written; their reset times count from their arrival, not from the log event."""
        now = self._clock()
        reading = HeaderReading.from_headers(headers)
        anchor = min(received_at, now) if received_at is not None else now

        def change(quota: Quota) -> tuple[Quota, Quota]:
            updated = observe(rolled(quota, now), reading, anchor, self._settings, reservation, rate_limited, answered)
            return updated, updated

        return await self._store.update(self.key_of(group), change)

    async def release(self, reservation: Reservation) -> None:
        now = self._clock()
        await self._store.update(reservation.key or self._key, lambda quota: (release(quota, reservation, now), None))

    async def resting(self, group: str | None = None) -> Admission | None:
        key = self.key_of(group)
        return resting(await self._store.read(key), self._clock(), self._tier_of(key))

    async def describe(self, group: str | None = None) -> dict[str, Any]:
        return describe(await self._store.read(self.key_of(group)), self._clock())
