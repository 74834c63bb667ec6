"""The learned half of the score: shipped inside the package, pure Python, explained by its reasons,
and never in the way of the rules users configure."""

import math
import subprocess
import sys

import pytest

from glm_saver.classifier import ComplexityClassifier
from glm_saver.classifier.features import SCAN_CHARS, extract
from glm_saver.classifier.learned import shipped_model
from glm_saver.settings import DEFAULT_COMPLEXITY_KEYWORDS, ClassifierSettings
from tests import cline_shapes as cline
from training.datasets import coding, of_split
from training.metrics import curve


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def logit(score: float) -> float:
    return math.log(score / (1 - score))


@pytest.mark.parametrize("text", ["hello", "what is a tuple?", "hello, what is a tuple?", "thanks, that works!", "run the tests"])
def test_simple_chat_asks_stay_local_by_default(text: str) -> None:
    assert ComplexityClassifier().classify(ask(text)).label == "simple"


@pytest.mark.parametrize(
    "task",
    [
        "Refactor the scheduler architecture to remove the race condition in the distributed lock",
        "Implement a distributed token bucket rate limiter on Redis that stays correct under concurrency",
        "Find and fix the deadlock between the cache refresher and the request handlers",
    ],
)
def test_complex_coding_tasks_go_to_the_cloud_by_default(task: str) -> None:
    assert ComplexityClassifier().classify(cline.vscode_task(task)).label == "complex"


def test_fix_the_typo_in_a_cline_task_stays_local() -> None:
    assert ComplexityClassifier().classify(cline.vscode_task("Fix the typo in the README title")).label == "simple"


def test_reasons_name_the_learned_features_that_pushed_the_score() -> None:
    verdict = ComplexityClassifier().classify(ask("why do the integration tests fail only on CI and never locally?"))
    learned = [reason for reason in verdict.reasons if reason.startswith("learned: ")]
    assert any(reason.startswith("learned: topic (") and "(+" in reason for reason in learned)


def test_score_is_the_sum_of_rule_and_learned_evidence() -> None:
    text = "Some invoice totals in the monthly report are off by one cent. Figure out why and fix it."
    classifier = ComplexityClassifier()
    bias, contributions = shipped_model().evidence(text)
    expected = bias + sum(c.weight for c in contributions) + sum(weight for weight, _ in classifier.rule_evidence(text))
    assert logit(classifier.score_text(text)[0]) == pytest.approx(expected, abs=1e-9)


def test_added_keyword_moves_the_score_by_exactly_its_weight() -> None:
    text = "please frobnicate the widget"
    base = ComplexityClassifier().classify_text(text).score
    tuned = ComplexityClassifier(ClassifierSettings(complexity_keywords={"frobnicate": 3.0})).classify_text(text).score
    assert logit(tuned) - logit(base) == pytest.approx(3.0, abs=0.01)  # scores are rounded to 4 digits


def test_words_of_the_default_keywords_belong_to_the_rules_not_the_model() -> None:
    single_words = {keyword for keyword in DEFAULT_COMPLEXITY_KEYWORDS if " " not in keyword and "-" not in keyword}
    assert single_words.isdisjoint(shipped_model().topic_words)


def test_learned_model_can_be_switched_off() -> None:
    text = "why do the integration tests fail only on CI?"
    rules_only = ComplexityClassifier(ClassifierSettings(learned_model=False)).classify_text(text)
    assert not any(reason.startswith("learned:") for reason in rules_only.reasons)
    assert rules_only.score != ComplexityClassifier().classify_text(text).score


def test_a_huge_pasted_ask_is_read_for_words_only_up_to_a_bound() -> None:
    text = "a" * SCAN_CHARS + " zebra"
    features = extract(text)
    assert "zebra" not in features.words
    assert features.dense["log_chars"] == pytest.approx(math.log1p(len(text)))


def test_runtime_scoring_does_not_import_numpy() -> None:
    code = (
        "import sys; from glm_saver.classifier import ComplexityClassifier; "
        "ComplexityClassifier().classify([{'role': 'user', 'content': 'why is this slow?'}]); "
        "print('numpy' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_shipped_scorer_ranks_held_out_coding_asks_better_than_the_rules_alone() -> None:
    held_out = of_split(coding(), "test")
    ours = ComplexityClassifier()
    rules = ComplexityClassifier(ClassifierSettings(learned_model=False))
    ours_apgr = curve(held_out, [ours.classify(cline.vscode_task(item.text)).score for item in held_out]).apgr
    rules_apgr = curve(held_out, [rules.classify(cline.vscode_task(item.text)).score for item in held_out]).apgr
    assert ours_apgr > rules_apgr > 0.5
