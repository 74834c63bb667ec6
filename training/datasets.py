"""The two labelled sets the scorer is trained and measured on, with fixed held-out splits.

- MMLU with per-model correctness (shared/data/routellm-mmlu, from RouteLLM): the weak model
  (Mixtral-8x7B) stands in for the local model, the strong one (GPT-4) for Cerebras.
- Our coding-assistant asks (training/coding_asks.tsv, labelled by the rubric in training/README.md):
  "hard" counts as weak wrong / strong right, "easy" as both right.

Each item lands in `train`, `val` or `test` by a hash of its text, so splits never change when
items are added elsewhere and no text sits in two splits. Train fits the weights, val picks the
hyperparameters, test is only ever reported (bench/routing_quality.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
MMLU_DIR = REPO.parent / "shared" / "data" / "routellm-mmlu"
CODING_FILE = REPO / "training" / "coding_asks.tsv"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"

Split = Literal["train", "val", "test"]
# Percent of each set per split: (train, val); the rest is test.
MMLU_SPLIT = (60, 20)
CODING_SPLIT = (45, 15)


@dataclass(frozen=True)
class Item:
    text: str
    weak_correct: bool
    strong_correct: bool
    group: str  # MMLU subject or coding rubric rule
    split: Split

    @property
    def needs_strong(self) -> bool:
        return self.strong_correct and not self.weak_correct


def split_of(text: str, shares: tuple[int, int]) -> Split:
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < shares[0] else "val" if bucket < shares[0] + shares[1] else "test"


def _contaminated(folder: Path) -> set[str]:
    path = folder / "contaminated_prompts.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["eval_prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def mmlu(folder: Path = MMLU_DIR) -> list[Item]:
    """All MMLU questions except the ones RouteLLM marks as contaminated."""
    if not folder.is_dir():
        raise FileNotFoundError(f"MMLU data not found at {folder} (shared/data/routellm-mmlu)")
    skip = _contaminated(folder)
    items = []
    for path in sorted(folder.glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if row["prompt"] in skip:
                    continue
                items.append(Item(row["prompt"], row[WEAK] == "True", row[STRONG] == "True", subject, split_of(row["prompt"], MMLU_SPLIT)))
    return items


def _coding_rows(path: Path) -> Iterator[tuple[str, str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        label, rule, ask = line.split("\t")
        if label not in ("easy", "hard"):
            raise ValueError(f"{path}:{number}: label must be easy or hard, got {label!r}")
        yield label, rule, ask.replace("\\n", "\n")


def coding(path: Path = CODING_FILE) -> list[Item]:
    """Our coding-assistant asks: hard = needs the strong model, easy = the local one does it."""
    return [Item(ask, label == "easy", True, rule, split_of(ask, CODING_SPLIT)) for label, rule, ask in _coding_rows(path)]


def of_split(items: list[Item], split: Split) -> list[Item]:
    return [item for item in items if item.split == split]
