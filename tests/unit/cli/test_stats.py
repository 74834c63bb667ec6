"""`glm-saver stats`: the /stats snapshot as tables, whatever sections it has."""

from __future__ import annotations

import socket

from glm_saver.cli import main
from glm_saver.cli.stats import StatsError, fetch, fmt, render, table


def _tally(requests: int, prompt: int, completion: int, cost: float, cloud: float) -> dict:
    return {
        "requests": requests,
        "calls": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": cost,
        "cloud_cost_usd": cloud,
        "savings_usd": cloud - cost,
    }


SNAPSHOT = {
    "strategy": "smart_routing",
    "cerebras_configured": True,
    "requests_routed": 3,
    "by_route": {"local": 2, "cerebras": 1},
    "by_reason": {"classifier-simple": 2, "classifier-complex": 1},
    "fallbacks": {},
    "books": {
        "totals": _tally(3, 1200, 345, 0.00123, 0.0042),
        "by_model": {"local": _tally(2, 800, 300, 0.0, 0.00297), "cerebras": _tally(1, 400, 45, 0.00123, 0.00123)},
        "by_key": {"alpha": _tally(3, 1200, 345, 0.00123, 0.0042)},
        "by_route": {"local": _tally(2, 800, 300, 0.0, 0.00297)},
        "by_strategy": {"smart_routing": _tally(3, 1200, 345, 0.00123, 0.0042)},
        "budgets": {
            "key:beta": {"limit_usd": 5.0, "spent_usd": 4.1, "used": 0.82, "period": "daily", "alerts_fired": [0.5, 0.8], "action": "reject"},
        },
    },
    "cerebras_headroom": {"tokens_remaining_minute": 59000, "exhausted_until": None},
}


def _section(text: str, title: str) -> list[str]:
    """The lines of one titled section (up to the blank line that ends it)."""
    lines = text.splitlines()
    start = lines.index(title)
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start + 1 : end]


def _row(text: str, title: str, name: str) -> list[str]:
    return next(line.split() for line in _section(text, title) if line.split()[0] == name)


def test_totals_show_tokens_cost_and_savings() -> None:
    text = render(SNAPSHOT)
    assert _row(text, "Totals", "all") == ["all", "3", "3", "1,200", "345", "1,545", "$0.00123", "$0.0042", "$0.00297"]


def test_books_have_a_table_per_model_key_route_and_strategy() -> None:
    text = render(SNAPSHOT)
    assert _row(text, "By model", "local")[1] == "2"
    assert _row(text, "By model", "cerebras")[6] == "$0.00123"
    assert _row(text, "By key", "alpha")[-1] == "$0.00297"
    assert _row(text, "By route", "local")[4] == "300"
    assert _row(text, "By strategy", "smart_routing")[1] == "3"


def test_budgets_show_use_and_the_alerts_fired() -> None:
    row = " ".join(_row(render(SNAPSHOT), "Budgets", "key:beta"))
    assert row == "key:beta daily $4.10 $5.00 82.0% 50.0%, 80.0% reject"


def test_routing_counters_are_listed_most_first_and_empty_ones_skipped() -> None:
    text = render(SNAPSHOT)
    assert [line.split()[0] for line in _section(text, "Decisions by route")[2:]] == ["local", "cerebras"]
    assert "Fallbacks" not in text.splitlines()
    assert _row(text, "Cerebras headroom", "tokens") == ["tokens", "remaining", "minute", "59,000"]


def test_missing_sections_are_skipped_and_unknown_ones_still_shown() -> None:
    text = render({"strategy": "always_local", "brand_new": {"widgets": 4}, "nested": {"a": {"x": 1, "y": "z"}}})
    assert "Totals" not in text and "Budgets" not in text
    assert _row(text, "Brand new", "widgets") == ["widgets", "4"]
    assert _row(text, "Nested", "a") == ["a", "1", "z"]
    assert render({}).strip() == "/stats has no sections"


def test_tiers_history_and_recent_decisions_are_tables_with_a_row_each() -> None:
    headroom = {
        "tokens_remaining_minute": 59000,
        "tokens_limit_minute": 60000,
        "requests_remaining_day": 14000,
        "tokens_reset_in": None,
        "rate_limited_seen": 2,
    }
    text = render(
        {
            "tiers": [
                {"name": "local", "requests": 3, "price_per_m": {"input": 0.0, "output": 0.0}, "headroom": None},
                {"name": "cerebras", "requests": 5, "price_per_m": {"input": 2.25, "output": 2.75}, "headroom": headroom},
            ],
            "history": {"window_minutes": 1440, "series": [{"minute": 1764633600, "requests": 3, "by_route": {"local": 2, "cerebras": 1}}]},
            "recent_decisions": [{"time": 1764633655.2, "key": "alice", "route": "cerebras"}, {"time": 1764633600, "key": "ci", "route": "local"}],
            "store": {"kind": "sqlite", "ok": True, "since": 1764633600.5},
        }
    )
    assert _row(text, "Store", "since") == ["since", "2025-12-02", "00:00:00"]
    assert _section(text, "Tiers")[0].split() == ["name", "requests", "price", "per", "m"]
    assert _row(text, "Tiers", "cerebras") == ["cerebras", "5", "input=2.25,", "output=2.75"]
    assert _row(text, "Tiers: cerebras headroom", "rate") == ["rate", "limited", "seen", "2"]
    assert "Tiers: local headroom" not in text
    assert _row(text, "History", "window") == ["window", "minutes", "1,440"]
    assert _row(text, "History: series", "2025-12-02") == ["2025-12-02", "00:00:00", "3", "local=2,", "cerebras=1"]
    assert [row.split()[2] for row in _section(text, "Recent decisions")[2:]] == ["alice", "ci"]
    assert max(len(line) for line in text.splitlines()) < 100


def test_a_books_section_without_budgets_or_keys_still_prints_totals() -> None:
    text = render({"books": {"totals": {"requests": 0, "cost_usd": 0.0}}})
    assert _row(text, "Totals", "all") == ["all", "0", "$0.00"]


def test_table_aligns_names_left_and_numbers_right() -> None:
    lines = table("T", ["name", "n"], [["a", "1"], ["longer", "1,000"]]).splitlines()
    assert lines == ["T", "name        n", "------  -----", "a           1", "longer  1,000"]


def test_fmt_renders_money_percent_and_missing_values() -> None:
    assert fmt(0.0000456, "usd") == "$0.0000456"
    assert fmt(0.825, "pct") == "82.5%"
    assert fmt(None) == "-"
    assert fmt(True) == "yes"
    assert fmt(1234567) == "1,234,567"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fetch_from_a_proxy_that_is_not_running_says_so() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    try:
        fetch(url, "sk-secret-key-000000")
    except StatsError as err:
        assert "is the proxy running?" in str(err)
        assert "sk-secret-key-000000" not in str(err)
    else:
        raise AssertionError("fetch from a closed port succeeded")


def test_stats_command_exits_1_with_a_message_when_the_proxy_is_down(capsys, monkeypatch, tmp_path) -> None:
    # No key anywhere: not in the environment, and no key saved by an earlier `up` in this machine's cache.
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    monkeypatch.setenv("GLM_SAVER_CACHE_DIR", str(tmp_path))
    assert main(["stats", "--url", f"http://127.0.0.1:{_closed_port()}"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and "LITELLM_MASTER_KEY" in err
