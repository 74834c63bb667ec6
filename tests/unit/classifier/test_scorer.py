"""The learned half of the score: shipped inside the package, offline, explained by its reasons,
read in the context of the conversation, and never in the way of the rules users configure."""

import math
import os
import subprocess
import sys

import pytest

from glm_saver.classifier import ComplexityClassifier
from glm_saver.classifier.features import SCAN_CHARS, extract
from glm_saver.classifier.learned import shipped_model
from glm_saver.classifier.rules import CONTEXT_RULE_SHARE
from glm_saver.classifier.semantic import EMBED_CHARS, conversation_asks, embedding_text
from glm_saver.request import latest_ask
from glm_saver.settings import ClassifierSettings, RegexRule
from glm_saver.tokens import count_tokens
from tests import cline_shapes as cline
from training.datasets import MMLU_DIR, PREFERENCES_DIR, coding, of_split
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


def test_reasons_name_the_meaning_of_the_ask_by_its_words() -> None:
    verdict = ComplexityClassifier().classify(ask("prove that the algorithm terminates for every input graph"))
    meaning = [reason for reason in verdict.reasons if reason.startswith("learned: meaning of the ask (")]
    assert len(meaning) == 1
    named = meaning[0].split("(")[1].split(")")[0]
    assert any(f"'{word}'" in named for word in ("prove", "algorithm", "terminates", "every", "input", "graph"))


def test_every_part_of_the_score_is_a_reason_and_they_sum_to_it() -> None:
    text = "Some invoice totals in the monthly report are off by one cent. Figure out why and fix it."
    classifier = ComplexityClassifier()
    score, evidence = classifier.score_text(text)
    bias, contributions = shipped_model().evidence(text)
    expected = bias + sum(c.weight for c in contributions) + sum(weight for weight, _ in classifier.rule_evidence(text))
    assert logit(score) == pytest.approx(expected, abs=1e-9)
    assert logit(score) == pytest.approx(sum(weight for weight, _ in evidence), abs=1e-9)
    shown = classifier.classify_text(text).reasons
    assert any(r.startswith("learned baseline") for r in shown) and any(r.startswith("ask is ") for r in shown)


def test_added_keyword_moves_the_score_by_exactly_its_weight() -> None:
    text = "please frobnicate the widget"
    base = ComplexityClassifier().classify_text(text).score
    tuned = ComplexityClassifier(ClassifierSettings(complexity_keywords={"frobnicate": 3.0})).classify_text(text).score
    assert logit(tuned) - logit(base) == pytest.approx(3.0, abs=0.01)  # scores are rounded to 4 digits


def test_added_simple_keyword_moves_the_score_down_by_exactly_its_weight() -> None:
    text = "please frobnicate the widget"
    base = ComplexityClassifier().classify_text(text).score
    tuned = ComplexityClassifier(ClassifierSettings(simple_keywords={"widget": 1.5})).classify_text(text).score
    assert logit(base) - logit(tuned) == pytest.approx(1.5, abs=0.01)


def test_regex_rule_moves_the_score_by_exactly_its_weight() -> None:
    text = "is CVE-2024-1234 relevant to our parser?"
    base = ComplexityClassifier().classify_text(text).score
    rule = RegexRule(pattern=r"\bCVE-\d{4}-\d+", weight=2.5, reason="mentions a CVE")
    tuned = ComplexityClassifier(ClassifierSettings(rules=[rule])).classify_text(text).score
    assert logit(tuned) - logit(base) == pytest.approx(2.5, abs=0.01)


def test_token_threshold_moves_the_score_by_the_length_evidence() -> None:
    text = "word " * 40
    tokens = count_tokens(text)
    at_300 = ComplexityClassifier(ClassifierSettings(token_threshold=300)).classify_text(text).score
    at_50 = ComplexityClassifier(ClassifierSettings(token_threshold=50)).classify_text(text).score
    # 1.6 logit units at the threshold, linear below it (rules.py).
    assert logit(at_50) - logit(at_300) == pytest.approx(1.6 * tokens / 50 - 1.6 * tokens / 300, abs=0.01)


def test_learned_model_can_be_switched_off() -> None:
    text = "why do the integration tests fail only on CI?"
    rules_only = ComplexityClassifier(ClassifierSettings(learned_model=False)).classify_text(text)
    assert not any(reason.startswith("learned") for reason in rules_only.reasons)
    assert rules_only.score != ComplexityClassifier().classify_text(text).score


def test_a_huge_pasted_ask_is_read_only_up_to_a_bound() -> None:
    text = "a" * max(SCAN_CHARS, EMBED_CHARS) + " zebra"
    assert "zebra" not in extract(text).words
    assert "zebra" not in embedding_text(text, "")
    assert extract(text).dense["log_chars"] == pytest.approx(math.log1p(len(text)))


def kind_of(text: str, context: str = "") -> tuple[float, str]:
    _, contributions = shipped_model().evidence(text, context)
    [kind] = [c for c in contributions if c.reason.startswith("kind of ask")]
    return kind.weight, kind.reason


def test_the_kind_of_ask_pushes_code_and_puzzles_up_and_chat_and_writing_down() -> None:
    code, code_reason = kind_of("Implement a function in python that returns the longest palindromic substring")
    puzzle, _ = kind_of("A riddle: three boxes are mislabelled. Reason step by step and deduce which box holds the apples")
    chat, chat_reason = kind_of("hello, how are you today? thanks for the help yesterday")
    poem, _ = kind_of("Write a poem about the sea for my mother's birthday")
    assert min(code, puzzle) > 0 > max(chat, poem)
    assert "most like code" in code_reason and "most like chat" in chat_reason


def test_a_short_follow_up_takes_the_kind_of_the_earlier_ask() -> None:
    follow_up = "now do the same for the second one"
    alone, _ = kind_of(follow_up)
    after_code, _ = kind_of(follow_up, "Implement a python function that parses the log file and fix the bug in the regex")
    after_poem, _ = kind_of(follow_up, "Write a poem about the sea for my mother's birthday")
    assert after_code > alone > after_poem


HARD = "Refactor the scheduler to remove the race condition in the distributed lock"


def conversation(first: str, reply: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Here is my plan. Shall I go ahead?"},
        {"role": "user", "content": reply},
    ]


def test_a_short_yes_after_a_hard_request_is_not_easy() -> None:
    classifier = ComplexityClassifier()
    alone = classifier.classify(ask("yes do it"))
    after_hard = classifier.classify(conversation(HARD, "yes do it"))
    assert alone.label == "simple"
    assert after_hard.label == "complex"
    assert any(reason.startswith("earlier ask: complex keyword 'race condition'") for reason in after_hard.reasons)


LONG_PLAIN = (
    "Every night the export job writes one file per region into the shared folder. The finance team opens "
    "them in the morning, copies the totals into their own sheet, then mails the regional leads a summary "
    "with last week's figures beside this week's, and the leads answer with their notes on each line."
)


def test_a_short_yes_after_a_long_request_counts_half_of_its_length() -> None:
    classifier = ComplexityClassifier()
    alone, _ = classifier.score_text("yes do it")
    after, evidence = classifier.score_text("yes do it", LONG_PLAIN)
    _, as_an_ask = classifier.score_text(LONG_PLAIN)
    (own_length,) = [weight for weight, reason in as_an_ask if reason.startswith("ask is ")]
    (earlier_length,) = [weight for weight, reason in evidence if reason.startswith("earlier asks: ")]
    assert earlier_length == pytest.approx(CONTEXT_RULE_SHARE * own_length) and earlier_length > 0
    assert after > alone


def test_a_short_yes_after_an_easy_request_stays_easy() -> None:
    assert ComplexityClassifier().classify(conversation("Fix the typo in the README title", "yes do it")).label == "simple"


def test_the_latest_ask_keeps_its_keywords_at_full_weight_and_context_does_not_count_them_twice() -> None:
    classifier = ComplexityClassifier()
    _, evidence = classifier.score_text("fix the race condition", "fix the race condition please")
    race = [weight for weight, reason in evidence if "race condition" in reason]
    assert race == [classifier.settings.complexity_keywords["race condition"]]


def test_conversation_asks_find_the_latest_and_earlier_asks_as_latest_ask_does() -> None:
    messages = [*conversation("first ask", "second ask"), {"role": "assistant", "content": "ok"}, {"role": "user", "content": "third ask"}]
    latest, earlier = conversation_asks(messages)
    assert latest == latest_ask(messages) == "third ask"
    assert earlier == ["first ask", "second ask"]
    latest, earlier = conversation_asks(cline.vscode_tool_result_turn("Fix the typo in the README title"))
    assert (latest, earlier) == ("Fix the typo in the README title", [])


_NETWORK_GUARD = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network use in an offline test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
from glm_saver.classifier import ComplexityClassifier
from glm_saver.classifier.rules import CONTEXT_RULE_SHARE
verdict = ComplexityClassifier().classify([{"role": "user", "content": "why is this slow?"}])
print(len(attempts), "wordllama" in sys.modules, any(r.startswith("learned: meaning") for r in verdict.reasons))
"""


def test_loading_the_embedding_and_scoring_never_touch_the_network() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}  # no offline flag to lean on
    result = subprocess.run([sys.executable, "-c", _NETWORK_GUARD], capture_output=True, text=True, check=True, env=env, timeout=120)
    assert result.stdout.split() == ["0", "True", "True"]


# A fresh process: the embedder (and the wordllama import behind it) loads once per process.
_ROOT_LOGGER_AFTER_LOAD = """
import logging
from glm_saver.classifier.learned import shipped_model
before = (logging.getLogger().level, len(logging.getLogger().handlers))
shipped_model()
print(before == (logging.getLogger().level, len(logging.getLogger().handlers)), logging.getLogger("LiteLLM Router").isEnabledFor(logging.INFO))
"""


def test_loading_the_embedding_leaves_the_root_logger_as_it_was() -> None:
    # wordllama's import calls logging.basicConfig(level=INFO): LiteLLM's loggers would then write
    # their INFO lines on the proxy's event loop for every request.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", _ROOT_LOGGER_AFTER_LOAD], capture_output=True, text=True, check=True, env=env, timeout=120)
    assert result.stdout.split() == ["True", "False"]


def test_shipped_scorer_ranks_held_out_coding_asks_better_than_chance() -> None:
    held_out = of_split(coding(), "test")
    ours = ComplexityClassifier()
    assert curve(held_out, [ours.classify(cline.vscode_task(item.text)).score for item in held_out]).apgr > 0.6


def test_the_training_script_reproduces_the_shipped_weights_byte_for_byte() -> None:
    # Fails (never skips) without the training data: ../shared/data beside the repo, or GLM_SAVER_SHARED_DATA.
    assert MMLU_DIR.is_dir() and PREFERENCES_DIR.is_dir(), f"training data not found at {MMLU_DIR.parent}"
    result = subprocess.run([sys.executable, "-m", "training.train_scorer", "--check"], check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
