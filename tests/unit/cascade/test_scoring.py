"""Draft quality metrics: agreement, token probability, red flags, and the confidence they make."""

import math

import pytest

from glm_saver.cascade.scoring import (
    DraftFacts,
    agreements,
    best_draft,
    confidence,
    is_refusal,
    python_blocks_parse,
    red_flags,
    score_drafts,
    similarity,
    token_probability,
)

PRIOR = 0.5


def test_token_probability_is_the_geometric_mean_of_token_probabilities() -> None:
    assert token_probability([-0.1, -0.3]) == pytest.approx(math.exp(-0.2))
    assert token_probability([]) is None
    assert token_probability(None) is None


def test_token_probability_ignores_values_that_are_not_finite() -> None:
    assert token_probability([-0.2, float("-inf"), float("nan")]) == pytest.approx(math.exp(-0.2))


def test_same_answers_agree_fully_and_different_ones_little() -> None:
    assert similarity("The answer is 84.", "the answer is 84") == 1.0
    assert similarity("The answer is 84.", "Paris is the capital of France") < 0.3


def test_agreement_is_each_drafts_mean_similarity_to_the_others() -> None:
    same, odd = "return s[::-1]", "use a for loop over the characters"
    scores = agreements([same, same, odd])
    assert scores[0] == scores[1] > scores[2]
    assert scores[0] == pytest.approx((1.0 + similarity(same, odd)) / 2)


def test_a_single_draft_has_no_agreement() -> None:
    assert agreements(["only one"]) == [None]


@pytest.mark.parametrize(
    "text",
    ["I'm sorry, but I can't help with that.", "I cannot do that.", "As an AI, I have no opinion.", "Sorry, I can't answer."],
)
def test_refusals_are_recognised(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize("text", ["Sorting is O(n log n).", "It can't be reproduced with your input; the bug is in line 3.", "Sorry for the wait: here it is."])
def test_ordinary_answers_are_not_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_python_blocks_are_checked_with_ast_and_other_languages_are_not() -> None:
    assert python_blocks_parse("```python\ndef f(x):\n    return x\n```") is True
    assert python_blocks_parse("```py\ndef f(x) return x\n```") is False
    assert python_blocks_parse("```bash\nif [ -f x ]; then\n```") is None
    assert python_blocks_parse("no code at all") is None


@pytest.mark.parametrize(
    ("facts", "flag"),
    [
        (DraftFacts(""), "empty"),
        (DraftFacts("   "), "empty"),
        (DraftFacts("I'm sorry, I cannot help."), "refusal"),
        (DraftFacts("The steps are: first", finish_reason="length"), "truncated"),
        (DraftFacts("```python\nprint(1)\n"), "unclosed-code"),
        (DraftFacts("```python\nprint(1\n```"), "broken-python"),
        (DraftFacts("call read_file", tool_arguments=("{not json",)), "broken-tool-call"),
    ],
)
def test_red_flags(facts: DraftFacts, flag: str) -> None:
    assert flag in red_flags(facts)


def test_a_clean_complete_answer_has_no_red_flag() -> None:
    assert red_flags(DraftFacts("```python\nprint(1)\n```\nDone.", finish_reason="stop", tool_arguments=('{"path": "a"}',))) == ()


def test_confidence_without_any_evidence_is_the_prior() -> None:
    assert confidence(None, None, (), PRIOR) == PRIOR


def test_confidence_weighs_agreement_above_token_probability() -> None:
    assert confidence(1.0, 0.0, (), PRIOR) > confidence(0.0, 1.0, (), PRIOR)
    assert confidence(0.8, None, (), PRIOR) == 0.8
    assert confidence(None, 0.9, (), PRIOR) == 0.9


@pytest.mark.parametrize("flag", ["empty", "refusal", "truncated", "broken-tool-call"])
def test_fatal_flags_drop_confidence_to_zero(flag: str) -> None:
    assert confidence(1.0, 1.0, (flag,), PRIOR) == 0.0


def test_broken_code_halves_confidence() -> None:
    assert confidence(1.0, 1.0, ("broken-python",), PRIOR) == 0.5


def test_best_draft_is_the_most_confident_one_agreeing_with_the_others() -> None:
    drafts = [
        DraftFacts("The capital is Lyon.", "stop", (-0.05,)),
        DraftFacts("The capital is Paris.", "stop", (-0.2,)),
        DraftFacts("The capital is Paris.", "stop", (-0.2,)),
    ]
    scores = score_drafts(drafts, PRIOR)
    assert best_draft(scores) == 1
    assert scores[0].agreement is not None and scores[1].agreement is not None and scores[1].agreement > scores[0].agreement


def test_score_summary_names_the_signals_but_no_draft_text() -> None:
    [score] = score_drafts([DraftFacts("secret plan: 42", "length", (-0.1,))], PRIOR)
    summary = score.summary()
    assert "confidence 0.00" in summary and "token-prob 0.90" in summary and "truncated" in summary
    assert "secret" not in summary


def test_best_draft_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        best_draft([])
