"""The `glm_saver:` section of litellm_config.yaml, validated at proxy start.

Every setting the plugin has lives here as a pydantic model. An unknown key or a bad value raises
`ConfigError` whose message names the key (`glm_saver.classifier.threshold: ...`), so a typo stops
the proxy at startup instead of being silently ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SECTION = "glm_saver"

Strategy = Literal["smart_routing", "always_local", "always_cerebras"]
# Named in the design, built in their own issue: configuring one must fail loudly, not fall back.
NOT_YET_AVAILABLE = ("smart_speculative", "speculative_decoding", "parallel_speculative")

DEFAULT_COMPLEXITY_KEYWORDS: dict[str, float] = {
    "refactor": 1.5,
    "architecture": 1.5,
    "architect": 1.2,
    "design": 0.8,
    "implement": 1.0,
    "optimize": 1.2,
    "optimise": 1.2,
    "debug": 1.2,
    "race condition": 2.0,
    "deadlock": 2.0,
    "concurrency": 1.5,
    "migrate": 1.2,
    "migration": 1.2,
    "security": 1.2,
    "vulnerability": 1.5,
    "algorithm": 1.2,
    "prove": 1.5,
    "proof": 1.2,
    "trade-off": 1.0,
    "tradeoff": 1.0,
    "performance": 1.0,
    "distributed": 1.5,
    "multi-step": 1.0,
    "step by step": 0.8,
    "analyze": 1.0,
    "analyse": 1.0,
    "end-to-end": 1.0,
    "whole codebase": 1.5,
    "across the codebase": 1.5,
    "test suite": 1.0,
}

DEFAULT_SIMPLE_KEYWORDS: dict[str, float] = {
    "what is": 0.8,
    "what's": 0.6,
    "typo": 1.2,
    "rename": 1.0,
    "format": 0.6,
    "hello": 1.0,
    "thanks": 1.0,
    "thank you": 1.0,
    "list": 0.4,
    "translate": 0.6,
    "summarize": 0.5,
    "summarise": 0.5,
    "one-liner": 1.0,
    "add a comment": 1.0,
    "docstring": 0.8,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegexRule(_Strict):
    """An extra rule: when `pattern` matches the user's ask, add `weight` (negative pulls simple)."""

    pattern: str
    weight: float = Field(ge=-10, le=10)
    reason: str | None = None
    ignore_case: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"not a valid regular expression: {err}") from None
        return pattern


class ClassifierSettings(_Strict):
    """How the complexity classifier scores the user's latest ask."""

    complexity_keywords: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_COMPLEXITY_KEYWORDS))
    simple_keywords: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SIMPLE_KEYWORDS))
    # Keywords are added to the defaults unless replace_default_keywords is set.
    replace_default_keywords: bool = False
    token_threshold: int = Field(default=300, ge=1, description="ask length (tokens) that alone makes an ask complex")
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="score at or above which an ask is complex")
    rules: list[RegexRule] = Field(default_factory=list)
    custom: str | None = Field(default=None, description="dotted path of a custom classifier object or factory")

    @field_validator("complexity_keywords", "simple_keywords")
    @classmethod
    def _positive_weights(cls, keywords: dict[str, float]) -> dict[str, float]:
        for word, weight in keywords.items():
            if not word.strip():
                raise ValueError("keywords must not be empty")
            if not 0 < weight <= 10:
                raise ValueError(f"weight of {word!r} must be in (0, 10], got {weight}")
        return keywords

    @model_validator(mode="after")
    def _merge_defaults(self) -> ClassifierSettings:
        if self.replace_default_keywords:
            return self
        merged_complex = {**DEFAULT_COMPLEXITY_KEYWORDS, **self.complexity_keywords}
        merged_simple = {**DEFAULT_SIMPLE_KEYWORDS, **self.simple_keywords}
        object.__setattr__(self, "complexity_keywords", merged_complex)
        object.__setattr__(self, "simple_keywords", merged_simple)
        return self


class GlmSaverSettings(_Strict):
    """The whole `glm_saver:` section."""

    strategy: Strategy = "smart_routing"
    entry_models: list[str] = Field(default_factory=lambda: ["glm-saver"], min_length=1)
    local_group: str = "local"
    cloud_group: str = "cerebras"
    override_header: str = "x-glm-saver-route"
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_available(cls, value: Any) -> Any:
        if value in NOT_YET_AVAILABLE:
            raise ValueError(f"strategy {value!r} is not available in this version (use smart_routing, always_local or always_cerebras)")
        return value

    @field_validator("override_header")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        return value.lower()


class ConfigError(ValueError):
    """A bad plugin configuration; the message names the offending key."""


def _describe(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in (SECTION, *problem["loc"]))
        message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"]
        lines.append(f"{key}: {message}")
    return "invalid glm_saver configuration:\n  " + "\n  ".join(lines)


def parse_settings(section: dict[str, Any] | None) -> GlmSaverSettings:
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{SECTION}: must be a mapping, got {type(section).__name__}")
    try:
        return GlmSaverSettings.model_validate(section or {})
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def _model_groups(config: dict[str, Any]) -> set[str]:
    return {entry.get("model_name") for entry in config.get("model_list") or [] if isinstance(entry, dict)}


def check_groups(settings: GlmSaverSettings, config: dict[str, Any]) -> None:
    """The groups the plugin routes between must exist in model_list."""
    groups = _model_groups(config)
    named = {"local_group": [settings.local_group], "cloud_group": [settings.cloud_group], "entry_models": settings.entry_models}
    for key, names in named.items():
        missing = [name for name in names if name not in groups]
        if missing:
            raise ConfigError(f"{SECTION}.{key}: {', '.join(missing)} not found in model_list (have: {', '.join(sorted(groups))})")
    overlap = set(settings.entry_models) & {settings.local_group, settings.cloud_group}
    if overlap:
        raise ConfigError(f"{SECTION}.entry_models: {', '.join(sorted(overlap))} is also a routing target")


def load_config_file(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return config


def settings_from_config(config: dict[str, Any]) -> GlmSaverSettings:
    settings = parse_settings(config.get(SECTION))
    check_groups(settings, config)
    return settings
