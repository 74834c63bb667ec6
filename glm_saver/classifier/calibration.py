"""Pick the decision threshold from a sample of traffic instead of by hand.

`target_cloud_share: 0.3` means: the threshold at which 30% of a traffic sample scores as complex.
The sample is a JSONL file of past requests (`calibration_file`, or `glm-saver calibrate FILE`),
or by default the score quantiles of our coding-assistant asks that ship with the learned model.
Each JSONL line is a chat request body ({"messages": [...]}), a bare messages list, or an object
with the ask as "text"; only the user's latest ask is scored, as in routing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from glm_saver.settings import ConfigError


class _Scores(Protocol):
    def classify(self, messages: list[dict[str, Any]]) -> Any: ...


def _messages(entry: Any) -> list[dict[str, Any]] | None:
    if isinstance(entry, list):
        return entry
    if isinstance(entry, dict):
        messages = entry.get("messages")
        if isinstance(messages, list):
            return messages
        text = entry.get("text", entry.get("ask"))
        if isinstance(text, str):
            return [{"role": "user", "content": text}]
    return None


def load_requests(path: str | Path) -> list[list[dict[str, Any]]]:
    """The requests of a JSONL file as message lists; a bad line is an error naming its number."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read calibration file {path}: {err.strerror}") from None
    requests = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            messages = _messages(json.loads(line))
        except json.JSONDecodeError:
            messages = None
        if messages is None:
            raise ConfigError(f'{path}:{number}: not a request body, messages list or {{"text": ...}} object')
        requests.append(messages)
    if not requests:
        raise ConfigError(f"{path}: no requests to calibrate on")
    return requests


def load_scores(path: str | Path, classifier: _Scores) -> list[float]:
    return [float(classifier.classify(messages).score) for messages in load_requests(path)]


def quantile(scores: Sequence[float], q: float) -> float:
    """The q-quantile of the scores, linear between sample points."""
    ordered = sorted(scores)
    if not ordered:
        raise ValueError("no scores")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def threshold_for_share(scores: Sequence[float], share: float) -> float:
    """The threshold above which `share` of these scores lie (score >= threshold goes to the cloud)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"target cloud share must be between 0 and 1, got {share}")
    return round(quantile(scores, 1.0 - share), 4)


def cloud_share(scores: Sequence[float], threshold: float) -> float:
    return sum(score >= threshold for score in scores) / len(scores)
