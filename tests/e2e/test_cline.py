"""End to end with the real Cline CLI (npm `cline`, pinned in .cline-cli/package.json) against real proxies.

Cline runs headless (`cline -P <provider> -m glm-saver --json --yolo -c DIR "task"`) with a private
HOME, configured by its own `cline auth`. Both fakes answer Cline's first request with a call of its
`submit_and_exit` tool, which ends the task: a run is complete when the CLI exits 0 and its JSON
says `finishReason: completed` after that call. What the fakes received shows where Cline's request
went (and which drafts were cancelled); `/stats` shows the route the plugin took. A missing Cline
fails these tests, it never skips them.

Keep-alives: a draft stalled before or after the commit point, or a verify Cerebras holds back,
makes the stream send `: keep-alive` comments. A TCP relay between the client and the proxy shows
them on the client's socket (client libraries hide comments); Cline and the official OpenAI client
must complete through them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.polling import poll
from tests.e2e.proxy import MASTER_KEY, REPO, Proxy
from tests.e2e.relay import Relay
from tests.fakes.answers import ReplyRule
from tests.fakes.upstream import FakeUpstream

CLINE_PREFIX = REPO / ".cline-cli"  # where .ci/run installs it (npm install --prefix)
CLINE_VERSION = json.loads((CLINE_PREFIX / "package.json").read_text())["dependencies"]["cline"]  # the pin
INSTALL = "npm install --prefix .cline-cli --no-package-lock"
FINAL_TOOL = "submit_and_exit"
SIMPLE_TASK = "What is in this folder?"
COMPLEX_TASK = "Refactor the scheduler architecture to remove the race condition in the distributed lock"
COMMIT = 2  # a tool-call draft streams 4 tokens (the call, then its arguments in 3 pieces): unfinished at the commit
WAIT = 120.0  # seconds Cline may take for one task on a loaded machine


@dataclass
class ClineRun:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        return next((event for event in self.events if event.get("type") == "run_result"), {})

    @property
    def tools(self) -> list[str]:
        """The tools Cline ran, in order (from its own events)."""
        events = (event.get("event") or {} for event in self.events if event.get("type") == "agent_event")
        return [event["toolName"] for event in events if event.get("type") == "content_end" and event.get("contentType") == "tool"]

    def assert_completed(self) -> None:
        assert self.returncode == 0, self.stderr[-2000:]
        assert self.result.get("finishReason") == "completed", (self.result, self.stderr[-2000:])
        assert self.tools == [FINAL_TOOL]


@pytest.fixture(scope="module")
def cline() -> Path:
    """The Cline CLI that .ci/run installs; without it these tests fail and say how to install it."""
    local = CLINE_PREFIX / "node_modules" / ".bin" / "cline"
    found = local if local.exists() else shutil.which("cline")
    assert found, f"the Cline CLI is not installed: run `{INSTALL}` in the repository (.ci/run does)"
    version = subprocess.run([str(found), "--version"], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert version == CLINE_VERSION, f"{found} is Cline {version}, the tests are written for {CLINE_VERSION}: run `{INSTALL}`"
    return Path(found)


@pytest.fixture(scope="module", autouse=True)
def _fakes_end_the_task(local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> Iterator[None]:
    """Both models call Cline's submit_and_exit when offered, as a model that is done would."""
    saved = (local_upstream.options.tool, cerebras_upstream.options.tool)
    local_upstream.configure(tool=FINAL_TOOL)
    cerebras_upstream.configure(tool=FINAL_TOOL)
    yield
    local_upstream.configure(tool=saved[0])
    cerebras_upstream.configure(tool=saved[1])


def cline_env(home: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OPENAI_", "CEREBRAS_", "ANTHROPIC_", "CLINE_"))}
    return {**env, "HOME": str(home)}


def start_cline(cline: Path, base_url: str, home: Path, task: str, provider: str) -> subprocess.Popen[str]:
    """Configure Cline with its own `auth` command (in a private HOME), then start the task.

    `auth` takes a base URL for the OpenAI-compatible provider only; the LiteLLM provider's goes
    into the settings file `auth` wrote (which keeps its `updatedAt`, or Cline ignores it)."""
    env = cline_env(home)
    base = ["-b", f"{base_url}/v1"] if provider == "openai-compatible" else []
    subprocess.run([str(cline), "auth", "-p", provider, "-k", MASTER_KEY, "-m", "glm-saver", *base], env=env, capture_output=True, timeout=60, check=True)
    path = home / ".cline" / "data" / "settings" / "providers.json"
    settings = json.loads(path.read_text())
    assert settings["lastUsedProvider"] == provider and settings["providers"][provider]["updatedAt"]
    settings["providers"][provider]["settings"]["baseUrl"] = f"{base_url}/v1"
    path.write_text(json.dumps(settings))
    workdir = home / "work"
    workdir.mkdir(exist_ok=True)
    command = [str(cline), "-P", provider, "-m", "glm-saver", "--json", "--yolo", "-t", str(int(WAIT)), "-c", str(workdir), task]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> ClineRun:
    try:
        out, err = process.communicate(timeout=WAIT + 30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return ClineRun(process.returncode, events, err)


def run_cline(cline: Path, base_url: str, home: Path, task: str, provider: str = "openai-compatible") -> ClineRun:
    return finish(start_cline(cline, base_url, home, task, provider))


def stats(proxy: Proxy) -> dict[str, Any]:
    response = httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def routed(proxy: Proxy, before: dict[str, Any]) -> dict[str, int]:
    """The routes the plugin took since `before` (a /stats snapshot)."""
    now = stats(proxy)["by_route"]
    return {route: count - before["by_route"].get(route, 0) for route, count in now.items() if count != before["by_route"].get(route, 0)}


def cline_request(record: Any) -> bool:
    """A request as Cline sends it: streamed, with usage, its tools, its task."""
    body = record.body
    names = [tool["function"]["name"] for tool in body.get("tools") or []]
    return body.get("stream") is True and FINAL_TOOL in names and body["messages"][0]["role"] == "system"


def task_of(record: Any) -> str:
    return next(message["content"] for message in record.body["messages"] if message["role"] == "user")


# ---- smart_routing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smart(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy()  # the shipped config: smart_routing


def test_a_simple_cline_task_is_answered_locally_through_the_litellm_provider(
    cline: Path, smart: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, tmp_path: Path
) -> None:
    before = stats(smart)
    run = run_cline(cline, smart.url, tmp_path, SIMPLE_TASK, provider="litellm")
    run.assert_completed()
    [request] = local_upstream.requests
    assert cline_request(request) and task_of(request) == SIMPLE_TASK
    assert not cerebras_upstream.requests
    assert routed(smart, before) == {"local": 1}
    # The usage Cline shows is what the local model served.
    [served] = local_upstream.served
    assert (run.result["usage"]["inputTokens"], run.result["usage"]["outputTokens"]) == (served.prompt_tokens, served.completion_tokens)


def test_a_complex_cline_task_goes_to_cerebras_through_the_openai_compatible_provider(
    cline: Path, smart: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, tmp_path: Path
) -> None:
    before = stats(smart)
    run = run_cline(cline, smart.url, tmp_path, COMPLEX_TASK)
    run.assert_completed()
    [request] = cerebras_upstream.requests
    assert cline_request(request) and task_of(request) == COMPLEX_TASK
    assert not local_upstream.requests
    assert routed(smart, before) == {"cerebras": 1}


# ---- streamed speculative strategies ------------------------------------------------------------


def speculative(start_proxy: Callable[..., Proxy], strategy: str, **options: Any) -> Proxy:
    settings = {"commit_tokens": COMMIT, "speculate_with_tools": True, "parallel_retry_seconds": 0, **options}
    return start_proxy(glm_saver={"strategy": strategy, "speculative": settings})


@pytest.fixture(scope="module")
def parallel(start_proxy: Callable[..., Proxy]) -> Proxy:
    """Two drafts that agree: a trusted prefix. Keep-alives after 0.2 s of silence, before the
    first byte too (`open_after_seconds`)."""
    return speculative(start_proxy, "parallel_speculative", max_concurrent_drafts=2, keepalive_seconds=0.2, open_after_seconds=0.2)


@pytest.fixture(scope="module")
def single(start_proxy: Callable[..., Proxy]) -> Proxy:
    """One draft, no logprobs in a tool call: no evidence, confidence in the verify band, an
    unfinished prefix there goes to Cerebras."""
    return speculative(start_proxy, "speculative_decoding")


def test_a_cline_task_is_answered_by_a_draft_committed_on_its_prefix(
    cline: Path, parallel: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, tmp_path: Path
) -> None:
    before = stats(parallel)
    local_upstream.pause(after=COMMIT)  # both drafts held at the commit point, so the cascade is caught in the act
    process = start_cline(cline, parallel.url, tmp_path, SIMPLE_TASK, "openai-compatible")
    # One draft is chosen at the commit point and streams on to Cline; the other is cancelled.
    poll(lambda: [draft.outcome for draft in local_upstream.requests].count("client_disconnected") == 1, "the other draft cancelled", WAIT)
    local_upstream.resume()
    run = finish(process)
    run.assert_completed()
    drafts = local_upstream.requests
    assert len(drafts) == 2 and all(cline_request(draft) and task_of(draft) == SIMPLE_TASK for draft in drafts)
    assert sorted(draft.outcome for draft in drafts) == ["client_disconnected", "ok"]
    assert not cerebras_upstream.requests
    assert routed(parallel, before) == {"draft-accepted": 1}
    assert stats(parallel)["by_reason"]["confident"] >= 1


def test_a_cline_task_whose_prefix_is_unsure_is_answered_by_cerebras_live(
    cline: Path, single: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, tmp_path: Path
) -> None:
    before = stats(single)
    local_upstream.pause(after=COMMIT)  # the draft is unfinished at the commit point
    run = run_cline(cline, single.url, tmp_path, SIMPLE_TASK)
    run.assert_completed()
    [draft] = local_upstream.requests
    assert cline_request(draft)
    poll(lambda: [r.outcome for r in local_upstream.requests] == ["client_disconnected"], "the draft cancelled at the commit point", 30)
    [request] = cerebras_upstream.requests
    assert cline_request(request) and task_of(request) == SIMPLE_TASK
    assert routed(single, before) == {"cloud": 1}
    assert stats(single)["by_reason"]["unsure-prefix"] >= 1


# ---- a stalled draft: keep-alive comments, which Cline and the OpenAI client skip ---------------


def routes_on_the_wire(raw: bytes) -> tuple[list[str], list[str]]:
    """The route headers of the responses in `raw`, and the routes sent as SSE comments."""
    text = raw.decode("utf-8", "replace")
    headers = re.findall(r"^x-glm-saver-route: (\S+)\r$", text, re.MULTILINE | re.IGNORECASE)
    return headers, re.findall(r"^: x-glm-saver-route: (\S+)$", text, re.MULTILINE)


def assert_route_told(raw: bytes, stall: str) -> None:
    """Stalled before the commit, the stream opened before the cascade decided: its header says
    so and the outcome follows as a comment. After the commit the header may say either, as the
    commit came before or after `open_after_seconds`; the outcome is on the wire either way."""
    headers, comments = routes_on_the_wire(raw)
    if stall == "before-commit":
        assert (headers, comments) == (["cascade"], ["draft-accepted"])
    else:
        assert (headers, comments) in ((["draft-accepted"], []), (["cascade"], ["draft-accepted"]))


@pytest.mark.parametrize("stall", ["after-commit", "before-commit"])
def test_cline_completes_a_task_through_keep_alive_comments_of_a_stalled_draft(
    cline: Path, parallel: Proxy, local_upstream: FakeUpstream, tmp_path: Path, stall: str
) -> None:
    # After the commit the client holds the first chunks; before it the response is not open yet.
    local_upstream.pause(after=COMMIT + 1 if stall == "after-commit" else 1)
    with Relay(parallel.port) as relay:
        process = start_cline(cline, relay.url, tmp_path, SIMPLE_TASK, "openai-compatible")
        poll(lambda: local_upstream.paused >= 1, "a draft paused", WAIT)
        poll(lambda: relay.received.count(b": keep-alive\n\n") >= 2, "keep-alive comments on Cline's socket", WAIT)
        assert process.poll() is None  # Cline waits through them
        local_upstream.resume()
        run = finish(process)
    run.assert_completed()
    assert all(cline_request(draft) for draft in local_upstream.requests)
    assert_route_told(relay.received, stall)


@pytest.mark.parametrize("stall", ["after-commit", "before-commit"])
def test_the_openai_client_completes_through_keep_alive_comments_of_a_stalled_draft(
    parallel: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream, stall: str
) -> None:
    local_upstream.pause(after=COMMIT + 1 if stall == "after-commit" else 1)
    tools = [{"type": "function", "function": {"name": FINAL_TOOL, "parameters": {"type": "object", "properties": {"summary": {"type": "string"}}}}}]
    body = {"model": "glm-saver", "messages": [{"role": "user", "content": SIMPLE_TASK}], "tools": tools, "stream": True}
    with Relay(parallel.port) as relay:
        client = openai.OpenAI(base_url=f"{relay.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=WAIT)
        stream = client.chat.completions.create(**body, stream_options={"include_usage": True})
        poll(lambda: local_upstream.paused >= 1, "a draft paused", WAIT)
        poll(lambda: relay.received.count(b": keep-alive\n\n") >= 2, "keep-alive comments on the client's socket", WAIT)
        local_upstream.resume()
        chunks = list(stream)
    calls = [call for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or []]
    assert calls[0].function is not None and calls[0].function.name == FINAL_TOOL
    assert json.loads("".join(call.function.arguments or "" for call in calls if call.function)) == {"summary": "example"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert not cerebras_upstream.requests
    assert_route_told(relay.received, stall)


def test_the_openai_client_completes_through_keep_alive_comments_while_cerebras_verifies_a_draft(
    parallel: Proxy, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream
) -> None:
    # A short draft, finished within the commit point, unsure enough for the verify band
    # (agreement 1.00 but token-prob 0.14): it waits on Cerebras, which holds its answer back.
    cerebras_upstream.hold()
    with (
        local_upstream.replying([ReplyRule("Is 2 + 2 four", "Yes", -2.0)]),
        cerebras_upstream.replying([ReplyRule("<draft>", "ACCEPT")]),
        Relay(parallel.port) as relay,
    ):
        client = openai.OpenAI(base_url=f"{relay.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=WAIT)
        stream = client.chat.completions.create(model="glm-saver", messages=[{"role": "user", "content": "Is 2 + 2 four?"}], stream=True)
        poll(lambda: cerebras_upstream.in_flight >= 1, "the verify call at cerebras", WAIT)
        poll(lambda: relay.received.count(b": keep-alive\n\n") >= 2, "keep-alive comments while cerebras verifies", WAIT)
        cerebras_upstream.release()
        text = "".join(choice.delta.content or "" for chunk in stream for choice in chunk.choices)
    assert text == "Yes"
    [verify] = cerebras_upstream.requests
    assert "<draft>\nYes\n</draft>" in verify.body["messages"][-1]["content"]
    assert routes_on_the_wire(relay.received) == (["cascade"], ["draft-verified"])
