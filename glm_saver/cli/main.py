"""`glm-saver`: classify an ask, or validate a config without starting the proxy."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glm_saver.settings import ConfigError, GlmSaverSettings, load_config_file, settings_from_config

if TYPE_CHECKING:
    from glm_saver.routing.tiers import Tiers


def _messages_from_input(text: str | None) -> list[dict[str, Any]]:
    if text is not None and text != "-":
        return [{"role": "user", "content": text}]
    raw = sys.stdin.read()
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return [{"role": "user", "content": raw}]
    if isinstance(parsed, dict):
        parsed = parsed.get("messages", [])
    if not isinstance(parsed, list):
        raise SystemExit("glm-saver classify: stdin must hold a messages list, a request body or plain text")
    return parsed


def _classify(args: argparse.Namespace) -> int:
    from glm_saver.classifier import build_classifier
    from glm_saver.request import latest_ask
    from glm_saver.routing.tiers import build_tiers

    config = load_config_file(args.config) if args.config else {}
    settings = settings_from_config(config) if args.config else GlmSaverSettings()
    classifier = build_classifier(settings.classifier)
    messages = _messages_from_input(args.text)
    if not latest_ask(messages).strip():
        raise SystemExit("glm-saver classify: there is no ask to classify (the text, or the latest user message, is empty)")
    verdict = classifier.classify(messages)
    tiers = build_tiers(settings, config, classifier)
    tier = tiers.band(verdict).name
    if args.json:
        shown = asdict(verdict) if hasattr(verdict, "__dataclass_fields__") else vars(verdict)
        print(json.dumps({**shown, "tier": tier} if args.config else shown))
    else:
        print(f"{verdict.label}  score={verdict.score:.3f}  ({_split(tiers, classifier, settings)})  tier {tier}")
        for reason in verdict.reasons:
            print(f"  - {reason}")
    return 0


def _split(tiers: Tiers, classifier: Any, settings: GlmSaverSettings) -> str:
    """What picks the tier: the bands when the tiers have them (the classifier's threshold then only labels the ask)."""
    if tiers.thresholds is None:
        return f"threshold {getattr(classifier, 'threshold', settings.classifier.threshold)}"
    bounds = [f"{bound:g}" for bound in tiers.thresholds]
    return "bands " + " ".join(f"{name} < {bound} <=" for name, bound in zip(tiers.names, bounds, strict=False)) + f" {tiers.names[-1]}"


SHIPPED_CALLBACK = "hooks.glm_saver_hook.proxy_handler_instance"


def check_plugin_callback(config: dict[str, Any], config_dir: Path) -> None:
    """LiteLLM loads the plugin from `litellm_settings.callbacks`: without an entry for it the proxy
    starts and routes nothing, with the entry's file missing it does not start."""
    callbacks = (config.get("litellm_settings") or {}).get("callbacks") or []
    for entry in [callbacks] if isinstance(callbacks, str) else [str(entry) for entry in callbacks]:
        source = _callback_source(entry, config_dir)
        if source is not None and "glm_saver" in source.read_text(encoding="utf-8", errors="replace"):
            return
        if entry == SHIPPED_CALLBACK and source is None:
            raise ConfigError(f"litellm_settings.callbacks: {entry} needs {config_dir / 'hooks' / 'glm_saver_hook.py'} (the repo's hooks/, beside the config)")
    raise ConfigError(f"litellm_settings.callbacks: none loads the glm_saver plugin, so the proxy would route nothing (add {SHIPPED_CALLBACK})")


def _callback_source(entry: str, config_dir: Path) -> Path | None:
    """The file a callback entry loads: beside the config, where LiteLLM looks first, or an installed module."""
    module = entry.rpartition(".")[0]
    beside = config_dir / f"{module.replace('.', '/')}.py"
    if beside.is_file() or not module or entry == SHIPPED_CALLBACK:  # the shipped hook is no installed module
        return beside if beside.is_file() else None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def _check_config(args: argparse.Namespace) -> int:
    from glm_saver.books.store import redis_url
    from glm_saver.classifier import build_classifier
    from glm_saver.routing.tiers import build_tiers

    config = load_config_file(args.path)
    settings = settings_from_config(config)
    tiers = build_tiers(settings, config, build_classifier(settings.classifier))
    if settings.state == "redis":
        redis_url(settings, config)  # where the proxy's start would fail on it (read from this environment)
    check_plugin_callback(config, Path(args.path).resolve().parent)
    print(f"{args.path}: OK (strategy {settings.strategy}, entry models {', '.join(settings.entry_models)}, tiers {', '.join(tiers.names)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-saver", description="GLM Token Saver: local/Cerebras routing for LiteLLM")
    commands = parser.add_subparsers(dest="command", required=True)

    classify = commands.add_parser("classify", help="print the complexity verdict for an ask")
    classify.add_argument("text", nargs="?", help="the ask; omit or '-' to read messages JSON (or text) from stdin")
    classify.add_argument("--config", help="use the classifier settings and tiers of this litellm_config.yaml (the JSON then names the tier)")
    classify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    classify.set_defaults(run=_classify)

    check = commands.add_parser("check-config", help="validate a litellm_config.yaml without starting the proxy")
    check.add_argument("path")
    check.set_defaults(run=_check_config)

    from glm_saver.cli.local_model import add_commands as add_local_model_commands

    add_local_model_commands(commands)  # local-model install|serve, up
    from glm_saver.cli.calibrate import add_commands as add_calibrate_command

    add_calibrate_command(commands)  # calibrate FILE.jsonl
    from glm_saver.cli.keys import add_command as add_hash_key_command
    from glm_saver.cli.stats import add_command as add_stats_command

    add_hash_key_command(commands)  # hash-key KEY
    add_stats_command(commands)  # stats [--url] [--key] [--json]
    return parser


def main(argv: list[str] | None = None) -> int:
    # Never reach for the network: LiteLLM would fetch its price map, the hub a tokenizer.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)  # each command's run() returns its exit code
        return code
    except ConfigError as err:
        print(f"glm-saver: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader left (`glm-saver classify ... | head -1`): the rest goes nowhere, not a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
