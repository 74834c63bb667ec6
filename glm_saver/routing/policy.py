"""The routing strategies: from what a request is to where it goes (a Decision).

The pure policy lives here so it can be read and tested without a proxy; the plugin applies it.
Precedence: context-window safety, then the per-request override header, then the strategy.
The speculative strategies decide only *whether* to run the draft/verify cascade (speculative.py):
drafts are made locally, so a speculative decision routes "local" and the window check applies to it.
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
    speculate: bool = False  # run the draft/verify cascade instead of routing straight
    # What the headers and /stats call the route when it is not plain `route` (draft-accepted,
    # draft-verified, draft-corrected, cloud); `route` stays the group that serves the response.
    label: str | None = None


SPECULATIVE_STRATEGIES = frozenset({"speculative_decoding", "parallel_speculative", "smart_speculative"})


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


def _speculative(strategy: Strategy, classify: Callable[[], Classification], has_tools: bool, speculate_with_tools: bool) -> Decision:
    if has_tools and not speculate_with_tools:
        routed = _by_strategy("smart_routing", classify)
        return Decision(routed.route, routed.reason, f"{routed.detail}; tools are not speculated", routed.score)
    if strategy != "smart_speculative":
        return Decision("local", "speculative", f"strategy {strategy}", speculate=True)
    verdict = classify()
    top = "; ".join(verdict.reasons[:2])
    if verdict.label == "simple":
        return Decision("local", "classifier-simple", f"simple (score {verdict.score:.2f}: {top})", verdict.score)
    return Decision("local", "speculative", f"complex (score {verdict.score:.2f}: {top})", verdict.score, speculate=True)


def _by_strategy(
    strategy: Strategy, classify: Callable[[], Classification], has_tools: bool = False, speculate_with_tools: bool = False, speculate: bool = True
) -> Decision:
    if strategy in SPECULATIVE_STRATEGIES and not speculate:
        return _by_strategy("smart_routing", classify)
    if strategy in SPECULATIVE_STRATEGIES:
        return _speculative(strategy, classify, has_tools, speculate_with_tools)
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
    *,
    has_tools: bool = False,
    speculate_with_tools: bool = False,
    speculate: bool = True,
) -> Decision:
    if not windows.fits("local", prompt_tokens) and not windows.fits("cerebras", prompt_tokens):
        raise RequestTooLarge(
            f"the prompt is about {prompt_tokens} tokens, more than every model's context window "
            f"(local {windows.local}, cerebras {windows.cloud}); shorten the conversation"
        )
    wanted = (
        Decision(override, "override", f"header asked for {override}")
        if override
        else _by_strategy(strategy, classify, has_tools, speculate_with_tools, speculate)
    )
    if windows.fits(wanted.route, prompt_tokens):
        return wanted
    window = windows.local if wanted.route == "local" else windows.cloud
    return Decision(
        _other(wanted.route),
        "context-window",
        f"{prompt_tokens} prompt tokens exceed the {wanted.route} window of {window} (wanted {wanted.route}: {wanted.reason})",
        wanted.score,
    )
