"""The routing strategies: from what a request is to where it goes (a Decision).

The pure policy lives here so it can be read and tested without a proxy; the plugin applies it.
Precedence: context-window safety, then the per-request override header, then the strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from glm_saver.classifier import Classification
from glm_saver.settings import Strategy

Route = Literal["local", "cerebras"]
ROUTES: tuple[Route, ...] = ("local", "cerebras")


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: str  # low-cardinality code, counted in /stats
    detail: str  # human-readable, sent in x-glm-saver-reason
    score: float | None = None


@dataclass(frozen=True)
class Windows:
    """Context windows (max input tokens) of the two targets; None = unknown, assume it fits."""

    local: int | None
    cloud: int | None

    def fits(self, route: Route, tokens: int) -> bool:
        window = self.local if route == "local" else self.cloud
        return window is None or tokens <= window


class RequestTooLarge(ValueError):
    """The prompt is bigger than every model's context window."""


def _other(route: Route) -> Route:
    return "cerebras" if route == "local" else "local"


def _by_strategy(strategy: Strategy, classify: Callable[[], Classification]) -> Decision:
    if strategy == "always_local":
        return Decision("local", "strategy", "strategy always_local")
    if strategy == "always_cerebras":
        return Decision("cerebras", "strategy", "strategy always_cerebras")
    verdict = classify()
    route: Route = "cerebras" if verdict.label == "complex" else "local"
    top = "; ".join(verdict.reasons[:2])
    return Decision(route, f"classifier-{verdict.label}", f"{verdict.label} (score {verdict.score:.2f}: {top})", verdict.score)


def decide(
    strategy: Strategy,
    prompt_tokens: int,
    windows: Windows,
    classify: Callable[[], Classification],
    override: Route | None = None,
) -> Decision:
    if not windows.fits("local", prompt_tokens) and not windows.fits("cerebras", prompt_tokens):
        raise RequestTooLarge(
            f"the prompt is about {prompt_tokens} tokens, more than every model's context window "
            f"(local {windows.local}, cerebras {windows.cloud}); shorten the conversation"
        )
    wanted = Decision(override, "override", f"header asked for {override}") if override else _by_strategy(strategy, classify)
    if windows.fits(wanted.route, prompt_tokens):
        return wanted
    window = windows.local if wanted.route == "local" else windows.cloud
    return Decision(
        _other(wanted.route),
        "context-window",
        f"{prompt_tokens} prompt tokens exceed the {wanted.route} window of {window} (wanted {wanted.route}: {wanted.reason})",
        wanted.score,
    )
