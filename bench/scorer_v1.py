"""Today's scorer (before issue 18), kept for the routing-quality bench only: not shipped.

The default rules plus the first learned model: dense text features and a bag-of-words "topic"
table (each word's smoothed log-odds of needing the strong model), fitted on MMLU and our coding
asks. `data/scorer_v1_weights.json` is the file that shipped in glm_saver/scorer_weights.json up to
commit 3162e0c; this module reads it as glm_saver/learned.py did.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from glm_saver.classifier.features import extract
from glm_saver.classifier.rules import ComplexityClassifier
from glm_saver.request import latest_ask
from glm_saver.settings import ClassifierSettings

WEIGHTS = Path(__file__).resolve().parent / "data" / "scorer_v1_weights.json"


class ScorerV1:
    """score(messages): the v1 classifier's score of the latest ask (rules + topic model)."""

    def __init__(self, path: Path = WEIGHTS) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        self._rules = ComplexityClassifier(ClassifierSettings(learned_model=False))
        self._intercept = float(data["intercept"])
        self._dense = [(name, float(s["weight"]), float(s["reference"])) for name, s in data["dense"].items()]
        topic = data["topic"]
        self._topic_weight = float(topic["weight"])
        self._neutral = float(topic["neutral_words"])
        self._words = {word: float(odds) for word, odds in topic["words"].items()}

    def score(self, messages: list[dict[str, Any]]) -> float:
        ask = latest_ask(messages)
        features = extract(ask)
        raw = self._intercept + sum(w for w, _ in self._rules.rule_evidence(ask))
        raw += sum(weight * (features.dense[name] - reference) for name, weight, reference in self._dense)
        known = [self._words[word] for word in features.words if word in self._words]
        raw += self._topic_weight * (sum(known) / (len(known) + self._neutral) if known else 0.0)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, raw))))
