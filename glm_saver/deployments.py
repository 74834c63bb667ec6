"""What `model_list` says about a model group: its prices, its context window, whether it takes
images, its API key."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prices:
    """USD per token."""

    input: float = 0.0
    output: float = 0.0

    def cost(self, prompt: int, completion: int) -> float:
        return prompt * self.input + completion * self.output


def _entries(config: Mapping[str, Any], group: str) -> Iterator[Mapping[str, Any]]:
    return (entry for entry in config.get("model_list") or [] if isinstance(entry, Mapping) and entry.get("model_name") == group)


def _known(entry: Mapping[str, Any]) -> dict[str, Any]:
    """model_info over LiteLLM's bundled map for the deployment's model."""
    import litellm

    model = (entry.get("litellm_params") or {}).get("model", "")
    return {**(litellm.model_cost.get(model) or {}), **(entry.get("model_info") or {})}


def group_prices(config: Mapping[str, Any], group: str) -> Prices:
    """The prices of the group's first deployment (model_info, else LiteLLM's map; unknown = free)."""
    for entry in _entries(config, group):
        info = _known(entry)
        return Prices(float(info.get("input_cost_per_token") or 0.0), float(info.get("output_cost_per_token") or 0.0))
    return Prices()


def _smallest(config: Mapping[str, Any], group: str, name: str) -> int | None:
    values = [info[name] for info in map(_known, _entries(config, group)) if isinstance(info.get(name), int)]
    return min(values) if values else None


def group_window(config: Mapping[str, Any], group: str) -> int | None:
    """Smallest max_input_tokens of the group's deployments (None if none is known)."""
    return _smallest(config, group, "max_input_tokens")


def group_max_output(config: Mapping[str, Any], group: str) -> int | None:
    """Smallest max_output_tokens of the group's deployments (None if none is known)."""
    return _smallest(config, group, "max_output_tokens")


def group_takes_images(config: Mapping[str, Any], group: str) -> bool:
    """Whether every deployment of the group is known to take images (model_info.supports_vision,
    else LiteLLM's map); unknown counts as no: an image sent to a text-only model is a 500 there."""
    known = [info.get("supports_vision") is True for info in map(_known, _entries(config, group))]
    return bool(known) and all(known)


# model_info key: stop sequences added to every request's own `stop` for this deployment. A request
# that brings a stop list replaces the server's default one (llama.cpp's `--reverse-prompt`), and a
# base model such as the embedded Gemma then writes the next "Question:" itself, up to max_tokens.
ALWAYS_STOP = "always_stop"


def always_stop_problem(info: Any) -> str | None:
    """What is wrong with a model_info's always_stop (None if it is absent or a list of strings)."""
    value = info.get(ALWAYS_STOP) if isinstance(info, Mapping) else None
    if value is None or (isinstance(value, list) and all(isinstance(stop, str) and stop for stop in value)):
        return None
    return f"must be a list of non-empty strings, got {value!r}"


def with_always_stop(asked: Any, always: Any) -> list[str] | None:
    """The deployment's always_stop sequences the request lacks, then the request's own; None
    when there is nothing to add, or the request's `stop` is neither a string nor a list of them
    (left as sent, for the server to refuse). First, because LiteLLM sends only the first four."""
    if not isinstance(always, list) or not always:
        return None
    own = [asked] if isinstance(asked, str) else asked if isinstance(asked, list) else [] if asked is None else None
    if own is None or not all(isinstance(stop, str) for stop in own):
        return None
    return [*(stop for stop in always if stop not in own), *own]


def api_key_configured(config: Mapping[str, Any], group: str) -> bool:
    """Whether the group's api_key resolves to something (without ever reading the value out)."""
    for entry in _entries(config, group):
        key = (entry.get("litellm_params") or {}).get("api_key")
        if isinstance(key, str) and key.startswith("os.environ/"):
            return bool(os.environ.get(key.removeprefix("os.environ/")))
        return bool(key)
    return False
