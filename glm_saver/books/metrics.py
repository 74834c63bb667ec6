"""Prometheus series. They live on prometheus_client's default registry, which LiteLLM's `/metrics`
serves when `prometheus` is among the callbacks."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge
from prometheus_client.metrics import MetricWrapperBase

from glm_saver.books.headroom import Quota

REQUESTS = Counter("glm_saver_requests", "Chat requests routed by the plugin", ["route", "strategy", "reason"])
RATE_LIMIT_SHIFTS = Counter("glm_saver_rate_limit_shifts", "Requests moved to another tier because the wanted one had no headroom", ["reason"])
# Cerebras limits each model on its own: one series per paid tier's group.
CEREBRAS_429 = Counter("glm_saver_cerebras_rate_limited", "429 answers received from Cerebras, by the model group that answered", ["group"])
TOKENS_REMAINING = Gauge("glm_saver_cerebras_tokens_remaining_minute", "Cerebras tokens left this minute (last reading)", ["group"])
TOKENS_LIMIT = Gauge("glm_saver_cerebras_tokens_limit_minute", "Cerebras tokens allowed per minute", ["group"])
REQUESTS_REMAINING = Gauge("glm_saver_cerebras_requests_remaining_day", "Cerebras requests left today (last reading)", ["group"])
TOKENS = Counter("glm_saver_tokens", "Tokens answered, by model group and kind", ["model", "kind"])
COST = Counter("glm_saver_cost_usd", "Money spent, by model group (configured prices)", ["model"])
SAVINGS = Gauge("glm_saver_savings_usd", "What always-Cerebras would have cost minus what was spent, in total")
BUDGET_USED = Gauge("glm_saver_budget_used_ratio", "Share of each budget spent in its current period", ["budget"])
BUDGET_ALERTS = Counter("glm_saver_budget_alerts", "Budget alert thresholds crossed", ["budget", "threshold"])
TOKENS_RESERVED = Gauge("glm_saver_cerebras_tokens_reserved", "Tokens reserved by requests in flight to Cerebras", ["group"])


# The series the request path updates, by metric and label values: prometheus_client's `labels()`
# checks, converts and locks on every call (2.5 us; four per answer). The plugin never removes a
# series, so a child found once stays the metric's; bounded all the same.
MAX_CHILDREN = 10_000
_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}


def series(metric: MetricWrapperBase, *values: str) -> Any:
    """`metric.labels(*values)` (in the order of the metric's label names), looked up once."""
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        if len(_children) >= MAX_CHILDREN:
            _children.clear()
        child = _children[key] = metric.labels(*values)
    return child


def record_quota(group: str, quota: Quota) -> None:
    """The gauges of one paid tier's quota (`group`: the model group whose quota it is)."""
    for gauge, value in (
        (TOKENS_REMAINING, quota.tokens_remaining),
        (TOKENS_LIMIT, quota.tokens_limit),
        (REQUESTS_REMAINING, quota.requests_remaining),
        (TOKENS_RESERVED, quota.reserved_tokens),
    ):
        if value is not None:
            gauge.labels(group=group).set(value)
