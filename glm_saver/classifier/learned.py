"""The learned half of the complexity score: a logistic model over what the ask means and its shape.

Inputs (the same functions feed training/train_scorer.py, so the model sees what it was fitted on):
- the meaning of the ask: its unit-length WordLlama embedding (semantic.py), read with the end of
  the conversation's earlier asks as context;
- the kind of ask: how much of it is reasoning, code or math, by its likeness to fixed
  descriptions of kinds (kinds.py), from the same embedding; one fitted weight;
- its shape: length, lines, numbers, math, code, names from a codebase, ... (features.py).
It adds to the rule evidence of the classifier (keywords, length against `token_threshold`, regex
rules), which it was fitted on top of, so a configured keyword moves the score by its weight.

Each contribution is measured from a reference value at which it says nothing (absent, or for the
length and the meaning the typical training ask), so "ask length (+0.4)" means longer than usual
and pushing toward Cerebras, and bias + sum(contributions) = the model's logit.
The weights ship inside the package (scorer_weights.json, written by training/train_scorer.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from glm_saver.classifier.features import DENSE_NAMES, extract
from glm_saver.classifier.kinds import HARD_KINDS, Kinds
from glm_saver.classifier.semantic import DIMENSIONS, Embedder, embedder, embedding_text

WEIGHTS_FILE = "scorer_weights.json"
FORMAT = 3
# The reason for the meaning names the ask's tokens that pushed hardest in its direction.
_REASON_TOKENS = 2


@dataclass(frozen=True)
class Contribution:
    weight: float
    reason: str


class LearnedModel:
    """Weights of one trained model; `evidence(ask, context)` gives the bias and the contributions."""

    def __init__(self, data: dict[str, Any], embeddings: Embedder | None = None) -> None:
        if data.get("format") != FORMAT:
            raise ValueError(f"scorer weights: format {data.get('format')!r}, this version reads {FORMAT}")
        self.intercept = float(data["intercept"])
        # (name, weight per unit, reference value) of each dense feature.
        self.dense = [(name, float(spec["weight"]), float(spec["reference"])) for name, spec in data["dense"].items()]
        unknown = {name for name, _, _ in self.dense} - set(DENSE_NAMES)
        if unknown:
            raise ValueError(f"scorer weights name unknown features: {', '.join(sorted(unknown))}")
        semantic = data["semantic"]
        self.semantic_weights = np.array(semantic["weights"], dtype=np.float64)
        if self.semantic_weights.shape != (DIMENSIONS,):
            raise ValueError(f"scorer weights: {len(self.semantic_weights)} semantic weights, expected {DIMENSIONS}")
        self.semantic_reference = float(semantic["reference"])
        self.kind_weight = float(data["kind"]["weight"])
        self.kind_reference = float(data["kind"]["reference"])
        self.reference_quantiles: list[float] = [float(q) for q in data.get("reference_quantiles", [])]
        self.info: dict[str, Any] = data.get("info", {})
        self._embeddings = embeddings or embedder()
        self._kinds = Kinds(self._embeddings)
        # Each vocabulary token's projection on the weights: names the tokens behind the meaning.
        self._token_push = self._embeddings.table @ self.semantic_weights
        self._nameable = self._embeddings.nameable()

    def evidence(self, ask: str, context: str = "") -> tuple[float, list[Contribution]]:
        """The model's bias and what each feature adds, for an ask read with its earlier context."""
        features = extract(f"{ask}\n{context}" if context else ask)
        contributions = []
        for name, weight, reference in self.dense:
            value = weight * (features.dense[name] - reference)
            if value:
                contributions.append(Contribution(value, DENSE_NAMES[name]))
        ids = self._embeddings.token_ids(embedding_text(ask, context))
        vector = self._embeddings.vector_of(ids)
        contributions.append(self._meaning(ids, vector))
        if self.kind_weight:
            contributions.append(self._kind(vector))
        return self.intercept, contributions

    def _meaning(self, ids: list[int], vector: np.ndarray) -> Contribution:
        value = float(vector @ self.semantic_weights) - self.semantic_reference
        return Contribution(value, f"meaning of the ask ({self._leading_tokens(ids, value > 0)})")

    def _kind(self, vector: np.ndarray) -> Contribution:
        share = self._kinds.hard_share(vector)
        value = self.kind_weight * (share - self.kind_reference)
        hard = "/".join(HARD_KINDS)
        return Contribution(value, f"kind of ask (most like {self._kinds.nearest(vector)}; {share:.0%} {hard})")

    def _leading_tokens(self, ids: list[int], harder: bool) -> str:
        """The ask's words whose meaning pushes hardest in the score's direction, for the reason."""
        tokens = np.unique(np.asarray(ids, dtype=np.int64))
        tokens = tokens[(tokens >= 0) & (tokens < len(self._nameable))]
        tokens = tokens[self._nameable[tokens]]
        push = self._token_push[tokens] * (1.0 if harder else -1.0)
        leading = tokens[np.argsort(-push, kind="stable")[:_REASON_TOKENS]]
        return ", ".join(f"'{self._embeddings.word(int(token))}'" for token in leading) or "no words"


@lru_cache(maxsize=1)
def shipped_weights() -> dict[str, Any]:
    text = resources.files("glm_saver.classifier").joinpath(WEIGHTS_FILE).read_text(encoding="utf-8")
    weights: dict[str, Any] = json.loads(text)
    return weights


@lru_cache(maxsize=1)
def shipped_model() -> LearnedModel:
    """The model trained by training/train_scorer.py, read once from the package."""
    return LearnedModel(shipped_weights())
