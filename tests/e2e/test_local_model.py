"""The REAL embedded model (Gemma 3 270M on the prebuilt xllamacpp server that `glm-saver local-model
install` checked) behind a real proxy with no Cerebras key: what a newcomer gets from `glm-saver up`;
and, straight to the server, every feature the cascade needs from it (logprobs, parallel slots,
`n`, stop strings, the custom chat template). None depends on the CPU (AMX or not).

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

from glm_saver.launcher.local_model import InstallError, Layout
from glm_saver.launcher.local_server import EMBEDDED_ALIAS, QA_STOP, ServeOptions, prove_server, server_command
from tests.e2e.embedded import EmbeddedServer, embedded_proxy_config, installed_layout
from tests.e2e.proxy import MASTER_KEY, REPO, SHIPPED_CONFIG, Proxy, free_port, stop_process, wait_for_http
from tests.e2e.tap import Tap
from tests.fakes.upstream import FakeUpstream

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"


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


def _chat(embedded: EmbeddedServer, **body: object) -> dict:
    request = {"model": EMBEDDED_ALIAS, "messages": CAPITAL, "temperature": 0, "max_tokens": 8, **body}
    response = httpx.post(f"{embedded.url}/v1/chat/completions", json=request, timeout=60)
    response.raise_for_status()
    return response.json()


# LiteLLM sends at most four stop sequences (OpenAI's limit) and drops the rest.
@pytest.mark.parametrize("stop", ["</answer>", ["</answer>"], ["</answer>", "<END>", "###", "</s>"]], ids=["string", "list", "four"])
def test_a_request_with_its_own_stop_still_ends_at_the_next_question(client: openai.OpenAI, embedded: EmbeddedServer, stop: str | list[str]) -> None:
    """A request's `stop` replaces the server's default one (QA_STOP): the proxy adds it back
    (the derived config's model_info.always_stop). Sent straight to the server, the same request
    runs on into a question of its own."""
    ask = {"messages": CAPITAL, "temperature": 0, "max_tokens": 64, "stop": stop}
    assert QA_STOP in _chat(embedded, **ask)["choices"][0]["message"]["content"]
    answer = client.chat.completions.create(model="glm-saver", **ask)  # type: ignore[call-overload]
    text = answer.choices[0].message.content or ""
    assert "Paris" in text and QA_STOP not in text
    assert answer.choices[0].finish_reason == "stop"


def test_embedded_server_returns_logprobs_for_drafts(embedded: EmbeddedServer) -> None:
    """What draft scoring relies on: the server gives per-token logprobs with the answer."""
    choice = _chat(embedded, logprobs=True, top_logprobs=2)["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert tokens and all(token["logprob"] <= 0 and len(token["top_logprobs"]) == 2 for token in tokens)


def test_embedded_server_answers_n_choices_in_one_request(embedded: EmbeddedServer) -> None:
    choices = _chat(embedded, n=3, temperature=0.8)["choices"]
    assert sorted(choice["index"] for choice in choices) == [0, 1, 2]
    assert all(choice["message"]["content"] is not None for choice in choices)


def test_embedded_server_serves_as_many_slots_as_asked(embedded: EmbeddedServer) -> None:
    slots = httpx.get(f"{embedded.url}/slots", timeout=10).json()
    assert len(slots) == embedded.parallel == 3


def test_a_requests_stop_string_ends_the_answer(embedded: EmbeddedServer) -> None:
    unstopped = _chat(embedded)["choices"][0]["message"]["content"]
    assert "Paris" in unstopped
    stopped = _chat(embedded, stop=["Paris"])["choices"][0]
    assert "Paris" not in stopped["message"]["content"] and stopped["finish_reason"] == "stop"


def test_generation_stops_at_the_next_question_by_default(embedded: EmbeddedServer) -> None:
    """The base model goes on with a new "Question:" after an answer; the server's default stop ends it."""
    prompt = "Question: What is the capital of France?\nAnswer: Paris\nQuestion: What is the capital of Spain?\nAnswer: Madrid\n"
    body = {"model": EMBEDDED_ALIAS, "prompt": prompt, "temperature": 0, "max_tokens": 30}
    default = httpx.post(f"{embedded.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    # The same prompt with another stop list (it replaces the default) shows what was cut.
    other = httpx.post(f"{embedded.url}/v1/completions", json={**body, "stop": ["never-said"]}, timeout=60).json()["choices"][0]["text"]
    assert QA_STOP in other
    assert QA_STOP not in default and other.startswith(default)


def test_an_answer_that_sets_no_max_tokens_ends_at_the_servers_cap(tmp_path: Path) -> None:
    """A base model rarely stops by itself: uncapped, one "Say hi" held a slot for 12 minutes."""
    options = ServeOptions(port=free_port(), parallel=1, slot_context=256, threads=1)  # room for 128 answer tokens
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(server_command(installed_layout(), options), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(server, f"http://127.0.0.1:{options.port}/health", log_path, 120, options.server_name)
        # A stop string that never comes, so only the cap can end the answer.
        body = {"model": EMBEDDED_ALIAS, "messages": [{"role": "user", "content": "Count from 1 to 1000: 1, 2, 3,"}], "temperature": 0, "stop": ["never-said"]}
        answer = httpx.post(f"http://127.0.0.1:{options.port}/v1/chat/completions", json=body, timeout=120).json()
        assert (answer["usage"]["completion_tokens"], answer["choices"][0]["finish_reason"]) == (128, "length")
    finally:
        stop_process(server)


def test_the_chat_is_rendered_with_the_question_answer_template(embedded: EmbeddedServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *CAPITAL]
    rendered = httpx.post(f"{embedded.url}/apply-template", json={"messages": messages}, timeout=10).json()["prompt"]
    assert rendered == "Be brief.\n\nQuestion: What is the capital of France?\nAnswer:"


def test_serve_prints_serving_only_once_it_answers(tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "serve.out"
    command = [sys.executable, "-m", "glm_saver.cli", "local-model", "serve", "--port", str(port), "--parallel", "1"]
    with output.open("wb") as sink:
        serve = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_for_output(output, serve, "serving", timeout=120)
        body = {"model": EMBEDDED_ALIAS, "messages": CAPITAL, "temperature": 0, "max_tokens": 4}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60).json()["usage"]["completion_tokens"] > 0
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def _broken_model(tmp_path: Path) -> Path:
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)  # the magic, then nothing a model needs
    return model


def test_a_server_that_cannot_start_shows_its_own_last_lines_of_this_run_only(tmp_path: Path) -> None:
    cache, model = tmp_path / "cache", _broken_model(tmp_path)
    command = [sys.executable, "-m", "glm_saver.cli", "local-model", "serve", "--model", str(model), "--port", str(free_port()), "--cache-dir", str(cache)]

    def serve_once() -> tuple[subprocess.CompletedProcess[str], str]:
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        (log,) = (cache / "logs").iterdir()
        return run, log.read_text(errors="replace")

    (first, first_log), (second, second_log) = serve_once(), serve_once()
    for run in (first, second):
        assert run.returncode == 3 and "serving" not in run.stdout
        assert "exited with code" in run.stderr and "before it was serving" in run.stderr
        assert str(model) in run.stderr  # the server's own words about the model it could not load
    assert second_log.count(str(model)) == first_log.count(str(model)) > 0  # not appended to the first run's


def test_install_check_fails_with_what_to_do_when_the_server_cannot_answer(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "cache")
    layout.model.parent.mkdir(parents=True)
    layout.model.write_bytes(_broken_model(tmp_path).read_bytes())
    with pytest.raises(InstallError) as raised:
        prove_server(layout, ServeOptions())
    message = str(raised.value)
    assert "does not work on this machine" in message and "install --build" in message
    assert str(layout.logs / "check-prebuilt.log") in message


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


def test_install_again_reuses_the_cache_and_checks_the_server_answers() -> None:
    layout = installed_layout()
    finished = subprocess.run([sys.executable, "-m", "glm_saver.cli", "local-model", "install"], capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    assert f"model: {layout.model} (cached)" in finished.stdout
    assert "nothing to compile" in finished.stdout and "building" not in finished.stdout
    assert finished.stdout.strip().splitlines()[-1].startswith("installed and checked")
    assert "completion_tokens" not in finished.stdout  # quiet: the check's details stay in its log
    assert (layout.logs / "check-prebuilt.log").is_file()


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
    beside it, and a fresh cache dir holding a link to the installed weights (the server is the wheel)."""
    layout = installed_layout()
    cache = tmp_path / "cache"
    link = cache / layout.model.relative_to(layout.root)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(layout.model)
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    for entry in config["model_list"]:
        if entry["model_name"] == "local":
            entry["litellm_params"]["api_base"] = f"http://127.0.0.1:{free_port()}/v1"
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "litellm_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (workspace / "hooks").symlink_to(REPO / "hooks")
    return workspace, cache


def _launch_up(workspace: Path, cache: Path, output_path: Path, port: int | None = None) -> subprocess.Popen[bytes]:
    """`glm-saver up` as a newcomer runs it: in the project directory, no Cerebras or master key."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CEREBRAS_", "LITELLM_", "OPENAI_"))}
    env["GLM_SAVER_CACHE_DIR"] = str(cache)
    command = [sys.executable, "-m", "glm_saver.cli", "up", "--port", str(port or free_port()), "--local-port", str(free_port())]
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
        assert len(children) >= 2  # the model's server and litellm
        assert "GLM Token Saver is ready" in printed
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


def test_up_on_the_port_of_a_running_proxy_says_so_and_starts_no_model(up_workspace: tuple[Path, Path], tmp_path: Path, embedded_proxy: Proxy) -> None:
    """Run a second time by mistake (the first still serving in another terminal)."""
    workspace, cache = up_workspace
    up = _launch_up(workspace, cache, tmp_path / "up.out", port=embedded_proxy.port)
    assert up.wait(timeout=120) == 1
    printed = (tmp_path / "up.out").read_text()
    assert f"a LiteLLM proxy already answers on port {embedded_proxy.port}" in printed
    assert "starting the local model" not in printed


def test_up_uses_a_local_server_that_already_answers(up_workspace: tuple[Path, Path], tmp_path: Path, local_upstream: FakeUpstream) -> None:
    """A running Ollama (here the fake local server) wins: no llama-server is started."""
    workspace, cache = up_workspace
    config = yaml.safe_load((workspace / "litellm_config.yaml").read_text())
    next(e for e in config["model_list"] if e["model_name"] == "local")["litellm_params"]["api_base"] = local_upstream.url
    (workspace / "litellm_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with running_up(workspace, cache, tmp_path / "up.out") as (up, printed, children):
        assert f"a local model server already answers at {local_upstream.url}" in printed
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_text(errors="replace") for pid in children]
        assert not any("llama-server" in line or "serve_prebuilt" in line for line in cmdlines)
        base_url = _summary_value(printed, "or API provider: OpenAI Compatible", "base URL:")
        client = openai.OpenAI(base_url=base_url, api_key=_summary_value(printed, "API key:", "API key:"), max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="glm-saver", messages=CAPITAL)
        assert answer.choices[0].message.content == "Hello from local."
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=90) == 0
        assert [pid for pid in children if _running(pid)] == []
