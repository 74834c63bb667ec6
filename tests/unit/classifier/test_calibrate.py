"""target_cloud_share picks the threshold from a traffic sample; `glm-saver calibrate` does it from a file."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from glm_saver.classifier import ComplexityClassifier
from glm_saver.classifier.calibration import cloud_share, threshold_for_share
from glm_saver.cli import main
from glm_saver.settings import ClassifierSettings, ConfigError, parse_settings
from tests import cline_shapes as cline
from tests.e2e.proxy import SHIPPED_CONFIG
from training.datasets import coding, of_split

ASKS = [
    "hello",
    "thanks!",
    "what is a tuple?",
    "Fix the typo in the README title",
    "rename foo to bar in utils.py",
    "add a docstring to slugify",
    "Implement a distributed token bucket rate limiter on Redis",
    "Refactor the scheduler architecture to remove the race condition in the distributed lock",
    "why does the worker deadlock under load?",
    "Migrate the whole codebase from Flask to FastAPI and keep every endpoint's behaviour",
]


def write_requests(path: Path, asks: list[str]) -> Path:
    """Past requests in the three accepted shapes: Cline request bodies, message lists, {"text": ...}."""
    lines = []
    for i, text in enumerate(asks):
        if i % 3 == 0:
            lines.append(json.dumps({"model": "glm-saver", "messages": cline.vscode_task(text)}))
        elif i % 3 == 1:
            lines.append(json.dumps([{"role": "user", "content": text}]))
        else:
            lines.append(json.dumps({"text": text}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_threshold_for_share_puts_that_share_of_scores_at_or_above_it() -> None:
    scores = [i / 100 for i in range(100)]
    for share in (0.1, 0.3, 0.75):
        assert cloud_share(scores, threshold_for_share(scores, share)) == pytest.approx(share, abs=0.011)


def test_calibration_file_sets_the_threshold_for_the_target_share(tmp_path: Path) -> None:
    path = write_requests(tmp_path / "past.jsonl", ASKS)
    classifier = ComplexityClassifier(ClassifierSettings(target_cloud_share=0.3, calibration_file=str(path)))
    labels = [classifier.classify([{"role": "user", "content": text}]).label for text in ASKS]
    assert labels.count("complex") == 3
    assert labels[:6] == ["simple"] * 6


def test_a_larger_target_share_lowers_the_threshold(tmp_path: Path) -> None:
    path = write_requests(tmp_path / "past.jsonl", ASKS)
    few = ComplexityClassifier(ClassifierSettings(target_cloud_share=0.2, calibration_file=str(path)))
    many = ComplexityClassifier(ClassifierSettings(target_cloud_share=0.6, calibration_file=str(path)))
    assert many.threshold < few.threshold


def test_without_a_file_the_shipped_reference_sample_sets_the_threshold() -> None:
    classifier = ComplexityClassifier(ClassifierSettings(target_cloud_share=0.3))
    reference = [item for split in ("train", "val") for item in of_split(coding(), split)]
    labels = [classifier.classify_text(item.text).label for item in reference]
    assert labels.count("complex") / len(labels) == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize(
    ("classifier", "named"),
    [
        ({"target_cloud_share": 1.0}, "glm_saver.classifier.target_cloud_share"),
        ({"target_cloud_share": 0}, "glm_saver.classifier.target_cloud_share"),
        ({"target_cloud_share": 0.3, "threshold": 0.4}, "either threshold or target_cloud_share"),
        ({"calibration_file": "past.jsonl"}, "calibration_file is only used with target_cloud_share"),
        ({"target_cloud_share": 0.3, "calibration_file": "/no/such/file.jsonl"}, "calibration_file '/no/such/file.jsonl'"),
        ({"target_cloud_share": 0.3, "learned_model": False}, "needs calibration_file when learned_model is off"),
    ],
)
def test_bad_calibration_settings_name_the_key(classifier: dict, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings({"classifier": classifier})
    assert named in str(raised.value)


def test_unreadable_line_in_the_calibration_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "past.jsonl"
    path.write_text('{"text": "hello"}\n\n42\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"past\.jsonl:3"):
        ComplexityClassifier(ClassifierSettings(target_cloud_share=0.3, calibration_file=str(path)))


def test_calibrate_command_prints_the_threshold_for_the_share(tmp_path: Path, capsys) -> None:
    path = write_requests(tmp_path / "past.jsonl", ASKS)
    assert main(["calibrate", str(path), "--target-cloud-share", "0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["requests"] == len(ASKS)
    assert result["cloud_share_at_threshold"] == 0.5
    assert result["thresholds"]["50%"] == result["threshold"]


def test_calibrate_command_tells_what_to_put_in_the_config(tmp_path: Path, capsys) -> None:
    path = write_requests(tmp_path / "past.jsonl", ASKS)
    assert main(["calibrate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "target 30%" in out
    assert "target_cloud_share: 0.3" in out and f"calibration_file: {path}" in out


def test_calibrate_with_the_shipped_tiers_points_at_the_first_paid_tier(tmp_path: Path, capsys) -> None:
    # With tier bands classifier.threshold only labels an ask; the cheap tier's threshold is what leaves local.
    path = write_requests(tmp_path / "past.jsonl", ASKS)
    assert main(["calibrate", str(path), "--config", str(SHIPPED_CONFIG), "--target-cloud-share", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "the current threshold 0.5 sends" in out
    assert "in glm_saver.tiers set on cerebras-oss (the first paid tier)" in out
    assert "raise cerebras's threshold above it" not in out
    assert "glm_saver.classifier" not in out and f"tier_calibration_file: {path}" in out


def test_calibrate_with_tiers_says_when_the_stronger_tier_must_move_too(tmp_path: Path, capsys) -> None:
    path = write_requests(tmp_path / "past.jsonl", ASKS)
    assert main(["calibrate", str(path), "--config", str(SHIPPED_CONFIG), "--target-cloud-share", "0.1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sets"] == "glm_saver.tiers[1].threshold (cerebras-oss)"
    assert main(["calibrate", str(path), "--config", str(SHIPPED_CONFIG), "--target-cloud-share", "0.1"]) == 0
    assert result["threshold"] > 0.75  # one ask in ten is the deadlock or the migration: far into the strongest band
    assert "and raise cerebras's threshold above it (now 0.75: thresholds must rise)" in capsys.readouterr().out


def test_calibrate_with_tier_shares_asks_for_shares(tmp_path: Path, capsys) -> None:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["glm_saver"]["tiers"] = [
        {"group": "local", "target_share": 0.5},
        {"group": "cerebras-oss", "target_share": 0.35},
        {"group": "cerebras", "target_share": 0.15},
    ]
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(config))
    path = write_requests(tmp_path / "past.jsonl", ASKS)
    assert main(["calibrate", str(path), "--config", str(config_path), "--target-cloud-share", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "give local target_share: 0.7" in out and "sum to 0.3" in out
    assert main(["calibrate", str(path), "--config", str(config_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sets"] == "glm_saver.tiers[0].target_share (local: 1 - the cloud share)"
    assert "threshold: " not in out.split("the config's tiers", 1)[1]  # no threshold to mix with the shares


def test_calibrate_command_reports_a_bad_file_without_a_traceback(tmp_path: Path, capsys) -> None:
    path = tmp_path / "past.jsonl"
    path.write_text("not json\n", encoding="utf-8")
    assert main(["calibrate", str(path)]) == 2
    assert "past.jsonl:1" in capsys.readouterr().err


def test_check_config_accepts_a_target_cloud_share(tmp_path: Path, capsys) -> None:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["glm_saver"].setdefault("classifier", {})["target_cloud_share"] = 0.25
    config["glm_saver"]["classifier"].pop("threshold", None)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    shutil.copytree(SHIPPED_CONFIG.parent / "hooks", tmp_path / "hooks")  # the plugin's hook, beside the config
    assert main(["check-config", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
