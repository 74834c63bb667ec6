"""Headroom rules: reservations up front, readings from headers, 429 rests, window turnover."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from glm_saver.books.headroom import CloudHeadroom, HeaderReading, Quota, admit, observe, resting, rolled
from glm_saver.books.store import MemoryStore
from glm_saver.settings import RateLimitSettings

SETTINGS = RateLimitSettings(safety_margin=0.0)
NOW = 1_000_000.0


def reading(remaining: int, reset: float = 30.0, limit: int = 60_000, day_left: int | None = None, retry_after: float | None = None) -> HeaderReading:
    headers = {
        "x-ratelimit-limit-tokens-minute": str(limit),
        "x-ratelimit-remaining-tokens-minute": str(remaining),
        "x-ratelimit-reset-tokens-minute": f"{reset:.2f}",
    }
    if day_left is not None:
        headers |= {"x-ratelimit-limit-requests-day": "100", "x-ratelimit-remaining-requests-day": str(day_left), "x-ratelimit-reset-requests-day": "33011.382"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return HeaderReading.from_headers(headers)


def known(remaining: int, **kwargs: object) -> Quota:
    return observe(Quota(), reading(remaining, **kwargs), NOW, SETTINGS)


def test_headers_are_parsed_as_floats_with_or_without_litellm_prefix() -> None:
    parsed = HeaderReading.from_headers(
        {"llm_provider-x-ratelimit-reset-tokens-minute": "11.38", "X-RateLimit-Remaining-Tokens-Minute": "500", "retry-after": "bogus"}
    )
    assert (parsed.tokens_reset, parsed.tokens_remaining, parsed.retry_after) == (11.38, 500, None)


def test_unknown_limits_admit_one_probe_at_a_time() -> None:
    quota, first = admit(Quota(), 1000, NOW, SETTINGS)
    _, second = admit(quota, 1000, NOW, SETTINGS)
    assert first.admitted and not second.admitted and second.reason == "rate-limit-probe"


def test_a_failure_that_reports_no_limits_leaves_the_next_call_the_probe() -> None:
    quota, first = admit(Quota(), 1000, NOW, SETTINGS)
    quota = observe(quota, HeaderReading(), NOW, SETTINGS, first.reservation, answered=False)
    quota, probe = admit(quota, 1000, NOW, SETTINGS)
    _, second = admit(quota, 1000, NOW, SETTINGS)
    assert (quota.reserved_requests, probe.admitted, second.reason) == (1, True, "rate-limit-probe")


def test_a_failure_that_reports_limits_makes_them_known() -> None:
    quota, first = admit(Quota(), 1000, NOW, SETTINGS)
    quota = observe(quota, reading(50_000), NOW, SETTINGS, first.reservation, answered=False)
    quota, one = admit(quota, 1000, NOW, SETTINGS)
    _, two = admit(quota, 1000, NOW, SETTINGS)
    assert (one.admitted, two.admitted) == (True, True)


def test_reservations_in_flight_count_against_the_remaining_budget() -> None:
    quota = known(50_000)
    quota, first = admit(quota, 20_000, NOW, SETTINGS)
    quota, second = admit(quota, 20_000, NOW, SETTINGS)
    quota, third = admit(quota, 20_000, NOW, SETTINGS)
    assert (first.admitted, second.admitted, third.admitted) == (True, True, False)
    assert third.reason == "rate-limit-tokens" and third.retry_in == pytest.approx(30.0)


def test_safety_margin_keeps_a_share_of_the_limit_free() -> None:
    quota = known(60_000)
    _, refused = admit(quota, 58_000, NOW, RateLimitSettings(safety_margin=0.05))
    _, taken = admit(quota, 57_000, NOW, RateLimitSettings(safety_margin=0.05))
    assert (refused.admitted, taken.admitted) == (False, True)


def test_an_answer_releases_its_reservation_and_brings_the_fresh_reading() -> None:
    quota, admission = admit(known(50_000), 20_000, NOW, SETTINGS)
    quota = observe(quota, reading(30_000, reset=29.0), NOW + 1, SETTINGS, admission.reservation)
    assert (quota.reserved_tokens, quota.tokens_remaining) == (0, 30_000)


def test_out_of_order_answers_keep_the_lowest_reading_of_the_window() -> None:
    quota = observe(known(20_000, reset=30.0), reading(40_000, reset=29.5), NOW + 0.5, SETTINGS)
    assert quota.tokens_remaining == 20_000


def test_the_budget_returns_when_the_reset_time_passes() -> None:
    quota, admission = admit(known(10_000, reset=5.0), 20_000, NOW, SETTINGS)
    assert not admission.admitted
    _, later = admit(quota, 20_000, NOW + 5.0, SETTINGS)
    assert later.admitted


def test_a_late_answer_from_a_finished_window_does_not_shrink_the_new_one() -> None:
    quota = rolled(known(0, reset=5.0), NOW + 6)
    # A stream whose headers arrived at NOW + 4.9 (0.1 s before the reset) is logged after the reset.
    stale = observe(quota, reading(0, reset=0.1), NOW + 4.9, SETTINGS)
    assert stale.tokens_remaining == 60_000


def test_429_rests_cerebras_for_retry_after() -> None:
    quota = observe(known(50_000), reading(0, retry_after=7), NOW, SETTINGS, rate_limited=True)
    _, refused = admit(quota, 10, NOW + 6.9, SETTINGS)
    assert (refused.admitted, refused.reason, quota.rate_limited) == (False, "rate-limit-429", 1)
    assert resting(quota, NOW + 6.9) is not None and resting(quota, NOW + 7.1) is None


def test_429_without_headers_rests_for_the_default() -> None:
    quota = observe(Quota(), HeaderReading(), NOW, RateLimitSettings(default_retry_after=42), rate_limited=True)
    assert quota.exhausted_until == NOW + 42


def test_day_requests_nearly_spent_go_local_until_the_day_resets() -> None:
    quota = known(60_000, day_left=3)
    settings = RateLimitSettings(safety_margin=0.0, day_requests_reserve=2)
    quota, first = admit(quota, 10, NOW, settings)
    _, second = admit(quota, 10, NOW, settings)
    assert first.admitted and not second.admitted and second.reason == "rate-limit-day"
    assert second.retry_in == pytest.approx(33011.382)


class YieldingStore:
    """A store like RedisStore (WATCH / MULTI): each update reads, yields to the event loop, and
    writes only if nobody wrote in between, else it retries. Concurrent admissions really
    interleave here, unlike on MemoryStore, whose update never awaits."""

    def __init__(self) -> None:
        self.values: dict[str, Quota] = {}
        self.versions: dict[str, int] = {}
        self.conflicts = 0

    async def read(self, key: str) -> Quota:
        await asyncio.sleep(0)
        return self.values.get(key, Quota())

    async def update(self, key: str, change: Callable[[Quota], tuple[Quota, Any]]) -> Any:
        while True:
            version = self.versions.get(key, 0)
            current = self.values.get(key, Quota())
            await asyncio.sleep(0)  # another admission runs here
            value, result = change(current)
            await asyncio.sleep(0)
            if self.versions.get(key, 0) != version:
                self.conflicts += 1
                continue
            self.values[key], self.versions[key] = value, version + 1
            return result


@pytest.mark.parametrize("store_kind", ["memory", "yielding"])
def test_concurrent_admissions_never_over_admit(store_kind: str) -> None:
    def clock() -> float:
        return NOW

    store = MemoryStore(Quota) if store_kind == "memory" else YieldingStore()
    headroom = CloudHeadroom(store, SETTINGS, "cerebras", clock)

    async def scenario() -> list[bool]:
        await headroom.observe({"x-ratelimit-remaining-tokens-minute": "50000", "x-ratelimit-reset-tokens-minute": "30"})
        admissions = await asyncio.gather(*(headroom.admit(10_000) for _ in range(40)))
        return [a.admitted for a in admissions]

    admitted = asyncio.run(scenario())
    assert sum(admitted) == 5, f"{sum(admitted)} of 40 admitted against room for 5"
    if isinstance(store, YieldingStore):
        assert store.conflicts > 0  # the admissions did run concurrently
        assert store.values["cerebras"].reserved_tokens == 50_000


def test_each_paid_tier_has_its_own_quota_and_entry_models_share_the_strongest() -> None:
    store = MemoryStore(Quota)
    headroom = CloudHeadroom(store, SETTINGS, "cerebras", lambda: NOW, groups=["cerebras-oss", "cerebras"])
    spent = {"x-ratelimit-remaining-tokens-minute": "1000", "x-ratelimit-reset-tokens-minute": "30"}

    async def scenario() -> tuple[bool, bool, bool, int, int]:
        await headroom.observe(spent, group="cerebras")
        strong = await headroom.admit(5_000, "cerebras")
        entry = await headroom.admit(5_000, "glm-saver")  # the entry model is the strongest model when bypassed
        cheap = await headroom.admit(5_000, "cerebras-oss")
        assert cheap.reservation is not None and cheap.reservation.key == "cerebras-oss"
        held = (await store.read("cerebras-oss")).reserved_tokens
        await headroom.release(cheap.reservation)
        return strong.admitted, entry.admitted, cheap.admitted, held, (await store.read("cerebras-oss")).reserved_tokens

    assert asyncio.run(scenario()) == (False, False, True, 5_000, 0)  # released from its own quota


def test_a_refusal_names_the_tier_whose_quota_refused() -> None:
    headroom = CloudHeadroom(MemoryStore(Quota), SETTINGS, "glm", lambda: NOW, groups=["cerebras-oss", "glm"])
    rested = {"retry-after": "60"}

    async def scenario() -> list[str]:
        details = []
        for group in ("cerebras-oss", "glm", "glm-saver"):  # an entry model counts on the strongest's quota
            await headroom.observe(rested, rate_limited=True, group=group)
            details.append((await headroom.admit(10, group)).detail)
        return details

    assert asyncio.run(scenario()) == [
        "cerebras-oss answered 429; exhausted for 60.0s more",
        "cerebras answered 429; exhausted for 60.0s more",  # the strongest tier is `cerebras`, whatever its group
        "cerebras answered 429; exhausted for 60.0s more",
    ]


@pytest.mark.parametrize(
    ("quota", "reason"),
    [
        (known(5_000), "rate-limit-tokens"),
        (known(50_000, day_left=0), "rate-limit-day"),
        (observe(Quota(), reading(50_000, retry_after=60), NOW, SETTINGS, rate_limited=True), "rate-limit-429"),
        (Quota(reserved_requests=1), "rate-limit-probe"),
    ],
    ids=["tokens", "day", "429", "probe"],
)
def test_every_refusal_names_its_tier_once(quota: Quota, reason: str) -> None:
    _, refused = admit(quota, 10_000, NOW, SETTINGS, "cerebras-oss")
    assert refused.reason == reason and refused.detail.count("cerebras-oss") == 1, refused.detail
