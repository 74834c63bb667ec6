"""Token counts with the cl100k encoding that ships inside litellm (no download, ever).

Counting a 60 KB Cline prompt costs ~5 ms, which would dominate the plugin's cost per request. Cline
resends the same system prompt, tool schema and history on every turn, so counts are cached per
text: after the first turn only the new messages are encoded.
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import tiktoken

# Per-message framing tokens OpenAI-style chat formats add around each message.
MESSAGE_OVERHEAD_TOKENS = 4


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    # Located without importing litellm, which is slow to import outside the proxy.
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        raise RuntimeError("litellm is not installed; its bundled tiktoken files are needed")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"))
    return tiktoken.get_encoding("cl100k_base")


_CACHE_SIZE = 4096
# Keyed by the text's hash, not the text: the cache must not keep prompts alive in memory.
_counts: OrderedDict[tuple[int, int], int] = OrderedDict()


def count_tokens(text: str) -> int:
    if not text:
        return 0
    key = (len(text), hash(text))
    cached = _counts.get(key)
    if cached is not None:
        _counts.move_to_end(key)
        return cached
    count = len(_encoding().encode(text, disallowed_special=()))
    _counts[key] = count
    if len(_counts) > _CACHE_SIZE:
        _counts.popitem(last=False)
    return count
