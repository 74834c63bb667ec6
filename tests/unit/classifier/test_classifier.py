"""The classifier's configurable rules push the score the way users expect, with reasons."""

import pytest

from glm_saver.classifier import Classification, ComplexityClassifier, build_classifier
from glm_saver.classifier.rules import VERDICTS_KEPT
from glm_saver.settings import ClassifierSettings, ConfigError, RegexRule
from tests import cline_shapes as cline


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_default_classifier_gives_a_verdict_with_reasons() -> None:
    verdict = ComplexityClassifier().classify(ask("hello"))
    assert isinstance(verdict, Classification)
    assert 0.0 <= verdict.score <= 1.0
    assert verdict.label == "simple"
    assert verdict.reasons


def test_complex_ask_is_complex_and_says_why() -> None:
    verdict = ComplexityClassifier().classify(ask("Refactor the scheduler to remove the race condition"))
    assert verdict.label == "complex"
    assert any("race condition" in reason for reason in verdict.reasons)


def test_added_complexity_keyword_raises_the_score() -> None:
    text = "please frobnicate the widget"
    base = ComplexityClassifier().classify(ask(text))
    tuned = ComplexityClassifier(ClassifierSettings(complexity_keywords={"frobnicate": 3.0})).classify(ask(text))
    assert tuned.score > base.score
    assert tuned.label == "complex"
    assert any("frobnicate" in reason for reason in tuned.reasons)


def test_added_simple_keyword_lowers_the_score() -> None:
    text = "refactor the module trivially"
    base = ComplexityClassifier().classify(ask(text))
    tuned = ComplexityClassifier(ClassifierSettings(simple_keywords={"trivially": 3.0})).classify(ask(text))
    assert tuned.score < base.score
    assert tuned.label == "simple"


def test_keywords_match_whole_words_only() -> None:
    settings = ClassifierSettings(complexity_keywords={"proof": 5.0})
    assert ComplexityClassifier(settings).classify(ask("make it waterproof")).label == "simple"


def test_long_ask_is_complex_on_length_alone() -> None:
    settings = ClassifierSettings(token_threshold=50)
    verdict = ComplexityClassifier(settings).classify(ask("word " * 80))
    assert verdict.label == "complex"
    assert any("tokens" in reason for reason in verdict.reasons)


def test_regex_rule_applies_with_its_reason() -> None:
    rule = RegexRule(pattern=r"\bCVE-\d{4}-\d+", weight=4.0, reason="mentions a CVE")
    verdict = ComplexityClassifier(ClassifierSettings(rules=[rule])).classify(ask("is CVE-2024-1234 relevant?"))
    assert verdict.label == "complex"
    assert any(reason.startswith("mentions a CVE") for reason in verdict.reasons)


def test_threshold_moves_the_label_not_the_score() -> None:
    text = "implement a cache"
    low = ComplexityClassifier(ClassifierSettings(threshold=0.05)).classify(ask(text))
    high = ComplexityClassifier(ClassifierSettings(threshold=0.99)).classify(ask(text))
    assert low.score == high.score
    assert (low.label, high.label) == ("complex", "simple")


def test_replace_default_keywords_drops_the_builtin_list() -> None:
    settings = ClassifierSettings(replace_default_keywords=True, complexity_keywords={"zebra": 1.0})
    assert settings.complexity_keywords == {"zebra": 1.0}
    verdict = ComplexityClassifier(settings).classify(ask("refactor the race condition"))
    assert not any("keyword" in reason for reason in verdict.reasons)
    assert verdict.score < ComplexityClassifier().classify(ask("refactor the race condition")).score
    rules_only = settings.model_copy(update={"learned_model": False})
    assert ComplexityClassifier(rules_only).classify(ask("refactor the race condition")).label == "simple"


COMPUTATION = "A rectangle is 12 cm long and 7 cm wide. What is its area?"


def keywords_of(verdict: Classification) -> list[str]:
    return [reason for reason in verdict.reasons if "keyword" in reason]


def test_what_is_marks_a_lookup_easy() -> None:
    assert keywords_of(ComplexityClassifier().classify(ask("What is a tuple?"))) == ["simple keyword 'what is' (-0.8)"]


@pytest.mark.parametrize("text", [COMPUTATION, "What's 15% of $80?", "what is x if 3x = 12"])
def test_what_is_does_not_count_in_an_ask_that_computes_with_numbers(text: str) -> None:
    assert keywords_of(ComplexityClassifier().classify(ask(text))) == []


def test_a_follow_up_to_a_computation_computes_too() -> None:
    follow_up = [*ask(COMPUTATION), {"role": "assistant", "content": "84 square cm."}, {"role": "user", "content": "what's its perimeter?"}]
    assert keywords_of(ComplexityClassifier().classify(follow_up)) == []
    assert keywords_of(ComplexityClassifier().classify(ask("what's its perimeter?"))) == ["simple keyword 'what's' (-0.6)"]


def test_the_digits_of_a_name_are_not_numbers_to_compute_with() -> None:
    assert keywords_of(ComplexityClassifier().classify(ask("what is the h264 codec in mp3 files?"))) == ["simple keyword 'what is' (-0.8)"]


def test_other_simple_keywords_still_count_in_a_computation() -> None:
    assert keywords_of(ComplexityClassifier().classify(ask("thanks! " + COMPUTATION))) == ["simple keyword 'thanks' (-1.0)"]


def test_with_no_lookup_keywords_what_is_counts_in_a_computation() -> None:
    settings = ClassifierSettings(lookup_keywords=[])
    assert keywords_of(ComplexityClassifier(settings).classify(ask(COMPUTATION))) == ["simple keyword 'what is' (-0.8)"]


def test_replaced_keywords_keep_only_the_lookup_keywords_left() -> None:
    assert ClassifierSettings(replace_default_keywords=True, simple_keywords={"what's": 1.0}).lookup_keywords == ["what's"]


def test_environment_details_and_system_prompt_do_not_make_a_simple_task_complex() -> None:
    verdict = ComplexityClassifier().classify(cline.vscode_task("Fix the typo in the README title"))
    assert verdict.label == "simple"


def test_cli_reminder_does_not_make_a_simple_task_complex() -> None:
    assert ComplexityClassifier().classify(cline.cli_task("what is in this folder?")).label == "simple"


def test_complex_task_inside_cline_wrapper_is_complex() -> None:
    verdict = ComplexityClassifier().classify(cline.vscode_tool_result_turn("Refactor the auth module and fix the race condition"))
    assert verdict.label == "complex"


class ShoutingClassifier:
    """A custom classifier: anything in capitals is complex."""

    def classify(self, messages):
        text = messages[-1]["content"]
        complex_ = text.isupper()
        return Classification(score=0.9 if complex_ else 0.1, label="complex" if complex_ else "simple", reasons=["shouting"])


def test_custom_classifier_is_loaded_by_dotted_path() -> None:
    classifier = build_classifier(ClassifierSettings(custom="tests.unit.classifier.test_classifier.ShoutingClassifier"))
    assert classifier.classify(ask("HELP")).label == "complex"
    assert classifier.classify(ask("help")).label == "simple"


@pytest.mark.parametrize(
    "path", ["nodots", "tests.unit.classifier.test_classifier.Missing", "no_such_module.Thing", "tests.unit.classifier.test_classifier.ask_nothing"]
)
def test_bad_custom_classifier_path_is_a_config_error(path: str) -> None:
    with pytest.raises(ConfigError, match=r"glm_saver\.classifier\.custom"):
        build_classifier(ClassifierSettings(custom=path))


ask_nothing = "a string has no classify method"


class CountingClassifier(ComplexityClassifier):
    """Counts the asks it actually scores (the rest come from the kept verdicts)."""

    def __init__(self, settings: ClassifierSettings | None = None) -> None:
        self.scored: list[str] = []
        super().__init__(settings)

    def score_text(self, ask: str, context: str = "") -> tuple[float, list[tuple[float, str]]]:
        self.scored.append(ask)
        return super().score_text(ask, context)


def test_an_agent_resending_its_ask_gets_the_same_verdict_without_a_second_scoring() -> None:
    classifier = CountingClassifier()
    first = classifier.classify(cline.vscode_task("Fix the race condition in the scheduler"))
    again = classifier.classify([*cline.vscode_task("Fix the race condition in the scheduler"), {"role": "assistant", "content": "reading"}])
    assert again == first
    assert classifier.scored == ["Fix the race condition in the scheduler"]
    assert ComplexityClassifier().classify(cline.vscode_task("Fix the race condition in the scheduler")) == first


def test_a_kept_verdict_takes_the_threshold_of_the_moment() -> None:
    classifier = CountingClassifier()
    verdict = classifier.classify(ask("hello"))
    classifier.threshold = verdict.score
    assert classifier.classify(ask("hello")).label == "complex"
    assert classifier.scored == ["hello"]


def test_the_kept_verdicts_are_bounded_the_oldest_going_first() -> None:
    classifier = CountingClassifier(ClassifierSettings(learned_model=False))
    asks = [f"question number {n}" for n in range(VERDICTS_KEPT + 1)]
    for text in asks:
        classifier.classify(ask(text))
    classifier.classify(ask(asks[-1]))
    classifier.classify(ask(asks[0]))
    assert classifier.scored == [*asks, asks[0]]
