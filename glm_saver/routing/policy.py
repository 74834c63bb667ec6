"""The routing strategies: from what a request is to where it goes (a Decision).

The pure policy lives here so it can be read and tested without a proxy; the plugin applies it.
Precedence: context-window safety and images (a tier that takes them), then the per-request
override header, then the strategy.
The speculative strategies decide only *whether* to run the draft/verify cascade (speculative.py):
drafts are made locally, so a speculative decision routes "local" and the window check applies to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from glm_saver.classifier import Classification
from glm_saver.routing.tiers import Route, Tiers
from glm_saver.settings import Strategy


@dataclass(frozen=True)
class Decision:
    route: Route  # a tier's name
    reason: str  # low-cardinality code, counted in /stats
    detail: str  # human-readable, sent in x-glm-saver-reason
    score: float | None = None
    speculate: bool = False  # run the draft/verify cascade instead of routing straight
    # What the headers and /stats call the route when it is not plain `route` (draft-accepted,
    # draft-verified, draft-corrected, cloud); `route` stays the tier that serves the response.
    label: str | None = None


def moved_off(detail: str, wanted: Route, why: str) -> str:
    """The detail of a request sent elsewhere than the tier it wanted: what moved it, then the tier
    it wanted and why it wanted it (that decision's reason)."""
    return f"{detail} (wanted {wanted}: {why})"


SPECULATIVE_STRATEGIES = frozenset({"speculative_decoding", "parallel_speculative", "smart_speculative"})


class RequestTooLarge(ValueError):
    """The prompt is bigger than every model's context window."""


def _speculative(strategy: Strategy, tiers: Tiers, classify: Callable[[], Classification], has_tools: bool, speculate_with_tools: bool) -> Decision:
    local = tiers.local.name
    if has_tools and not speculate_with_tools:
        routed = _by_strategy("smart_routing", tiers, classify)
        return Decision(routed.route, routed.reason, f"{routed.detail}; tools are not speculated", routed.score)
    if strategy != "smart_speculative":
        return Decision(local, "speculative", f"strategy {strategy}", speculate=True)
    verdict = classify()
    top = "; ".join(verdict.reasons[:2])
    if verdict.label == "simple":
        return Decision(local, "classifier-simple", f"simple (score {verdict.score:.2f}: {top})", verdict.score)
    return Decision(local, "speculative", f"complex (score {verdict.score:.2f}: {top})", verdict.score, speculate=True)


def _banded(tiers: Tiers, verdict: Classification) -> Decision:
    """The tier the score's band names; with more than two tiers the reason says which band."""
    tier = tiers.band(verdict)
    top = "; ".join(verdict.reasons[:2])
    if tiers.thresholds is None:
        return Decision(tier.name, f"classifier-{verdict.label}", f"{verdict.label} (score {verdict.score:.2f}: {top})", verdict.score)
    reason = "classifier-simple" if tier.rank == 0 else "classifier-complex" if tier is tiers.strongest else f"classifier-{tier.name}"
    low = f"{tiers.thresholds[tier.rank - 1]:.2f}" if tier.rank else "0"
    high = f"{tiers.thresholds[tier.rank]:.2f}" if tier.rank < len(tiers.thresholds) else "1"
    return Decision(tier.name, reason, f"{tier.name} band [{low}, {high}) (score {verdict.score:.2f}: {top})", verdict.score)


def _by_strategy(
    strategy: Strategy,
    tiers: Tiers,
    classify: Callable[[], Classification],
    has_tools: bool = False,
    speculate_with_tools: bool = False,
    speculate: bool = True,
) -> Decision:
    if strategy in SPECULATIVE_STRATEGIES and not speculate:
        return _by_strategy("smart_routing", tiers, classify)
    if strategy in SPECULATIVE_STRATEGIES:
        return _speculative(strategy, tiers, classify, has_tools, speculate_with_tools)
    if strategy == "always_local":
        return Decision(tiers.local.name, "strategy", "strategy always_local")
    if strategy == "always_cerebras":
        return Decision(tiers.strongest.name, "strategy", "strategy always_cerebras")
    return _banded(tiers, classify())


def decide(
    strategy: Strategy,
    prompt_tokens: int,
    tiers: Tiers,
    classify: Callable[[], Classification],
    override: Route | None = None,
    *,
    has_tools: bool = False,
    speculate_with_tools: bool = False,
    speculate: bool = True,
    images: bool = False,
) -> Decision:
    if not any(tier.fits(prompt_tokens) for tier in tiers.ladder):
        windows = ", ".join(f"{tier.name} {tier.window}" for tier in tiers.ladder)
        raise RequestTooLarge(f"the prompt is about {prompt_tokens} tokens, more than every model's context window ({windows}); shorten the conversation")
    wanted = (
        Decision(override, "override", f"header asked for {override}")
        if override
        else _by_strategy(strategy, tiers, classify, has_tools, speculate_with_tools, speculate)
    )
    tier = tiers[wanted.route]
    if tier.takes(prompt_tokens, images):
        return wanted
    # Too big for the tier it wanted, or its images: the nearest stronger tier that takes it, else the nearest cheaper.
    taking = sorted(tiers.nearest(wanted.route, prompt_tokens, images), key=lambda other: (other.rank < tier.rank, abs(other.rank - tier.rank)))
    if not taking:
        raise RequestTooLarge(f"the prompt has images, and no model whose context window takes its {prompt_tokens} tokens takes images")
    if tier.fits(prompt_tokens):
        return Decision(taking[0].name, "images", moved_off(f"{wanted.route} does not take images", wanted.route, wanted.reason), wanted.score)
    why = f"{prompt_tokens} prompt tokens exceed the {wanted.route} window of {tier.window}"
    return Decision(taking[0].name, "context-window", moved_off(why, wanted.route, wanted.reason), wanted.score)
