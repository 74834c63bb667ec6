"""The REAL embedded model (Gemma 3 270M on the llama-server `glm-saver local-model install` built)
behind a real proxy with no Cerebras key: what a newcomer gets from `glm-saver up`.

Gemma 270M base is right on very short facts; "Paris" is the one answer asserted on. Requests use
temperature 0 and one request at a time, so the answer is the greedy one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from glm_saver.launcher.local_server import EMBEDDED_ALIAS
from tests.e2e.embedded import EmbeddedServer, embedded_proxy_config, installed_layout
from tests.e2e.proxy import MASTER_KEY, REPO, SHIPPED_CONFIG, Proxy, free_port
from tests.e2e.tap import Tap
from tests.fakes.upstream import FakeUpstream

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(log_path=Path(tmp_path_factory.mktemp("llama")) / "llama-server.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedded_proxy(tmp_path_factory: pytest.TempPathFactory, embedded: EmbeddedServer, cerebras_upstream: FakeUpstream) -> Iterator[Proxy]:
    """No CEREBRAS_API_KEY, as on a newcomer's machine (the fake Cerebras only proves nothing goes there)."""
    proxy = Proxy(directory=Path(tmp_path_factory.mktemp("embedded-proxy")), cerebras_url=cerebras_upstream.url, cerebras_key=None)
    proxy.start(embedded_proxy_config(embedded.options))
    yield proxy
    proxy.stop()


@pytest.fixture()
def client(embedded_proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{embedded_proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)


def test_simple_ask_is_answered_by_the_embedded_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=CAPITAL, temperature=0, max_tokens=24)
    answer = raw.parse()
    assert raw.headers["x-glm-saver-route"] == "local"
    assert "Paris" in (answer.choices[0].message.content or "")
    assert "Question:" not in (answer.choices[0].message.content or "")  # stopped at the next question
    assert answer.usage.completion_tokens > 0


def test_simple_ask_streams_from_the_embedded_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=CAPITAL, temperature=0, max_tokens=24, stream=True)
    chunks = list(raw.parse())
    pieces = [choice.delta.content for chunk in chunks for choice in chunk.choices if choice.delta.content]
    assert raw.headers["x-glm-saver-route"] == "local"
    assert len(pieces) > 1  # token by token, not one blob
    assert "Paris" in "".join(pieces)
    assert any(choice.finish_reason for chunk in chunks for choice in chunk.choices)


def test_complex_ask_without_a_cerebras_key_is_answered_locally(client: openai.OpenAI, cerebras_upstream: FakeUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=[{"role": "user", "content": COMPLEX}], temperature=0, max_tokens=16)
    assert raw.headers["x-glm-saver-route"] == "local"
    assert raw.headers["x-glm-saver-reason"].startswith("cerebras-not-configured")
    assert raw.parse().choices[0].message.content
    assert cerebras_upstream.requests == []


def test_embedded_server_returns_logprobs_for_drafts(embedded: EmbeddedServer) -> None:
    """What draft scoring relies on: llama-server gives per-token logprobs with the answer."""
    body = {"model": EMBEDDED_ALIAS, "messages": CAPITAL, "temperature": 0, "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
    choice = httpx.post(f"{embedded.url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert tokens and all(token["logprob"] <= 0 and len(token["top_logprobs"]) == 2 for token in tokens)


@pytest.fixture(scope="module")
def speculative(tmp_path_factory: pytest.TempPathFactory, embedded: EmbeddedServer, cerebras_upstream: FakeUpstream) -> Iterator[tuple[Proxy, Tap]]:
    """parallel_speculative drafting on the real model, through a tap that sees every draft; the
    fake Cerebras (with a key) only stands by to verify."""
    with Tap(embedded.url) as tap:
        config = embedded_proxy_config(embedded.options)
        for entry in config["model_list"]:
            if entry["model_name"] == "local":
                entry["litellm_params"]["api_base"] = f"{tap.url}/v1"
        config["glm_saver"].update(strategy="parallel_speculative", speculative={"max_concurrent_drafts": 3})
        proxy = Proxy(directory=Path(tmp_path_factory.mktemp("speculative-proxy")), cerebras_url=cerebras_upstream.url)
        proxy.start(config)
        yield proxy, tap
        proxy.stop()


def test_parallel_speculative_gets_three_real_drafts_with_logprobs_at_once(speculative: tuple[Proxy, Tap]) -> None:
    proxy, tap = speculative
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)
    tap.hold_until(3)  # the drafts reach the model only once all three are in flight together
    raw = client.chat.completions.with_raw_response.create(model="glm-saver", messages=CAPITAL, max_tokens=32)
    drafts = [(body, status, answer) for body, status, answer in tap.exchanges if isinstance(body, dict) and body.get("messages")]
    assert len(drafts) == 3
    assert tap.max_in_flight == 3
    for body, status, answer in drafts:
        assert status == 200 and body["logprobs"] is True
        tokens = answer["choices"][0]["logprobs"]["content"]
        assert tokens and all(token["logprob"] <= 0 for token in tokens)  # the real model's own
    reason = raw.headers["x-glm-saver-reason"]
    assert "best of 3 drafts" in reason and "token-prob" in reason


def test_install_twice_reuses_the_cache() -> None:
    layout = installed_layout()
    finished = subprocess.run([sys.executable, "-m", "glm_saver.cli", "local-model", "install"], capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    assert f"llama-server: {layout.server} (cached)" in finished.stdout
    assert f"model: {layout.model} (cached)" in finished.stdout
    assert "building" not in finished.stdout


# ---- glm-saver up ------------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    """All processes below `pid`, read from /proc (children of children included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for_output(path: Path, process: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if marker in text:
            return text
        if process.poll() is not None:
            raise AssertionError(f"glm-saver up exited with {process.returncode}:\n{text[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"glm-saver up did not print {marker!r} in {timeout}s:\n{path.read_text()[-4000:]}")


def _summary_value(output: str, line_start: str, label: str) -> str:
    """The word after `label` on the summary line that starts with `line_start`."""
    line = next(line for line in output.splitlines() if line.strip().startswith(line_start))
    return line.split(label, 1)[1].split()[0]


@pytest.fixture()
def up_workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose local base URL answers nothing (so `up` starts the embedded model), the hooks
    beside it, and a fresh cache dir holding links to the already-built server and weights."""
    layout = installed_layout()
    cache = tmp_path / "cache"
    for target in (layout.server, layout.server_stamp, layout.model):
        link = cache / target.relative_to(layout.root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    for entry in config["model_list"]:
        if entry["model_name"] == "local":
            entry["litellm_params"]["api_base"] = f"http://127.0.0.1:{free_port()}/v1"
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "litellm_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (workspace / "hooks").symlink_to(REPO / "hooks")
    return workspace, cache


def _launch_up(workspace: Path, cache: Path, output_path: Path) -> subprocess.Popen[bytes]:
    """`glm-saver up` as a newcomer runs it: in the project directory, no Cerebras or master key."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CEREBRAS_", "LITELLM_", "OPENAI_"))}
    env["GLM_SAVER_CACHE_DIR"] = str(cache)
    command = [sys.executable, "-m", "glm_saver.cli", "up", "--port", str(free_port()), "--local-port", str(free_port())]
    with output_path.open("wb") as output:
        return subprocess.Popen(command, cwd=workspace, env=env, stdout=output, stderr=subprocess.STDOUT)


@contextmanager
def running_up(workspace: Path, cache: Path, output_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, set[int]]]:
    """`glm-saver up` until it says it is up: (process, what it printed, its children). Whatever a
    test does, nothing is left running afterwards."""
    up = _launch_up(workspace, cache, output_path)
    children: set[int] = set()
    try:
        printed = _wait_for_output(output_path, up, "Press Ctrl-C to stop.", timeout=300)
        children = _descendants(up.pid)
        yield up, printed, children
    finally:
        for pid in [up.pid, *children]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        up.wait()


def test_up_answers_a_request_and_sigint_leaves_no_process_behind(up_workspace: tuple[Path, Path], tmp_path: Path) -> None:
    workspace, cache = up_workspace
    with running_up(workspace, cache, tmp_path / "up.out") as (up, printed, children):
        assert len(children) >= 2  # llama-server and litellm
        base_url = _summary_value(printed, "or API provider: OpenAI Compatible", "base URL:")
        key, model = _summary_value(printed, "API key:", "API key:"), _summary_value(printed, "Model:", "Model:")
        assert "Cerebras:    not configured" in printed
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(model=model, messages=CAPITAL, temperature=0, max_tokens=24)
        assert raw.headers["x-glm-saver-route"] == "local"
        assert "Paris" in (raw.parse().choices[0].message.content or "")

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=90) == 0
        left_behind = [pid for pid in children if _running(pid)]
        assert left_behind == []
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base_url.removesuffix('/v1')}/health/liveliness", timeout=2)


def test_up_uses_a_local_server_that_already_answers(up_workspace: tuple[Path, Path], tmp_path: Path, local_upstream: FakeUpstream) -> None:
    """A running Ollama (here the fake local server) wins: no llama-server is started."""
    workspace, cache = up_workspace
    config = yaml.safe_load((workspace / "litellm_config.yaml").read_text())
    next(e for e in config["model_list"] if e["model_name"] == "local")["litellm_params"]["api_base"] = local_upstream.url
    (workspace / "litellm_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with running_up(workspace, cache, tmp_path / "up.out") as (up, printed, children):
        assert f"a local model server already answers at {local_upstream.url}" in printed
        assert not any("llama-server" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace") for pid in children)
        base_url = _summary_value(printed, "or API provider: OpenAI Compatible", "base URL:")
        client = openai.OpenAI(base_url=base_url, api_key=_summary_value(printed, "API key:", "API key:"), max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="glm-saver", messages=CAPITAL)
        assert answer.choices[0].message.content == "Hello from local."
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=90) == 0
        assert [pid for pid in children if _running(pid)] == []
