"""The labelled coding asks follow their rubric, the splits hold out, numeric-answer MMLU questions are
known, and APGR measures what it says."""

import random

import pytest

from training.datasets import CODING_SPLIT, Item, coding, numeric_answer, split_of
from training.metrics import curve


def test_every_coding_label_names_a_rule_of_its_own_kind() -> None:
    for item in coding():
        assert item.group[0] == ("H" if item.needs_strong else "E"), item.text
        assert item.group[1:].isdigit()


def test_coding_asks_are_unique_and_both_labels_are_well_represented() -> None:
    items = coding()
    assert len({item.text for item in items}) == len(items)
    hard = sum(item.needs_strong for item in items)
    assert 0.3 < hard / len(items) < 0.7


def test_split_depends_only_on_the_text() -> None:
    assert split_of("rename foo to bar", CODING_SPLIT) == split_of("rename foo to bar", CODING_SPLIT)
    splits = {split_of(f"ask {i}", CODING_SPLIT) for i in range(200)}
    assert splits == {"train", "val", "test"}


def test_a_question_is_numeric_only_when_all_four_options_are_numbers() -> None:
    assert numeric_answer("What is 3 x 4?\nA. 7\nB. 12\nC. $1.50\nD. \u22122\nAnswer:")
    assert not numeric_answer("When did it end?\nA. 1918\nB. 1945\nC. never\nD. 1815\nAnswer:")
    assert not numeric_answer("What is 3 x 4? 12 or 7?")


def _items(gains: list[int]) -> list[Item]:
    """gain 1: only the strong model is right; 0: both right; -1: only the weak one is."""
    return [Item(f"q{i}", gain <= 0, gain >= 0, "g", "test") for i, gain in enumerate(gains)]


def test_apgr_of_a_constant_scorer_is_one_half() -> None:
    items = _items([1, 0, 0, 1, -1, 0, 1, 0])
    assert curve(items, [0.3] * len(items)).apgr == pytest.approx(0.5)


def test_apgr_rewards_ranking_the_asks_that_need_the_strong_model_first() -> None:
    gains = [1, 0, 0, 1, 0, 0, 0, 1]
    items = _items(gains)
    best = curve(items, [float(g) for g in gains])
    worst = curve(items, [-float(g) for g in gains])
    assert best.apgr > 0.5 > worst.apgr
    assert best.share_to_recover(1.0) == pytest.approx(3 / 8)


def test_random_scores_average_one_half() -> None:
    rng = random.Random(1)
    items = _items([rng.choice([1, 1, 0, 0, -1]) for _ in range(400)])
    mean = sum(curve(items, [rng.random() for _ in items]).apgr for _ in range(30)) / 30
    assert mean == pytest.approx(0.5, abs=0.03)
