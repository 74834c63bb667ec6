"""Routing quality: which scorer sends the right asks to the cloud, and how fast it decides.

    python bench/routing_quality.py [--bootstrap 300] [--rounds 2000]

On the held-out `test` splits (never used in training or tuning; training/datasets.py) of
- MMLU with per-model correctness (weak Mixtral = local, strong GPT-4 = cloud), and
- our coding-assistant asks (training/coding_asks.tsv; sent as real Cline requests),
it ranks the asks with each scorer and prints the quality-versus-cloud-share curve as the
performance gap recovered (PGR) at a few cloud shares, APGR (the area under it; random = 0.5), and
the cloud share needed to recover 50% and 80% of the gap. Scorers: ours (the default
ComplexityClassifier), ours with rules only, LiteLLM's complexity router (its default heuristic
classifier, and its trained heuristic_v2, both called directly), plain token count, and random
(the mean of 20 seeds). A paired bootstrap says how often ours beats LiteLLM's default on a
resample of the test set.

Then the time per decision (p50, p99) of ours and LiteLLM's on short asks and on a 60 KB
Cline-shaped request, the token cache cleared before each call (every ask is new traffic).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glm_saver import tokens  # noqa: E402
from glm_saver.classifier import ComplexityClassifier  # noqa: E402
from glm_saver.request import latest_ask  # noqa: E402
from glm_saver.settings import ClassifierSettings  # noqa: E402
from tests import cline_shapes as cline  # noqa: E402
from training.datasets import Item, coding, mmlu, of_split  # noqa: E402
from training.metrics import Curve, curve  # noqa: E402

SHARES = (0.1, 0.2, 0.3, 0.5, 0.7)
Scorer = Callable[[list[dict[str, Any]]], float]


def litellm_scorers() -> dict[str, Scorer]:
    """LiteLLM's complexity router, its classifiers called directly on the user's ask."""
    from litellm.router_strategy.complexity_router import ComplexityRouter

    heuristic = ComplexityRouter("bench", None)
    trained = ComplexityRouter("bench", None, {"classifier_type": "heuristic_v2"})

    def v2(messages: list[dict[str, Any]]) -> float:
        forecast = trained._classify_locally(latest_ask(messages), None).heuristic_v2_forecast
        return -forecast["probabilities"]["SIMPLE"]  # less likely the cheapest tier succeeds = harder

    return {"litellm (default heuristic)": lambda m: heuristic.classify(latest_ask(m))[1], "litellm heuristic_v2": v2}


def scorers() -> dict[str, Scorer]:
    ours = ComplexityClassifier()
    rules = ComplexityClassifier(ClassifierSettings(learned_model=False))
    return {
        "ours": lambda m: ours.classify(m).score,
        "ours, rules only": lambda m: rules.classify(m).score,
        **litellm_scorers(),
        "token count": lambda m: tokens.count_tokens(latest_ask(m)),
    }


def requests(items: Sequence[Item], as_cline: bool) -> list[list[dict[str, Any]]]:
    return [cline.vscode_task(item.text) if as_cline else [{"role": "user", "content": item.text}] for item in items]


def random_curves(items: Sequence[Item], seeds: int = 20) -> list[Curve]:
    return [curve(items, [random.Random(seed).random() for _ in items]) for seed in range(seeds)]


def paired_bootstrap(items: Sequence[Item], ours: Sequence[float], theirs: Sequence[float], rounds: int) -> float:
    """Share of resamples of the test set on which our APGR beats theirs."""
    rng = random.Random(7)
    wins = 0
    for _ in range(rounds):
        pick = [rng.randrange(len(items)) for _ in items]
        sample = [items[i] for i in pick]
        try:
            wins += curve(sample, [ours[i] for i in pick]).apgr > curve(sample, [theirs[i] for i in pick]).apgr
        except ValueError:  # a resample with no gap to recover
            continue
    return wins / rounds


def report_set(name: str, items: list[Item], as_cline: bool, all_scorers: dict[str, Scorer], bootstrap: int) -> None:
    messages = requests(items, as_cline)
    hard = sum(item.needs_strong for item in items)
    print(f"\n== {name}: {len(items)} held-out asks ({hard} need the strong model)")
    print(f"{'scorer':<30}{'APGR':>7}{'50% gap':>9}{'80% gap':>9}   PGR at cloud share " + " ".join(f"{s:>5.0%}" for s in SHARES))
    scores: dict[str, list[float]] = {}
    for label, scorer in all_scorers.items():
        scores[label] = [scorer(m) for m in messages]
        _print_curve(label, curve(items, scores[label]))
    randoms = random_curves(items)
    mean = Curve(randoms[0].shares, [statistics.fmean(c.pgr[i] for c in randoms) for i in range(len(randoms[0].pgr))])
    _print_curve("random (mean of 20)", mean)
    if bootstrap:
        share = paired_bootstrap(items, scores["ours"], scores["litellm (default heuristic)"], bootstrap)
        print(f"ours beats litellm (default heuristic) on {share:.1%} of {bootstrap} bootstrap resamples")


def _print_curve(label: str, result: Curve) -> None:
    n = len(result.shares) - 1
    at = " ".join(f"{result.pgr[round(share * n)]:>5.2f}" for share in SHARES)
    print(f"{label:<30}{result.apgr:>7.3f}{result.share_to_recover(0.5):>9.1%}{result.share_to_recover(0.8):>9.1%}   {'':>19}{at}")


def timings(scorer: Scorer, requests_: Sequence[list[dict[str, Any]]], rounds: int) -> tuple[float, float]:
    times = []
    for i in range(rounds):
        messages = requests_[i % len(requests_)]
        tokens._counts.clear()  # every ask is new traffic: no cached token count
        began = time.perf_counter()
        scorer(messages)
        times.append(time.perf_counter() - began)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def report_timings(all_scorers: dict[str, Scorer], asks: Sequence[str], rounds: int) -> None:
    short = [[{"role": "user", "content": ask}] for ask in asks]
    big = [cline.vscode_task_of_size(ask, 60_000) for ask in asks[:50]]
    size = sum(len(t) for m in big[0] for t in ([m["content"]] if isinstance(m["content"], str) else [p["text"] for p in m["content"]]))
    print(f"\n== time per decision, ms (p50 / p99, {rounds} calls; the Cline request is {size / 1000:.0f} KB)")
    for label in ("ours", "litellm (default heuristic)"):
        scorer = all_scorers[label]
        for kind, batch in (("short asks", short), ("60 KB Cline request", big)):
            scorer(batch[0])  # warm up
            p50, p99 = timings(scorer, batch, rounds)
            print(f"{label:<30}{kind:<22}p50 {p50:6.3f}   p99 {p99:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=300, help="paired bootstrap resamples (0: skip)")
    parser.add_argument("--rounds", type=int, default=2000, help="timed calls per scorer and request shape")
    args = parser.parse_args()
    all_scorers = scorers()
    code_test = of_split(coding(), "test")
    report_set("MMLU held-out", of_split(mmlu(), "test"), False, all_scorers, args.bootstrap)
    report_set("coding-assistant asks held-out (as Cline requests)", code_test, True, all_scorers, args.bootstrap)
    report_timings(all_scorers, [item.text for item in code_test], args.rounds)


if __name__ == "__main__":
    main()
