"""Counters for /stats: decisions per route, strategy and reason, and who actually answered."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any


class RoutingStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.time()
        self.by_route: Counter[str] = Counter()
        self.by_strategy: Counter[str] = Counter()
        self.by_reason: Counter[str] = Counter()
        self.answered_by: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.rate_limit_shifts: Counter[str] = Counter()
        self.cerebras_429s = 0
        self.plugin_errors = 0

    def record_decision(self, route: str, strategy: str, reason: str) -> None:
        with self._lock:
            self.by_route[route] += 1
            self.by_strategy[strategy] += 1
            self.by_reason[reason] += 1

    def record_answer(self, group: str, fell_back_from: str | None) -> None:
        with self._lock:
            self.answered_by[group] += 1
            if fell_back_from:
                self.fallbacks[f"{fell_back_from}->{group}"] += 1

    def record_failure(self, group: str, error: str) -> None:
        with self._lock:
            self.failures[f"{group}:{error}"] += 1

    def record_rejection(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def record_shift(self, reason: str) -> None:
        with self._lock:
            self.rate_limit_shifts[reason] += 1

    def record_rate_limited(self) -> None:
        with self._lock:
            self.cerebras_429s += 1

    def record_plugin_error(self) -> None:
        with self._lock:
            self.plugin_errors += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_seconds": round(time.time() - self._started, 1),
                "requests_routed": sum(self.by_route.values()),
                "by_route": dict(self.by_route),
                "by_strategy": dict(self.by_strategy),
                "by_reason": dict(self.by_reason),
                "answered_by": dict(self.answered_by),
                "fallbacks": dict(self.fallbacks),
                "upstream_failures": dict(self.failures),
                "rejected": dict(self.rejected),
                "rate_limit_shifts": dict(self.rate_limit_shifts),
                "cerebras_429s": self.cerebras_429s,
                "plugin_errors": self.plugin_errors,
            }
