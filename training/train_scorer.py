"""Train the learned half of the complexity score and write glm_saver/classifier/scorer_weights.json.

    python -m training.train_scorer [--out PATH] [--check]

What it fits: a logistic regression over the unit-length WordLlama embedding of the ask (256
numbers: what it is about) and the shape features of glm_saver/classifier/features.py (length,
lines, numbers, math, code, ...). At run time its logit, times a blend weight, is added to the
rules' evidence (keywords, length against token_threshold, regex rules), so a configured keyword
moves the score by exactly its weight. Beside it, the kind of ask (glm_saver/classifier/kinds.py:
the share of reasoning, code and math by likeness to fixed descriptions, not fitted) is added
with one weight, chosen like the blend. The model is fitted on its own, not on top of the rules:
fitted on top, it learned to undo the rules where they misjudge its training sources, which then
turned the rules around on a source it had not seen (coding asks held out: APGR 0.52 against the
rules' 0.70). The blend weight is chosen with the ridge.

Sources, and why they are combined this way (pooling them naively hurt in the feasibility study):
- each source weighs the same in total, whatever its size (MMLU has 11,000 training asks, the
  coding set 170), and its targets are its own measured labels: correctness (MMLU: the weak model
  wrong and the strong right), our rubric (coding), the share of weak models a judge ranked below
  the strong one (Arena-Hard);
- each source has its own intercept while fitting: sources differ in base rate and look, and a
  shared intercept would teach the model "MMLU-looking asks are hard" rather than what makes an
  ask harder than others of its kind. The shipped intercept is the coding set's (our traffic);
- a strong ridge on the embedding weights, the blend weight and the kind weight, chosen by leave-one-source-out
  among the training sources: the setting that ranks an unseen source best (rules + blend x model),
  never by the source a bench run holds out.
Only sources whose licence allows it are fitted (training/datasets.py SHIPPABLE); AlpacaEval
(CC BY-NC) is for evaluation only. Deterministic: the same data gives the same file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from glm_saver.classifier.calibration import quantile
from glm_saver.classifier.features import DENSE_NAMES, extract
from glm_saver.classifier.kinds import kinds
from glm_saver.classifier.learned import FORMAT, LearnedModel
from glm_saver.classifier.rules import ComplexityClassifier
from glm_saver.classifier.semantic import embedder, embedding_text
from glm_saver.settings import ClassifierSettings
from training.datasets import REPO, SHIPPABLE, Item, coding, mmlu, preferences
from training.metrics import curve

OUT = REPO / "glm_saver" / "classifier" / "scorer_weights.json"
# Ridge per standardised unit (sample weights sum to 1), searched for the embedding weights.
SEMANTIC_L2 = (0.1, 1.0)
BLEND = (0.1, 0.25, 0.5, 1.0)
# Logit units per unit of the hard kinds' share (0 .. 1); 0 leaves the kind out.
KIND_WEIGHT = (0.0, 1.0, 2.0, 4.0, 8.0)
DENSE_L2 = 0.01
NEWTON_STEPS = 15
# Features whose "no signal" value is the typical ask rather than 0.
CENTRED = {"log_chars"}
DIGITS = 5
# The intercept that ships: the product's traffic is coding asks.
HOME_SOURCE = "coding"


def training_items(source: str, without_groups: Sequence[str] = ()) -> list[Item]:
    """What a source contributes to fitting: its train+val splits (test stays for the bench).

    `without_groups` drops whole groups (MMLU subjects) the bench holds out as a source of their own.
    """
    if source == "mmlu":
        return [item for item in mmlu() if item.split != "test" and item.group not in without_groups]
    if source == "coding":
        return [item for item in coding() if item.split != "test"]
    return preferences(source)


@dataclass
class Encoded:
    """Items as arrays: shape features, embedding, hard kinds' share, rule offset (default rules), target."""

    items: list[Item]
    dense: np.ndarray
    semantic: np.ndarray
    kind: np.ndarray
    offset: np.ndarray
    target: np.ndarray


@lru_cache(maxsize=1)
def _rules() -> ComplexityClassifier:
    return ComplexityClassifier(ClassifierSettings(learned_model=False))


def encode(items: Sequence[Item]) -> Encoded:
    vectors = embedder()
    semantic = np.array([vectors.vector(embedding_text(item.text, "")) for item in items], dtype=np.float64)
    return Encoded(
        items=list(items),
        dense=np.array([[extract(item.text).dense[name] for name in DENSE_NAMES] for item in items], dtype=np.float64),
        semantic=semantic,
        kind=np.array([kinds().hard_share(vector) for vector in semantic], dtype=np.float64),
        offset=np.array([sum(w for w, _ in _rules().rule_evidence(item.text)) for item in items], dtype=np.float64),
        target=np.array([min(1.0, max(0.0, item.gain)) for item in items], dtype=np.float64),
    )


@dataclass
class Fit:
    mean: np.ndarray  # of the features (dense, then semantic)
    scale: np.ndarray
    intercepts: dict[str, float]  # per training source
    weights: np.ndarray  # per standardised unit
    l2: float
    blend: float = 1.0  # the model's logit is scaled by this before it is added to the rules
    kind_weight: float = 0.0  # logit per unit of the hard kinds' share, added beside the model
    # The typical training ask's hard share: the kind is measured from it, so adding it leaves the
    # default threshold where it was for a typical ask (a chat ask pulls down, a puzzle pushes up).
    kind_reference: float = 0.0

    def logit(self, data: Encoded, source: str | None = None) -> np.ndarray:
        """The classifier's logit: the rules' evidence, the kind of ask and the blended model."""
        bias = self.intercepts.get(source or HOME_SOURCE, float(np.mean(list(self.intercepts.values()))))
        model = bias + ((np.column_stack([data.dense, data.semantic]) - self.mean) / self.scale) @ self.weights
        return data.offset + self.kind_weight * (data.kind - self.kind_reference) + self.blend * model


def fit(sources: Mapping[str, Encoded], semantic_l2: float) -> Fit:
    """Weighted logistic regression (Newton's method), one intercept per source."""
    names = sorted(sources)
    x = np.vstack([np.column_stack([sources[n].dense, sources[n].semantic]) for n in names])
    target = np.concatenate([sources[n].target for n in names])
    weights = np.concatenate([np.full(len(sources[n].items), 1.0 / len(sources[n].items)) for n in names]) / len(names)
    onehot = np.vstack([np.tile(np.eye(len(names))[k], (len(sources[n].items), 1)) for k, n in enumerate(names)])
    mean = weights @ x
    scale = np.sqrt(weights @ (x - mean) ** 2) + 1e-9
    z = np.column_stack([onehot, (x - mean) / scale])
    ridge = np.concatenate([np.zeros(len(names)), np.full(len(DENSE_NAMES), DENSE_L2), np.full(x.shape[1] - len(DENSE_NAMES), semantic_l2)])
    params = np.zeros(z.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(z @ params)))
        grad = z.T @ (weights * (p - target)) + ridge * params
        hessian = (z * (weights * p * (1 - p))[:, None]).T @ z + np.diag(ridge)
        params -= np.linalg.solve(hessian, grad)
    intercepts = {n: float(params[k]) for k, n in enumerate(names)}
    return Fit(mean, scale, intercepts, params[len(names) :], semantic_l2)


def apgr(data: Encoded, scores: np.ndarray) -> float:
    return curve(data.items, [float(s) for s in scores]).apgr


def choose(sources: Mapping[str, Encoded], log: bool = True) -> tuple[float, float, float]:
    """The (ridge, blend, kind weight) that ranks a source left out of fitting best, on average over the sources."""
    if len(sources) < 2:
        return SEMANTIC_L2[-1], BLEND[0], KIND_WEIGHT[0]  # nothing to hold out: the most cautious setting
    best: tuple[float, float, float, float] | None = None
    for l2 in SEMANTIC_L2:
        models = {held: fit({n: d for n, d in sources.items() if n != held}, l2) for held in sorted(sources)}
        for blend in BLEND:
            for kind_weight in KIND_WEIGHT:
                figures = {}
                for held, model in models.items():
                    model.blend, model.kind_weight = blend, kind_weight
                    figures[held] = apgr(sources[held], model.logit(sources[held]))
                mean = sum(figures.values()) / len(figures)
                if log:
                    print(
                        f"  l2 {l2} blend {blend} kind {kind_weight}: leave-one-source-out APGR " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()),
                        file=sys.stderr,
                    )
                if best is None or mean > best[0]:
                    best = (mean, l2, blend, kind_weight)
    assert best is not None
    return best[1], best[2], best[3]


def train(sources: Mapping[str, Encoded], log: bool = True) -> Fit:
    """Pick ridge, blend and kind weight by leave-one-source-out among these sources, then fit on all of them."""
    l2, blend, kind_weight = choose(sources, log)
    model = fit(sources, l2)
    model.blend, model.kind_weight = blend, kind_weight
    # Each source weighs the same, as in fitting.
    model.kind_reference = round(float(np.mean([data.kind.mean() for data in sources.values()])), DIGITS)
    return model


def to_json(model: Fit, info: dict) -> dict:
    """Per-unit weights, each measured from a reference value at which it says nothing.

    The reference is 0 (absent) for counts, and the training mean for the length and the meaning,
    so an absent feature never shows up as a reason and "ask length (-0.3)" means shorter than usual.
    """
    per_unit = model.blend * model.weights / model.scale
    n_dense = len(DENSE_NAMES)
    reference = np.array([model.mean[i] if name in CENTRED else 0.0 for i, name in enumerate(DENSE_NAMES)])
    semantic = per_unit[n_dense:]
    semantic_reference = float(semantic @ model.mean[n_dense:])
    # logit = offset + b + sum(w (x - mean)) = offset + intercept + sum(w (x - reference)) + (w.e - semantic_reference)
    bias = model.blend * (model.intercepts[HOME_SOURCE] if HOME_SOURCE in model.intercepts else float(np.mean(list(model.intercepts.values()))))
    bias += float(per_unit[:n_dense] @ (reference - model.mean[:n_dense]))
    dense = {
        name: {"weight": round(float(w), DIGITS), "reference": round(float(r), DIGITS)}
        for name, w, r in zip(DENSE_NAMES, per_unit[:n_dense], reference, strict=True)
    }
    return {
        "format": FORMAT,
        "intercept": round(bias, DIGITS),
        "dense": dense,
        "semantic": {"reference": round(semantic_reference, DIGITS), "weights": [round(float(w), DIGITS) for w in semantic]},
        "kind": {"weight": model.kind_weight, "reference": model.kind_reference},
        "info": info,
    }


def classifier_of(weights: dict) -> ComplexityClassifier:
    return ComplexityClassifier(ClassifierSettings(), LearnedModel(weights))


def check_runtime_agrees(weights: dict, data: Encoded, model: Fit) -> None:
    """The shipped JSON, read by the runtime scorer, must give the fitted logits."""
    classifier = classifier_of(weights)
    for item, expected in list(zip(data.items, model.logit(data), strict=True))[::25]:
        score, _ = classifier.score_text(item.text)
        got = math.log(score / (1 - score)) if 0 < score < 1 else expected
        if abs(got - expected) > 0.01:  # rounding of the shipped weights
            raise SystemExit(f"runtime scorer disagrees with training: logit {got:.4f} vs {expected:.4f}")


@cache
def encoded_source(name: str, without_groups: tuple[str, ...] = ()) -> Encoded:
    return encode(training_items(name, without_groups))


def shipped(sources: Sequence[str] = SHIPPABLE, log: bool = True, without_groups: tuple[str, ...] = ()) -> dict:
    """The weights file's content, fitted on `sources` (their train+val splits, less `without_groups`)."""
    encoded = {name: encoded_source(name, without_groups if name == "mmlu" else ()) for name in sources}
    model = train(encoded, log)
    info = {
        "trained_by": "training/train_scorer.py",
        "sources": {name: len(data.items) for name, data in encoded.items()},
        "semantic_l2": model.l2,
        "blend": model.blend,
        "kind_weight": model.kind_weight,
        "embedding": "wordllama==0.4.0.post1 l2_supercat_256, unit-length mean of token vectors",
    }
    weights = to_json(model, info)
    home = encoded.get(HOME_SOURCE) or next(iter(encoded.values()))
    check_runtime_agrees(weights, home, model)
    if HOME_SOURCE in encoded:
        # The default calibration sample for target_cloud_share: scores of the train+val coding asks.
        classifier = classifier_of(weights)
        reference = [classifier.score_text(item.text)[0] for item in encoded[HOME_SOURCE].items]
        weights["reference_quantiles"] = [round(quantile(reference, q / 100), 4) for q in range(101)]
    return weights


def render(weights: dict) -> str:
    return json.dumps(weights, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="do not write: fail if the file differs from a fresh fit")
    args = parser.parse_args(argv)
    text = render(shipped())
    if args.check:
        same = args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'reproduced byte for byte' if same else 'DIFFERS from a fresh fit'}", file=sys.stderr)
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
