"""Three tiers end to end: local, a cheap Cerebras model and the strong one, each its own fake with
its own rate limits, behind a real proxy with the shipped three-tier config.

The score picks the tier by bands; a tier without headroom hands the request to the nearest tier
that can take it (a cheaper one when the prompt fits its window, else a stronger one the budget
allows), never to a tier whose window is too small; a failing tier falls back to its neighbours;
the books and /stats count each tier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import CLOUD_WINDOW, LOCAL_WINDOW
from tests.e2e.polling import poll
from tests.e2e.proxy import MASTER_KEY, Proxy, metric, proxy_config, run_proxy_until_exit
from tests.fakes.answers import ReplyRule
from tests.fakes.upstream import FakeUpstream

SIMPLE = "hello, what is a tuple?"  # scores far below 0.3
MIDDLE = "Write a python function that parses an ISO date string and returns a datetime"  # about 0.5
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"  # above 0.9
BANDS = [{"group": "local"}, {"group": "cerebras-oss", "threshold": 0.3}, {"group": "cerebras", "threshold": 0.9}]
OSS_WINDOW = 16384
BIG = "Fix the typo. " + "lorem ipsum dolor sit amet " * 1700  # ~10K tokens: over local's window, inside the cheap tier's
HUGE = "Fix the typo. " + "lorem ipsum dolor sit amet " * 3400  # ~20K tokens: only the strong tier's window takes it
# $ per token, from Cerebras' price list (the shipped config's model_info).
OSS_PRICES = (0.35e-6, 0.75e-6)
STRONG_PRICES = (2.25e-6, 2.75e-6)
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
WAIT = 30.0


def ladder_config(local: FakeUpstream, oss: FakeUpstream, **glm_saver: Any) -> dict[str, Any]:
    """The shipped three-tier config, each tier at its own fake (the strong one via CEREBRAS_API_BASE)."""
    config = proxy_config(local.url, local_window=LOCAL_WINDOW, cloud_window=CLOUD_WINDOW, tiers=True)
    config["glm_saver"].update(tiers=BANDS, **glm_saver)
    for entry in config["model_list"]:
        if entry["model_name"] == "cerebras-oss":
            entry["litellm_params"]["api_base"] = oss.url
            entry["model_info"]["max_input_tokens"] = OSS_WINDOW
    return config


def cheap_fake(**limits: Any) -> FakeUpstream:
    return FakeUpstream("cerebras", name="cerebras-oss", model="gpt-oss-120b", **limits)


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(local: FakeUpstream, oss: FakeUpstream, strong: FakeUpstream, **glm_saver: Any) -> Proxy:
        proxy = Proxy(directory=Path(tmp_path_factory.mktemp("tiers")), cerebras_url=strong.url)
        started.append(proxy)
        return proxy.start(ladder_config(local, oss, **glm_saver))

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def oss() -> Iterator[FakeUpstream]:
    with cheap_fake() as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def _fresh_cheap_tier(request: pytest.FixtureRequest) -> None:
    if "oss" in request.fixturenames:
        upstream: FakeUpstream = request.getfixturevalue("oss")
        if not upstream.running:
            upstream.start()
        upstream.reset()


@pytest.fixture(scope="module")
def ladder(launch: Callable[..., Proxy], local_upstream: FakeUpstream, oss: FakeUpstream, cerebras_upstream: FakeUpstream) -> Proxy:
    """Unlimited fakes; a global budget so the books show what every paid tier spent."""
    return launch(local_upstream, oss, cerebras_upstream, budget={"limit_usd": 100, "action": "local"})


def chat(proxy: Proxy, text: str, *, tier: str | None = None, stream: bool = False, **params: Any) -> tuple[int, str, str, str]:
    """One ask; returns status, route header, reason header and the answer text."""
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)
    headers = {"x-glm-saver-route": tier} if tier else None
    raw = client.chat.completions.with_raw_response.create(
        model="glm-saver", messages=[{"role": "user", "content": text}], stream=stream, extra_headers=headers, **params
    )
    parsed = raw.parse()
    answer = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) if stream else parsed.choices[0].message.content
    return raw.status_code, raw.headers.get("x-glm-saver-route", ""), raw.headers.get("x-glm-saver-reason", ""), answer


def stats(proxy: Proxy) -> dict[str, Any]:
    return httpx.get(f"{proxy.url}/stats", headers=ADMIN, timeout=10).json()


def tier_stats(proxy: Proxy) -> dict[str, dict[str, Any]]:
    return {tier["name"]: tier for tier in stats(proxy)["tiers"]}


def settled(proxy: Proxy) -> None:
    """Every answer so far has come back into the headroom (its reservation released)."""
    poll(lambda: all((t["headroom"] or {}).get("requests_in_flight", 0) == 0 for t in tier_stats(proxy).values()), "reservations released", WAIT)


def resting(proxy: Proxy, tier: str) -> None:
    poll(lambda: tier_stats(proxy)[tier]["headroom"]["exhausted_for"] > 0, f"{tier} resting after its 429", WAIT)


# ---- the score's bands ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_each_band_is_answered_by_its_own_tier(
    ladder: Proxy, local_upstream: FakeUpstream, oss: FakeUpstream, cerebras_upstream: FakeUpstream, stream: bool
) -> None:
    answers = [chat(ladder, text, stream=stream) for text in (SIMPLE, MIDDLE, COMPLEX)]
    assert [(status, route, text) for status, route, _, text in answers] == [
        (200, "local", "Hello from local."),
        (200, "cerebras-oss", "Hello from cerebras-oss."),
        (200, "cerebras", "Hello from cerebras."),
    ]
    assert answers[1][2].startswith("classifier-cerebras-oss: cerebras-oss band [0.30, 0.90)")
    assert answers[2][2].startswith("classifier-complex: cerebras band [0.90, 1)")
    assert (len(local_upstream.requests), len(oss.requests), len(cerebras_upstream.requests)) == (1, 1, 1)
    assert oss.requests[0].body["model"] == "gpt-oss-120b"
    assert "fallbacks" not in oss.requests[0].body  # the plan's fallbacks are LiteLLM's, not the model's


@pytest.mark.parametrize("tier", ["local", "cerebras-oss", "cerebras"])
def test_the_override_header_names_any_tier(ladder: Proxy, tier: str) -> None:
    for text in (SIMPLE, COMPLEX):
        status, route, reason, answer = chat(ladder, text, tier=tier)
        assert (status, route, reason, answer) == (200, tier, f"override: header asked for {tier}", f"Hello from {tier}.")


def test_an_unknown_tier_in_the_override_header_is_a_400_listing_the_tiers(ladder: Proxy, oss: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        chat(ladder, SIMPLE, tier="cerebras-mini")
    assert "must be one of: local, cerebras-oss, cerebras" in str(raised.value)
    assert oss.requests == []


# ---- books and /stats per tier -------------------------------------------------------------------


def test_books_and_stats_count_each_tier_and_the_budget_counts_every_paid_one(launch: Callable[..., Proxy], local_upstream: FakeUpstream) -> None:
    with FakeUpstream("cerebras") as strong, cheap_fake() as oss:
        proxy = launch(local_upstream, oss, strong, budget={"limit_usd": 100, "action": "local"})
        for text in (SIMPLE, SIMPLE, MIDDLE, MIDDLE, MIDDLE, COMPLEX):
            assert chat(proxy, text)[0] == 200
        sent = {"local": 2, "cerebras-oss": 3, "cerebras": 1}
        tiers = poll(
            lambda: (now := tier_stats(proxy)) and all(now[name]["requests"] == n for name, n in sent.items()) and now,
            "every answer booked under its tier",
            WAIT,
        )
        assert [(t["name"], t["group"]) for t in stats(proxy)["tiers"]] == [("local", "local"), ("cerebras-oss", "cerebras-oss"), ("cerebras", "cerebras")]
        series = poll(lambda: (now := stats(proxy)["history"]["series"]) and sum(b["requests"] for b in now) == 6 and now, "every answer in the history", WAIT)
        assert {path: sum(b["by_path"].get(path, 0) for b in series) for path in sent} == sent  # the history's split counts each tier
        assert [t["request_share"] for t in tiers.values()] == [round(n / 6, 4) for n in sent.values()]
        tokens = sum(t["total_tokens"] for t in tiers.values())
        assert [t["token_share"] for t in tiers.values()] == [round(t["total_tokens"] / tokens, 4) for t in tiers.values()]

        oss_served = [(a.prompt_tokens, a.completion_tokens) for a in oss.served]
        strong_served = [(a.prompt_tokens, a.completion_tokens) for a in strong.served]
        oss_cost = sum(p * OSS_PRICES[0] + c * OSS_PRICES[1] for p, c in oss_served)
        strong_cost = sum(p * STRONG_PRICES[0] + c * STRONG_PRICES[1] for p, c in strong_served)
        oss_as_strong = sum(p * STRONG_PRICES[0] + c * STRONG_PRICES[1] for p, c in oss_served)
        assert (len(oss_served), len(strong_served)) == (3, 1)
        assert tiers["local"]["cost_usd"] == 0
        assert tiers["cerebras-oss"]["cost_usd"] == pytest.approx(oss_cost, rel=1e-9)
        assert tiers["cerebras-oss"]["savings_usd"] == pytest.approx(oss_as_strong - oss_cost, rel=1e-9)  # against always-strongest
        assert tiers["cerebras"]["cost_usd"] == pytest.approx(strong_cost, rel=1e-9)
        assert tiers["cerebras"]["savings_usd"] == pytest.approx(0.0, abs=1e-12)
        poll(
            lambda: stats(proxy)["books"]["budgets"]["global"]["spent_usd"] == pytest.approx(oss_cost + strong_cost, rel=1e-9),
            "the budget charged for both paid tiers",
            WAIT,
        )


def test_health_lists_the_tiers_with_their_windows_and_prices(ladder: Proxy) -> None:
    tiers = httpx.get(f"{ladder.url}/health", timeout=10).json()["tiers"]
    assert [(t["name"], t["context_window"], t["price_per_m"]) for t in tiers] == [
        ("local", LOCAL_WINDOW, {"input": 0.0, "output": 0.0}),
        ("cerebras-oss", OSS_WINDOW, {"input": 0.35, "output": 0.75}),
        ("cerebras", CLOUD_WINDOW, {"input": 2.25, "output": 2.75}),
    ]
    assert [t["from_score"] for t in tiers] == [None, 0.3, 0.9]


# ---- a tier failing ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "503"])
def test_a_failing_cheap_tier_is_answered_by_the_nearest_one(ladder: Proxy, local_upstream: FakeUpstream, oss: FakeUpstream, fault: str) -> None:
    oss.inject(fault)
    status, route, reason, text = chat(ladder, MIDDLE)
    assert (status, route, text) == (200, "local", "Hello from local.")
    assert reason.startswith("fallback: cerebras-oss failed")
    assert [r.status for r in oss.requests] == [int(fault)]


def test_a_failing_strong_tier_falls_back_to_the_cheap_one_through_the_gate(
    ladder: Proxy, oss: FakeUpstream, cerebras_upstream: FakeUpstream, local_upstream: FakeUpstream
) -> None:
    cerebras_upstream.inject("503")
    status, route, reason, text = chat(ladder, COMPLEX, max_tokens=100_000)
    assert (status, route, text) == (200, "cerebras-oss", "Hello from cerebras-oss.")
    assert reason.startswith("fallback: cerebras failed")
    assert oss.requests[0].body["max_tokens"] == 16384  # the fallback hop holds its own ticket: clamped
    assert local_upstream.requests == []


def test_an_unreachable_cheap_tier_is_answered_by_local(ladder: Proxy, local_upstream: FakeUpstream, oss: FakeUpstream) -> None:
    oss.stop()
    status, route, reason, text = chat(ladder, MIDDLE)
    assert (status, route, text) == (200, "local", "Hello from local.")
    assert reason.startswith("fallback: cerebras-oss failed")


# ---- headroom: each Cerebras model its own limits ------------------------------------------------


def test_a_strong_tier_out_of_tokens_moves_its_asks_down_to_the_cheap_tier(launch: Callable[..., Proxy], local_upstream: FakeUpstream) -> None:
    with FakeUpstream("cerebras", tokens_per_minute=40_000, window_seconds=600) as strong, cheap_fake(tokens_per_minute=100_000, window_seconds=600) as oss:
        proxy = launch(local_upstream, oss, strong)
        routes = []
        for _ in range(3):  # each reserves ~16.4K: two fit 40K less the safety margin, a third does not
            routes.append(chat(proxy, COMPLEX, max_tokens=16384)[1:3])
            settled(proxy)
        assert [route for route, _ in routes] == ["cerebras", "cerebras", "cerebras-oss"]
        assert routes[2][1].startswith("rate-limit-tokens: cerebras has ")  # the tier that had no room, named once
        assert strong.rate_limited == 0 and len(strong.requests) == 2  # the move came before any 429
        assert oss.requests[0].body["max_tokens"] == 16384
        headroom = {name: tier["headroom"] for name, tier in tier_stats(proxy).items()}
        assert headroom["local"] is None
        assert (headroom["cerebras-oss"]["tokens_limit_minute"], headroom["cerebras"]["tokens_limit_minute"]) == (100_000, 40_000)
        assert stats(proxy)["rate_limit_shifts"]["rate-limit-tokens"] == 1
        # Prometheus: one series per paid tier, each its own model's limit.
        limits = {group: metric(proxy, f'glm_saver_cerebras_tokens_limit_minute{{group="{group}"}}') for group in ("cerebras-oss", "cerebras")}
        assert limits == {"cerebras-oss": 100_000, "cerebras": 40_000}
        remaining = metric(proxy, 'glm_saver_cerebras_tokens_remaining_minute{group="cerebras-oss"}')
        assert remaining == headroom["cerebras-oss"]["tokens_remaining_minute"] < 100_000


def test_a_resting_cheap_tier_moves_asks_down_to_local_and_up_only_when_local_is_too_small(launch: Callable[..., Proxy], local_upstream: FakeUpstream) -> None:
    with FakeUpstream("cerebras") as strong, cheap_fake() as oss:
        proxy = launch(local_upstream, oss, strong)
        oss.inject("429", retry_after=300)
        assert chat(proxy, MIDDLE)[1:3][0] == "local"  # the 429 fell back to local
        resting(proxy, "cerebras-oss")

        status, route, reason, _ = chat(proxy, MIDDLE)
        assert (status, route) == (200, "local") and reason.startswith("rate-limit-429")  # down: the prompt fits local
        status, route, reason, text = chat(proxy, BIG, tier="cerebras-oss", max_tokens=100_000)
        assert (status, route, text) == (200, "cerebras", "Hello from cerebras.")  # up: only the strong tier has room
        assert reason.startswith("rate-limit-429: cerebras-oss answered 429; exhausted for ")  # the tier named once
        assert strong.requests[0].body["max_tokens"] == 16384
        assert len(oss.requests) == 1 and len(local_upstream.requests) == 2


def test_a_429_is_counted_on_the_group_of_the_tier_that_answered_it(launch: Callable[..., Proxy], local_upstream: FakeUpstream) -> None:
    with FakeUpstream("cerebras") as strong, cheap_fake() as oss:
        proxy = launch(local_upstream, oss, strong)
        oss.inject("429", retry_after=300)
        assert chat(proxy, MIDDLE)[1] == "local"
        counted = 'glm_saver_cerebras_rate_limited_total{group="cerebras-oss"}'
        assert poll(lambda: metric(proxy, counted), "the cheap tier's 429 counted", WAIT) == 1
        assert metric(proxy, 'glm_saver_cerebras_rate_limited_total{group="cerebras"}') == 0
        assert strong.requests == []


def test_no_tier_with_a_window_too_small_takes_a_prompt_its_tier_cannot(launch: Callable[..., Proxy], local_upstream: FakeUpstream) -> None:
    with FakeUpstream("cerebras") as strong, cheap_fake() as oss:
        proxy = launch(local_upstream, oss, strong)
        strong.inject("429", retry_after=300)
        assert chat(proxy, COMPLEX)[1] == "cerebras-oss"  # the 429 fell back to the nearest tier
        resting(proxy, "cerebras")
        oss.reset()
        local_upstream.reset()
        with pytest.raises(openai.RateLimitError) as raised:
            chat(proxy, HUGE)
        assert raised.value.response.headers["retry-after"]
        message = raised.value.body["message"]
        assert message.startswith("rate limit reached (cerebras answered 429; exhausted for ") and "does not fit the local model" in message
        assert oss.requests == [] and local_upstream.requests == [] and len(strong.requests) == 1


def test_going_up_a_tier_never_passes_the_budget(launch: Callable[..., Proxy], local_upstream: FakeUpstream) -> None:
    with FakeUpstream("cerebras") as strong, cheap_fake() as oss:
        # $0.05: the cheap tier's worst case for BIG (~$0.016) fits, the strong one's (~$0.068) does not.
        proxy = launch(local_upstream, oss, strong, budget={"limit_usd": 0.05, "action": "local"})
        oss.inject("429", retry_after=300)
        assert chat(proxy, MIDDLE)[1] == "local"
        resting(proxy, "cerebras-oss")
        with pytest.raises(openai.RateLimitError) as raised:
            chat(proxy, BIG, tier="cerebras-oss", max_tokens=16384)
        assert "budget" in str(raised.value)
        assert strong.requests == []


def test_a_budget_too_small_for_the_strong_tier_is_answered_by_the_cheap_one_without_alerts(launch: Callable[..., Proxy], local_upstream: FakeUpstream) -> None:
    with FakeUpstream("cerebras") as strong, cheap_fake() as oss:
        # $0.02: at max_tokens 16384 the strong tier's worst case (~$0.045) does not fit, the cheap one's (~$0.012) does.
        proxy = launch(local_upstream, oss, strong, budget={"limit_usd": 0.02, "action": "local"})
        status, route, reason, _ = chat(proxy, MIDDLE, tier="cerebras", max_tokens=16384)
        assert (status, route) == (200, "cerebras-oss")
        assert "budget" in reason
        assert strong.requests == [] and len(oss.requests) == 1
        settled(proxy)
        assert stats(proxy)["books"]["budgets"]["global"]["alerts_fired"] == []  # not full: the cheap tier took it
        # HUGE fits no window but the strong tier's, whose worst case the budget cannot take: now it is full.
        with pytest.raises(openai.RateLimitError) as raised:
            chat(proxy, HUGE, max_tokens=16384)
        assert "budget" in str(raised.value)
        assert strong.requests == [] and len(oss.requests) == 1
        assert stats(proxy)["books"]["budgets"]["global"]["alerts_fired"] == [0.5, 0.8, 1.0]


# ---- the cascade with the cheap tier -------------------------------------------------------------

UNSURE = "Which is the largest planet?"
UNSURE_DRAFT = "Jupiter is the largest planet."
REFUSED = "Prove that the halting problem is undecidable"


def test_the_cheap_tier_verifies_drafts_and_answers_for_rejected_ones_when_configured(launch: Callable[..., Proxy], local_upstream: FakeUpstream) -> None:
    saved = local_upstream.options
    # An unsure right draft (the verify band), and a refusal (a rejected draft).
    local_upstream.configure(
        replies=[ReplyRule("largest planet", UNSURE_DRAFT, -0.9), ReplyRule("halting problem", "I'm sorry, but I can't help with that.", -0.05)]
    )
    try:
        with FakeUpstream("cerebras") as strong, cheap_fake(replies=[ReplyRule(UNSURE_DRAFT, "ACCEPT")]) as oss:
            cheap = {"verify_group": "cerebras-oss", "answer_group": "cerebras-oss"}
            proxy = launch(local_upstream, oss, strong, strategy="speculative_decoding", speculative=cheap)
            status, route, reason, text = chat(proxy, UNSURE, max_tokens=100_000)
            assert (status, route, text) == (200, "draft-verified", UNSURE_DRAFT), reason
            assert reason.startswith("verified: cerebras-oss accepted the draft")  # the tier that verified, by name
            (verify,) = oss.requests
            assert "<draft>" in str(verify.body["messages"][-1]["content"]) and verify.body["max_tokens"] <= 16384

            status, route, reason, text = chat(proxy, REFUSED)
            assert (status, route, text) == (200, "cloud-cerebras-oss", "Hello from cerebras-oss."), reason  # names the tier that answered
            assert reason.startswith("low-confidence") and reason.endswith("cerebras-oss answers")
            assert strong.requests == []
            # Booked under the route the client was told, and counted as the cascade's.
            cascade_rows = ("draft-verified", "cloud-cerebras-oss", "draft", "verify")
            books = poll(
                lambda: (now := stats(proxy))["books"]["by_route"].get("cloud-cerebras-oss", {}).get("requests") == 1 and now, "the cloud answer booked", WAIT
            )
            assert books["speculative"]["outcomes"] == {"draft-verified": 1, "cloud-cerebras-oss": 1}
            rows = books["books"]["by_route"]
            assert rows["cloud-cerebras-oss"]["savings_usd"] > 0  # the cheap tier answered where always-strongest would have
            assert books["speculative"]["cloud_cost_saved"] == pytest.approx(sum(rows[name]["savings_usd"] for name in cascade_rows if name in rows), abs=1e-8)
    finally:
        local_upstream.configure(replies=saved.replies)


# ---- a bad ladder stops the start ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "named"),
    [
        (
            [{"group": "local"}, {"group": "cerebras-oss", "threshold": 0.8}, {"group": "cerebras", "threshold": 0.4}],
            "glm_saver.tiers: Value error, thresholds must rise",
        ),
        (
            [{"group": "local"}, {"group": "cerebras-mini", "threshold": 0.3}, {"group": "cerebras", "threshold": 0.6}],
            "glm_saver.tiers: cerebras-mini not found in model_list",
        ),
    ],
    ids=["falling-thresholds", "unknown-group"],
)
def test_a_bad_ladder_stops_the_proxy_naming_the_key(tmp_path: Path, local_upstream: FakeUpstream, oss: FakeUpstream, tiers: list[Any], named: str) -> None:
    config = ladder_config(local_upstream, oss)
    config["glm_saver"]["tiers"] = tiers
    finished = run_proxy_until_exit(tmp_path, config, oss.url)
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0 and named in output, output[-2000:]
    assert "The proxy did not start." in output
