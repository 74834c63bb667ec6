"""The proxy's startup: strategies from the config take effect; a bad glm_saver section stops it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config, run_proxy_until_exit
from tests.fakes.upstream import FakeUpstream

COMPLEX = "Refactor the scheduler architecture to remove the race condition"


@pytest.mark.parametrize(("strategy", "expected"), [("always_local", "local"), ("always_cerebras", "cerebras")])
def test_fixed_strategies_route_everything_one_way(start_proxy: Callable[..., Proxy], strategy: str, expected: str) -> None:
    proxy = start_proxy(glm_saver={"strategy": strategy})
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0)
    for text in ("hello", COMPLEX):
        raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=[{"role": "user", "content": text}])
        assert raw.headers["x-glm-saver-route"] == expected
        assert raw.headers["x-glm-saver-reason"] == f"strategy: strategy {strategy}"
        assert raw.parse().choices[0].message.content == f"Hello from {expected}."


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"classifier": {"thresold": 0.4}}, "glm_saver.classifier.thresold: unknown key"),
        ({"strategy": "speculative"}, "glm_saver.strategy"),
        ({"local_group": "ollama"}, "glm_saver.local_group: ollama not found in model_list"),
        ({"keys": [{"alias": "ci", "key_sha256": "a" * 64, "models": ["glm_saver"]}]}, "glm_saver.keys: ci's models glm_saver not found in model_list"),
    ],
)
def test_bad_plugin_config_stops_startup_naming_the_key(
    tmp_path: Path, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, section: dict, named: str
) -> None:
    config = proxy_config(local_upstream.url)
    config["glm_saver"] = section
    finished = run_proxy_until_exit(tmp_path, config, cerebras_upstream.url)
    assert finished.returncode != 0
    output = finished.stdout + finished.stderr
    assert named in output
    assert "The proxy did not start." in output
