"""ComplexityClassifier: how hard is the user's latest ask? (stable public API)

    from glm_saver.classifier import ComplexityClassifier
    verdict = ComplexityClassifier().classify(messages)
    verdict.score    # 0..1, higher = needs the stronger model
    verdict.label    # "simple" | "complex"
    verdict.reasons  # short human-readable strings

The score is a logistic squash of additive evidence from two sources:
- the rules users configure: keywords (complex ones push up, simple ones pull down), the ask's
  length against `token_threshold`, and extra regex rules;
- a small learned model (glm_saver/classifier/learned.py, weights shipped in the package) over
  what the ask means (an offline word embedding) and its shape (length, code, math, ...), fitted
  on top of the default rules to explain what they miss, so the rules keep their weights.
In a conversation the latest ask is read with the user's earlier asks as context: a short "yes, do
it" after a hard request is the hard request. What the rules find in the earlier asks (keywords,
regex rules, length) counts half.
Every part of the score becomes a reason (the prior or learned baseline included). The label compares the score with
`threshold`, or with the threshold that sends `target_cloud_share` of a traffic sample to the cloud.
A custom classifier is any object with the same `classify` method, named by dotted path in
`glm_saver.classifier.custom`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any, Literal, Protocol, cast, runtime_checkable

from glm_saver.classifier.calibration import load_scores, threshold_for_share
from glm_saver.classifier.features import SCAN_CHARS
from glm_saver.classifier.learned import LearnedModel, shipped_model
from glm_saver.classifier.semantic import context_of, conversation_asks
from glm_saver.settings import ClassifierSettings, ConfigError
from glm_saver.tokens import count_tokens

Label = Literal["simple", "complex"]

# Rules only: with no evidence at all an ask leans simple (local is free, most chat turns are easy).
# With the learned model its trained intercept takes this place.
_PRIOR = -1.0
# An ask exactly `token_threshold` long adds enough to cross 0.5 on its own.
_LENGTH_WEIGHT_AT_THRESHOLD = 1.6
_LENGTH_WEIGHT_CAP = 3.0
_CODE_FENCE = re.compile(r"```")
# Evidence smaller than this (logit units) is left out of the reasons; it still counts in the score.
_MIN_REASON = 0.05
# Keywords and regex rules found only in the earlier asks of a conversation, and their length, count
# this much of their weight: "yes, do it" after "fix the race condition" is still about the race
# condition, and after a long request still part of a long job.
CONTEXT_RULE_SHARE = 0.5
# Verdicts kept per classifier, by a digest of (ask, context). An agent's task sends the same latest
# ask with every tool round (tool results carry no words of the user), so most requests repeat a
# verdict; the embedding and the rules cost about 1 ms a request (py-spy). Bounded: the oldest go.
VERDICTS_KEPT = 512
# Numbers of a quantity ("12 cm", "5kg", "$8,000", "0.3", "3x", "x^2"), not the digits ending a name
# ("mp3", "h264"). An ask with this many computes, and its lookup keywords ("what is") do not count.
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?")
_NUMBERS_OF_A_COMPUTATION = 2


@dataclass(frozen=True)
class Classification:
    score: float
    label: Label
    reasons: list[str] = field(default_factory=list)


@runtime_checkable
class Classifier(Protocol):
    def classify(self, messages: list[dict[str, Any]]) -> Classification: ...


def _keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str] | None:
    if not keywords:
        return None
    # Longest first so "race condition" wins over a shorter overlapping keyword.
    alternatives = sorted((re.escape(word.lower()) for word in keywords), key=len, reverse=True)
    return re.compile(r"(?<!\w)(" + "|".join(alternatives) + r")(?!\w)")


class ComplexityClassifier:
    """Complexity scorer over the user's latest ask: configured rules plus the shipped learned model."""

    def __init__(self, settings: ClassifierSettings | None = None, model: LearnedModel | None = None) -> None:
        self.settings = settings or ClassifierSettings()
        self._complex = {word.lower(): weight for word, weight in self.settings.complexity_keywords.items()}
        self._simple = {word.lower(): weight for word, weight in self.settings.simple_keywords.items()}
        self._complex_pattern = _keyword_pattern(list(self._complex))
        self._simple_pattern = _keyword_pattern(list(self._simple))
        self._lookups = frozenset(word.lower() for word in self.settings.lookup_keywords)
        self._rules = [
            (re.compile(rule.pattern, re.IGNORECASE if rule.ignore_case else 0), rule.weight, rule.reason or f"rule /{rule.pattern}/")
            for rule in self.settings.rules
        ]
        self._model = (model or shipped_model()) if self.settings.learned_model else None
        self._judged: OrderedDict[bytes, tuple[float, list[str]]] = OrderedDict()  # score and reasons
        self._judged_lock = threading.Lock()  # the public API may be called from threads
        self.threshold = self.settings.threshold  # calibrating scores asks with classify(), which reads it
        self.threshold = self._decision_threshold()

    def classify(self, messages: list[dict[str, Any]]) -> Classification:
        ask, earlier = conversation_asks(messages if isinstance(messages, list) else [])
        return self.classify_text(ask, context_of(earlier))

    def classify_text(self, ask: str, context: str = "") -> Classification:
        """The verdict on one ask; `context` is the end of the conversation's earlier asks."""
        score, reasons = self._judgement(ask, context)
        label: Label = "complex" if score >= self.threshold else "simple"
        return Classification(score=score, label=label, reasons=list(reasons))

    def _judgement(self, ask: str, context: str) -> tuple[float, list[str]]:
        """The rounded score and the reasons, kept for the next request with the same ask."""
        key = hashlib.blake2b(f"{ask}\0{context}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._judged_lock:
            kept = self._judged.get(key)
            if kept is not None:
                self._judged.move_to_end(key)
                return kept
        score, evidence = self.score_text(ask, context)
        shown = [(weight, reason) for weight, reason in evidence if abs(weight) >= _MIN_REASON or reason == "learned baseline"]
        reasons = [f"{reason} ({weight:+.1f})" for weight, reason in sorted(shown, key=lambda e: -abs(e[0]))]
        judgement = (round(score, 4), reasons or ["no complexity signals"])
        with self._judged_lock:
            self._judged[key] = judgement
            if len(self._judged) > VERDICTS_KEPT:
                self._judged.popitem(last=False)
        return judgement

    def score_text(self, ask: str, context: str = "") -> tuple[float, list[tuple[float, str]]]:
        """The score of an ask and every part of it (weights in logit units; they sum to the logit)."""
        evidence = self.rule_evidence(ask, context)
        evidence += self.context_evidence(ask, context, latest={reason for _, reason in evidence})
        if self._model is None:
            evidence.append((_PRIOR, "prior: asks lean local"))
        else:
            bias, contributions = self._model.evidence(ask, context)
            evidence.append((bias, "learned baseline"))
            evidence += [(c.weight, f"learned: {c.reason}") for c in contributions]
        raw = sum(weight for weight, _ in evidence)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, raw)))), evidence

    def rule_evidence(self, ask: str, context: str = "") -> list[tuple[float, str]]:
        """What the configured rules say about an ask: keywords, regex rules, length, code blocks.

        The context only tells whether the conversation computes: "what's the area now?" after
        "a rectangle is 12 cm by 7 cm ..." is still a computation.
        """
        evidence = self._matches(ask, conversation=(ask, context))
        evidence.append(self._length_evidence(ask))
        if len(_CODE_FENCE.findall(ask)) >= 4:
            evidence.append((0.8, "several code blocks"))
        return evidence

    def context_evidence(self, ask: str, context: str, latest: set[str]) -> list[tuple[float, str]]:
        """Keywords and regex rules of the earlier asks that the latest ask does not repeat (`latest`:
        the reasons of its own rule evidence), and their length, scaled down: a short "yes, do it"
        after a long request is part of a long job."""
        if not context:
            return []
        earlier = self._matches(context, conversation=(ask, context))
        tokens = count_tokens(context)
        return [
            *[(CONTEXT_RULE_SHARE * weight, f"earlier ask: {reason}") for weight, reason in earlier if reason not in latest],
            (CONTEXT_RULE_SHARE * self._length_weight(tokens), f"earlier asks: {tokens} tokens"),
        ]

    def _matches(self, text: str, conversation: tuple[str, str]) -> list[tuple[float, str]]:
        """The keywords and regex rules found in a text; lookup keywords do not count if the conversation computes."""
        lowered = text.lower()
        complex_words = self._keywords_in(lowered, self._complex_pattern)
        simple_words = self._keywords_in(lowered, self._simple_pattern)
        if not self._lookups.isdisjoint(simple_words) and _computes(*conversation):
            simple_words = [word for word in simple_words if word not in self._lookups]
        return [
            *[(self._complex[word], f"complex keyword '{word}'") for word in complex_words],
            *[(-self._simple[word], f"simple keyword '{word}'") for word in simple_words],
            *[(weight, reason) for pattern, weight, reason in self._rules if pattern.search(text)],
        ]

    def _decision_threshold(self) -> float:
        share = self.settings.target_cloud_share
        if share is None:
            return self.settings.threshold
        if self.settings.calibration_file:
            scores = load_scores(self.settings.calibration_file, self)
        elif self._model is not None and self._model.reference_quantiles:
            scores = self._model.reference_quantiles
        else:
            raise ConfigError("glm_saver.classifier.target_cloud_share: needs calibration_file when learned_model is off")
        return threshold_for_share(scores, share)

    @staticmethod
    def _keywords_in(text: str, pattern: re.Pattern[str] | None) -> list[str]:
        """The keywords found in a lower-cased text, each once, in order."""
        return [] if pattern is None else list(dict.fromkeys(match.group(1) for match in pattern.finditer(text)))

    def _length_evidence(self, ask: str) -> tuple[float, str]:
        tokens = count_tokens(ask)
        return (self._length_weight(tokens), f"ask is {tokens} tokens (threshold {self.settings.token_threshold})")

    def _length_weight(self, tokens: int) -> float:
        return min(_LENGTH_WEIGHT_CAP, _LENGTH_WEIGHT_AT_THRESHOLD * tokens / self.settings.token_threshold)


def _computes(ask: str, context: str) -> bool:
    """Whether the conversation gives numbers to compute with (its latest ask and the earlier ones)."""
    numbers = chain(_NUMBER.finditer(ask[:SCAN_CHARS]), _NUMBER.finditer(context))
    return sum(1 for _ in islice(numbers, _NUMBERS_OF_A_COMPUTATION)) == _NUMBERS_OF_A_COMPUTATION


def _takes_arguments(factory: Any) -> bool:
    try:
        return bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return False


def load_custom(dotted_path: str, settings: ClassifierSettings) -> Classifier:
    """Import `pkg.module.name`; a class or factory is called (with the settings if it takes them)."""
    module_name, _, attribute = dotted_path.rpartition(".")
    if not module_name:
        raise ConfigError(f"glm_saver.classifier.custom: {dotted_path!r} is not a dotted path like pkg.module.Name")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"glm_saver.classifier.custom: cannot load {dotted_path!r}: {err}") from None
    if isinstance(target, type) or (callable(target) and not hasattr(target, "classify")):
        target = target(settings) if _takes_arguments(target) else target()
    if not callable(getattr(target, "classify", None)):
        raise ConfigError(f"glm_saver.classifier.custom: {dotted_path!r} has no classify(messages) method")
    return cast(Classifier, target)  # checked above: it has a callable classify()


def build_classifier(settings: ClassifierSettings) -> Classifier:
    if settings.custom:
        return load_custom(settings.custom, settings)
    return ComplexityClassifier(settings)
