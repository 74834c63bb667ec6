"""Routing policy: context-window safety first, then the override header, then the strategy."""

import pytest

from glm_saver.classifier import Classification
from glm_saver.routing.policy import RequestTooLarge, decide
from glm_saver.routing.tiers import Tier, Tiers

WINDOWS = Tiers.of_two(local=1000, cloud=100_000)


def verdict(label: str) -> Classification:
    return Classification(score=0.9 if label == "complex" else 0.1, label=label, reasons=["test"])


def never_classify() -> Classification:
    raise AssertionError("the classifier must not run for this decision")


@pytest.mark.parametrize(("label", "route"), [("simple", "local"), ("complex", "cerebras")])
def test_smart_routing_follows_the_classifier(label: str, route: str) -> None:
    decision = decide("smart_routing", 10, WINDOWS, lambda: verdict(label))
    assert (decision.route, decision.reason) == (route, f"classifier-{label}")


@pytest.mark.parametrize(("strategy", "route"), [("always_local", "local"), ("always_cerebras", "cerebras")])
def test_fixed_strategies_skip_the_classifier(strategy: str, route: str) -> None:
    assert decide(strategy, 10, WINDOWS, never_classify).route == route


@pytest.mark.parametrize("override", ["local", "cerebras"])
def test_override_wins_over_the_strategy(override: str) -> None:
    decision = decide("smart_routing", 10, WINDOWS, never_classify, override=override)
    assert (decision.route, decision.reason) == (override, "override")


def test_too_big_for_local_goes_to_cerebras_even_when_simple_or_overridden() -> None:
    assert decide("smart_routing", 5000, WINDOWS, lambda: verdict("simple")).route == "cerebras"
    decision = decide("always_local", 5000, WINDOWS, never_classify, override="local")
    assert (decision.route, decision.reason) == ("cerebras", "context-window")


def test_too_big_for_every_window_is_rejected() -> None:
    with pytest.raises(RequestTooLarge, match="context window"):
        decide("smart_routing", 200_000, WINDOWS, never_classify)


def test_unknown_windows_never_block() -> None:
    assert decide("always_local", 10**7, Tiers.of_two(local=None, cloud=None), never_classify).route == "local"


SEEING_CLOUD = Tiers((Tier("local", "local", window=1000), Tier("cerebras", "cerebras", window=100_000, rank=1, images=True)))


def test_images_move_a_simple_or_overridden_ask_to_the_tier_that_takes_them() -> None:
    decision = decide("smart_routing", 10, SEEING_CLOUD, lambda: verdict("simple"), images=True)
    assert (decision.route, decision.reason, decision.speculate) == ("cerebras", "images", False)
    assert decision.detail == "local does not take images (wanted local: classifier-simple)"
    assert decide("smart_routing", 10, SEEING_CLOUD, never_classify, override="local", images=True).route == "cerebras"


def test_images_no_tier_with_room_takes_are_refused() -> None:
    with pytest.raises(RequestTooLarge, match="no model whose context window takes its 10 tokens takes images"):
        decide("always_local", 10, WINDOWS, never_classify, images=True)
