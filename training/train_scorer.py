"""Train the learned half of the complexity score and write glm_saver/scorer_weights.json.

    python -m training.train_scorer [--out glm_saver/scorer_weights.json] [--quick]

What it fits: a logistic regression over the dense features of glm_saver/features.py plus one
"topic" feature (the mean over the ask's words of each word's smoothed log-odds of needing the
strong model), with the default rules' evidence (keywords, length, code blocks) as a fixed offset,
so the model learns what the rules miss and a configured keyword keeps its meaning. Words of the
default keyword lists are left out of the topic table: the rules own them. The topic feature of a
training ask comes from a table built without that ask (5-fold), so the regression does not learn
to trust a feature that has seen the label.

Data (training/datasets.py): MMLU with per-model correctness (label: the weak model is wrong and the
strong one right) and our coding-assistant asks (label: hard). Each set is class-balanced and the
two sets are weighted against each other by a hyperparameter. The `train` split fits, the `val`
split picks the hyperparameters, then the chosen setting is refit on train + val. The `test` split
is never read here: bench/routing_quality.py reports on it.

Needs numpy (the `dev` extra); the runtime scorer does not.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glm_saver.classifier.rules import ComplexityClassifier
from glm_saver.classifier.calibration import quantile
from glm_saver.classifier.features import DENSE_NAMES, extract
from glm_saver.classifier.learned import LearnedModel, topic_value
from glm_saver.settings import DEFAULT_COMPLEXITY_KEYWORDS, DEFAULT_SIMPLE_KEYWORDS, ClassifierSettings
from training.datasets import REPO, Item, coding, mmlu, of_split
from training.metrics import curve

OUT = REPO / "glm_saver" / "classifier" / "scorer_weights.json"
# Function words inside keyword phrases ("what is", "add a comment") stay learnable.
_KEEP = {"a", "the", "is", "by", "you", "what", "s", "step"}
# Words too common to say anything about an ask's topic; they would only dilute the mean.
STOP_WORDS = frozenset(
    "a an the of to in on at by for from with as and or but if then than so is are was were be been being "
    "it its this that these those there here i me my we our us you your he she his her they them their "
    "do does did can could will would should shall may might must have has had not no yes".split()
)
GRID = {"coding_weight": [0.5, 1.0, 2.0], "smoothing": [30.0], "min_df": [3, 10], "neutral_words": [2.0, 5.0], "l2": [1e-3, 1e-2]}
QUICK_GRID = {"coding_weight": [1.0], "smoothing": [30.0], "min_df": [10], "neutral_words": [2.0], "l2": [1e-2]}
# Ridge on the weights per feature unit (sample weights sum to 1): a feature that is rare in the
# training data (say, one seen only in a handful of coding asks) cannot earn an extreme weight.
L2 = 1e-3
NEWTON_STEPS = 12
# Features whose "no signal" value is the typical ask rather than 0.
CENTRED = {"log_chars"}
DIGITS = 4


def rule_words() -> set[str]:
    words = set()
    for keyword in [*DEFAULT_COMPLEXITY_KEYWORDS, *DEFAULT_SIMPLE_KEYWORDS]:
        words.update(extract(keyword).words)
    return words - _KEEP


def untopical() -> set[str]:
    """Words the topic table leaves out: the rules' keywords and stop words."""
    return rule_words() | STOP_WORDS


@dataclass
class Encoded:
    """Items as arrays: dense features, word sets, rule offsets (default rules), labels, set names."""

    items: list[Item]
    dense: np.ndarray
    words: list[frozenset[str]]
    offset: np.ndarray
    label: np.ndarray
    kind: list[str]


def encode(items: Sequence[Item], kinds: Sequence[str]) -> Encoded:
    rules = ComplexityClassifier(ClassifierSettings(learned_model=False))
    features = [extract(item.text) for item in items]
    return Encoded(
        items=list(items),
        dense=np.array([[f.dense[name] for name in DENSE_NAMES] for f in features], dtype=np.float64),
        words=[f.words for f in features],
        offset=np.array([sum(w for w, _ in rules.rule_evidence(item.text)) for item in items]),
        label=np.array([1.0 if item.needs_strong else 0.0 for item in items]),
        kind=list(kinds),
    )


def concat(*parts: Encoded) -> Encoded:
    return Encoded(
        items=[i for p in parts for i in p.items],
        dense=np.vstack([p.dense for p in parts]),
        words=[w for p in parts for w in p.words],
        offset=np.concatenate([p.offset for p in parts]),
        label=np.concatenate([p.label for p in parts]),
        kind=[k for p in parts for k in p.kind],
    )


def sample_weights(data: Encoded, coding_weight: float) -> np.ndarray:
    """Each set class-balanced, summing to 1 (MMLU) and `coding_weight` (coding)."""
    weights = np.zeros(len(data.items))
    for kind, total in (("mmlu", 1.0), ("coding", coding_weight)):
        for label in (0.0, 1.0):
            mask = np.array([k == kind for k in data.kind]) & (data.label == label)
            if mask.any():
                weights[mask] = total / 2 / mask.sum()
    return weights / weights.sum()


def topic_table(data: Encoded, weights: np.ndarray, smoothing: float, min_df: int) -> dict[str, float]:
    """Each word's log-odds of needing the strong model, shrunk toward the base rate by `smoothing` asks."""
    banned = untopical()
    counts = Counter(word for words in data.words for word in words)
    positive: dict[str, float] = {}
    total: dict[str, float] = {}
    scale = len(data.items) / weights.sum()  # weights as ask counts, so `smoothing` means asks
    for words, label, weight in zip(data.words, data.label, weights * scale):
        for word in words:
            if counts[word] >= min_df and word not in banned and len(word) > 1:
                positive[word] = positive.get(word, 0.0) + weight * label
                total[word] = total.get(word, 0.0) + weight
    base = float((weights * data.label).sum() / weights.sum())
    prior = math.log(base / (1 - base))
    return {
        word: math.log((positive[word] + smoothing * base) / (total[word] - positive[word] + smoothing * (1 - base))) - prior
        for word in sorted(total)
    }


def out_of_fold_topic(data: Encoded, weights: np.ndarray, smoothing: float, min_df: int, neutral_words: float, folds: int = 5) -> np.ndarray:
    fold = np.arange(len(data.items)) % folds
    values = np.zeros(len(data.items))
    for k in range(folds):
        table = topic_table(subset(data, np.flatnonzero(fold != k)), weights[fold != k], smoothing, min_df)
        for i in np.flatnonzero(fold == k):
            values[i] = topic_value(data.words[i], table, neutral_words)
    return values


def subset(data: Encoded, index: np.ndarray) -> Encoded:
    return Encoded([data.items[i] for i in index], data.dense[index], [data.words[i] for i in index], data.offset[index], data.label[index], [data.kind[i] for i in index])


@dataclass
class Fit:
    table: dict[str, float]
    neutral_words: float
    mean: np.ndarray  # of the dense features, then the topic
    scale: np.ndarray
    bias: float
    weights: np.ndarray  # per standardised unit

    def logit(self, data: Encoded, topic: np.ndarray | None = None) -> np.ndarray:
        topic = np.array([topic_value(words, self.table, self.neutral_words) for words in data.words]) if topic is None else topic
        z = (np.column_stack([data.dense, topic]) - self.mean) / self.scale
        return data.offset + self.bias + z @ self.weights


def fit(data: Encoded, coding_weight: float, smoothing: float, min_df: int, neutral_words: float, l2: float = L2) -> Fit:
    """Weighted logistic regression (Newton's method) with the rule evidence as offset."""
    weights = sample_weights(data, coding_weight)
    x = np.column_stack([data.dense, out_of_fold_topic(data, weights, smoothing, min_df, neutral_words)])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.column_stack([np.ones(len(x)), (x - mean) / scale])
    params = np.zeros(z.shape[1])
    ridge = np.concatenate([[0.0], l2 * scale**-2])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(data.offset + z @ params)))
        grad = z.T @ (weights * (p - data.label)) + ridge * params
        hessian = (z * (weights * p * (1 - p))[:, None]).T @ z + np.diag(ridge)
        params -= np.linalg.solve(hessian, grad)
    return Fit(topic_table(data, weights, smoothing, min_df), neutral_words, mean, scale, float(params[0]), params[1:])


def apgr(items: Sequence[Item], scores: Sequence[float]) -> float:
    return curve(items, list(scores)).apgr


def to_json(model: Fit, info: dict) -> dict:
    """Per-unit weights, each measured from a reference value at which it says nothing.

    The reference is 0 (absent) for counts and the topic, and the training mean for the length,
    so an absent feature never shows up as a reason and "ask length (-0.3)" means shorter than usual.
    """
    per_unit = model.weights / model.scale
    names = [*DENSE_NAMES, "topic"]
    reference = {name: (float(model.mean[i]) if name in CENTRED else 0.0) for i, name in enumerate(names)}
    bias = model.bias + sum(w * (reference[name] - m) for name, w, m in zip(names, per_unit, model.mean))
    dense = {name: {"weight": round(float(w), DIGITS), "reference": round(reference[name], DIGITS)} for name, w in zip(DENSE_NAMES, per_unit[:-1])}
    topic = {"weight": round(float(per_unit[-1]), DIGITS), "neutral_words": model.neutral_words, "words": {w: round(v, 3) for w, v in model.table.items()}}
    return {"format": 1, "intercept": round(float(bias), DIGITS), "dense": dense, "topic": topic, "info": info}


def search(train: Encoded, val_sets: dict[str, Encoded], grid: dict[str, list]) -> tuple[dict, dict[str, float]]:
    best: tuple[float, dict, dict[str, float]] | None = None
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        model = fit(train, **setting)
        figures = {name: apgr(data.items, model.logit(data)) for name, data in val_sets.items()}
        mean = sum(figures.values()) / len(figures)
        print(f"  {setting}  val APGR " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()), file=sys.stderr)
        if best is None or mean > best[0]:
            best = (mean, setting, figures)
    assert best is not None
    return best[1], best[2]


def check_runtime_agrees(weights: dict, data: Encoded, model: Fit) -> None:
    """The shipped JSON, read by the runtime scorer, must give the fitted logits."""
    classifier = ComplexityClassifier(ClassifierSettings(), LearnedModel(weights))
    for item, expected in list(zip(data.items, model.logit(data)))[::50]:
        score, _ = classifier.score_text(item.text)
        got = math.log(score / (1 - score)) if 0 < score < 1 else expected
        if abs(got - expected) > 0.01:  # rounding of the shipped weights
            raise SystemExit(f"runtime scorer disagrees with training: logit {got:.4f} vs {expected:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="one hyperparameter setting (for a smoke run)")
    args = parser.parse_args(argv)

    mmlu_items, code_items = mmlu(), coding()
    split = {
        (kind, name): encode(of_split(items, name), [kind] * len(of_split(items, name)))
        for kind, items in (("mmlu", mmlu_items), ("coding", code_items))
        for name in ("train", "val")
    }
    train = concat(split["mmlu", "train"], split["coding", "train"])
    print(f"train: {len(train.items)} asks; searching hyperparameters on val", file=sys.stderr)
    setting, val_figures = search(train, {"mmlu": split["mmlu", "val"], "coding": split["coding", "val"]}, QUICK_GRID if args.quick else GRID)
    print(f"chosen {setting}; refitting on train + val", file=sys.stderr)
    everything = concat(train, split["mmlu", "val"], split["coding", "val"])
    model = fit(everything, **setting)
    info = {
        "trained_by": "training/train_scorer.py",
        "data": {"mmlu": "shared/data/routellm-mmlu (train+val splits, contaminated prompts left out)", "coding": "training/coding_asks.tsv (train+val splits)"},
        "asks": {"mmlu": int(sum(k == "mmlu" for k in everything.kind)), "coding": int(sum(k == "coding" for k in everything.kind))},
        "hyperparameters": setting,
        "val_apgr_before_refit": {k: round(v, 4) for k, v in val_figures.items()},
        "topic_words": len(model.table),
    }
    weights = to_json(model, info)
    check_runtime_agrees(weights, everything, model)
    # The default calibration sample for target_cloud_share: scores of the train+val coding asks.
    classifier = ComplexityClassifier(ClassifierSettings(), LearnedModel(weights))
    reference = [classifier.score_text(item.text)[0] for item in split["coding", "train"].items + split["coding", "val"].items]
    weights["reference_quantiles"] = [round(quantile(reference, q / 100), 4) for q in range(101)]
    args.out.write_text(json.dumps(weights, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({len(model.table)} topic words)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
