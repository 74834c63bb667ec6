"""How good is a local draft? Quality metrics and the confidence they add up to (pure functions).

A chat API gives no probabilities of the big model over the draft, so confidence is built from what
the drafts themselves show:

- agreement: how alike independent drafts of the same ask are (self-consistency); needs 2+ drafts;
- token probability: exp(mean token log-probability), when the local server returns logprobs;
- red flags: empty, a refusal, cut short (finish_reason "length"), an unclosed code fence, a Python
  code block that does not parse, tool-call arguments that are not JSON.

Agreement and token probability are averaged (weights below); with neither, confidence is the
configured prior. Red flags then cut it down: an answer that is empty, refused or truncated is never
worth verifying (Cerebras would write it anew anyway), broken code is worth a correction.
A small model can be confidently wrong (high token probability on nonsense), so neither signal is
trusted alone: with the default bands only agreeing drafts, or a very sure single draft, skip the
cloud.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher

WEIGHTS = {"agreement": 0.6, "token_prob": 0.4}
# Multipliers on confidence per red flag: 0 sends the ask to the cloud in full.
PENALTIES = {
    "empty": 0.0,
    "refusal": 0.0,
    "truncated": 0.0,
    "unclosed-code": 0.5,
    "broken-python": 0.5,
    "broken-tool-call": 0.0,
}
# Enough words to compare two answers well; keeps SequenceMatcher's quadratic worst case small.
_MAX_WORDS = 1500

_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i (can|am|'m)|i can(no|')?t (help|assist|do|provide|answer)|i cannot|"
    r"i'?m (not able|unable)|i am (not able|unable)|as an ai\b)",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^[ \t]*```", re.MULTILINE)
_CODE_BLOCK = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = frozenset({"python", "py", "python3"})
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class DraftFacts:
    """What scoring needs of one draft."""

    text: str  # the answer text; for a tool call, its name and arguments
    finish_reason: str | None = None
    logprobs: tuple[float, ...] | None = None  # per-token log-probabilities, if the server sent them
    tool_arguments: tuple[str, ...] = ()  # raw arguments of each tool call
    complete: bool = True  # False: a prefix of a draft still being written (a streamed commit)


@dataclass(frozen=True)
class Score:
    confidence: float
    agreement: float | None
    token_prob: float | None
    flags: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """Short and free of draft text: it goes into a response header."""
        parts = [f"confidence {self.confidence:.2f}"]
        if self.agreement is not None:
            parts.append(f"agreement {self.agreement:.2f}")
        if self.token_prob is not None:
            parts.append(f"token-prob {self.token_prob:.2f}")
        parts += list(self.flags)
        return ", ".join(parts)


def token_probability(logprobs: Sequence[float] | None) -> float | None:
    """exp(mean log-probability): the geometric mean probability of the draft's tokens."""
    values = [v for v in logprobs or () if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    return math.exp(min(0.0, sum(values) / len(values)))


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())[:_MAX_WORDS]


def similarity(a: str, b: str) -> float:
    """0..1, word-level: how much of two answers is the same words in the same order."""
    left, right = words(a), words(b)
    if not left and not right:
        return 1.0
    return SequenceMatcher(None, left, right, autojunk=False).ratio()


def agreements(texts: Sequence[str]) -> list[float | None]:
    """Each draft's mean similarity to the others (None when there is only one draft)."""
    if len(texts) < 2:
        return [None] * len(texts)
    pair = {(i, j): similarity(texts[i], texts[j]) for i in range(len(texts)) for j in range(i + 1, len(texts))}
    return [sum(pair[min(i, j), max(i, j)] for j in range(len(texts)) if j != i) / (len(texts) - 1) for i in range(len(texts))]


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.match(text))


def python_blocks_parse(text: str) -> bool | None:
    """Whether every ```python block parses (None when there is none)."""
    blocks = [body for tag, body in _CODE_BLOCK.findall(text) if tag.lower() in _PYTHON_TAGS]
    if not blocks:
        return None
    for body in blocks:
        try:
            ast.parse(body)
        except (SyntaxError, ValueError):
            return False
    return True


def _arguments_parse(arguments: str) -> bool:
    try:
        return isinstance(json.loads(arguments or "{}"), dict)
    except ValueError:
        return False


def red_flags(draft: DraftFacts) -> tuple[str, ...]:
    flags = []
    if not draft.text.strip():
        flags.append("empty")
    elif not draft.tool_arguments and is_refusal(draft.text):
        flags.append("refusal")
    if draft.finish_reason == "length":
        flags.append("truncated")
    # A prefix may still close its fence and its tool-call JSON; closed ```python blocks are judged.
    if draft.complete and len(_FENCE.findall(draft.text)) % 2:
        flags.append("unclosed-code")
    if python_blocks_parse(draft.text) is False:
        flags.append("broken-python")
    if draft.complete and any(not _arguments_parse(arguments) for arguments in draft.tool_arguments):
        flags.append("broken-tool-call")
    return tuple(flags)


def confidence(agreement: float | None, token_prob: float | None, flags: Sequence[str], prior: float) -> float:
    evidence = [(WEIGHTS[name], value) for name, value in (("agreement", agreement), ("token_prob", token_prob)) if value is not None]
    base = sum(w * v for w, v in evidence) / sum(w for w, _ in evidence) if evidence else prior
    for flag in flags:
        base *= PENALTIES.get(flag, 1.0)
    return round(max(0.0, min(1.0, base)), 4)


def score_drafts(drafts: Sequence[DraftFacts], prior: float) -> list[Score]:
    agreed = agreements([draft.text for draft in drafts])
    scores = []
    for draft, agreement in zip(drafts, agreed, strict=True):
        flags = red_flags(draft)
        prob = token_probability(draft.logprobs)
        scores.append(Score(confidence(agreement, prob, flags, prior), agreement, prob, flags))
    return scores


def best_draft(scores: Sequence[Score]) -> int:
    """Index of the most confident draft (the first one on a tie)."""
    if not scores:
        raise ValueError("no drafts to choose from")
    return max(range(len(scores)), key=lambda i: (scores[i].confidence, -i))
