"""The learned half of the complexity score: a logistic model over cheap text features.

Its weights ship inside the package (scorer_weights.json, written by training/train_scorer.py);
nothing is downloaded and nothing but the standard library runs. The model adds to the rule
evidence of the classifier (keywords, length, regex rules), which it was trained on top of, so a
keyword a user configures moves the score exactly as much as it did without the model.

Besides the dense features of features.py there is one learned "topic" feature: the mean, over the
ask's words, of each word's smoothed log-odds of needing the strong model in the training data
(a naive-Bayes-like prior that tells, say, a proof or a concurrency bug from a rename), shrunk
toward 0 for asks with few known words.

Each feature's contribution is measured from a reference value at which it says nothing (absent,
or for the length the typical training ask), so "ask length (+0.4)" means longer than usual and
pushing toward Cerebras, and the contributions explain the score: bias + sum(contributions) = logit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from glm_saver.classifier.features import DENSE_NAMES, extract

WEIGHTS_FILE = "scorer_weights.json"


@dataclass(frozen=True)
class Contribution:
    weight: float
    reason: str


class LearnedModel:
    """Weights of one trained model; `evidence(ask)` gives the bias and per-feature contributions."""

    def __init__(self, data: dict[str, Any]) -> None:
        dense = data["dense"]
        self.intercept = float(data["intercept"])
        # (name, weight per unit, reference value) of each dense feature.
        self.dense = [(name, float(spec["weight"]), float(spec["reference"])) for name, spec in dense.items()]
        topic = data["topic"]
        self.topic_weight = float(topic["weight"])
        self.topic_neutral_words = float(topic["neutral_words"])
        self.topic_words: dict[str, float] = {word: float(odds) for word, odds in topic["words"].items()}
        self.reference_quantiles: list[float] = [float(q) for q in data.get("reference_quantiles", [])]
        self.info: dict[str, Any] = data.get("info", {})
        unknown = {name for name, _, _ in self.dense} - set(DENSE_NAMES)
        if unknown:
            raise ValueError(f"scorer weights name unknown features: {', '.join(sorted(unknown))}")

    def evidence(self, ask: str) -> tuple[float, list[Contribution]]:
        features = extract(ask)
        contributions = []
        for name, weight, reference in self.dense:
            value = weight * (features.dense[name] - reference)
            if value:
                contributions.append(Contribution(value, DENSE_NAMES[name]))
        value = self.topic_weight * topic_value(features.words, self.topic_words, self.topic_neutral_words)
        if value:
            contributions.append(Contribution(value, f"topic ({self._leading_words(features.words, value > 0)})"))
        return self.intercept, contributions

    def _leading_words(self, words: frozenset[str], harder: bool) -> str:
        """The two known words that push the topic hardest in its direction, for the reason."""
        known = [(self.topic_words[word], word) for word in words if word in self.topic_words]
        leading = sorted(known, reverse=harder)[:2]
        return ", ".join(f"'{word}'" for _, word in leading) or "no known words"


def topic_value(words: frozenset[str] | set[str], table: dict[str, float], neutral_words: float) -> float:
    """The topic feature: mean log-odds of the ask's known words, plus `neutral_words` at 0.

    The neutral words keep an ask with one or two known words from taking their log-odds at
    full strength ("please frobnicate the widget" is not an easy ask because of "please").
    """
    known = [table[word] for word in words if word in table]
    return sum(known) / (len(known) + neutral_words) if known else 0.0


@lru_cache(maxsize=1)
def shipped_model() -> LearnedModel:
    """The model trained by training/train_scorer.py, read once from the package."""
    text = resources.files("glm_saver.classifier").joinpath(WEIGHTS_FILE).read_text(encoding="utf-8")
    return LearnedModel(json.loads(text))
