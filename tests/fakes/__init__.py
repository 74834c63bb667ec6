"""Fake upstream servers (a local model, Cerebras) for end-to-end tests and benchmarks.

    from tests.fakes import FakeUpstream

    with FakeUpstream("local") as local, FakeUpstream("cerebras", tokens_per_minute=20_000) as cerebras:
        ...  # point litellm at local.url / cerebras.url ("http://127.0.0.1:PORT/v1")
        local.wait_until(lambda f: len(f.served) == 1)
        cerebras.inject("429")          # next chat request gets a Cerebras 429
        cerebras.advance_window()       # the minute budget is fresh again
        local.stop(); local.start()     # "local is down", then back on the same port

Where to look: ``upstream.py`` (FakeUpstream, the app, /_control/ API, CLI), ``chat.py`` (the
chat route: quota, faults, streaming), ``answers.py`` (what is answered), ``ratelimit.py``
(Cerebras quota), ``tokens.py`` (the token-counting rule), ``state.py`` (records, fault modes).

Names are imported lazily: ``python -m tests.fakes.upstream`` imports this package first, and an
eager import of the module it is about to run would make runpy warn and load it twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FakeUpstream": "tests.fakes.upstream",
    "Options": "tests.fakes.upstream",
    "create_app": "tests.fakes.upstream",
    "ReplyRule": "tests.fakes.answers",
    "FakeClock": "tests.fakes.ratelimit",
    "RecordedRequest": "tests.fakes.state",
    "ServedAnswer": "tests.fakes.state",
    "count_tokens": "tests.fakes.tokens",
    "count_prompt_tokens": "tests.fakes.tokens",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
