"""`glm-saver calibrate FILE.jsonl`: the threshold that sends a chosen share of your traffic to the cloud."""

from __future__ import annotations

import argparse
import json
from typing import Any

from glm_saver.classifier.calibration import cloud_share, load_requests, threshold_for_share
from glm_saver.settings import GlmSaverSettings, load_config_file, settings_from_config

DEFAULT_SHARE = 0.3
TABLE_SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _calibrate(args: argparse.Namespace) -> int:
    from glm_saver.classifier import build_classifier

    config = load_config_file(args.config) if args.config else {}
    glm = settings_from_config(config) if args.config else GlmSaverSettings()
    settings = glm.classifier
    target = args.target_cloud_share or settings.target_cloud_share or DEFAULT_SHARE
    classifier = build_classifier(settings)
    scores = [float(classifier.classify(messages).score) for messages in load_requests(args.file)]
    threshold = threshold_for_share(scores, target)
    boundary = _cloud_boundary(glm, config, classifier)
    current = boundary if boundary is not None else float(getattr(classifier, "threshold", settings.threshold))
    result: dict[str, Any] = {
        "requests": len(scores),
        "target_cloud_share": target,
        "threshold": threshold,
        "cloud_share_at_threshold": round(cloud_share(scores, threshold), 4),
        "current_threshold": current,
        "cloud_share_at_current_threshold": round(cloud_share(scores, current), 4),
        "thresholds": {f"{share:.0%}": threshold_for_share(scores, share) for share in TABLE_SHARES},
        # With tier bands the classifier's threshold only labels an ask: the first paid tier's bound routes it.
        "sets": _what_sets_it(glm) if boundary is not None else "glm_saver.classifier.threshold",
    }
    print(json.dumps(result) if args.json else _describe(args.file, result, glm if boundary is not None else None))
    return 0


def _cloud_boundary(glm: GlmSaverSettings, config: dict[str, Any], classifier: Any) -> float | None:
    """The score at which asks leave local when the config's tiers have bands; None: the classifier's threshold decides."""
    if not glm.tiers:
        return None
    from glm_saver.routing.tiers import build_tiers

    bands = build_tiers(glm, config, classifier).thresholds
    return bands[0] if bands else None


def _what_sets_it(glm: GlmSaverSettings) -> str:
    if any(tier.target_share is not None for tier in glm.tiers or []):
        return f"glm_saver.tiers[0].target_share ({glm.tier_groups[0]}: 1 - the cloud share)"
    return f"glm_saver.tiers[1].threshold ({glm.tier_groups[1]})"


def _describe(path: str, result: dict[str, Any], banded: GlmSaverSettings | None) -> str:
    lines = [
        f"{path}: {result['requests']} requests scored",
        f"threshold {result['threshold']} sends {result['cloud_share_at_threshold']:.1%} of them to the cloud (target {result['target_cloud_share']:.0%})",
        f"the current threshold {result['current_threshold']} sends {result['cloud_share_at_current_threshold']:.1%}",
        "  cloud share  threshold",
        *(f"  {share:>11}  {threshold}" for share, threshold in result["thresholds"].items()),
    ]
    return "\n".join(lines + (_tier_advice(path, result, banded) if banded else _classifier_advice(path, result)))


def _classifier_advice(path: str, result: dict[str, Any]) -> list[str]:
    return [
        "put under glm_saver.classifier in litellm_config.yaml either",
        f"  threshold: {result['threshold']}",
        "or, to recompute it from this file at every start,",
        f"  target_cloud_share: {result['target_cloud_share']}",
        f"  calibration_file: {path}",
    ]


def _tier_advice(path: str, result: dict[str, Any], glm: GlmSaverSettings) -> list[str]:
    groups = glm.tier_groups
    if any(tier.target_share is not None for tier in glm.tiers or []):
        share = result["target_cloud_share"]
        return [
            f"the config's tiers take shares of the traffic: in glm_saver.tiers give {groups[0]} target_share: {round(1 - share, 4)}",
            f"  and the paid tiers target_shares that sum to {share}, calibrated on this file with",
            f"  tier_calibration_file: {path}",
        ]
    lines = [
        f"the config has tiers: the cloud share is what leaves local, so in glm_saver.tiers set on {groups[1]} (the first paid tier)",
        f"  threshold: {result['threshold']}",
    ]
    stronger = (glm.tiers or [])[2].threshold if len(groups) > 2 else None
    if stronger is not None and result["threshold"] >= stronger:
        lines.append(f"  and raise {groups[2]}'s threshold above it (now {stronger}: thresholds must rise)")
    lines += [
        "or, to recompute the bands from this file at every start, a target_share on every tier (summing to 1) and",
        f"  tier_calibration_file: {path}",
    ]
    return lines


def add_commands(commands: Any) -> None:
    calibrate = commands.add_parser("calibrate", help="the threshold that sends a share of past requests to the cloud")
    calibrate.add_argument("file", help='JSONL of past requests: request bodies, messages lists or {"text": ...}')
    calibrate.add_argument("--target-cloud-share", type=_share, help=f"share to send to the cloud (default: the config's, else {DEFAULT_SHARE})")
    calibrate.add_argument("--config", help="score with the classifier settings of this litellm_config.yaml")
    calibrate.add_argument("--json", action="store_true", help="print the result as JSON")
    calibrate.set_defaults(run=_calibrate)
