"""What the ask means: a static word-embedding of the user's ask, offline.

The vectors are WordLlama's (`wordllama==0.4.0.post1`, MIT): a 256-d static embedding per token,
16 MB inside the wheel. An ask's vector is the mean of its tokens' vectors, scaled to unit length,
so it says what the ask is about and not how long it is (length has a feature of its own).

Nothing is downloaded: the files are read from the installed package (WordLlama's own lookup
searches `tokenizer/` while the file ships in `tokenizers/`, and would then try the hub; passing
the package folder as `cache_dir` with `disable_download=True` finds both). The model loads once.

Cost: tokenising is what costs (about 0.6 ms per 1,000 characters), so the text is cut to
`EMBED_CHARS` before it is tokenised; the ask's start says what it is about.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from glm_saver.request import ask_in_message

DIMENSIONS = 256
# The latest ask is read up to this many characters, the earlier asks up to CONTEXT_CHARS more.
EMBED_CHARS = 1500
CONTEXT_CHARS = 600
# How many earlier asks of the conversation give the latest one its context.
CONTEXT_ASKS = 2


class Embedder:
    """Token vectors and the tokenizer of WordLlama; `vector(text)` is a unit-length 256-d vector."""

    def __init__(self) -> None:
        with _root_logging_kept():
            import wordllama  # import here: only the learned scorer needs it

        model = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
        self.table: np.ndarray = model.embedding
        self._tokenizer = model.tokenizer
        self._tokenizer.no_padding()

    def token_ids(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def vector_of(self, ids: list[int]) -> np.ndarray:
        """The unit-length mean of these tokens' vectors (zeros for no tokens)."""
        if not ids:
            return np.zeros(DIMENSIONS, dtype=np.float64)
        mean: np.ndarray = self.table[np.clip(ids, 0, len(self.table) - 1)].mean(axis=0, dtype=np.float64)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0 else mean

    def vector(self, text: str) -> np.ndarray:
        return self.vector_of(self.token_ids(text))

    def nameable(self) -> np.ndarray:
        """Per vocabulary token: does it start a word of 3+ letters (worth naming in a reason)?"""
        words = [self.word(token) for token in range(len(self.table))]
        return np.array([len(word) > 2 and word.isalpha() for word in words], dtype=bool)

    def word(self, token: int) -> str:
        """A token that starts a word, as text for reasons ('' for a piece inside a word)."""
        piece = self._tokenizer.id_to_token(token) or ""
        return piece[1:].lower() if piece.startswith("\u2581") else ""


@contextmanager
def _root_logging_kept() -> Iterator[None]:
    """Importing wordllama calls `logging.basicConfig(level=INFO)`: the root logger gains a stderr
    handler and INFO, so every LiteLLM logger left at NOTSET writes its INFO lines (about four a
    request, each twice) synchronously on the proxy's event loop. Put the root logger back."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


@lru_cache(maxsize=1)
def embedder() -> Embedder:
    """The one Embedder of the process (loading reads 16 MB: about 0.15 s)."""
    return Embedder()


def conversation_asks(messages: Iterable[Any]) -> tuple[str, list[str]]:
    """The latest ask (as request.latest_ask finds it) and up to CONTEXT_ASKS earlier ones, oldest first.

    One walk back from the end that stops once it has them: on a long Cline conversation the
    older turns are never read. Turns that only carry tool results or reminders hold no words of
    the user (ask_in_message gives '') and are skipped, as latest_ask does.
    """
    found: list[str] = []
    for message in reversed(list(messages)):
        if isinstance(message, Mapping) and message.get("role") == "user":
            ask = ask_in_message(message)
            if ask:
                found.append(ask)
                if len(found) > CONTEXT_ASKS:
                    break
    if not found:
        return "", []
    return found[0], found[:0:-1]


def context_of(earlier: list[str]) -> str:
    """The end of the earlier asks, as read beside the latest one ('' for a first turn)."""
    return "\n".join(earlier)[-CONTEXT_CHARS:]


def embedding_text(latest: str, context: str) -> str:
    """The latest ask (cut before tokenising: the cost is in the tokenizer), then its context.

    A short "yes, do it" after a hard request is as hard as the request: with the request beside
    it, the embedding (a mean over tokens) says so. A long latest ask dominates its context.
    """
    head = latest[:EMBED_CHARS]
    return f"{head}\n{context}" if context else head
