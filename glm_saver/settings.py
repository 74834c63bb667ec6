"""The `glm_saver:` section of litellm_config.yaml, validated at proxy start.

Every setting the plugin has lives here as a pydantic model. An unknown key or a bad value raises
`ConfigError` whose message names the key (`glm_saver.classifier.threshold: ...`), so a typo stops
the proxy at startup instead of being silently ignored.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from glm_saver.deployments import ALWAYS_STOP, always_stop_problem

SECTION = "glm_saver"
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")  # what redis-py's from_url takes

Strategy = Literal["smart_routing", "always_local", "always_cerebras", "speculative_decoding", "parallel_speculative", "smart_speculative"]

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

# Simple keywords that mark a lookup ("what is a tuple?"). An ask that gives two numbers or more
# computes ("... 12 cm by 7 cm. What is the area?"): the same words say nothing of its difficulty there.
DEFAULT_LOOKUP_KEYWORDS: tuple[str, ...] = ("what is", "what's")


# RFC 9110's token: the characters a header name may have.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegexRule(_Strict):
    """An extra rule: when `pattern` matches the user's ask, add `weight` (negative pulls simple)."""

    pattern: str = Field(min_length=1, description="an empty one would match every ask")
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
    lookup_keywords: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LOOKUP_KEYWORDS), description="simple keywords not counted where the conversation gives two numbers or more"
    )
    token_threshold: int = Field(default=300, ge=1, description="ask length (tokens) that alone makes an ask complex")
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="score at or above which an ask is complex")
    rules: list[RegexRule] = Field(default_factory=list)
    custom: str | None = Field(default=None, description="dotted path of a custom classifier object or factory")
    learned_model: bool = Field(default=True, description="add the shipped learned model's evidence to the rules")
    # An alternative to `threshold`: the threshold that sends this share of a traffic sample to the cloud.
    target_cloud_share: float | None = Field(default=None, gt=0.0, lt=1.0, description="share of asks to send to the cloud")
    calibration_file: str | None = Field(default=None, description="JSONL of past requests to calibrate target_cloud_share on")

    @model_validator(mode="after")
    def _one_way_to_set_the_threshold(self) -> ClassifierSettings:
        if self.target_cloud_share is not None and "threshold" in self.model_fields_set:
            raise ValueError("set either threshold or target_cloud_share, not both")
        if self.target_cloud_share is not None and self.calibration_file is None and not self.learned_model:
            raise ValueError("target_cloud_share needs calibration_file when learned_model is off (the shipped sample is the model's)")
        if self.calibration_file is not None:
            if self.target_cloud_share is None:
                raise ValueError("calibration_file is only used with target_cloud_share")
            if not Path(self.calibration_file).is_file():
                raise ValueError(f"calibration_file {self.calibration_file!r} is not a readable file")
        return self

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

    @model_validator(mode="after")
    def _lookups_are_simple_keywords(self) -> ClassifierSettings:
        simple = {word.lower() for word in self.simple_keywords}
        if "lookup_keywords" not in self.model_fields_set:  # the defaults that replaced keywords left
            object.__setattr__(self, "lookup_keywords", [word for word in self.lookup_keywords if word in simple])
            return self
        unknown = [word for word in self.lookup_keywords if word.lower() not in simple]
        if unknown:
            raise ValueError(f"lookup_keywords: {', '.join(map(repr, unknown))} not among the simple keywords")
        return self


class RateLimitSettings(_Strict):
    """How Cerebras' rate limits are respected (see headroom.py)."""

    enabled: bool = True
    max_tokens_cap: int = Field(default=16384, ge=1, description="clamp max_tokens for Cerebras: it reserves them up front")
    safety_margin: float = Field(default=0.05, ge=0.0, lt=1.0, description="share of the minute token limit left unused")
    day_requests_reserve: int = Field(default=0, ge=0, description="go local when this many of the day's requests are left")
    wait_for_reset_seconds: float = Field(default=0.0, ge=0.0, le=120.0, description="wait for a reset this close instead of going local")
    default_retry_after: float = Field(default=60.0, gt=0.0, description="exhaustion after a 429 that names no retry-after")


class SpeculativeSettings(_Strict):
    """The draft/verify cascade of the speculative strategies (see speculative.py)."""

    max_concurrent_drafts: int = Field(default=3, ge=1, le=8, description="drafts made at once by parallel_speculative and smart_speculative")
    max_draft_tokens: int = Field(default=1024, ge=1, description="completion tokens a draft may use")
    draft_timeout: float = Field(default=30.0, gt=0, description="seconds a draft may take; later drafts are dropped")
    verify_timeout: float = Field(default=60.0, gt=0, description="seconds the Cerebras verify call may take")
    draft_temperature: float | None = Field(default=0.7, ge=0, le=2, description="sampling temperature of parallel drafts (agreement needs variety)")
    request_logprobs: bool = Field(default=True, description="ask the local server for token logprobs (llama.cpp, Ollama, vLLM send them)")
    min_confidence: float = Field(default=0.8, ge=0, le=1, description="a draft this confident is the answer, no cloud call")
    verify_min_confidence: float = Field(default=0.35, ge=0, le=1, description="below this Cerebras answers in full; between the two it verifies")
    confidence_without_evidence: float = Field(default=0.5, ge=0, le=1, description="confidence of a draft with no agreement and no logprobs")
    speculate_with_tools: bool = Field(default=False, description="also speculate on requests that carry tools (else routed as smart_routing)")
    parallel_retry_seconds: float = Field(default=60.0, ge=0, description="after the local server refused parallel drafts, draft one at a time this long")
    commit_tokens: int = Field(
        default=48, ge=1, description="streamed requests: drafts are scored on this many tokens (or less, if finished) and the trusted one streams on live"
    )
    keepalive_seconds: float = Field(
        default=5.0, gt=0, description="streamed requests: an SSE comment after this long without a chunk, so clients and proxies do not time out"
    )
    open_after_seconds: float = Field(
        default=5.0,
        gt=0,
        description="streamed requests: a cascade still deciding after this long opens the response (route header `cascade`) and sends keep-alives",
    )
    verify_group: str | None = Field(default=None, description="the paid tier whose model verifies drafts (default: the strongest)")
    answer_group: str | None = Field(default=None, description="the paid tier that answers when a draft is rejected (default: the strongest)")

    @model_validator(mode="after")
    def _bands_ordered(self) -> SpeculativeSettings:
        if self.verify_min_confidence > self.min_confidence:
            raise ValueError(f"verify_min_confidence ({self.verify_min_confidence}) must not exceed min_confidence ({self.min_confidence})")
        return self


class ReasoningSettings(_Strict):
    """How the plugin treats one paid group's reasoning model (see reasoning.py)."""

    effort: Literal["low", "medium", "high"] | None = Field(default=None, description="reasoning_effort sent when the client sets none")
    retry_room: int = Field(default=4096, ge=1, description="extra max_tokens for the one retry of an answer left empty by reasoning")


Period = Literal["daily", "weekly", "monthly", "none"]


class BudgetSettings(_Strict):
    """A spending limit (USD) over a period, with alerts as it fills up."""

    limit_usd: float = Field(gt=0)
    period: Period = "monthly"
    alert_thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0], min_length=1)
    action: Literal["local", "reject"] = Field(default="local", description="at 100%: answer locally, or refuse with 429")

    @field_validator("alert_thresholds")
    @classmethod
    def _fractions(cls, thresholds: list[float]) -> list[float]:
        if any(not 0 < t <= 1 for t in thresholds):
            raise ValueError("alert thresholds are fractions of the limit in (0, 1]")
        return sorted(set(thresholds))


class ApiKeySettings(_Strict):
    """A client key accepted by glm_saver's custom_auth (no LiteLLM database needed)."""

    alias: str = Field(min_length=1)
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="`glm-saver hash-key KEY` prints it; the key itself is never stored")
    budget: BudgetSettings | None = None
    models: list[str] = Field(default_factory=list, description="model names this key may use; empty = all")


class LoggingSettings(_Strict):
    file: str | None = Field(default="glm-saver.log", description="rotating log file (relative to the config's folder); null: console only")
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    backup_count: int = Field(default=5, ge=0)
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class TierSettings(_Strict):
    """One rung of the ladder of model groups, cheapest first; the score picks the rung by bands."""

    group: str = Field(min_length=1, description="a model_name of model_list")
    threshold: float | None = Field(default=None, gt=0.0, le=1.0, description="score at or above which asks go to this tier or a stronger one")
    target_share: float | None = Field(default=None, gt=0.0, lt=1.0, description="share of a traffic sample this tier takes (all tiers, summing to 1)")


# The ends of the ladder keep today's names in headers and /stats, whatever their groups are called.
LOCAL_TIER = "local"
STRONGEST_TIER = "cerebras"


def _check_bands(tiers: list[TierSettings]) -> None:
    """Either a threshold on every paid tier (rising), or a target_share on every tier (summing to 1);
    two tiers may set neither: the classifier's label (threshold, target_cloud_share) is the boundary."""
    if tiers[0].threshold is not None:
        raise ValueError(f"the first tier ({tiers[0].group}) takes every score below the next one's threshold: it has no threshold")
    thresholds = [tier.threshold for tier in tiers[1:]]
    shares = [tier.target_share for tier in tiers]
    if any(thresholds) and any(share is not None for share in shares):
        raise ValueError("set either a threshold per paid tier or a target_share per tier, not both")
    if any(share is not None for share in shares):
        if None in shares:
            raise ValueError("target_share must be set on every tier (they split the traffic sample)")
        if abs(sum(s for s in shares if s is not None) - 1.0) > 1e-6:
            raise ValueError(f"target_share of the tiers must sum to 1, got {sum(s for s in shares if s is not None):g}")
    elif any(thresholds):
        if None in thresholds:
            raise ValueError("threshold must be set on every tier but the first")
        if any(b <= a for a, b in pairwise(t for t in thresholds if t is not None)):
            raise ValueError(f"thresholds must rise from cheaper to stronger tiers, got {thresholds}")
    elif len(tiers) > 2:
        raise ValueError("more than two tiers need a threshold per paid tier or a target_share per tier")


class GlmSaverSettings(_Strict):
    """The whole `glm_saver:` section."""

    strategy: Strategy = "smart_routing"
    entry_models: list[str] = Field(default_factory=lambda: ["glm-saver"], min_length=1)
    local_group: str = "local"
    cloud_group: str = "cerebras"
    override_header: str = "x-glm-saver-route"
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    speculative: SpeculativeSettings = Field(default_factory=SpeculativeSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    # Where shared counters live. sqlite: the books survive restarts (headroom stays in memory);
    # redis: several proxies share books and headroom; memory: nothing is kept.
    state: Literal["sqlite", "memory", "redis"] = "sqlite"
    sqlite_path: str = Field(default="glm-saver-books.sqlite", description="relative to the config's folder")
    redis_url: str | None = Field(default=None, description="redis://...; default: LiteLLM's redis settings or REDIS_URL")
    history_minutes: int = Field(default=1440, ge=1, le=2880, description="minutes of per-minute history kept for /stats and the dashboard")
    budget: BudgetSettings | None = Field(default=None, description="the global budget over all keys")
    keys: list[ApiKeySettings] = Field(default_factory=list)
    alert_webhook: str | None = Field(default=None, description="URL that budget alerts are POSTed to as JSON")
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    # Per paid group (`cerebras`, an entry model): its reasoning model's defaults.
    reasoning: dict[str, ReasoningSettings] = Field(default_factory=dict)
    # The model groups from cheapest to strongest; unset: [local_group, cloud_group].
    tiers: list[TierSettings] | None = Field(default=None, min_length=2)
    tier_calibration_file: str | None = Field(default=None, description="JSONL of past requests the tiers' target_share is calibrated on")

    @property
    def batches_round_trips(self) -> bool:
        """Whether updates started together share one round trip: only a Redis store has round trips."""
        return self.state == "redis"

    @field_validator("tiers")
    @classmethod
    def _ladder(cls, tiers: list[TierSettings] | None) -> list[TierSettings] | None:
        if tiers is None:
            return None
        groups = [tier.group for tier in tiers]
        repeated = sorted({group for group in groups if groups.count(group) > 1})
        if repeated:
            raise ValueError(f"each group may be one tier only: {', '.join(repeated)} repeats")
        named = sorted({LOCAL_TIER, STRONGEST_TIER} & set(groups[1:-1]))
        if named:
            raise ValueError(f"{', '.join(named)} names an end of the ladder: a tier between the ends cannot be called that")
        _check_bands(tiers)
        return tiers

    @model_validator(mode="after")
    def _ends_of_the_ladder(self) -> GlmSaverSettings:
        """With tiers, local_group is the first and cloud_group the strongest (set them or not)."""
        if self.tiers is None:
            return self
        for key, group in (("local_group", self.tiers[0].group), ("cloud_group", self.tiers[-1].group)):
            if key in self.model_fields_set and getattr(self, key) != group:
                raise ValueError(f"{key} ({getattr(self, key)}) must be the {'first' if key == 'local_group' else 'last'} of tiers ({group}), or unset")
            object.__setattr__(self, key, group)
        return self

    @model_validator(mode="after")
    def _tier_calibration_has_a_use(self) -> GlmSaverSettings:
        if self.tier_calibration_file is None:
            return self
        if not any(tier.target_share is not None for tier in self.tiers or []):
            raise ValueError("tier_calibration_file is only used with the tiers' target_share")
        if not Path(self.tier_calibration_file).is_file():
            raise ValueError(f"tier_calibration_file {self.tier_calibration_file!r} is not a readable file")
        return self

    @property
    def tier_groups(self) -> list[str]:
        """The model groups from cheapest to strongest."""
        return [tier.group for tier in self.tiers] if self.tiers else [self.local_group, self.cloud_group]

    def reasoning_of(self, group: str) -> ReasoningSettings:
        """A group's reasoning settings: its own, else (for an entry model, Cerebras' strongest model when
        the plugin is bypassed) the cloud group's, else the defaults. A cheaper tier never takes the
        strongest one's: its model may not reason at all."""
        shared = self.reasoning.get(self.cloud_group) if group in self.entry_models else None
        return self.reasoning.get(group) or shared or ReasoningSettings()

    @field_validator("override_header")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError("must be an HTTP header name (letters, digits and -, e.g. x-glm-saver-route)")
        return value.lower()

    @field_validator("keys")
    @classmethod
    def _one_entry_per_key(cls, keys: list[ApiKeySettings]) -> list[ApiKeySettings]:
        # Else the key is the last entry's alone: the other entry's budget and models silently never apply.
        first: dict[str, str] = {}
        budgets: dict[str, BudgetSettings] = {}
        for entry in keys:
            if entry.key_sha256 in first:
                raise ValueError(f"{entry.alias} has the same key_sha256 as {first[entry.key_sha256]}: one key, one entry")
            first[entry.key_sha256] = entry.alias
            # Budgets are kept per alias: of two different ones under one alias, one would silently never apply.
            if entry.budget is not None and budgets.setdefault(entry.alias, entry.budget) != entry.budget:
                raise ValueError(f"the keys named {entry.alias} set different budgets: keys sharing an alias share one budget, so set it once")
        return keys

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # Else redis-py refuses it at the first request, which then gets a 500 (while /health says ok).
        if value is not None and not value.startswith("os.environ/") and not is_redis_url(value):
            raise ValueError("must be a redis://, rediss:// or unix:// URL, or os.environ/VAR")
        return value

    @field_validator("alert_webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


def is_redis_url(value: str) -> bool:
    return urlsplit(value).scheme in REDIS_URL_SCHEMES


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
    return {name for entry in config.get("model_list") or [] if isinstance(entry, dict) and isinstance(name := entry.get("model_name"), str)}


# What a key's `models` may name besides a model_list model: LiteLLM's special names (a pattern with
# "*" or a provider route with "/" is LiteLLM's too, and left to it).
_LITELLM_MODEL_NAMES = frozenset({"all-proxy-models", "all-team-models", "no-default-models"})


def _access_groups(config: dict[str, Any]) -> set[str]:
    infos = [entry.get("model_info") for entry in config.get("model_list") or [] if isinstance(entry, dict)]
    return {str(group) for info in infos if isinstance(info, dict) for group in info.get("access_groups") or []}


def check_key_models(settings: GlmSaverSettings, config: dict[str, Any]) -> None:
    """A key's `models` must name models the proxy has: a typo would refuse every request of the key."""
    groups = _model_groups(config)
    known = groups | _access_groups(config) | _LITELLM_MODEL_NAMES
    for key in settings.keys:
        unknown = [name for name in key.models if name not in known and not {"*", "/"} & set(name)]
        if unknown:
            raise ConfigError(f"{SECTION}.keys: {key.alias}'s models {', '.join(unknown)} not found in model_list (have: {', '.join(sorted(groups))})")


def check_model_info(config: dict[str, Any]) -> None:
    """The model_info keys the plugin reads besides LiteLLM's own."""
    for index, entry in enumerate(config.get("model_list") or []):
        problem = always_stop_problem(entry.get("model_info")) if isinstance(entry, dict) else None
        if problem:
            raise ConfigError(f"model_list[{index}] ({entry.get('model_name')}).model_info.{ALWAYS_STOP}: {problem}")


def check_groups(settings: GlmSaverSettings, config: dict[str, Any]) -> None:
    """The groups the plugin routes between must exist in model_list."""
    groups = _model_groups(config)
    named = {
        "local_group": [settings.local_group],
        "cloud_group": [settings.cloud_group],
        "tiers": settings.tier_groups,
        "entry_models": settings.entry_models,
        "reasoning": list(settings.reasoning),
    }
    for key, names in named.items():
        missing = [name for name in names if name not in groups]
        if missing:
            raise ConfigError(f"{SECTION}.{key}: {', '.join(missing)} not found in model_list (have: {', '.join(sorted(groups))})")
    for key in ("verify_group", "answer_group"):
        group = getattr(settings.speculative, key)
        if group is not None and group not in settings.tier_groups[1:]:
            raise ConfigError(f"{SECTION}.speculative.{key}: {group} is not a paid tier (have: {', '.join(settings.tier_groups[1:])})")
    overlap = set(settings.entry_models) & set(settings.tier_groups)
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
    check_key_models(settings, config)
    check_model_info(config)
    return settings
