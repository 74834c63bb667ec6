"""Counters of the draft/verify cascade for /stats: drafts, outcomes, verifications.

Tokens, cost and savings of its calls are booked once, in the books (books/ledger.py); /stats
shows them beside these counters.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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

    def record_outcome(self, label: str, reason: str) -> None:
        with self._lock:
            self.cascades += 1
            self.outcomes[label] += 1
            self.reasons[reason] += 1

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
            }
