"""A custom classifier (glm_saver.classifier.custom) that always raises: the plugin must fail open."""

from __future__ import annotations

from typing import Any


class BrokenClassifier:
    def classify(self, messages: list[dict[str, Any]]) -> Any:
        raise RuntimeError("the classifier broke (on purpose, for a test)")
