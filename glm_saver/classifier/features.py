"""Cheap text features of a user's ask, the inputs of the learned part of the complexity score.

Pure Python and bounded: words are read from the first `SCAN_CHARS` characters only, so a user who
pastes 50 KB of code into an ask costs the same as one who pastes 8 KB (lengths still use the whole
ask). The training script (training/train_scorer.py) and the runtime scorer both call `extract`,
so the model is always fed exactly what it was trained on.

Dense features are numbers with a human name (used in reasons: "long ask", "many digits");
words are lower-case tokens whose learned weights ship in scorer_weights.json.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SCAN_CHARS = 8000

_WORD = re.compile(r"[a-z][a-z0-9]*(?:['_][a-z0-9]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_MATH = re.compile(r"[=+*/^<>√π∑∫≤≥±×÷]|\\(?:frac|sqrt|sum|int|cdot|le|ge)\b")  # noqa: RUF001 - the multiplication sign is a math sign on purpose
_CHOICES = re.compile(r"^\s*\(?[A-D][.)]\s", re.MULTILINE)
_CODE_FENCE = re.compile(r"```")
_CODE_PUNCT = re.compile(r"[{}();\[\]]")
# foo_bar, fooBar, foo.bar(), path/to/file.py: names that point into a codebase.
_IDENTIFIER = re.compile(
    r"\b(?:[a-z]+_[a-z0-9_]+|[a-z]+[A-Z][A-Za-z0-9]*|\w+\.(?:py|js|ts|tsx|go|rs|java|c|h|cpp|rb|php|yaml|yml|json|toml|md|sql|css|html)|\w+\(\))"
)
_NEGATION = re.compile(r"\b(?:not|never|except|false|incorrect|least|without)\b")
_QUESTION = re.compile(r"\?")

# Human names of the dense features, for reasons ("long ask (+0.4)").
DENSE_NAMES: dict[str, str] = {
    "log_chars": "ask length",
    "log_lines": "number of lines",
    "numbers": "numbers in the ask",
    "math": "math symbols",
    "choices": "multiple-choice options",
    "code": "code in the ask",
    "identifiers": "names from the codebase",
    "negation": "negations",
    "questions": "question marks",
}


@dataclass(frozen=True)
class Features:
    dense: dict[str, float]
    words: frozenset[str]


def _log_count(pattern: re.Pattern[str], text: str) -> float:
    return math.log1p(len(pattern.findall(text)))


def extract(ask: str) -> Features:
    """The features of one ask (the user's own words, not the whole prompt)."""
    head = ask[:SCAN_CHARS]
    lowered = head.lower()
    words = _WORD.findall(lowered)
    dense = {
        "log_chars": math.log1p(len(ask)),
        "log_lines": math.log1p(ask.count("\n")),
        "numbers": _log_count(_NUMBER, head),
        "math": _log_count(_MATH, head),
        "choices": 1.0 if len(_CHOICES.findall(head)) >= 3 else 0.0,
        "code": math.log1p(len(_CODE_FENCE.findall(head)) * 5 + len(_CODE_PUNCT.findall(head))),
        "identifiers": _log_count(_IDENTIFIER, head),
        "negation": _log_count(_NEGATION, lowered),
        "questions": min(3.0, float(len(_QUESTION.findall(head)))),
    }
    return Features(dense=dense, words=frozenset(words))
