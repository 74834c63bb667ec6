"""A bad glm_saver section fails with a message naming the key; the shipped config is valid."""

import pytest

from glm_saver.settings import ConfigError, GlmSaverSettings, load_config_file, parse_settings, settings_from_config
from tests.e2e.proxy import SHIPPED_CONFIG


def test_shipped_config_is_valid() -> None:
    settings = settings_from_config(load_config_file(SHIPPED_CONFIG))
    assert settings.strategy == "smart_routing"
    assert settings.entry_models == ["glm-saver"]


def test_empty_section_gives_defaults() -> None:
    assert parse_settings(None) == GlmSaverSettings()


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"stratgy": "always_local"}, "glm_saver.stratgy: unknown key"),
        ({"classifier": {"thresold": 0.4}}, "glm_saver.classifier.thresold: unknown key"),
        ({"classifier": {"threshold": 1.5}}, "glm_saver.classifier.threshold"),
        ({"classifier": {"token_threshold": 0}}, "glm_saver.classifier.token_threshold"),
        ({"classifier": {"complexity_keywords": {"x": -1}}}, "glm_saver.classifier.complexity_keywords"),
        ({"classifier": {"rules": [{"pattern": "(", "weight": 1}]}}, "glm_saver.classifier.rules.0.pattern"),
        ({"classifier": {"rules": [{"pattern": "", "weight": 1}]}}, "glm_saver.classifier.rules.0.pattern: String should have at least 1 character"),
        ({"override_header": ""}, "glm_saver.override_header: Value error, must be an HTTP header name"),
        ({"override_header": "x route"}, "glm_saver.override_header"),
        ({"strategy": "cheapest"}, "glm_saver.strategy"),
        ({"entry_models": []}, "glm_saver.entry_models"),
        ({"alert_webhook": "ftp://alerts.example/hook"}, "glm_saver.alert_webhook: Value error, must be an http:// or https:// URL"),
        ({"alert_webhook": "not a url"}, "glm_saver.alert_webhook"),
        ({"alert_webhook": "https://"}, "glm_saver.alert_webhook"),
        ({"redis_url": "http://cache.example:6379"}, "glm_saver.redis_url: Value error, must be a redis://, rediss:// or unix:// URL"),
        ({"redis_url": "cache.example:6379"}, "glm_saver.redis_url"),
        (
            {"keys": [{"alias": "alice", "key_sha256": "a" * 64, "budget": {"limit_usd": 1}}, {"alias": "ci", "key_sha256": "a" * 64}]},
            "glm_saver.keys: Value error, ci has the same key_sha256 as alice",
        ),
        ({"classifier": {"lookup_keywords": ["how much"]}}, "glm_saver.classifier: Value error, lookup_keywords: 'how much' not among the simple keywords"),
    ],
)
def test_bad_value_names_the_key(section: dict, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(section)
    assert named in str(raised.value)


@pytest.mark.parametrize("strategy", ["smart_speculative", "speculative_decoding", "parallel_speculative"])
def test_speculative_strategies_are_accepted_with_their_settings(strategy: str) -> None:
    settings = parse_settings({"strategy": strategy, "speculative": {"max_concurrent_drafts": 2, "min_confidence": 0.9}})
    assert settings.strategy == strategy
    assert (settings.speculative.max_concurrent_drafts, settings.speculative.min_confidence) == (2, 0.9)
    assert settings.speculative.speculate_with_tools is False


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"speculative": {"max_drafts": 2}}, "glm_saver.speculative.max_drafts: unknown key"),
        ({"speculative": {"max_concurrent_drafts": 0}}, "glm_saver.speculative.max_concurrent_drafts"),
        ({"speculative": {"draft_timeout": 0}}, "glm_saver.speculative.draft_timeout"),
        ({"speculative": {"min_confidence": 0.3, "verify_min_confidence": 0.6}}, "verify_min_confidence (0.6) must not exceed min_confidence (0.3)"),
    ],
)
def test_bad_speculative_setting_names_the_key(section: dict, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(section)
    assert named in str(raised.value)


def test_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_settings(["strategy"])  # type: ignore[arg-type]  # a list on purpose: the check under test


def test_groups_must_exist_in_model_list() -> None:
    config = {"model_list": [{"model_name": "local"}, {"model_name": "glm-saver"}], "glm_saver": {}}
    with pytest.raises(ConfigError, match=r"glm_saver\.cloud_group: cerebras not found in model_list"):
        settings_from_config(config)


KEY = {"alias": "alice", "key_sha256": "a" * 64}


def test_a_keys_models_must_be_models_of_the_proxy() -> None:
    models = [{"model_name": "local"}, {"model_name": "cerebras", "model_info": {"access_groups": ["paid"]}}, {"model_name": "glm-saver"}]
    config = {"model_list": models, "glm_saver": {"keys": [{**KEY, "models": ["glm-saverr"]}]}}
    with pytest.raises(ConfigError, match=r"glm_saver\.keys: alice's models glm-saverr not found in model_list \(have: cerebras, glm-saver, local\)"):
        settings_from_config(config)
    for allowed in (["glm-saver", "local"], ["paid"], ["all-proxy-models"], ["cerebras/*"]):
        settings_from_config({"model_list": models, "glm_saver": {"keys": [{**KEY, "models": allowed}]}})


@pytest.mark.parametrize("always_stop", ["Question:", [""], ["Question:", 3]])
def test_an_always_stop_that_is_not_a_list_of_strings_stops_the_start_naming_the_entry(always_stop: object) -> None:
    models = [{"model_name": "local", "model_info": {"always_stop": always_stop}}, {"model_name": "cerebras"}, {"model_name": "glm-saver"}]
    with pytest.raises(ConfigError, match=r"model_list\[0\] \(local\)\.model_info\.always_stop: must be a list of non-empty strings"):
        settings_from_config({"model_list": models})
    models[0]["model_info"] = {"always_stop": ["Question:", "\n\n"]}
    settings_from_config({"model_list": models})


def test_entry_model_cannot_be_a_routing_target() -> None:
    config = {"model_list": [{"model_name": "local"}, {"model_name": "cerebras"}], "glm_saver": {"entry_models": ["local"]}}
    with pytest.raises(ConfigError, match=r"glm_saver\.entry_models"):
        settings_from_config(config)


def test_unreadable_and_invalid_yaml_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_list: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(broken)


@pytest.mark.parametrize("url", ["redis://cache.example:6379/0", "rediss://:pw@cache.example", "unix:///run/redis.sock", "os.environ/REDIS_URL"])
def test_a_url_redis_takes_or_an_environment_variable_is_accepted(url: str) -> None:
    assert parse_settings({"state": "redis", "redis_url": url}).redis_url == url


def test_two_keys_may_share_an_alias() -> None:
    """A key being rotated: the old and the new one, booked under one name."""
    keys = parse_settings({"keys": [{"alias": "alice", "key_sha256": "a" * 64}, {"alias": "alice", "key_sha256": "b" * 64}]}).keys
    assert [entry.alias for entry in keys] == ["alice", "alice"]


def test_keys_sharing_an_alias_share_one_budget_set_once_or_alike() -> None:
    monthly = {"limit_usd": 20, "period": "monthly"}
    rotated = [{"alias": "alice", "key_sha256": "a" * 64, "budget": monthly}, {"alias": "alice", "key_sha256": "b" * 64}]
    assert parse_settings({"keys": rotated}).keys[0].budget is not None
    assert len(parse_settings({"keys": [rotated[0], {**rotated[1], "budget": monthly}]}).keys) == 2
    with pytest.raises(ConfigError) as raised:
        parse_settings({"keys": [rotated[0], {**rotated[1], "budget": {"limit_usd": 5, "period": "daily"}}]})
    assert "glm_saver.keys" in str(raised.value) and "the keys named alice set different budgets" in str(raised.value)


def test_an_http_webhook_with_a_host_is_accepted() -> None:
    assert parse_settings({"alert_webhook": "https://alerts.example:8443/hook"}).alert_webhook == "https://alerts.example:8443/hook"


def test_reasoning_effort_default_per_group_is_validated_and_named() -> None:
    settings = parse_settings({"reasoning": {"cerebras": {"effort": "low"}}})
    assert settings.reasoning_of("cerebras").effort == "low"
    assert settings.reasoning_of("glm-saver").effort == "low"  # the entry model is Cerebras when bypassed
    with pytest.raises(ConfigError) as raised:
        parse_settings({"reasoning": {"cerebras": {"effort": "extreme"}}})
    assert "glm_saver.reasoning.cerebras.effort" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        parse_settings({"reasoning": {"cerebras": {"retry_room": 0}}})
    assert "glm_saver.reasoning.cerebras.retry_room" in str(raised.value)


def test_reasoning_for_a_group_not_in_the_model_list_stops_the_start() -> None:
    config = load_config_file(SHIPPED_CONFIG)
    config["glm_saver"] = {**config["glm_saver"], "reasoning": {"cerebrass": {"effort": "high"}}}
    with pytest.raises(ConfigError) as raised:
        settings_from_config(config)
    assert "glm_saver.reasoning: cerebrass not found in model_list" in str(raised.value)
