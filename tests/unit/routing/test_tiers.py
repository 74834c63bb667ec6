"""The ladder of tiers: names, prices and windows from model_list, bands from thresholds or shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from glm_saver.classifier import Classification
from glm_saver.routing.policy import decide
from glm_saver.routing.tiers import Tier, Tiers, build_tiers
from glm_saver.settings import ConfigError, GlmSaverSettings, load_config_file, parse_settings, settings_from_config
from tests.e2e.proxy import SHIPPED_CONFIG


def verdict(score: float) -> Classification:
    return Classification(score=score, label="complex" if score >= 0.5 else "simple", reasons=["test"])


def model_list(*groups: tuple[str, float, int]) -> dict[str, Any]:
    """model_list entries with an input price per M tokens and a window, and the entry model."""
    return {
        "model_list": [{"model_name": "glm-saver"}]
        + [
            {
                "model_name": name,
                "litellm_params": {"model": f"openai/{name}", "api_key": "k"},
                "model_info": {"input_cost_per_token": price / 1e6, "max_input_tokens": window},
            }
            for name, price, window in groups
        ]
    }


THREE = model_list(("local", 0.0, 8000), ("cheap", 0.35, 16000), ("cerebras", 2.25, 32000))
BANDED = {"tiers": [{"group": "local"}, {"group": "cheap", "threshold": 0.4}, {"group": "cerebras", "threshold": 0.8}]}


class Scores:
    """A classifier whose score is the number in the ask (to calibrate on a known sample)."""

    def classify(self, messages: list[dict[str, Any]]) -> Classification:
        return verdict(float(messages[-1]["content"]))


def ladder(section: dict[str, Any], config: dict[str, Any] = THREE) -> Tiers:
    settings = settings_from_config({**config, "glm_saver": section})
    return build_tiers(settings, config, Scores())


def test_the_ends_keep_their_names_and_a_middle_tier_is_called_by_its_group() -> None:
    tiers = ladder(BANDED)
    assert tiers.names == ("local", "cheap", "cerebras")
    assert [(t.group, t.prices.input * 1e6, t.window, t.paid) for t in tiers.ladder] == [
        ("local", 0.0, 8000, False),
        ("cheap", 0.35, 16000, True),
        ("cerebras", 2.25, 32000, True),
    ]


def test_tiers_set_local_group_and_cloud_group_to_the_ends() -> None:
    settings = parse_settings(BANDED)
    assert (settings.local_group, settings.cloud_group) == ("local", "cerebras")


@pytest.mark.parametrize(("score", "tier"), [(0.0, "local"), (0.39, "local"), (0.4, "cheap"), (0.79, "cheap"), (0.8, "cerebras"), (1.0, "cerebras")])
def test_a_score_falls_in_the_band_of_its_thresholds(score: float, tier: str) -> None:
    assert ladder(BANDED).band(verdict(score)).name == tier


def test_two_tiers_without_bands_follow_the_classifiers_label() -> None:
    tiers = Tiers.of_two(local=None, cloud=None)
    # The label decides, whatever the score says (a custom classifier may label by its own rule).
    assert tiers.band(Classification(score=0.9, label="simple", reasons=[])).name == "local"
    assert tiers.band(Classification(score=0.1, label="complex", reasons=[])).name == "cerebras"


def test_target_shares_put_the_boundaries_at_the_samples_quantiles(tmp_path: Path) -> None:
    sample = tmp_path / "past.jsonl"
    sample.write_text("".join(json.dumps({"text": f"{score / 10}"}) + "\n" for score in range(10)), encoding="utf-8")  # 0.0 .. 0.9
    shares = {"tiers": [{"group": "local", "target_share": 0.5}, {"group": "cheap", "target_share": 0.3}, {"group": "cerebras", "target_share": 0.2}]}
    tiers = ladder({**shares, "tier_calibration_file": str(sample)})
    # 50% of the sample below the first boundary, 20% at or above the second.
    assert tiers.thresholds == (0.45, 0.72)
    taken = [tiers.band(verdict(score / 10)).name for score in range(10)]
    assert (taken.count("local"), taken.count("cheap"), taken.count("cerebras")) == (5, 3, 2)


def test_target_shares_calibrate_on_the_shipped_sample_by_default() -> None:
    shares = {"tiers": [{"group": "local", "target_share": 0.6}, {"group": "cheap", "target_share": 0.3}, {"group": "cerebras", "target_share": 0.1}]}
    low, high = ladder(shares).thresholds or ()
    assert 0 < low < high < 1


def test_a_prompt_too_big_for_its_band_goes_to_the_nearest_stronger_tier_that_takes_it() -> None:
    tiers = ladder(BANDED)
    decision = decide("smart_routing", 12_000, tiers, lambda: verdict(0.1))
    assert (decision.route, decision.reason) == ("cheap", "context-window")
    assert decide("smart_routing", 20_000, tiers, lambda: verdict(0.1)).route == "cerebras"
    assert decide("smart_routing", 10, tiers, lambda: verdict(0.5)).route == "cheap"


def test_a_prompt_too_big_for_the_strongest_goes_to_the_nearest_cheaper_tier_that_takes_it() -> None:
    tiers = Tiers((Tier("local", "local", window=8000), Tier("cheap", "cheap", window=64000, rank=1), Tier("cerebras", "cerebras", window=32000, rank=2)))
    assert decide("always_cerebras", 40_000, tiers, lambda: verdict(0.9)).route == "cheap"


def test_nearest_lists_cheaper_tiers_first_then_stronger_and_skips_small_windows() -> None:
    tiers = ladder(BANDED)
    assert [t.name for t in tiers.nearest("cheap", 100)] == ["local", "cerebras"]
    assert [t.name for t in tiers.nearest("cheap", 10_000)] == ["cerebras"]
    assert [t.name for t in tiers.nearest("cerebras", 10_000)] == ["cheap"]


def test_a_tier_without_its_api_key_is_not_configured() -> None:
    config = model_list(("local", 0.0, 8000), ("cheap", 0.35, 16000), ("cerebras", 2.25, 32000))
    config["model_list"][2]["litellm_params"]["api_key"] = "os.environ/GLM_SAVER_TEST_UNSET_KEY"
    assert [t.configured for t in ladder(BANDED, config).ladder] == [True, False, True]


@pytest.mark.parametrize(
    ("tiers", "named"),
    [
        ([{"group": "local"}], "glm_saver.tiers: List should have at least 2 items"),
        ([{"group": "local"}, {"group": "x"}, {"group": "cerebras"}], "more than two tiers need a threshold per paid tier or a target_share"),
        ([{"group": "local", "threshold": 0.1}, {"group": "cerebras", "threshold": 0.5}], "the first tier (local) takes every score"),
        ([{"group": "local"}, {"group": "x", "threshold": 0.7}, {"group": "cerebras", "threshold": 0.5}], "thresholds must rise"),
        ([{"group": "local"}, {"group": "x", "threshold": 0.3}, {"group": "cerebras"}], "threshold must be set on every tier but the first"),
        ([{"group": "local", "target_share": 0.5}, {"group": "cerebras", "target_share": 0.4}], "target_share of the tiers must sum to 1"),
        ([{"group": "local", "target_share": 0.5}, {"group": "cerebras"}], "target_share must be set on every tier"),
        ([{"group": "local", "target_share": 0.5}, {"group": "cerebras", "threshold": 0.5, "target_share": 0.5}], "not both"),
        ([{"group": "local"}, {"group": "local", "threshold": 0.5}], "local repeats"),
        ([{"group": "a"}, {"group": "local", "threshold": 0.3}, {"group": "b", "threshold": 0.6}], "names an end of the ladder"),
        ([{"group": "local"}, {"group": "cerebras", "threshold": 1.5}], "glm_saver.tiers.1.threshold"),
        ([{"group": "local"}, {"grup": "cerebras"}], "glm_saver.tiers.1.grup: unknown key"),
    ],
)
def test_a_bad_ladder_fails_naming_the_key(tiers: list[dict[str, Any]], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings({"tiers": tiers})
    assert named in str(raised.value)
    assert "glm_saver.tiers" in str(raised.value)


def test_local_group_that_is_not_the_first_tier_fails_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"local_group \(ollama\) must be the first of tiers \(local\)"):
        parse_settings({**BANDED, "local_group": "ollama"})


def test_a_tier_not_in_model_list_fails_naming_tiers() -> None:
    config = {**model_list(("local", 0.0, 8000), ("cerebras", 2.25, 32000)), "glm_saver": BANDED}
    with pytest.raises(ConfigError, match=r"glm_saver\.tiers: cheap not found in model_list"):
        settings_from_config(config)


def test_tier_calibration_file_needs_target_shares_and_a_readable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tier_calibration_file is only used with the tiers' target_share"):
        parse_settings({**BANDED, "tier_calibration_file": str(tmp_path / "none.jsonl")})
    shares = {"tiers": [{"group": "local", "target_share": 0.5}, {"group": "cerebras", "target_share": 0.5}]}
    with pytest.raises(ConfigError, match="is not a readable file"):
        parse_settings({**shares, "tier_calibration_file": str(tmp_path / "none.jsonl")})


def test_target_shares_without_a_sample_fail_at_startup_naming_the_key() -> None:
    shares = {"tiers": [{"group": "local", "target_share": 0.5}, {"group": "cerebras", "target_share": 0.5}], "classifier": {"learned_model": False}}
    config = {**model_list(("local", 0.0, 8000), ("cerebras", 2.25, 32000)), "glm_saver": shares}
    with pytest.raises(ConfigError, match=r"glm_saver\.tiers: target_share needs tier_calibration_file"):
        build_tiers(settings_from_config(config), config, Scores())


def test_the_shipped_config_has_three_tiers_with_cerebras_prices() -> None:
    config = load_config_file(SHIPPED_CONFIG)
    tiers = ladder(config["glm_saver"], config)
    assert tiers.names == ("local", "cerebras-oss", "cerebras")
    assert [(round(t.prices.input * 1e6, 4), round(t.prices.output * 1e6, 4)) for t in tiers.ladder] == [(0.0, 0.0), (0.35, 0.75), (2.25, 2.75)]


def test_without_tiers_the_two_groups_are_the_ladder() -> None:
    assert GlmSaverSettings(local_group="ollama", cloud_group="glm").tier_groups == ["ollama", "glm"]


@pytest.mark.parametrize("key", ["verify_group", "answer_group"])
def test_the_cascade_may_use_a_paid_tier_only(key: str) -> None:
    config = {**THREE, "glm_saver": {**BANDED, "speculative": {key: "cheap"}}}
    assert getattr(settings_from_config(config).speculative, key) == "cheap"
    config = {**THREE, "glm_saver": {**BANDED, "speculative": {key: "local"}}}
    with pytest.raises(ConfigError, match=rf"glm_saver\.speculative\.{key}: local is not a paid tier \(have: cheap, cerebras\)"):
        settings_from_config(config)


def test_a_tier_takes_images_only_when_every_deployment_of_its_group_says_supports_vision() -> None:
    config = model_list(("local", 0.0, 8000), ("cheap", 0.35, 16000), ("cerebras", 2.25, 32000))
    entries = {entry["model_name"]: entry for entry in config["model_list"]}
    entries["cerebras"]["model_info"]["supports_vision"] = True
    entries["cheap"]["model_info"]["supports_vision"] = False
    # A second cerebras deployment that says nothing: LiteLLM may pick it, so the group does not take images.
    two = {"model_list": [*config["model_list"], {**entries["cerebras"], "model_info": {"max_input_tokens": 32000}}]}
    assert [tier.images for tier in ladder(BANDED, config).ladder] == [False, False, True]
    assert [tier.images for tier in ladder(BANDED, two).ladder] == [False, False, False]


def test_nearest_with_images_offers_only_the_tiers_that_take_them() -> None:
    tiers = Tiers((Tier("local", "local"), Tier("cheap", "cheap", rank=1), Tier("cerebras", "cerebras", rank=2, images=True)))
    assert [t.name for t in tiers.nearest("local", 100)] == ["cheap", "cerebras"]
    assert [t.name for t in tiers.nearest("local", 100, images=True)] == ["cerebras"]
    assert tiers.nearest("cerebras", 100, images=True) == []
