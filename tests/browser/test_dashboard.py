"""The dashboard in a real browser, in front of a real proxy with fake upstreams.

The page's figures must equal what `/stats` says and follow new requests without a reload; the
master key is typed once, kept in the tab's session, and never shows in the page, a URL or a log;
a wrong key or a client key is refused with a clear message; a proxy that goes away is said so.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from glm_saver.callers import hash_key
from tests.e2e.polling import poll
from tests.e2e.proxy import MASTER_KEY, Proxy
from tests.fakes.upstream import FakeUpstream

DASHBOARD = "/glm-saver/dashboard"
ALICE = "sk-alice-dashboard-test-7777"
SIMPLE = "hello, what is a tuple?"
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"
WAIT_SECONDS = 30.0
WAIT_MS = WAIT_SECONDS * 1000
REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "glm_saver": {
        "budget": {"limit_usd": 1.0, "period": "monthly"},
        "keys": [
            {
                "alias": "alice",
                "key_sha256": hash_key(ALICE),
                "budget": {"limit_usd": 0.0004, "period": "daily", "action": "local", "alert_thresholds": [0.05, 0.5, 1.0]},
            }
        ],
    }
}


@pytest.fixture(scope="module")
def cerebras() -> Iterator[FakeUpstream]:
    """A fake Cerebras that sends its rate-limit headers, so the headroom panel has figures."""
    with FakeUpstream("cerebras", tokens_per_minute=60_000, requests_per_day=14_400) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], cerebras: FakeUpstream) -> Proxy:
    return start_proxy(cerebras=cerebras, **CONFIG)


def ask(proxy: Proxy, text: str, key: str = MASTER_KEY) -> str:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=[{"role": "user", "content": text}], max_tokens=64)
    raw.parse()
    return raw.headers["x-glm-saver-route"]


def stats(proxy: Proxy, key: str = MASTER_KEY) -> httpx.Response:
    return httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {key}"}, timeout=10)


def stats_holding(proxy: Proxy, requests: int) -> dict[str, Any]:
    """/stats once the books and the history both hold `requests` answers (booked after the response)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        current = stats(proxy).json()
        in_history = sum(bucket["requests"] for bucket in current["history"]["series"])
        if current["books"]["totals"]["requests"] >= requests and in_history >= requests:
            return current
        assert time.monotonic() < deadline, f"/stats holds {current['books']['totals']['requests']} requests, not {requests}"
        time.sleep(0.05)


def open_dashboard(browser: Browser, proxy: Proxy, key: str = MASTER_KEY, **context: Any) -> Page:
    page = browser.new_context(**context).new_page()
    page.goto(proxy.url + DASHBOARD)
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")
    return page


def live(page: Page) -> Page:
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    return page


def expected_figures(current: dict[str, Any]) -> dict[str, float | None]:
    """What each figure of the page must show, computed from /stats."""
    totals = current["books"]["totals"]
    room = current["cerebras_headroom"] or {}
    paths = {path: sum(bucket["by_path"].get(path, 0) for bucket in current["history"]["series"]) for path in ("local", "cerebras", "draft")}
    return {
        "spend": totals["cost_usd"],
        "cloud-cost": totals["cloud_cost_usd"],
        "savings": totals["savings_usd"],
        "requests": totals["requests"],
        "acceptance": current["speculative"]["acceptance_rate"],
        "split-local": paths["local"],
        "split-cerebras": paths["cerebras"],
        "split-draft": paths["draft"],
        "tokens-left": room.get("tokens_remaining_minute"),
        "requests-left": room.get("requests_remaining_day"),
        "rate-limited": current["cerebras_429s"],
        "shifts": sum(current["rate_limit_shifts"].values()),
    }


def page_figures(page: Page) -> dict[str, float | None]:
    raw = page.evaluate("Object.fromEntries([...document.querySelectorAll('[data-stat]')].map(e => [e.dataset.stat, e.dataset.value ?? '']))")
    return {name: float(value) if value else None for name, value in raw.items()}


def page_budgets(page: Page) -> dict[str, tuple[float, str]]:
    rows = page.evaluate(
        "[...document.querySelectorAll('[data-budget]')].map(e => [e.dataset.budget, e.dataset.used, e.querySelector('[data-alerts]').dataset.alerts])"
    )
    return {name: (float(used), alerts) for name, used, alerts in rows}


def page_recent(page: Page) -> list[list[str]]:
    return page.evaluate("[...document.querySelectorAll('#recent tr')].map(tr => [...tr.cells].map(td => td.textContent))")


def page_agrees_with_stats(page: Page, proxy: Proxy) -> dict[str, Any]:
    """Poll until the page's figures, budgets and recent decisions equal a fresh /stats; return it."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        current = stats(proxy).json()
        expected, shown = expected_figures(current), page_figures(page)
        budgets = {name: (b["used"], ",".join(f"{t:g}" for t in b["alerts_fired"])) for name, b in current["books"]["budgets"].items()}
        recent = [[d["key"], d["route"], d["reason"], d["answered_by"]] for d in current["recent_decisions"]]
        rows = [[cells[1], cells[2], cells[3], cells[4]] for cells in page_recent(page)]
        if all(shown.get(name) == value for name, value in expected.items()) and page_budgets(page) == budgets and rows == recent:
            return current
        if time.monotonic() > deadline:
            pytest.fail(f"the page shows {shown}, {page_budgets(page)}, {rows}\n/stats says {expected}, {budgets}, {recent}")
        time.sleep(0.1)


def test_the_page_shows_what_stats_says_and_follows_new_requests(browser: Browser, proxy: Proxy) -> None:
    before = stats(proxy).json()["books"]["totals"]["requests"]
    page = live(open_dashboard(browser, proxy))
    assert ask(proxy, SIMPLE) == "local"
    assert ask(proxy, COMPLEX) == "cerebras"
    assert ask(proxy, COMPLEX, key=ALICE) == "cerebras"
    stats_holding(proxy, before + 3)
    first = page_agrees_with_stats(page, proxy)
    totals = first["books"]["totals"]
    assert totals["cost_usd"] > 0 and totals["savings_usd"] > 0
    assert page_figures(page)["split-local"] >= 1 and page_figures(page)["split-cerebras"] >= 2
    assert first["cerebras_headroom"]["requests_remaining_day"] < 14_400  # Cerebras' headers reached the page
    assert first["books"]["budgets"]["key:alice"]["alerts_fired"]  # one Cerebras answer passes 5%
    figures = {name: page.locator(f'[data-budget="{name}"] .label span').text_content() or "" for name in ("global", "key:alice")}
    assert re.fullmatch(r"\$0\.000\d+ of \$0\.0004 · \d+\.\d%", figures["key:alice"]), figures  # a tiny limit keeps its digits
    assert re.fullmatch(r"\$0\.000\d+ of \$1\.00 · 0\.0%", figures["global"]), figures
    rows = page_recent(page)
    assert rows[0][1] == "alice" and rows[0][2] == "cerebras"  # newest first, named by alias
    assert page.locator("#chart-cost canvas").count() == 1 and page.locator("#chart-route canvas").count() == 1

    # New traffic shows up without a reload.
    url = page.url
    assert ask(proxy, COMPLEX) == "cerebras"
    stats_holding(proxy, totals["requests"] + 1)
    second = page_agrees_with_stats(page, proxy)
    assert second["books"]["totals"]["requests"] == totals["requests"] + 1
    assert page_figures(page)["spend"] > totals["cost_usd"]
    assert page.url == url


def test_the_key_is_in_no_page_url_or_log(browser: Browser, proxy: Proxy) -> None:
    page = open_dashboard(browser, proxy)
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    live(page)
    ask(proxy, SIMPLE, key=ALICE)
    page.reload()  # the tab's session keeps the key: no second prompt
    live(page)
    expect(page.locator("#login")).to_be_hidden()
    assert urls and all(MASTER_KEY not in url for url in urls)
    for text in (page.content(), page.url, httpx.get(proxy.url + DASHBOARD).text):
        assert MASTER_KEY not in text and ALICE not in text
    assert page.evaluate("document.cookie") == ""
    logs = proxy.log() + "".join(path.read_text(errors="replace") for path in proxy.directory.glob("glm-saver.log*"))
    assert MASTER_KEY not in logs and ALICE not in logs


def test_a_wrong_key_and_a_client_key_are_refused(browser: Browser, proxy: Proxy) -> None:
    page = open_dashboard(browser, proxy, key="sk-not-the-master-key-000")
    expect(page.locator("#login-error")).to_contain_text("Wrong key", timeout=WAIT_MS)
    expect(page.locator("#board")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept

    page = open_dashboard(browser, proxy, key=ALICE)
    expect(page.locator("#login-error")).to_contain_text("needs the master key", timeout=WAIT_MS)
    expect(page.locator("#board")).to_be_hidden()
    assert stats(proxy, key=ALICE).status_code == 403
    assert stats(proxy, key="sk-not-the-master-key-000").status_code == 401


def test_the_page_needs_no_key_and_loads_nothing_from_elsewhere(browser: Browser, proxy: Proxy) -> None:
    page = browser.new_context().new_page()
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(httpx.URL(request.url).host))
    response = page.goto(proxy.url + DASHBOARD)
    assert response is not None and response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#login")).to_be_visible()
    page.wait_for_function("typeof uPlot === 'function'")
    assert hosts == {"127.0.0.1"}
    assert httpx.get(f"{proxy.url}{DASHBOARD}/__init__.py").status_code == 404


def test_it_says_plainly_when_the_proxy_is_unreachable(browser: Browser, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy()
    page = live(open_dashboard(browser, proxy))
    proxy.stop()
    expect(page.locator("#unreachable")).to_contain_text("The proxy is unreachable", timeout=WAIT_MS)
    expect(page.locator("#status")).to_have_attribute("data-state", "down")
    expect(page.locator("#board")).to_be_visible()  # the last figures stay


@pytest.mark.parametrize(
    ("scheme", "viewport"), [("light", {"width": 1280, "height": 1700}), ("dark", {"width": 390, "height": 1900})], ids=["light-desktop", "dark-phone"]
)
def test_it_fits_a_phone_and_follows_dark_mode(browser: Browser, proxy: Proxy, tmp_path: Path, scheme: str, viewport: dict[str, int]) -> None:
    ask(proxy, SIMPLE)
    page = live(open_dashboard(browser, proxy, color_scheme=scheme, viewport=viewport))
    page.wait_for_selector("#chart-reason canvas")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a {viewport['width']}px window"
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in background.removeprefix("rgb(").removesuffix(")").split(","))
    assert (red + green + blue < 3 * 64) == (scheme == "dark"), background
    shot = tmp_path / f"dashboard-{scheme}.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("GLM_SAVER_SCREENSHOTS"):  # `GLM_SAVER_SCREENSHOTS=1 pytest tests/browser` refreshes docs/
        shutil.copy(shot, REPO / "docs" / shot.name)


MIDDLE = "Write a python function that parses an ISO date string and returns a datetime"
BANDS = [{"group": "local"}, {"group": "cerebras-oss", "threshold": 0.3}, {"group": "cerebras", "threshold": 0.9}]


def page_tiers(page: Page) -> list[tuple[str, int, float]]:
    rows = page.evaluate("[...document.querySelectorAll('#tiers tr')].map(tr => [tr.dataset.tier, tr.dataset.requests, tr.dataset.cost])")
    return [(name, int(requests), float(cost)) for name, requests, cost in rows]


def test_two_tiers_show_no_tier_table(browser: Browser, proxy: Proxy) -> None:
    page = live(open_dashboard(browser, proxy))
    expect(page.locator("#tiers-card")).to_be_hidden()
    assert "tiers" not in stats(proxy).json()


@pytest.fixture(scope="module")
def ladder(start_proxy: Callable[..., Proxy], cerebras: FakeUpstream) -> Proxy:
    """Three tiers that have answered one simple ask, two middle ones and a complex one, each its tier."""
    proxy = start_proxy(cerebras=cerebras, tiers=True, glm_saver={"tiers": BANDS})
    assert [ask(proxy, text) for text in (SIMPLE, MIDDLE, MIDDLE, COMPLEX)] == ["local", "cerebras-oss", "cerebras-oss", "cerebras"]
    stats_holding(proxy, 4)
    return proxy


def test_three_tiers_show_a_row_per_tier_as_stats_counts_them(browser: Browser, ladder: Proxy) -> None:
    page = live(open_dashboard(browser, ladder))
    expect(page.locator("#tiers-card")).to_be_visible(timeout=WAIT_MS)
    deadline = time.monotonic() + WAIT_SECONDS
    while (shown := page_tiers(page)) != (expected := [(t["name"], t["requests"], t["cost_usd"]) for t in stats(ladder).json()["tiers"]]):
        assert time.monotonic() < deadline, f"the page shows {shown}, /stats says {expected}"
        time.sleep(0.1)
    assert [(name, requests) for name, requests, _ in shown] == [("local", 1), ("cerebras-oss", 2), ("cerebras", 1)]
    assert shown[1][2] > 0 and shown[0][2] == 0
    # Who answered: each tier on its own, as the history counts them.
    paths = {
        path: sum(bucket["by_path"].get(path, 0) for bucket in stats(ladder).json()["history"]["series"]) for path in ("local", "cerebras-oss", "cerebras")
    }
    assert paths == {"local": 1, "cerebras-oss": 2, "cerebras": 1}
    split = {name: value for name, value in page_figures(page).items() if name.startswith("split-")}
    assert split == {"split-local": 1, "split-cerebras-oss": 2, "split-cerebras": 1, "split-draft": 0}
    labels = page.evaluate("[...document.querySelectorAll('#split-facts dt')].map(dt => dt.textContent)")
    assert labels == ["Local model", "cerebras-oss", "cerebras", "Local draft (cascade)"]
    assert page.locator("#split span").count() == 4


# The headroom card's figures per paid tier (named `<figure>-<tier>`) and the /stats field each shows.
TIER_HEADROOM = {"tokens-left": "tokens_remaining_minute", "requests-left": "requests_remaining_day"}


def test_three_tiers_show_each_paid_tiers_headroom_as_stats_has_it(browser: Browser, ladder: Proxy) -> None:
    page = live(open_dashboard(browser, ladder))

    def agrees() -> dict[str, float | None] | None:
        paid = stats(ladder).json()["tiers"][1:]
        expected = {f"{figure}-{tier['name']}": tier["headroom"][field] for tier in paid for figure, field in TIER_HEADROOM.items()}
        shown = page_figures(page)
        return expected if all(shown.get(name) == value for name, value in expected.items()) else None

    figures = poll(agrees, "each paid tier's headroom on the page as /stats has it", WAIT_SECONDS)
    assert set(figures) == {f"{figure}-{tier}" for figure in TIER_HEADROOM for tier in ("cerebras-oss", "cerebras")}
    assert all(value is not None for value in figures.values())  # each tier's own answers told its limits
    assert figures["requests-left-cerebras-oss"] < 14_400 and figures["requests-left-cerebras"] < 14_400
    assert page.locator(".tier-headroom h3").all_text_contents() == ["cerebras-oss", "cerebras"]
    assert "tokens-left" not in page_figures(page)  # not the strongest tier's alone, unnamed
