"""Quality versus cloud share, as RouteLLM measures routers.

Send the asks a scorer ranks highest to the strong model, the rest to the weak one. At cloud share x
the quality is the mean correctness of whoever answered each ask; the performance gap recovered is
PGR(x) = (quality(x) - weak) / (strong - weak). APGR is the area under PGR over x in [0, 1]: random
routing scores 0.5, a perfect router more (PGR passes 1 when it also avoids the strong model's own
misses). Tied scores are routed as a block in expectation (a random order within the tie), so a
scorer that says the same thing for every ask scores exactly 0.5, like random.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from training.datasets import Item


@dataclass(frozen=True)
class Curve:
    shares: list[float]  # cloud share at each point, 0 .. 1
    pgr: list[float]  # performance gap recovered at that share

    @property
    def apgr(self) -> float:
        area = 0.0
        for i in range(1, len(self.shares)):
            area += (self.shares[i] - self.shares[i - 1]) * (self.pgr[i] + self.pgr[i - 1]) / 2
        return area

    def share_to_recover(self, target: float) -> float:
        """The smallest cloud share at which PGR reaches `target` (linear between points)."""
        for i in range(1, len(self.shares)):
            if self.pgr[i] >= target:
                low, high = self.pgr[i - 1], self.pgr[i]
                frac = 1.0 if high == low else max(0.0, min(1.0, (target - low) / (high - low)))
                return self.shares[i - 1] + frac * (self.shares[i] - self.shares[i - 1])
        return 1.0


def curve(items: Sequence[Item], scores: Sequence[float]) -> Curve:
    n = len(items)
    if n == 0 or len(scores) != n:
        raise ValueError("need one score per item")
    weak = sum(item.weak_correct for item in items) / n
    strong = sum(item.strong_correct for item in items) / n
    if strong <= weak:
        raise ValueError("the strong model is not better on this set: no gap to recover")
    ranked = sorted(zip(scores, items, strict=True), key=lambda pair: -pair[0])
    gained = [0.0]
    i = 0
    while i < n:
        j = i
        while j < n and ranked[j][0] == ranked[i][0]:
            j += 1
        tie_gain = sum(item.strong_correct - item.weak_correct for _, item in ranked[i:j]) / (j - i)
        base = gained[-1]
        gained.extend(base + tie_gain * (k - i + 1) for k in range(i, j))
        i = j
    gap = strong - weak
    return Curve(shares=[k / n for k in range(n + 1)], pgr=[(g / n) / gap for g in gained])
