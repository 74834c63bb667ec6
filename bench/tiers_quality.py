"""Three tiers against two at equal cost: the local model, a cheap cloud model and the strong one.

    python bench/tiers_quality.py [--bootstrap 1000] [--output-tokens 1000]

(bench/routing_quality.py runs it at the end.) The sources are the judge-preference files with
labels for several models on every prompt (shared/data/router-preferences). Each source's tiers are
models the training code counts as informative (training/datasets.py: they lose on at most 85% of
the prompts); the quality of a tier on a prompt is 1 - weak_lost, averaged over the tier's models,
and the strong reference counts as 1:
- arena_hard (500 prompts): local = the four informative Llama-3-Base-8B preference-tuned
  checkpoints, their verdicts averaged (an 8B model is what runs locally; the checkpoints are one
  model family and strongly correlated, so one alone would only add judge noise; the SFT one loses
  on 93% and is not informative); cheap = gpt-3.5-turbo-0125 (a cheap API model, the strongest
  weak model in the file); strong = the reference GPT-4-0314.
- alpaca_eval (800 prompts; CC BY-NC: evaluation only, nothing here is fitted on it):
  local = FuseChat-Llama-3.2-1B-Instruct (small enough for any laptop); cheap =
  FuseChat-Qwen-2.5-7B-Instruct (the strongest weak model in the file); strong = the reference GPT-4
  Turbo. Both FuseChat models come from the same recipe and the same annotator, so the step between
  them is the model, not the judge (Mistral-7B and Mixtral were judged by other annotators).
The cheap tier stands in for Cerebras' gpt-oss-120b, which sits between a small local model and
GLM-4.7 as these models sit between the local one and the reference; none of them is that model.

Cost of a prompt per tier: local 0; cheap at LiteLLM's bundled price of cerebras/gpt-oss-120b
($0.35 / $0.75 per M tokens); strong at the shipped litellm_config.yaml's `cerebras` price
(zai-glm-4.7, $2.25 / $2.75). Prompt tokens are the project's count of the request
(glm_saver.request.prompt_tokens); the files hold no answers, so every answer is assumed to be
`--output-tokens` long (answer plus reasoning, the same for both cloud tiers). Costs are reported
as a share of sending every prompt to the strong tier.

The score is the new router held out from the source: on alpaca_eval the shipped weights (fitted on
MMLU, coding and Arena-Hard, never on AlpacaEval); on arena_hard the router refitted without
Arena-Hard, as bench/routing_quality.py does. Banding: the top of the scores goes to a paid band;
the top `strong part` of the band goes to the strong tier, the rest of it to the cheap one (strong
part 1 is today's two tiers). For each cost budget:
- two-tier: the paid band that spends the budget, all of it strong;
- three-tier, part from the other source: the strong part that gave the best quality at this
  budget on the *other* source (so nothing is tuned on the source reported);
- three-tier, part from tier means: the part random routing does best with on this source, which
  needs only each tier's mean quality and price (what a benchmark of the tiers on your traffic
  would tell an operator), not the router's scores; re-chosen in every bootstrap resample;
- the part that is best for the router on the source itself, as an upper line (tuned);
- random scores (with the best strong part for three tiers) and an oracle that knows the labels
  (per prompt the best step in quality per dollar: the linear-programming bound) as references.
At equal quality: Q = the quality of two-tier with 50% of the prompts sent to the strong tier, the
cost three-tier needs to reach it (its part chosen by the same rules: the least cost to Q) and the
share of cost saved. Ties in the score are routed as a block in expectation, as
training/metrics.py does. 95% intervals: bootstrap over the prompts (the same resamples for every
line: paired); the part from the other source is held fixed in the resamples.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import routing_quality
from glm_saver.classifier import ComplexityClassifier
from glm_saver.deployments import Prices, group_prices
from glm_saver.request import prompt_tokens
from training.datasets import EVALUATION_ONLY, PREFERENCES_DIR, _informative_models

LOCAL, CHEAP, STRONG = 0, 1, 2
# Cost budgets, as a share of what sending every prompt to the strong tier costs.
BUDGETS = (0.1, 0.2, 0.3, 0.5, 0.7)
# Strong parts of the paid band tried (1.0: two tiers).
STRONG_PARTS = tuple(round(part, 2) for part in np.linspace(0.0, 1.0, 21))
# Equal quality is taken at two-tier with this share of the prompts sent to the strong tier.
REFERENCE_STRONG_SHARE = 0.5
DEFAULT_OUTPUT_TOKENS = 1000
LABEL, WIDTH = 42, 17


@dataclass(frozen=True)
class TierModels:
    local: tuple[str, ...]  # several: their verdicts are averaged
    cheap: tuple[str, ...]


SOURCES = {
    "arena_hard": TierModels(
        local=(
            "Llama-3-Base-8B-DPO-UltraFeedback",
            "Llama-3-Base-8B-IPO-UltraFeedback",
            "Llama-3-Base-8B-TR_DPO-Alpha_0.6-UltraFeedback",
            "Llama-3-Base-8B-TR_DPO-Tau_256-UltraFeedback",
        ),
        cheap=("gpt-3.5-turbo-0125",),
    ),
    "alpaca_eval": TierModels(local=("FuseChat-Llama-3.2-1B-Instruct",), cheap=("FuseChat-Qwen-2.5-7B-Instruct",)),
}


@dataclass(frozen=True)
class Tiers:
    """Per tier (rows: local, cheap, strong) and prompt (columns): the answer's quality and its cost."""

    quality: np.ndarray
    cost: np.ndarray

    def take(self, pick: np.ndarray) -> Tiers:
        return Tiers(self.quality[:, pick], self.cost[:, pick])

    def relative(self) -> Tiers:
        """Costs in units of the mean cost of the strong tier (1.0 = every prompt to the strong tier)."""
        return Tiers(self.quality, self.cost / self.cost[STRONG].mean())


@dataclass(frozen=True)
class Curve:
    """Mean cost and mean quality per prompt at each point of a routing family (cost increasing)."""

    cost: np.ndarray
    quality: np.ndarray

    def quality_at(self, budget: float) -> float:
        """The quality of the point that spends `budget` (linear between points; the last if it cannot)."""
        return float(np.interp(budget, self.cost, self.quality))

    def cost_to_reach(self, target: float) -> float:
        """The least cost at which the quality reaches `target` (linear between points; nan if never)."""
        reached = np.flatnonzero(self.quality >= target - 1e-12)
        if len(reached) == 0:
            return math.nan
        i = int(reached[0])
        if i == 0:
            return float(self.cost[0])
        low, high = self.quality[i - 1], self.quality[i]
        return float(self.cost[i - 1] + (target - low) / (high - low) * (self.cost[i] - self.cost[i - 1]))


def _tie_means(ranked: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each run of equal scores gets its mean values: what a random order within the tie gives on average."""
    starts = np.flatnonzero(np.concatenate([[True], ranked[1:] != ranked[:-1]]))
    sizes = np.diff(np.append(starts, len(ranked)))
    return np.repeat(np.add.reduceat(values, starts, axis=1) / sizes, sizes, axis=1)


def banded(scores: np.ndarray, tiers: Tiers, strong_part: float) -> Curve:
    """Route the top k scores to the paid band, for k = 0 .. n prompts: its top round(strong_part * k) to
    the strong tier, the rest of it to the cheap one, every other prompt to local."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    paid = np.arange(n + 1)
    strong = np.floor(strong_part * paid + 0.5).astype(int)

    def mean_over_prompts(values: np.ndarray) -> np.ndarray:
        ranked = _tie_means(scores[order], values[:, order])
        upto = np.concatenate([np.zeros((3, 1)), np.cumsum(ranked, axis=1)], axis=1)
        return (upto[STRONG, strong] + upto[CHEAP, paid] - upto[CHEAP, strong] + upto[LOCAL, n] - upto[LOCAL, paid]) / n

    return Curve(mean_over_prompts(tiers.cost), mean_over_prompts(tiers.quality))


def oracle(tiers: Tiers, usable: Sequence[int] = (LOCAL, CHEAP, STRONG)) -> Curve:
    """The most quality any routing among `usable` tiers (local among them) gets for each cost.

    Per prompt, the steps along the upper hull of its (cost, quality) options from local; all steps
    taken in order of quality gained per dollar (fractional at the budget: the linear-programming bound).
    """
    steps: list[tuple[float, float, float]] = []  # (gain per dollar, extra cost, extra quality)
    quality, cost = tiers.quality, tiers.cost
    for i in range(quality.shape[1]):
        at = LOCAL
        while True:
            better = [(t, quality[t, i] - quality[at, i], cost[t, i] - cost[at, i]) for t in usable]
            rates = [(gain / extra, t) for t, gain, extra in better if gain > 0 and extra > 0]
            if not rates:
                break
            rate, step_to = max(rates)
            steps.append((rate, cost[step_to, i] - cost[at, i], quality[step_to, i] - quality[at, i]))
            at = step_to
    steps.sort(key=lambda step: -step[0])
    n = quality.shape[1]
    extra_cost = np.concatenate([[0.0], np.cumsum([step[1] for step in steps])])
    extra_quality = np.concatenate([[0.0], np.cumsum([step[2] for step in steps])])
    return Curve(extra_cost / n, (quality[LOCAL].sum() + extra_quality) / n)


def best_part(curves: dict[float, Curve], objective: Callable[[Curve], float], lowest: bool = False) -> float:
    """The strong part whose curve has the highest (or `lowest`) `objective`; nan (cannot) never wins."""
    sign = -1.0 if lowest else 1.0

    def value(part: float) -> float:
        result = objective(curves[part])
        return -math.inf if math.isnan(result) else sign * result

    return max(curves, key=value)


def reference_point(two_tier: Curve) -> tuple[float, float]:
    """(cost, quality) of two-tier routing with REFERENCE_STRONG_SHARE of the prompts sent strong."""
    at = REFERENCE_STRONG_SHARE * (len(two_tier.cost) - 1)
    points = np.arange(len(two_tier.cost))
    return float(np.interp(at, points, two_tier.cost)), float(np.interp(at, points, two_tier.quality))


@dataclass(frozen=True)
class Source:
    name: str
    models: TierModels
    strong: str
    tiers: Tiers  # costs in USD
    scores: np.ndarray
    dropped: int
    mean_prompt_tokens: float

    def curves(self) -> dict[float, Curve]:
        """The router's curve for every strong part (costs relative to always-strong)."""
        tiers = self.tiers.relative()
        return {part: banded(self.scores, tiers, part) for part in STRONG_PARTS}

    def target(self) -> float:
        """Q: the quality of two-tier routing by the router with REFERENCE_STRONG_SHARE of prompts strong."""
        return reference_point(self.curves()[1.0])[1]


@dataclass(frozen=True)
class Rule:
    """How a three-tier router picks its strong part: one per budget, one for reaching Q."""

    label: str
    parts: list[float]
    reference_part: float


# Picks a rule for a sample of prompts (tiers with relative costs) and its quality Q.
Chooser = Callable[[Tiers, float], Rule]


def chosen(label: str, curves: dict[float, Curve], target: float) -> Rule:
    """The parts that do best on `curves`: the most quality at each budget, the least cost to reach `target`."""
    parts = [best_part(curves, lambda c, b=budget: c.quality_at(b)) for budget in BUDGETS]
    return Rule(label, parts, best_part(curves, lambda c: c.cost_to_reach(target), lowest=True))


def random_curves(tiers: Tiers) -> dict[float, Curve]:
    """Random routing for every strong part (one tie: every prompt gets the mean of each tier)."""
    return {part: banded(np.zeros(tiers.quality.shape[1]), tiers, part) for part in STRONG_PARTS}


def by_tier_means(tiers: Tiers, target: float) -> Rule:
    """The parts random routing does best with: they know the tiers' mean quality and price, not the scores."""
    return chosen("part from tier means+", random_curves(tiers), target)


def fixed(rule: Rule) -> Chooser:
    return lambda tiers, target: rule


def prices() -> tuple[Prices, Prices]:
    """(cheap, strong): LiteLLM's bundled price of cerebras/gpt-oss-120b, the shipped config's `cerebras`."""
    config = yaml.safe_load((REPO / "litellm_config.yaml").read_text(encoding="utf-8"))
    strong = group_prices(config, "cerebras")
    cheap = group_prices({"model_list": [{"model_name": "cheap", "litellm_params": {"model": "cerebras/gpt-oss-120b"}}]}, "cheap")
    return cheap, strong


def load(name: str, router: ComplexityClassifier, cheap: Prices, strong: Prices, output_tokens: int) -> Source:
    rows = [json.loads(line) for line in (PREFERENCES_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    models = SOURCES[name]
    informative = _informative_models(rows)
    not_informative = [model for model in (*models.local, *models.cheap) if model not in informative]
    if not_informative:
        raise ValueError(f"{name}: tier models {not_informative} are not informative (training/datasets.py INFORMATIVE_BASE_RATE)")
    quality, cost, scores, tokens = [], [], [], []
    for row in rows:
        lost = [[row["labels"][m] for m in tier if m in row["labels"]] for tier in (models.local, models.cheap)]
        if not all(lost):
            continue
        messages = [{"role": "user", "content": row["prompt"]}]
        tokens.append(prompt_tokens(messages))
        quality.append([1 - sum(v) / len(v) for v in lost] + [1.0])
        cost.append([0.0, cheap.cost(tokens[-1], output_tokens), strong.cost(tokens[-1], output_tokens)])
        scores.append(router.classify(messages).score)
    tiers = Tiers(np.array(quality).T, np.array(cost).T)
    return Source(name, models, rows[0]["strong"], tiers, np.array(scores), len(rows) - len(scores), float(np.mean(tokens)))


def held_out_router(name: str, refit: Callable[[str], ComplexityClassifier]) -> ComplexityClassifier:
    """The shipped weights were never fitted on an evaluation-only source; any other is refitted without."""
    return ComplexityClassifier() if name in EVALUATION_ONLY else refit(name)


@dataclass(frozen=True)
class Figures:
    """What is reported with an interval, for one sample of prompts."""

    rule: Rule
    two_tier: np.ndarray  # quality per budget
    three_tier: np.ndarray  # quality per budget, with the rule's strong parts
    reference_cost: float  # two-tier's cost at REFERENCE_STRONG_SHARE
    three_tier_cost: float  # three-tier's cost to reach two-tier's quality there

    @property
    def saved(self) -> float:
        return 1 - self.three_tier_cost / self.reference_cost


def figures(scores: np.ndarray, tiers: Tiers, choose: Chooser) -> Figures:
    tiers = tiers.relative()
    two_tier = banded(scores, tiers, 1.0)
    reference_cost, target = reference_point(two_tier)
    rule = choose(tiers, target)
    curves = {part: banded(scores, tiers, part) for part in {rule.reference_part, *rule.parts}}
    return Figures(
        rule=rule,
        two_tier=np.array([two_tier.quality_at(b) for b in BUDGETS]),
        three_tier=np.array([curves[part].quality_at(b) for part, b in zip(rule.parts, BUDGETS, strict=True)]),
        reference_cost=reference_cost,
        three_tier_cost=curves[rule.reference_part].cost_to_reach(target),
    )


def resampled(source: Source, choose: Chooser, rounds: int) -> list[Figures]:
    """Figures on `rounds` resamples of the prompts (the same ones for every chooser: paired); the
    chooser is applied to each resample, so a rule that depends on the sample is re-chosen in it."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(rounds):
        pick = rng.integers(0, len(source.scores), len(source.scores))
        out.append(figures(source.scores[pick], source.tiers.take(pick), choose))
    return out


def _cells(values: Sequence[float], fmt: str = ".3f") -> str:
    return "".join(f"{'never' if math.isnan(v) else format(v, fmt):>{WIDTH}}" for v in values)


def _interval(values: np.ndarray) -> str:
    """routing_quality's 95% interval, over the resamples where the figure exists ("never" in none)."""
    values = values[~np.isnan(values)]
    return routing_quality.interval(values) if len(values) else "never"


def _intervals(samples: np.ndarray) -> str:
    return "".join(f"{_interval(column):>{WIDTH}}" for column in samples.T)


def min_cost(curves: Sequence[Curve], target: float) -> float:
    costs = [c.cost_to_reach(target) for c in curves if not math.isnan(c.cost_to_reach(target))]
    return min(costs) if costs else math.nan


def reference_lines(source: Source, target: float) -> list[tuple[str, list[float], float]]:
    """(label, quality per budget, cost to reach `target`) of the lines without an interval."""
    tuned, random = list(source.curves().values()), list(random_curves(source.tiers.relative()).values())
    lines = [
        ("router, three-tier, best part here*", [max(c.quality_at(b) for c in tuned) for b in BUDGETS], min_cost(tuned, target)),
        ("random, two-tier", [random[-1].quality_at(b) for b in BUDGETS], random[-1].cost_to_reach(target)),
        ("random, three-tier, best part*", [max(c.quality_at(b) for c in random) for b in BUDGETS], min_cost(random, target)),
    ]
    tiers = source.tiers.relative()
    for label, usable in (("oracle, two-tier", (LOCAL, STRONG)), ("oracle, three-tier", (LOCAL, CHEAP, STRONG))):
        best = oracle(tiers, usable)
        lines.append((label, [best.quality_at(b) for b in BUDGETS], best.cost_to_reach(target)))
    return lines


def _names(models: Sequence[str]) -> str:
    return models[0] if len(models) == 1 else f"{len(models)} models averaged ({', '.join(models)})"


def describe(source: Source, output_tokens: int) -> None:
    quality = source.tiers.quality.mean(axis=1)
    usd = source.tiers.cost.mean(axis=1) * 1000
    print(f"\n== three tiers on {source.name}: {len(source.scores)} prompts ({source.dropped} without labels for every tier left out)")
    print(f"  local  quality {quality[LOCAL]:.3f}: {_names(source.models.local)}")
    print(f"  cheap  quality {quality[CHEAP]:.3f}: {_names(source.models.cheap)}, ${usd[CHEAP]:.2f} per 1,000 prompts")
    print(f"  strong quality 1: {source.strong}, ${usd[STRONG]:.2f} per 1,000 prompts")
    print(
        f"  mean prompt {source.mean_prompt_tokens:.0f} tokens, every answer assumed {output_tokens} tokens: cheap costs {usd[CHEAP] / usd[STRONG]:.0%} of strong"
    )


def _row(label: str, cells: str) -> None:
    print(f"{label:<{LABEL}}{cells}")


def report_rule(source: Source, choose: Chooser, rounds: int) -> None:
    """The three-tier router under a rule against two-tier, paired, and the cost it saves at equal quality."""
    point, samples = figures(source.scores, source.tiers, choose), resampled(source, choose, rounds)
    two, three = np.array([s.two_tier for s in samples]), np.array([s.three_tier for s in samples])
    _row(f"router, three-tier, {point.rule.label}", _cells(point.three_tier) + _cells([point.three_tier_cost]))
    _row("  95%", _intervals(three) + _intervals(np.array([[s.three_tier_cost] for s in samples])))
    _row("  strong part of the paid band", _cells(point.rule.parts, ".2f") + _cells([point.rule.reference_part], ".2f"))
    _row("  three-tier - two-tier (paired)", _cells(point.three_tier - point.two_tier, "+.3f"))
    _row("  95%", _intervals(three - two))
    saved = np.array([s.saved for s in samples])
    _row(
        "  share of the cost saved at Q",
        f"{_cells([point.saved])}  95% {_interval(saved)} (Q reached in {np.mean(~np.isnan(saved)):.0%} of {rounds} resamples)",
    )


def report_source(source: Source, other: Source, rounds: int, output_tokens: int) -> None:
    describe(source, output_tokens)
    target = source.target()
    from_other = chosen(f"part from {other.name}", other.curves(), other.target())
    print(f"Quality at a cost budget, and the cost to reach Q = {target:.3f} (two-tier router, {REFERENCE_STRONG_SHARE:.0%} of prompts strong);")
    print("costs are shares of sending every prompt to the strong tier:")
    _row("", "".join(f"{'budget ' + format(b, '.2f'):>{WIDTH}}" for b in BUDGETS) + f"{'cost for Q':>{WIDTH}}")
    two_tier = fixed(Rule("two-tier", [1.0] * len(BUDGETS), 1.0))  # no cheap part: two tiers
    point, samples = figures(source.scores, source.tiers, two_tier), resampled(source, two_tier, rounds)
    _row("router, two-tier", _cells(point.two_tier) + _cells([point.reference_cost]))
    _row("  95%", _intervals(np.array([s.two_tier for s in samples])) + _intervals(np.array([[s.reference_cost] for s in samples])))
    for choose in (fixed(from_other), by_tier_means):
        report_rule(source, choose, rounds)
    for label, values, cost in reference_lines(source, target):
        _row(label, _cells(values) + _cells([cost]))
    print("+ chosen in each resample from its mean quality per tier and prices (random routing's best parts), not from the router's scores")
    print("* tuned on this source: an upper line, not a result")


def report(rounds: int = 1000, output_tokens: int = DEFAULT_OUTPUT_TOKENS, refit: Callable[[str], ComplexityClassifier] | None = None) -> None:
    refit = refit or routing_quality.new_router_without
    cheap, strong = prices()
    sources = [load(name, held_out_router(name, refit), cheap, strong, output_tokens) for name in SOURCES]
    print(
        f"\n== three tiers against two (prices per M tokens: cheap ${cheap.input * 1e6:.2f} / ${cheap.output * 1e6:.2f}, strong ${strong.input * 1e6:.2f} / ${strong.output * 1e6:.2f})"
    )
    for source, other in zip(sources, sources[::-1], strict=True):
        report_source(source, other, rounds, output_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per source")
    parser.add_argument("--output-tokens", type=int, default=DEFAULT_OUTPUT_TOKENS, help="assumed tokens of every answer")
    args = parser.parse_args()
    report(args.bootstrap, args.output_tokens)


if __name__ == "__main__":
    main()
