"""Waiting for an asynchronous effect (a log event, a write-behind, a reconnect): poll with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll until `condition()` is truthy and return it; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout}s"
        time.sleep(0.05)
