"""`glm-saver stats`: read `/stats` from a running proxy and print it as tables.

The printer shows whatever sections the snapshot has, in a fixed order for the known ones (the
books first: totals, per model / key / route / strategy / role, budgets; then the routing
counters, Cerebras' headroom and the cascade) and generically for anything else, so an older or
newer proxy still prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from glm_saver.money import usd

DEFAULT_URL = "http://127.0.0.1:4000"
TALLY_COLUMNS = (
    ("requests", "requests", "int"),
    ("calls", "calls", "int"),
    ("prompt_tokens", "prompt tok", "int"),
    ("completion_tokens", "completion tok", "int"),
    ("total_tokens", "total tok", "int"),
    ("cost_usd", "cost", "usd"),
    ("cloud_cost_usd", "always-cerebras", "usd"),
    ("savings_usd", "saved", "usd"),
)
BOOK_TABLES = (("by_model", "model"), ("by_key", "key"), ("by_route", "route"), ("by_strategy", "strategy"), ("by_role", "role"))
COUNTER_TABLES = (
    ("by_route", "Decisions by route"),
    ("by_strategy", "Decisions by strategy"),
    ("by_reason", "Decisions by reason"),
    ("answered_by", "Answered by"),
    ("fallbacks", "Fallbacks"),
    ("upstream_failures", "Upstream failures"),
    ("rejected", "Rejected"),
    ("rate_limit_shifts", "Rate-limit shifts to local"),
)
MAX_CELL_ENTRIES = 4  # a mapping with more entries (a tier's headroom) gets its own table
TIME_COLUMNS = frozenset({"minute", "time", "since"})  # epoch seconds, shown as UTC
HEADER_FIELDS = ("strategy", "cerebras_configured", "uptime_seconds", "requests_routed", "cerebras_429s", "plugin_errors")


# ---- formatting -------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(value: Any, kind: str = "auto") -> str:
    if value is None:
        return "-"
    if kind == "usd" and _number(value):
        return usd(value)
    if kind == "pct" and _number(value):
        return f"{value * 100:.1f}%"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(item) for item in value) or "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items()) or "-"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned (numbers)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = (str(cell) for cell in cells)
        parts = [first.ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    if not any(headers):  # a key/value list: no header row
        return "\n".join([title, *(line(row) for row in rows)])
    rule = "  ".join("-" * width for width in widths)
    return "\n".join([title, line(headers), rule, *(line(row) for row in rows)])


def _tally_table(title: str, label: str, tallies: Mapping[str, Any]) -> str | None:
    rows_in = {name: t for name, t in tallies.items() if isinstance(t, Mapping)}
    if not rows_in:
        return None
    columns = [(key, head, kind) for key, head, kind in TALLY_COLUMNS if any(key in t for t in rows_in.values())]
    rows = [[name, *(fmt(t.get(key), kind) for key, _, kind in columns)] for name, t in sorted(rows_in.items(), key=lambda item: str(item[0]))]
    return table(title, [label, *(head for _, head, _ in columns)], rows)


def _budget_table(budgets: Mapping[str, Any]) -> str | None:
    rows = []
    for name, budget in sorted(budgets.items()):
        if not isinstance(budget, Mapping):
            continue
        alerts = budget.get("alerts_fired")
        rows.append(
            [
                name,
                fmt(budget.get("period")),
                fmt(budget.get("spent_usd"), "usd"),
                fmt(budget.get("limit_usd"), "usd"),
                fmt(budget.get("used"), "pct"),
                fmt([fmt(a, "pct") if _number(a) else a for a in alerts] if isinstance(alerts, list) else alerts),
                fmt(budget.get("action")),
            ]
        )
    if not rows:
        return None
    return table("Budgets", ["budget", "period", "spent", "limit", "used", "alerts fired", "at 100%"], rows)


def _counter_table(title: str, counts: Mapping[str, Any]) -> str | None:
    if not counts:
        return None
    rows = [[str(name), fmt(count)] for name, count in sorted(counts.items(), key=lambda item: (-item[1] if _number(item[1]) else 0, str(item[0])))]
    return table(title, ["", "count"], rows)


def _key_values(title: str, values: Mapping[str, Any]) -> str | None:
    """Scalars as `name  value` rows; nested mappings of mappings and lists of records become their own tables."""
    rows = [[str(name).replace("_", " "), _cell(name, value)] for name, value in values.items() if not _is_table(value) and not _is_records(value)]
    parts: list[str | None] = [table(title, ["", ""], rows)] if rows else []
    for name, value in values.items():
        if _is_table(value) or _is_records(value):
            parts.append(_generic(f"{title}: {name}", value))
    return "\n\n".join(part for part in parts if part) or None


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, Mapping) for v in value.values())


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _fits_a_cell(value: Any) -> bool:
    """A scalar, a list of scalars, or a small mapping of scalars (`local=2, cerebras=1`)."""
    if isinstance(value, Mapping):
        return len(value) <= MAX_CELL_ENTRIES and not any(isinstance(v, (Mapping, list)) for v in value.values())
    if isinstance(value, list):
        return not any(isinstance(v, (Mapping, list)) for v in value)
    return True


def _cell(name: str, value: Any) -> str:
    if name in TIME_COLUMNS and _number(value):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))
    return fmt(value)


def _records(title: str, records: Sequence[Mapping[str, Any]]) -> str:
    """A list of records (tiers, history buckets, decisions) as one table, a row each; a record's larger
    mappings (a tier's headroom) follow as their own tables, named by the record's first value."""
    keys = list(dict.fromkeys(k for record in records for k in record))
    columns = [k for k in keys if all(_fits_a_cell(record[k]) for record in records if k in record)]
    rows = [[_cell(k, record.get(k)) for k in columns] for record in records]
    parts = [table(title, [k.replace("_", " ") for k in columns], rows)]
    for record in records:
        label = fmt(next(iter(record.values()), ""))
        parts += [_generic(f"{title}: {label} {k.replace('_', ' ')}", v) or "" for k, v in record.items() if k not in columns and v is not None]
    return "\n\n".join(part for part in parts if part)


def _generic(title: str, value: Any) -> str | None:
    """Any section: a table of mappings, a counter, key/values, or one line."""
    if isinstance(value, Mapping):
        if not value:
            return None
        if _is_table(value):
            inner = list(dict.fromkeys(k for row in value.values() for k in row))
            if all(_number(v) or v is None or isinstance(v, (str, bool)) for row in value.values() for v in row.values()):
                rows = [[str(name), *(fmt(row.get(k)) for k in inner)] for name, row in value.items()]
                return table(title, ["", *inner], rows)
            return "\n\n".join(filter(None, (_generic(f"{title}: {name}", row) for name, row in value.items()))) or None
        if all(_number(v) for v in value.values()):
            return _counter_table(title, value)
        return _key_values(title, value)
    if _is_records(value):
        return _records(title, value)
    return f"{title}: {fmt(value)}"


def _title(name: str) -> str:
    return name.replace("_", " ").capitalize()


def render(snapshot: Mapping[str, Any]) -> str:
    """The whole /stats snapshot as text; missing sections are skipped, unknown ones shown generically."""
    parts: list[str | None] = []
    shown = set(HEADER_FIELDS)
    header = [[field.replace("_", " "), fmt(snapshot[field])] for field in HEADER_FIELDS if field in snapshot]
    if header:
        parts.append(table("GLM Token Saver", ["", ""], header))
    books = snapshot.get("books")
    if isinstance(books, Mapping):
        shown.add("books")
        parts += _books(books)
    for name, title in COUNTER_TABLES:
        if name in snapshot:
            shown.add(name)
            value = snapshot[name]
            parts.append(_counter_table(title, value) if isinstance(value, Mapping) else _generic(title, value))
    for name in ("cerebras_headroom", "speculative"):
        if name in snapshot:
            shown.add(name)
            value = snapshot[name]
            parts.append(_key_values(_title(name), value) if isinstance(value, Mapping) else _generic(_title(name), value))
    for name, value in snapshot.items():
        if name not in shown:
            parts.append(_generic(_title(name), value))
    text = "\n\n".join(part for part in parts if part)
    return (text or "/stats has no sections") + "\n"


def _books(books: Mapping[str, Any]) -> list[str | None]:
    parts: list[str | None] = []
    totals = books.get("totals")
    if isinstance(totals, Mapping):
        parts.append(_tally_table("Totals", "", {"all": totals}))
    for name, label in BOOK_TABLES:
        tallies = books.get(name)
        if isinstance(tallies, Mapping):
            parts.append(_tally_table(f"By {label}", label, tallies))
    budgets = books.get("budgets")
    if isinstance(budgets, Mapping):
        parts.append(_budget_table(budgets))
    known = {"totals", "budgets", *(name for name, _ in BOOK_TABLES)}
    for name, value in books.items():
        if name not in known:
            parts.append(_generic(f"Books: {name.replace('_', ' ')}", value))
    return parts


# ---- the command ------------------------------------------------------------------------------


class StatsError(RuntimeError):
    """The proxy could not be read; the message says why (never the key)."""


def fetch(url: str, key: str | None, timeout: float = 10.0) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    endpoint = url.rstrip("/") + "/stats"
    try:
        response = httpx.get(endpoint, headers=headers, timeout=timeout)
    except httpx.HTTPError as err:
        raise StatsError(f"cannot reach {endpoint}: {type(err).__name__} (is the proxy running?)") from None
    if response.status_code != 200:
        raise StatsError(f"{endpoint} answered {response.status_code}: {_error_message(response)}")
    try:
        body = response.json()
    except ValueError:
        raise StatsError(f"{endpoint} did not answer JSON") from None
    if not isinstance(body, dict):
        raise StatsError(f"{endpoint} answered {type(body).__name__}, not a JSON object")
    return body


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return response.text[:200] or response.reason_phrase
    return str(error.get("message") if isinstance(error, Mapping) else error)[:300]


def proxy_key(explicit: str | None) -> str | None:
    """--key, else $LITELLM_MASTER_KEY, else the key `glm-saver up` generated and kept in the cache."""
    from glm_saver.launcher.local_model import Layout, cache_dir, saved_master_key

    return explicit or os.environ.get("LITELLM_MASTER_KEY") or saved_master_key(Layout(cache_dir()))


def _run(args: argparse.Namespace) -> int:
    key = proxy_key(args.key)
    try:
        snapshot = fetch(args.url, key)
    except StatsError as err:
        hint = "" if key else " (no key: pass --key, set LITELLM_MASTER_KEY, or start the proxy with `glm-saver up`)"
        print(f"glm-saver stats: {err}{hint}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render(snapshot))
    return 0


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = commands.add_parser("stats", help="print /stats of a running proxy as tables (tokens, cost, savings, budgets)")
    stats.add_argument("--url", default=DEFAULT_URL, help=f"the proxy's base URL (default {DEFAULT_URL})")
    stats.add_argument("--key", help="the master key (default $LITELLM_MASTER_KEY, else the one `glm-saver up` generated); /stats needs it")
    stats.add_argument("--json", action="store_true", help="print the raw JSON instead of tables")
    stats.set_defaults(run=_run)
