"""What the speculative strategies cost and how often they are right, on a fixed simulated workload.

Fake upstreams in their own processes: a local model whose drafts are right or wrong on known asks
(with a known token log-probability each), and a Cerebras that is always right, answers a verify
request with ACCEPT for a right draft and the correct answer for a wrong one. Every strategy gets
the same asks through its own real proxy; cloud tokens and cost are read from what the fake Cerebras
served (not from the plugin's own books), and an answer is right when it is the correct text.

    python bench/speculative_sim.py [--asks 40] [--rounds 5]

Then the wall time of N=3 parallel drafts against one draft, on a local server that serves
concurrent requests (the fake, paced at --tokens-per-second), interleaved request by request.

Then streams (issue 13): the same workload streamed, so drafts are committed on a `commit_tokens`
prefix, against whole-draft scoring (the JSON run above), in one table; and the time to first byte
and total time of streamed answers per speculative strategy against always-local and
always-Cerebras streams, with the local model paced at --stream-tokens-per-second and Cerebras at
--cloud-tokens-per-second, interleaved request by request. The reference for time to first byte is
measured in the same run: how long the always-local stream takes to deliver its `commit_tokens`-th
token (the target is a ratio of at most 1.5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config

STRATEGIES = ("always_cerebras", "speculative_decoding", "parallel_speculative", "smart_speculative", "always_local")
SPECULATIVE = ("speculative_decoding", "parallel_speculative", "smart_speculative")
COMMIT_TOKENS = 48  # the shipped default
PRICE_IN, PRICE_OUT = 2.25e-6, 2.75e-6  # zai-glm-4.6, $ per token (the shipped config's prices)
SURE, UNSURE = -0.05, -0.9  # token logprobs of the local model's drafts
# (kind, share of the workload, local draft is right, its logprob)
KINDS = [
    ("sure-right", 0.35, True, SURE),
    ("unsure-right", 0.20, True, UNSURE),
    ("unsure-wrong", 0.20, False, UNSURE),
    ("sure-wrong", 0.10, False, SURE),  # confidently wrong: no cascade can catch it cheaply
    ("refusal", 0.15, False, SURE),
]
# About the size of Cline CLI's system prompt (1.1-1.3K tokens): a verify call re-sends it.
SYSTEM_PROMPT = "You are a careful coding assistant working in the user's repository. " * 90
FILLER = "It follows from the definitions used in the module, and the tests cover the edge cases. " * 6


@dataclass(frozen=True)
class Ask:
    index: int
    kind: str
    simple: bool  # for smart_speculative: the classifier sends simple asks local directly
    right_draft: bool
    logprob: float

    @property
    def tag(self) -> str:
        return f"[Q{self.index}]"

    @property
    def text(self) -> str:
        if self.simple:
            return f"hello, what is the value of setting {self.tag}? thanks"
        return f"Refactor the distributed scheduler architecture to remove the race condition in lock {self.tag}"

    @property
    def correct(self) -> str:
        return f"[A{self.index}] The right answer. {FILLER}"

    @property
    def draft(self) -> str:
        if self.kind == "refusal":
            return f"I'm sorry, but I can't help with that. [R{self.index}]"
        return self.correct if self.right_draft else f"[W{self.index}] A wrong answer. {FILLER}"


def workload(size: int) -> list[Ask]:
    asks: list[Ask] = []
    for kind, share, right, logprob in KINDS:
        for _ in range(round(size * share)):
            asks.append(Ask(len(asks), kind, simple=len(asks) % 2 == 0, right_draft=right, logprob=logprob))
    return asks


def local_rules(asks: list[Ask]) -> list[list[Any]]:
    return [[ask.tag, ask.draft, ask.logprob] for ask in asks]


def cloud_rules(asks: list[Ask]) -> list[list[Any]]:
    # Draft texts first: only a verify request contains them; then the asks themselves.
    drafts = [[f"[A{a.index}]", "ACCEPT"] for a in asks] + [[f"[W{a.index}]", a.correct] for a in asks]
    return drafts + [[a.tag, a.correct] for a in asks]


class Fake:
    """A fake upstream in its own process, driven over its /_control/ API."""

    def __init__(self, kind: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.upstream", "--kind", kind, "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        self.base = self.url.removesuffix("/v1")

    def control(self, what: str, body: dict[str, Any]) -> None:
        httpx.post(f"{self.base}/_control/{what}", json=body, timeout=30).raise_for_status()

    def served(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.base}/_control/state", timeout=30).json()["served"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def ask_body(ask: Ask) -> dict[str, Any]:
    return {"model": "glm-saver", "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": ask.text}]}


@dataclass
class Streamed:
    route: str
    text: str
    first_byte: float  # seconds to the first content token
    nth_token: float | None  # seconds to the COMMIT_TOKENS-th content chunk
    total: float


def stream_ask(http: httpx.Client, url: str, ask: Ask) -> Streamed:
    """One streamed ask, timed from the request to the first content, the commit-th token and the end."""
    began = time.perf_counter()
    first = nth = None
    pieces: list[str] = []
    with http.stream("POST", f"{url}/v1/chat/completions", json={**ask_body(ask), "stream": True, "stream_options": {"include_usage": True}}) as response:
        response.raise_for_status()
        route = response.headers.get("x-glm-saver-route", "?")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    pieces.append(piece)
                    first = first or time.perf_counter() - began
                    nth = nth or (time.perf_counter() - began if len(pieces) == COMMIT_TOKENS else None)
    return Streamed(route, "".join(pieces), first or float("nan"), nth, time.perf_counter() - began)


def run_workload(http: httpx.Client, url: str, asks: list[Ask], stream: bool = False) -> tuple[int, dict[str, int]]:
    """Send every ask once; return how many answers were right and the routes taken."""
    right, routes = 0, {}
    for ask in asks:
        if stream:
            answer = stream_ask(http, url, ask)
            route, text = answer.route, answer.text
        else:
            response = http.post(f"{url}/v1/chat/completions", json=ask_body(ask))
            response.raise_for_status()
            route, text = response.headers.get("x-glm-saver-route", "?"), response.json()["choices"][0]["message"]["content"]
        routes[route] = routes.get(route, 0) + 1
        right += text == ask.correct
    return right, routes


def cloud_bill(served: list[dict[str, Any]]) -> tuple[int, int, float]:
    prompt = sum(s["prompt_tokens"] for s in served)
    completion = sum(s["completion_tokens"] for s in served)
    return prompt, completion, prompt * PRICE_IN + completion * PRICE_OUT


def start_proxies(work: Path, local: Fake, cloud: Fake) -> dict[str, Proxy]:
    proxies = {}
    for strategy in STRATEGIES:
        directory = work / strategy
        directory.mkdir()
        proxy = Proxy(directory=directory, cerebras_url=cloud.url)
        proxy.start(proxy_config(local.url, glm_saver={"strategy": strategy}))
        proxies[strategy] = proxy
    return proxies


def cost_table(http: httpx.Client, proxies: dict[str, Proxy], local: Fake, cloud: Fake, asks: list[Ask]) -> None:
    """Per strategy: whole-draft scoring (JSON requests) and prefix commits (the same asks streamed)."""
    good = sum(a.right_draft for a in asks)
    print(
        f"workload: {len(asks)} asks, {good} good local drafts ({good / len(asks):.0%}); kinds: "
        + ", ".join(f"{k} {sum(a.kind == k for a in asks)}" for k, *_ in KINDS)
    )
    print(f"{'strategy':<22}{'scoring':>9}{'cloud prompt tok':>17}{'cloud compl tok':>16}{'cloud $':>11}{'vs always':>10}{'right':>8}  routes")
    baseline = None
    for strategy, proxy in proxies.items():
        rows = [("whole", False), ("prefix", True)] if strategy in SPECULATIVE else [("-", False)]
        shares = []
        for scoring, stream in rows:
            for fake in (local, cloud):
                fake.control("reset", {})
            right, routes = run_workload(http, proxy.url, asks, stream=stream)
            prompt, completion, cost = cloud_bill(cloud.served())
            baseline = cost if baseline is None else baseline
            shares.append((cost / baseline, right / len(asks)))
            print(
                f"{strategy:<22}{scoring:>9}{prompt:>17}{completion:>16}{cost:>11.5f}{cost / baseline:>10.2f}{right / len(asks):>8.0%}  {dict(sorted(routes.items()))}"
            )
        if len(shares) == 2:
            (cost_w, right_w), (cost_p, right_p) = shares
            print(
                f"{'':<22}{'prefix - whole:':>26} cost {100 * (cost_p - cost_w):+.1f} points of always-cerebras, right {100 * (right_p - right_w):+.1f} points (target: within 5)"
            )


def parallel_timing(http: httpx.Client, proxies: dict[str, Proxy], local: Fake, asks: list[Ask], rounds: int, tps: float) -> None:
    sure = [a for a in asks if a.kind == "sure-right"][:rounds]
    local.control("options", {"tokens_per_second": tps})
    times: dict[str, list[float]] = {"speculative_decoding": [], "parallel_speculative": []}
    try:
        for i, ask in enumerate(sure):
            order = list(times) if i % 2 == 0 else list(reversed(times))
            for strategy in order:
                began = time.perf_counter()
                http.post(f"{proxies[strategy].url}/v1/chat/completions", json=ask_body(ask)).raise_for_status()
                times[strategy].append(time.perf_counter() - began)
    finally:
        local.control("options", {"tokens_per_second": None})
    one, three = (statistics.median(times[s]) for s in times)
    tokens = len(sure[0].draft) // 4
    print(f"\nwall time per request, drafts paced at {tps:.0f} tok/s (~{tokens} tokens each), median of {len(sure)}:")
    print(f"  1 draft (speculative_decoding) {one:.3f} s; 3 parallel drafts (parallel_speculative) {three:.3f} s; ratio {three / one:.3f} (target <= 1.3)")


def stream_timing(http: httpx.Client, proxies: dict[str, Proxy], local: Fake, cloud: Fake, asks: list[Ask], rounds: int, tps: float, cloud_tps: float) -> None:
    """Time to first byte and total time of streamed answers, interleaved request by request."""
    chosen = [a for a in asks if a.kind == "sure-right"][:rounds] + [a for a in asks if a.kind == "unsure-wrong"][:rounds]
    local.control("options", {"tokens_per_second": tps})
    cloud.control("options", {"tokens_per_second": cloud_tps})
    names = ("always_local", "always_cerebras", *SPECULATIVE)
    seen: dict[str, list[Streamed]] = {name: [] for name in names}
    try:
        for i, ask in enumerate(chosen):
            for name in names if i % 2 == 0 else tuple(reversed(names)):
                seen[name].append(stream_ask(http, proxies[name].url, ask))
    finally:
        local.control("options", {"tokens_per_second": None})
        cloud.control("options", {"tokens_per_second": None})
    commit = statistics.median(s.nth_token for s in seen["always_local"] if s.nth_token is not None)
    print(
        f"\nstreamed answers, local paced at {tps:.0f} tok/s, cerebras at {cloud_tps:.0f} tok/s; {len(chosen)} asks each ({rounds} sure-right, {rounds} unsure-wrong), medians:"
    )
    print(f"  reference: the local model delivers its {COMMIT_TOKENS}th token after {commit:.3f} s (always_local stream, same run)")
    print(f"  {'strategy':<22}{'TTFB s':>8}{'TTFB/commit':>13}{'total s':>9}{'total/local':>13}  routes")
    local_total = statistics.median(s.total for s in seen["always_local"])
    for name in names:
        ttfb, total = statistics.median(s.first_byte for s in seen[name]), statistics.median(s.total for s in seen[name])
        routes: dict[str, int] = {}
        for s in seen[name]:
            routes[s.route] = routes.get(s.route, 0) + 1
        target = "  (target <= 1.5)" if name in SPECULATIVE else ""
        print(f"  {name:<22}{ttfb:>8.3f}{ttfb / commit:>13.2f}{total:>9.3f}{total / local_total:>13.2f}  {dict(sorted(routes.items()))}{target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asks", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=7, help="requests per strategy in the timing part")
    parser.add_argument("--tokens-per-second", type=float, default=150.0)
    parser.add_argument("--stream-tokens-per-second", type=float, default=30.0, help="pace of the local model in the streaming part (a 7B model: 20-40)")
    parser.add_argument("--cloud-tokens-per-second", type=float, default=1000.0)
    parser.add_argument("--stream-rounds", type=int, default=3, help="asks of each kind in the streaming part")
    parser.add_argument("--skip-parallel-timing", action="store_true")
    args = parser.parse_args()

    asks = workload(args.asks)
    local, cloud = Fake("local"), Fake("cerebras")
    local.control("options", {"replies": local_rules(asks)})
    cloud.control("options", {"replies": cloud_rules(asks)})
    work = Path(tempfile.mkdtemp(prefix="glm-saver-spec-"))
    proxies: dict[str, Proxy] = {}
    try:
        proxies = start_proxies(work, local, cloud)
        with httpx.Client(headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=120) as http:
            cost_table(http, proxies, local, cloud, asks)
            if not args.skip_parallel_timing:
                parallel_timing(http, proxies, local, asks, args.rounds, args.tokens_per_second)
            stream_timing(http, proxies, local, cloud, asks, args.stream_rounds, args.stream_tokens_per_second, args.cloud_tokens_per_second)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        local.stop()
        cloud.stop()


if __name__ == "__main__":
    main()
