"""The three-tier bench's arithmetic: what a band split costs, the quality it buys at a budget, the
cost of reaching a quality, and the oracle's bound, on prompts small enough to work out by hand."""

import math

import numpy as np
import pytest

from bench.tiers_quality import BUDGETS, LOCAL, STRONG, Rule, Tiers, banded, best_part, figures, fixed, oracle

# Two prompts; rows are the tiers local, cheap, strong. Prompt 0 needs more than local and the cheap
# tier is enough for it; on prompt 1 the cheap tier is no better than local and only strong helps.
TIERS = Tiers(
    quality=np.array([[0.0, 0.5], [1.0, 0.5], [1.0, 1.0]]),
    cost=np.array([[0.0, 0.0], [1.0, 1.0], [4.0, 4.0]]),
)
PROMPT_0_FIRST = np.array([0.9, 0.1])


def test_two_tiers_send_the_top_scores_to_the_strong_tier() -> None:
    curve = banded(PROMPT_0_FIRST, TIERS, strong_part=1.0)
    # nobody paid; prompt 0 strong; both strong (mean per prompt)
    assert curve.cost.tolist() == [0.0, 2.0, 4.0]
    assert curve.quality.tolist() == [0.25, 0.75, 1.0]


def test_a_band_split_sends_the_top_of_the_paid_band_strong_and_the_rest_cheap() -> None:
    curve = banded(PROMPT_0_FIRST, TIERS, strong_part=0.5)
    # one paid: round(0.5) = 1 strong (prompt 0); two paid: round(1.0) = 1 strong, prompt 1 cheap
    assert curve.cost.tolist() == [0.0, 2.0, 2.5]
    assert curve.quality.tolist() == [0.25, 0.75, 0.75]


def test_a_band_with_no_strong_part_is_all_cheap() -> None:
    curve = banded(PROMPT_0_FIRST, TIERS, strong_part=0.0)
    assert curve.cost.tolist() == [0.0, 0.5, 1.0]
    assert curve.quality.tolist() == [0.25, 0.75, 0.75]


def test_tied_scores_are_routed_as_a_block_in_expectation() -> None:
    curve = banded(np.array([0.5, 0.5]), TIERS, strong_part=1.0)
    # one strong: prompt 0 (quality 0.75) or prompt 1 (quality 0.5), each half the time
    assert curve.cost.tolist() == [0.0, 2.0, 4.0]
    assert curve.quality.tolist() == [0.25, 0.625, 1.0]


def test_quality_at_equal_cost_interpolates_between_band_sizes() -> None:
    # budget 0.25 per prompt: half of a cheap prompt 0 (three tiers), an eighth of a strong one (two)
    assert banded(PROMPT_0_FIRST, TIERS, 0.0).quality_at(0.25) == pytest.approx(0.5)
    assert banded(PROMPT_0_FIRST, TIERS, 1.0).quality_at(0.25) == pytest.approx(0.3125)


def test_a_budget_beyond_what_a_split_can_spend_gets_its_all_paid_quality() -> None:
    assert banded(PROMPT_0_FIRST, TIERS, 0.0).quality_at(3.0) == pytest.approx(0.75)


def test_cost_to_reach_a_quality_interpolates_and_is_nan_when_out_of_reach() -> None:
    two_tier, all_cheap = banded(PROMPT_0_FIRST, TIERS, 1.0), banded(PROMPT_0_FIRST, TIERS, 0.0)
    assert two_tier.cost_to_reach(0.5) == pytest.approx(1.0)
    assert all_cheap.cost_to_reach(0.5) == pytest.approx(0.25)
    assert two_tier.cost_to_reach(0.8) == pytest.approx(2.4)
    assert math.isnan(all_cheap.cost_to_reach(0.8))
    assert two_tier.cost_to_reach(0.1) == 0.0  # local alone already does it


def test_the_oracle_takes_the_steps_with_the_most_quality_per_dollar_first() -> None:
    three = oracle(TIERS)
    # prompt 0 to cheap (1 per dollar), then prompt 1 to strong (0.5 for 4 dollars)
    assert three.cost.tolist() == [0.0, 0.5, 2.5]
    assert three.quality.tolist() == [0.25, 0.75, 1.0]
    two = oracle(TIERS, (LOCAL, STRONG))
    # prompt 0 to strong (1 for 4 dollars), then prompt 1 (0.5 for 4)
    assert two.cost.tolist() == [0.0, 2.0, 4.0]
    assert two.quality.tolist() == [0.25, 0.75, 1.0]


def test_the_oracle_skips_a_cheap_tier_below_the_hull() -> None:
    # cheap buys 0.1 per dollar, strong 0.5 per dollar: go straight to strong
    tiers = Tiers(quality=np.array([[0.0], [0.1], [1.0]]), cost=np.array([[0.0], [1.0], [2.0]]))
    curve = oracle(tiers)
    assert curve.cost.tolist() == [0.0, 2.0]
    assert curve.quality.tolist() == [0.0, 1.0]


def test_the_best_part_never_is_one_that_cannot_reach_the_target() -> None:
    curves = {0.0: banded(PROMPT_0_FIRST, TIERS, 0.0), 1.0: banded(PROMPT_0_FIRST, TIERS, 1.0)}
    assert best_part(curves, lambda c: c.cost_to_reach(0.8), lowest=True) == 1.0
    assert best_part(curves, lambda c: c.cost_to_reach(0.5), lowest=True) == 0.0
    assert best_part(curves, lambda c: c.quality_at(0.25)) == 0.0


def test_relative_costs_count_in_always_strong_units() -> None:
    assert TIERS.relative().cost.tolist() == [[0.0, 0.0], [0.25, 0.25], [1.0, 1.0]]


def test_three_tiers_against_two_at_equal_cost_and_the_cost_saved_at_equal_quality() -> None:
    # Relative to always-strong, cheap costs 0.25 a prompt. Two-tier: cost 0, 0.5, 1 for quality
    # 0.25, 0.75, 1; all cheap: cost 0, 0.125, 0.25 for quality 0.25, 0.75, 0.75.
    assert BUDGETS == (0.1, 0.2, 0.3, 0.5, 0.7)
    result = figures(PROMPT_0_FIRST, TIERS, fixed(Rule("all cheap", [0.0] * 5, 0.0)))
    assert result.two_tier.tolist() == pytest.approx([0.35, 0.45, 0.55, 0.75, 0.85])
    assert result.three_tier.tolist() == pytest.approx([0.65, 0.75, 0.75, 0.75, 0.75])
    # Q is two-tier's quality with half the prompts strong: 0.75 for 0.5; all cheap gets it for 0.125
    assert result.reference_cost == pytest.approx(0.5)
    assert result.three_tier_cost == pytest.approx(0.125)
    assert result.saved == pytest.approx(0.75)
