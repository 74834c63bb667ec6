"""The ladder of model groups a request can be routed to, from the free local model to the strongest.

A tier is a name (what `x-glm-saver-route` and /stats say): the first is `local`, the strongest
`cerebras`, whatever their groups are called (as with two tiers), and a tier between them is
called by its group. Each tier knows its group's prices and context window (from `model_list`)
and whether its API key is set. The classifier's score picks the tier by bands: a threshold per
boundary, or thresholds calibrated so each tier takes its `target_share` of a traffic sample; with
two tiers and no bands the classifier's own label is the boundary, as it always was.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from glm_saver.classifier import Classification
from glm_saver.classifier.calibration import load_scores, threshold_for_share
from glm_saver.deployments import Prices, api_key_configured, group_max_output, group_prices, group_takes_images, group_window
from glm_saver.settings import LOCAL_TIER, STRONGEST_TIER, ConfigError, GlmSaverSettings, TierSettings

Route = str  # a tier's name


@dataclass(frozen=True)
class Tier:
    name: Route
    group: str
    prices: Prices = field(default_factory=Prices)
    window: int | None = None  # max input tokens; None = unknown, assume it fits
    max_output: int | None = None  # max output tokens (model_info); None = unknown, not capped
    configured: bool = True  # its API key is set (the local tier needs none)
    rank: int = 0  # 0 = local, the cheapest
    images: bool = False  # known to take image input (model_info.supports_vision)

    @property
    def paid(self) -> bool:
        return self.rank > 0

    def fits(self, tokens: int) -> bool:
        return self.window is None or tokens <= self.window

    def takes(self, tokens: int, images: bool = False) -> bool:
        """Its window fits the prompt, and it takes images if the prompt has any."""
        return self.fits(tokens) and (self.images or not images)


@dataclass(frozen=True)
class Tiers:
    """The ladder, cheapest first, and the score bands between its rungs."""

    ladder: tuple[Tier, ...]
    # thresholds[i]: the lowest score of tier i+1; None: the classifier's label picks local or strongest.
    thresholds: tuple[float, ...] | None = None

    @classmethod
    def of_two(cls, local: int | None, cloud: int | None) -> Tiers:
        """Today's two tiers with these windows (groups named like the tiers)."""
        return cls((Tier(LOCAL_TIER, LOCAL_TIER, window=local), Tier(STRONGEST_TIER, STRONGEST_TIER, window=cloud, rank=1)))

    @property
    def local(self) -> Tier:
        return self.ladder[0]

    @property
    def strongest(self) -> Tier:
        return self.ladder[-1]

    @property
    def names(self) -> tuple[Route, ...]:
        return tuple(tier.name for tier in self.ladder)

    # Looked up several times per request: by dict, not by a scan of the ladder (the first tier
    # of a name or group wins, as the scan had it).
    @cached_property
    def _by_name(self) -> dict[str, Tier]:
        return {tier.name: tier for tier in reversed(self.ladder)}

    @cached_property
    def _by_group(self) -> dict[str, Tier]:
        return {tier.group: tier for tier in reversed(self.ladder)}

    def named(self, name: str) -> Tier | None:
        return self._by_name.get(name)

    def of_group(self, group: str | None) -> Tier | None:
        return self._by_group.get(group) if isinstance(group, str) else None

    def __getitem__(self, name: Route) -> Tier:
        tier = self.named(name)
        if tier is None:
            raise KeyError(f"no tier {name!r} (have: {', '.join(self.names)})")
        return tier

    def fits(self, name: Route, tokens: int) -> bool:
        return self[name].fits(tokens)

    def band(self, verdict: Classification) -> Tier:
        """The tier the score falls in."""
        if self.thresholds is None:
            return self.strongest if verdict.label == "complex" else self.local
        return self.ladder[bisect.bisect_right(self.thresholds, float(verdict.score))]

    def nearest(self, name: Route, tokens: int, images: bool = False) -> list[Tier]:
        """The other tiers that take the prompt (`tokens`, `images`), nearest first: cheaper ones first, then stronger."""
        rank = self[name].rank
        cheaper = [tier for tier in reversed(self.ladder[:rank]) if tier.takes(tokens, images)]
        stronger = [tier for tier in self.ladder[rank + 1 :] if tier.takes(tokens, images)]
        return cheaper + stronger

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": tier.name,
                "group": tier.group,
                "context_window": tier.window,
                "configured": tier.configured,
                "price_per_m": {"input": round(tier.prices.input * 1e6, 6), "output": round(tier.prices.output * 1e6, 6)},
                "from_score": self.thresholds[tier.rank - 1] if self.thresholds is not None and tier.rank else None,
            }
            for tier in self.ladder
        ]


def tier_names(groups: Sequence[str]) -> list[Route]:
    """`local` and `cerebras` at the ends, a tier between them by its group."""
    return [LOCAL_TIER if rank == 0 else STRONGEST_TIER if rank == len(groups) - 1 else group for rank, group in enumerate(groups)]


def tier_name_of(groups: Sequence[str]) -> dict[str, Route]:
    """Each tier's group -> the tier's name (as `tier_names`)."""
    return dict(zip(groups, tier_names(groups), strict=True))


def _thresholds(settings: GlmSaverSettings, classifier: Any) -> tuple[float, ...] | None:
    tiers: list[TierSettings] = settings.tiers or []
    if all(tier.target_share is None for tier in tiers):
        paid = [tier.threshold for tier in tiers[1:]]
        return tuple(t for t in paid if t is not None) or None
    # Tier k and every stronger one take the sum of their shares: the boundary sits at that quantile.
    shares = [tier.target_share or 0.0 for tier in tiers]
    scores = _sample(settings, classifier)
    return tuple(threshold_for_share(scores, sum(shares[rank:])) for rank in range(1, len(tiers)))


def _sample(settings: GlmSaverSettings, classifier: Any) -> list[float]:
    if settings.tier_calibration_file:
        return load_scores(settings.tier_calibration_file, classifier)
    if settings.classifier.learned_model:
        from glm_saver.classifier.learned import shipped_model

        quantiles = shipped_model().reference_quantiles
        if quantiles:
            return quantiles
    raise ConfigError("glm_saver.tiers: target_share needs tier_calibration_file when learned_model is off (the shipped sample is the model's)")


def build_tiers(settings: GlmSaverSettings, config: Mapping[str, Any], classifier: Any) -> Tiers:
    """The ladder of the config: prices, windows and keys from model_list, bands from the settings."""
    groups = settings.tier_groups
    ladder = tuple(
        Tier(
            name,
            group,
            group_prices(config, group),
            group_window(config, group),
            group_max_output(config, group),
            configured=rank == 0 or not config or api_key_configured(config, group),
            rank=rank,
            images=group_takes_images(config, group),
        )
        for rank, (name, group) in enumerate(zip(tier_names(groups), groups, strict=True))
    )
    return Tiers(ladder, _thresholds(settings, classifier))
