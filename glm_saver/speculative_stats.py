"""Counters of the draft/verify cascade for /stats: drafts, outcomes, verifications, what it saved.

"Saved" is against always-cloud: what Cerebras would have used to answer the same ask in full
(the prompt plus an answer as long as the one given) minus what the cascade spent on Cerebras
(verify calls). A verification re-sends the prompt with the draft, so it can cost more than it
saves; the figure is reported as measured, negative included.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ROLES = ("draft", "verify", "final")


@dataclass
class RoleTotals:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "cost": round(self.cost, 8)}


@dataclass
class SpeculativeStats:
    cascades: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    drafts_made: int = 0
    draft_failures: Counter[str] = field(default_factory=Counter)
    parallel_fallbacks: int = 0
    verifications: int = 0
    verified: int = 0
    corrections: int = 0
    verify_failures: Counter[str] = field(default_factory=Counter)
    baseline_tokens: int = 0
    spent_tokens: int = 0
    baseline_cost: float = 0.0
    spent_cost: float = 0.0
    by_role: dict[str, RoleTotals] = field(default_factory=lambda: {role: RoleTotals() for role in ROLES})
    # Internal calls have no key of their own in LiteLLM's logs: here they count for the caller.
    by_caller: dict[str, dict[str, RoleTotals]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_drafts(self, made: int, failures: list[str], parallel_fallback: bool) -> None:
        with self._lock:
            self.drafts_made += made
            self.draft_failures.update(failures)
            self.parallel_fallbacks += int(parallel_fallback)

    def record_verify(self, outcome: str) -> None:
        """outcome: "verified", "corrected" or a failure kind ("rate-limited", "timeout", ...)."""
        with self._lock:
            self.verifications += 1
            if outcome == "verified":
                self.verified += 1
            elif outcome == "corrected":
                self.corrections += 1
            else:
                self.verify_failures[outcome] += 1

    def record_outcome(self, label: str, reason: str, saving: tuple[int, int, float, float] | None = None) -> None:
        """saving: (baseline tokens, spent tokens, baseline cost, spent cost) of the cloud, if known."""
        with self._lock:
            self.cascades += 1
            self.outcomes[label] += 1
            self.reasons[reason] += 1
            if saving is not None:
                self.baseline_tokens += saving[0]
                self.spent_tokens += saving[1]
                self.baseline_cost += saving[2]
                self.spent_cost += saving[3]

    def record_call(self, role: str, caller: str, prompt_tokens: int, completion_tokens: int, cost: float) -> None:
        with self._lock:
            for totals in (self.by_role.setdefault(role, RoleTotals()), self.by_caller.setdefault(caller, {}).setdefault(role, RoleTotals())):
                totals.calls += 1
                totals.prompt_tokens += prompt_tokens
                totals.completion_tokens += completion_tokens
                totals.cost += cost

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            drafted = self.outcomes["draft-accepted"] + self.outcomes["draft-verified"]
            return {
                "cascades": self.cascades,
                "outcomes": dict(self.outcomes),
                "reasons": dict(self.reasons),
                "drafts_made": self.drafts_made,
                "draft_failures": dict(self.draft_failures),
                "parallel_fallbacks": self.parallel_fallbacks,
                # Share of cascades answered with a local draft (accepted at once or after a verify).
                "acceptance_rate": round(drafted / self.cascades, 4) if self.cascades else None,
                "verifications": self.verifications,
                "verified": self.verified,
                "corrections": self.corrections,
                "verify_failures": dict(self.verify_failures),
                "cloud_tokens_saved": self.baseline_tokens - self.spent_tokens,
                "cloud_cost_saved": round(self.baseline_cost - self.spent_cost, 8),
                "cloud_tokens_if_always_cloud": self.baseline_tokens,
                "cloud_tokens_spent_verifying": self.spent_tokens,
                "by_role": {role: totals.as_dict() for role, totals in self.by_role.items()},
                "by_caller": {caller: {role: t.as_dict() for role, t in roles.items()} for caller, roles in self.by_caller.items()},
            }
