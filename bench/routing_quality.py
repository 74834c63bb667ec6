"""Routing quality on sources a router was not fitted on, and how fast it decides.

    python bench/routing_quality.py [--bootstrap 1000] [--rounds 2000]

Each source is held out in turn. The new router is refitted by training/train_scorer.py on the
other shippable sources only (ridge, blend and kind weight chosen by leave-one-source-out among
*those*), never tuned on the held-out one; then every router ranks the held-out asks:
- MMLU with per-model correctness (test split; Mixtral local, GPT-4 cloud; without the questions
  whose options are all numbers, whose labels record an answer-extraction failure);
- mmlu-math: MMLU's mathematics, statistics and physics subjects (training/datasets.py
  MATH_SUBJECTS, every split); the router is refitted on every shippable source with these
  subjects taken out of MMLU (so it is held out from MMLU as a whole only in the "mmlu" row, and
  from math in this one). Without the numeric-answer questions these are mostly conceptual, not
  word problems (training/README.md, round 7);
- Arena-Hard judge preferences (all 500 prompts; GPT-4-0314 vs five weaker models, GPT-4 Turbo judge);
- AlpacaEval judge preferences (all 800 prompts; CC BY-NC, so evaluation only: the router held out
  from it is the shipped one, fitted on the three other sources);
- our coding-assistant asks (test split; sent as real Cline requests);
and a closer look at AlpacaEval's 75 Vicuna prompts (multi-category chat: writing, role-play,
math, coding, ...), the nearest thing here to judged multi-turn chat, an independent benchmark
the router is also judged on.
Routers: the new router (refitted without the held-out source), the shipped new router (fitted on
all three shippable sources: on MMLU, Arena-Hard and coding it is NOT held out, shown for
comparison with today's scorer), today's scorer (bench/scorer_v1.py: fitted on MMLU and coding
train splits, so on those sources and mmlu-math it is not held out either), the rules alone, LiteLLM's complexity router
(its default classifier called directly on the ask), token count, and random (20 seeds).

Printed per source: APGR (area under the performance-gap-recovered curve; random = 0.5) with a
bootstrap 95% interval over the asks, the cloud share needed to recover 50% and 80% of the gap,
the cloud share and the gap recovered at the default threshold (the new and the shipped router),
and the paired bootstrap interval of the new router's APGR minus LiteLLM's and minus token count's.
Then the time per decision (p50, p99) on short asks and a 60 KB Cline request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scorer_v1 import ScorerV1
from glm_saver import tokens
from glm_saver.classifier import ComplexityClassifier
from glm_saver.request import latest_ask
from glm_saver.settings import ClassifierSettings
from tests import cline_shapes as cline
from training import train_scorer
from training.datasets import MATH_SUBJECTS, SHIPPABLE, Item, coding, mmlu, mmlu_math, of_split, preferences
from training.metrics import curve

Scorer = Callable[[list[dict[str, Any]]], float]
NEW = "new router"
LITELLM = "litellm complexity router"
TOKENS = "token count"
SHIPPED = "shipped new (not held out)"


def held_out_sets() -> dict[str, tuple[list[Item], bool]]:
    """name -> (held-out asks, sent as Cline requests)."""
    return {
        "mmlu": (of_split(mmlu(), "test"), False),
        "mmlu-math": (mmlu_math(), False),
        "arena_hard": (preferences("arena_hard"), False),
        "alpaca_eval": (preferences("alpaca_eval"), False),
        "coding": (of_split(coding(), "test"), True),
        # A closer look at a part of AlpacaEval, measured by the router held out from it: the nearest
        # thing here to judged multi-category chat. Small: read its interval.
        "vicuna": ([item for item in preferences("alpaca_eval") if item.group == "vicuna"], False),
    }


# The source each closer look is a part of: its router is the one held out from that source.
PART_OF = {"vicuna": "alpaca_eval"}


def new_router_without(held: str) -> ComplexityClassifier:
    """The new router refitted on the shippable sources other than `held` (for the closer look:
    other than the source it is a part of).

    For "mmlu-math" every source is used, but MMLU without its math subjects (all their splits).
    """
    return _refitted_without(PART_OF.get(held, held))


@cache  # the closer look and bench/tiers_quality.py ask for the same routers again
def _refitted_without(held: str) -> ComplexityClassifier:
    if held == "mmlu-math":
        return train_scorer.classifier_of(train_scorer.shipped(SHIPPABLE, log=False, without_groups=MATH_SUBJECTS))
    sources = [name for name in SHIPPABLE if name != held]
    return train_scorer.classifier_of(train_scorer.shipped(sources, log=False))


def litellm_scorer() -> Scorer:
    from litellm.router_strategy.complexity_router import ComplexityRouter

    router = ComplexityRouter("bench", None)
    return lambda m: router.classify(latest_ask(m))[1]


def fixed_scorers() -> dict[str, Scorer]:
    shipped = ComplexityClassifier()
    v1 = ScorerV1()
    rules = ComplexityClassifier(ClassifierSettings(learned_model=False))
    return {
        SHIPPED: lambda m: shipped.classify(m).score,
        "today's scorer (v1)": v1.score,
        "rules only": lambda m: rules.classify(m).score,
        LITELLM: litellm_scorer(),
        TOKENS: lambda m: tokens.count_tokens(latest_ask(m)),
    }


def requests(items: Sequence[Item], as_cline: bool) -> list[list[dict[str, Any]]]:
    return [cline.vscode_task(item.text) if as_cline else [{"role": "user", "content": item.text}] for item in items]


def fast_apgr(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> float:
    """training.metrics.curve(...).apgr, vectorised for the bootstrap (ties routed as a block)."""
    n = len(scores)
    gap = strong.mean() - weak.mean()
    order = np.argsort(-scores, kind="stable")
    ranked, gain = scores[order], (strong - weak)[order]
    # Within a run of equal scores every ask gains the run's mean.
    starts = np.flatnonzero(np.concatenate([[True], ranked[1:] != ranked[:-1]]))
    sums = np.add.reduceat(gain, starts)
    sizes = np.diff(np.concatenate([starts, [n]]))
    smoothed = np.repeat(sums / sizes, sizes)
    pgr = np.concatenate([[0.0], np.cumsum(smoothed)]) / n / gap
    return float(((pgr[1:] + pgr[:-1]) / 2).sum() / n)


def bootstrap(scores: dict[str, np.ndarray], items: Sequence[Item], rounds: int) -> dict[str, np.ndarray]:
    """APGR of every router on `rounds` resamples of the asks (the same resamples for all: paired)."""
    weak = np.array([float(i.weak_correct) for i in items])
    strong = np.array([float(i.strong_correct) for i in items])
    rng = np.random.default_rng(7)
    out: dict[str, list[float]] = {name: [] for name in scores}
    for _ in range(rounds):
        pick = rng.integers(0, len(items), len(items))
        if strong[pick].mean() <= weak[pick].mean():
            continue  # no gap to recover in this resample
        for name, values in scores.items():
            out[name].append(fast_apgr(values[pick], weak[pick], strong[pick]))
    return {name: np.array(values) for name, values in out.items()}


def interval(values: np.ndarray) -> str:
    low, high = np.percentile(values, [2.5, 97.5])
    return f"[{low:.3f}, {high:.3f}]"


def report_set(name: str, items: list[Item], as_cline: bool, scorers: dict[str, Scorer], rounds: int) -> dict[str, float]:
    messages = requests(items, as_cline)
    gap = statistics.fmean(i.gain for i in items)
    print(f"\n== held out: {name}, {len(items)} asks (mean gain of the strong model {gap:.3f})")
    print(f"{'router':<28}{'APGR':>7}  {'95% interval':<17}{'50% gap':>9}{'80% gap':>9}")
    scores = {label: np.array([float(scorer(m)) for m in messages]) for label, scorer in scorers.items()}
    resampled = bootstrap(scores, items, rounds)
    figures = {}
    for label, values in scores.items():
        result = curve(items, list(values))
        assert abs(result.apgr - fast_apgr(values, *_sides(items))) < 1e-9  # the bootstrap measures the same thing
        figures[label] = result.apgr
        print(f"{label:<28}{result.apgr:>7.3f}  {interval(resampled[label]):<17}{result.share_to_recover(0.5):>9.1%}{result.share_to_recover(0.8):>9.1%}")
    randoms = [curve(items, list(np.random.default_rng(seed).random(len(items)))) for seed in range(20)]
    apgrs = [c.apgr for c in randoms]
    print(
        f"{'random (20 seeds)':<28}{statistics.fmean(apgrs):>7.3f}  {'sd ' + format(statistics.stdev(apgrs), '.3f'):<17}"
        f"{statistics.fmean(c.share_to_recover(0.5) for c in randoms):>9.1%}{statistics.fmean(c.share_to_recover(0.8) for c in randoms):>9.1%}"
    )
    for label in (NEW, SHIPPED):
        report_default_threshold(label, items, scores[label])
    for other in (LITELLM, TOKENS):
        diff = resampled[NEW] - resampled[other]
        print(f"  {NEW} - {other}: {figures[NEW] - figures[other]:+.3f}  95% {interval(diff)}  (above 0 on {np.mean(diff > 0):.0%} of {len(diff)} resamples)")
    return figures


def report_default_threshold(label: str, items: Sequence[Item], scores: np.ndarray) -> None:
    """What a user gets out of the box: the cloud share and the gap recovered at the default threshold."""
    threshold = ClassifierSettings().threshold
    sent = int(np.sum(scores >= threshold))
    recovered = curve(items, list(scores)).pgr[sent]  # the asks at or above it are the top `sent` by score
    print(f"  {label} at the default threshold {threshold}: {sent / len(items):.0%} to the cloud, {recovered:.0%} of the gap recovered")


def _sides(items: Sequence[Item]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([float(i.weak_correct) for i in items]), np.array([float(i.strong_correct) for i in items])


def timings(scorer: Scorer, make: Callable[[int], list[dict[str, Any]]], rounds: int) -> tuple[float, float]:
    """p50 and p99 of `scorer` on `rounds` requests, each new traffic: a new ask (so no kept verdict)
    and no cached token count."""
    times = []
    for i in range(rounds):
        messages = make(i)
        tokens._counts.clear()
        began = time.perf_counter()
        scorer(messages)
        times.append(time.perf_counter() - began)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def report_timings(scorers: dict[str, Scorer], asks: Sequence[str], rounds: int) -> None:
    shapes: dict[str, Callable[[int], list[dict[str, Any]]]] = {
        "short asks": lambda i: [{"role": "user", "content": f"{asks[i % len(asks)]} ({i})"}],
        "60 KB Cline request": lambda i: cline.vscode_task_of_size(f"{asks[i % 50]} ({i})", 60_000),
    }
    print(f"\n== time per decision, ms (p50 / p99, {rounds} calls, each a new ask, token cache cleared before each)")
    for label in (NEW, LITELLM):
        for kind, make in shapes.items():
            scorers[label](make(-1))  # warm up
            p50, p99 = timings(scorers[label], make, rounds)
            print(f"{label:<28}{kind:<22}p50 {p50:6.3f}   p99 {p99:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per held-out source")
    parser.add_argument("--rounds", type=int, default=2000, help="timed calls per router and request shape")
    args = parser.parse_args()
    fixed = fixed_scorers()
    summary = {}
    for name, (items, as_cline) in held_out_sets().items():
        router = new_router_without(name)
        scorers = {NEW: lambda m, r=router: r.classify(m).score, **fixed}
        summary[name] = report_set(name, items, as_cline, scorers, args.bootstrap)
    print("\n== APGR by held-out source")
    print(f"{'router':<28}" + "".join(f"{name:>13}" for name in summary))
    for label in next(iter(summary.values())):
        print(f"{label:<28}" + "".join(f"{figures[label]:>13.3f}" for figures in summary.values()))
    shipped = ComplexityClassifier()
    report_timings({NEW: lambda m: shipped.classify(m).score, **fixed}, [i.text for i in of_split(coding(), "test")], args.rounds)
    from bench import tiers_quality  # here: it imports this module

    tiers_quality.report(args.bootstrap, refit=new_router_without)


if __name__ == "__main__":
    main()
