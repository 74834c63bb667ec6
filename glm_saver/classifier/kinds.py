"""What kind of ask is it? Its likeness to short fixed descriptions of the kinds of asks.

The gap between a small local model and a large one is widest on reasoning, code and math, and
narrowest on writing, role-play, chat and advice (judge-scored chat benchmarks show it per
category). The kind is read from the ask's WordLlama vector (semantic.py): its cosine with each
description below, turned into shares by a softmax, and the share of the hard kinds is the signal.

The descriptions are written here, not fitted: no training set chooses their words, so the signal
cannot learn the look of one dataset. Only the weight it gets is fitted (training/train_scorer.py,
chosen by leave-one-source-out). Round 3 measured a few variants on the training splits only
(training/README.md): a "math" description in textbook terms ranked MMLU the wrong way, one of
a word problem did not; subtracting the easy kinds' share hurt MMLU.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from glm_saver.classifier.semantic import Embedder, embedder

DESCRIPTIONS: dict[str, str] = {
    "math": "a math word problem: read the story, set up the equations and compute the exact number",
    "reasoning": "a logic puzzle or riddle: reason step by step and deduce who is right, what comes next, which statement must be true",
    "code": "write a program: implement a function in python, an algorithm, fix the bug in this code, write a sql query",
    "extraction": "extract the names, dates and numbers from the following text and return them as json or a table",
    "writing": "write a poem, a story, an essay, a blog post, a speech or a persuasive email about a topic",
    "role-play": "pretend you are a character, act as my friend, stay in role and answer as that person would",
    "chat": "hello, how are you? thanks a lot, tell me a joke, what do you think about that",
    "advice": "give me some tips and advice, suggest ideas, recommend what to do, explain the benefits",
}
HARD_KINDS = ("math", "reasoning", "code")
# Softmax temperature over the cosines (which differ by a few tenths): 1.0 keeps the shares
# close to linear in the likeness, 0.1 and 0.3 (closer to "pick one kind") did no better.
TEMPERATURE = 1.0


class Kinds:
    """The unit vectors of the descriptions; `of(vector)` gives each kind's share of an ask."""

    def __init__(self, embeddings: Embedder) -> None:
        self.names = list(DESCRIPTIONS)
        self.vectors = np.array([embeddings.vector(text) for text in DESCRIPTIONS.values()])
        self._hard = np.array([name in HARD_KINDS for name in self.names])

    def shares(self, vector: np.ndarray) -> np.ndarray:
        likeness = self.vectors @ vector / TEMPERATURE
        weights = np.exp(likeness - likeness.max())
        shares: np.ndarray = weights / weights.sum()
        return shares

    def hard_share(self, vector: np.ndarray) -> float:
        """The share of reasoning, code and math in the ask's kind (the signal that is weighted)."""
        return float(self.shares(vector)[self._hard].sum())

    def nearest(self, vector: np.ndarray) -> str:
        """The kind the ask is most like, for reasons."""
        return self.names[int(np.argmax(self.vectors @ vector))]


@lru_cache(maxsize=1)
def kinds() -> Kinds:
    return Kinds(embedder())
