"""The labelled sets the scorer is trained and measured on, with fixed held-out splits.

- MMLU with per-model correctness (shared/data/routellm-mmlu, from RouteLLM): the weak model
  (Mixtral-8x7B) stands in for the local model, the strong one (GPT-4) for Cerebras.
- Our coding-assistant asks (training/coding_asks.tsv, labelled by the rubric in training/README.md):
  "hard" counts as weak wrong / strong right, "easy" as both right.
- Judge preferences (shared/data/router-preferences): for each prompt, the share of informative weak
  models (see `INFORMATIVE_BASE_RATE`) whose answer a GPT-4 judge liked less than the strong
  model's. The strong side counts as 1, the weak side as 1 - that share (a soft label).
  `arena_hard` may be used for shipped weights; `alpaca_eval` is CC BY-NC: evaluation only.

Each item lands in `train`, `val` or `test` by a hash of its text, so splits never change when
items are added elsewhere and no text sits in two splits. Train fits the weights, val picks the
hyperparameters, test is only ever reported (bench/routing_quality.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
# The shared data sits beside the repo (../shared/data); GLM_SAVER_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("GLM_SAVER_SHARED_DATA", REPO.parent / "shared" / "data"))
MMLU_DIR = SHARED_DATA / "routellm-mmlu"
PREFERENCES_DIR = SHARED_DATA / "router-preferences"
CODING_FILE = REPO / "training" / "coding_asks.tsv"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"

Split = Literal["train", "val", "test"]
# Percent of each set per split: (train, val); the rest is test.
MMLU_SPLIT = (60, 20)
CODING_SPLIT = (45, 15)
# A weak model that loses to the strong one on more than this share of prompts says little about
# which prompts are hard (README of router-preferences); its labels are left out.
INFORMATIVE_BASE_RATE = 0.85
# Sources whose labels may be fitted into the shipped weights (licences: training/README.md).
SHIPPABLE = ("mmlu", "coding", "arena_hard")
EVALUATION_ONLY = ("alpaca_eval",)
# MMLU subjects whose strong-model labels are unusable: GPT-4 "answers" 3% of high-school
# mathematics correctly, far below the 25% of guessing (an answer-extraction failure in the source
# responses, not the model), so weak-wrong/strong-right there says nothing. Left out everywhere.
UNUSABLE_SUBJECTS = ("high_school_mathematics",)
# The same failure, question by question: where all four options are numbers (the answer is a
# computed quantity), GPT-4 is marked correct on 0.49 of them against 0.85 elsewhere, and below
# the weak model on those asking "what is" (0.35 against 0.39; 0.00-0.10 in college physics,
# chemistry and mathematics, below guessing). Its computed answers were not read as letters, so
# there weak-wrong/strong-right records the extraction, not the question. Left out everywhere
# (`numeric_answer`).
_OPTION = re.compile(r"^[A-D]\. (.*)$", re.MULTILINE)
_NUMBER_FIRST = re.compile(r"^[\s$\u2212+(-]*\d")
# MMLU's mathematics, statistics and physics-calculation subjects. The bench holds them out as a
# source of their own ("mmlu-math"): the router evaluated on them is refitted with these subjects
# removed from MMLU's training asks. Without the numeric-answer questions they are mostly
# conceptual, not word problems (training/README.md, round 7).
MATH_SUBJECTS = (
    "abstract_algebra",
    "college_mathematics",
    "college_physics",
    "elementary_mathematics",
    "high_school_physics",
    "high_school_statistics",
)


def numeric_answer(prompt: str) -> bool:
    """Whether all four options of an MMLU question are numbers."""
    options = _OPTION.findall(prompt)
    return len(options) == 4 and all(_NUMBER_FIRST.match(option) for option in options)


@dataclass(frozen=True)
class Item:
    text: str
    weak_correct: float  # 1/0 (True/False) for correctness; a share for judge preferences
    strong_correct: float
    group: str  # MMLU subject, coding rubric rule or Arena-Hard / AlpacaEval subset
    split: Split

    @property
    def needs_strong(self) -> bool:
        return self.gain > 0.5

    @property
    def gain(self) -> float:
        """What sending this ask to the strong model gains (-1 .. 1): the training target."""
        return float(self.strong_correct) - float(self.weak_correct)


def split_of(text: str, shares: tuple[int, int]) -> Split:
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < shares[0] else "val" if bucket < shares[0] + shares[1] else "test"


def _contaminated(folder: Path) -> set[str]:
    path = folder / "contaminated_prompts.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["eval_prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def mmlu(folder: Path = MMLU_DIR) -> list[Item]:
    """All MMLU questions except the ones RouteLLM marks as contaminated and UNUSABLE_SUBJECTS."""
    if not folder.is_dir():
        raise FileNotFoundError(f"MMLU data not found at {folder} (shared/data/routellm-mmlu)")
    skip = _contaminated(folder)
    items = []
    for path in sorted(folder.glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        if subject in UNUSABLE_SUBJECTS:
            continue
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if row["prompt"] in skip or numeric_answer(row["prompt"]):
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


def mmlu_math(items: list[Item] | None = None) -> list[Item]:
    """The MMLU questions of MATH_SUBJECTS (every split: the bench fits without any of them)."""
    return [item for item in (mmlu() if items is None else items) if item.group in MATH_SUBJECTS]


def of_split(items: list[Item], split: Split) -> list[Item]:
    return [item for item in items if item.split == split]


def _informative_models(rows: list[dict]) -> set[str]:
    """Weak models whose pooled loss rate is at most INFORMATIVE_BASE_RATE."""
    lost: dict[str, list[int]] = {}
    for row in rows:
        for model, label in row["labels"].items():
            lost.setdefault(model, []).append(label)
    return {model for model, v in lost.items() if sum(v) / len(v) <= INFORMATIVE_BASE_RATE}


def preferences(name: str, folder: Path = PREFERENCES_DIR) -> list[Item]:
    """One judge-preference file (`arena_hard` or `alpaca_eval`), every prompt in the `test` split.

    The whole file is one held-out source in the bench; the shipped weights may only use arena_hard.
    """
    path = folder / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"judge-preference data not found at {path} (shared/data/router-preferences)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    models = _informative_models(rows)
    items = []
    for row in rows:
        labels = [label for model, label in row["labels"].items() if model in models]
        if labels:
            items.append(Item(row["prompt"], 1.0 - sum(labels) / len(labels), 1.0, row["subset"], "test"))
    return items
