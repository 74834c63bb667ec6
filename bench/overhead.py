"""What the plugin costs: the same proxy with and without it, in front of the same fake upstream.

Both proxies run at once and are measured interleaved (round after round, alternating which goes
first), so machine noise hits both alike; the figures that matter are the ratios.

    python bench/overhead.py [--rounds 6] [--requests 150] [--concurrency 16]

Also times the classifier alone on a 60 KB Cline-shaped request (target p50 < 1 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glm_saver.classifier import ComplexityClassifier
from glm_saver.request import RequestView, content_text
from tests import cline_shapes as cline
from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config

ASK = [{"role": "user", "content": "hello, what is a tuple?"}]


def start_fake(kind: str) -> tuple[subprocess.Popen[str], str]:
    """The fake upstream in its own process, so it does not share a GIL with the load generator."""
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.upstream", "--kind", kind, "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


async def one_pass(url: str, model: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """Send `requests` chats with `concurrency` in flight; return requests/s and latencies."""
    latencies: list[float] = []
    queue = iter(range(requests))
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=60) as http:

        async def worker() -> None:
            for _ in queue:
                began = time.perf_counter()
                response = await http.post("/v1/chat/completions", json={"model": model, "messages": ASK})
                response.raise_for_status()
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - began), latencies


def classifier_timings(rounds: int = 2000) -> tuple[float, float, int]:
    request = {"messages": cline.vscode_task_of_size("Fix the typo in the README title", 60_000), "tools": [cline.READ_FILE_TOOL]}
    size = sum(len(text) for message in request["messages"] for text in content_text(message["content"]))
    classifier = ComplexityClassifier()
    classifier.classify(request["messages"])  # warm the encoder
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        classifier.classify(request["messages"])
        times.append(time.perf_counter() - began)
    view_times = []
    for _ in range(rounds // 10):
        began = time.perf_counter()
        RequestView.from_data(request)
        view_times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000, statistics.median(view_times) * 1000, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    fake, fake_url = start_fake("local")
    work = Path(tempfile.mkdtemp(prefix="glm-saver-bench-"))
    with_plugin = Proxy(directory=work / "with", cerebras_url=fake_url)
    without = Proxy(directory=work / "without", cerebras_url=fake_url)
    (work / "with").mkdir()
    (work / "without").mkdir()
    plain = proxy_config(fake_url)
    plain["litellm_settings"]["callbacks"] = ["prometheus"]  # everything but the plugin
    plain.pop("glm_saver")
    try:
        with_plugin.start(proxy_config(fake_url, glm_saver={"strategy": "smart_routing"}))
        without.start(plain)
        # The plugin routes this simple ask to `local`; without it the client names `local` itself.
        targets = {"plugin": (with_plugin.url, "glm-saver"), "plain": (without.url, "local")}
        results: dict[str, dict[str, list[float]]] = {name: {"rps": [], "lat1": []} for name in targets}
        for round_ in range(args.rounds):
            order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
            for name in order:
                url, model = targets[name]
                rps, _ = asyncio.run(one_pass(url, model, args.requests, args.concurrency))
                _, single = asyncio.run(one_pass(url, model, 40, 1))
                if round_ > 0:  # the first round warms both proxies up
                    results[name]["rps"].append(rps)
                    results[name]["lat1"].extend(single)
    finally:
        with_plugin.stop()
        without.stop()
        fake.terminate()

    plugin_rps, plain_rps = (statistics.median(results[n]["rps"]) for n in ("plugin", "plain"))
    plugin_p50, plain_p50 = (statistics.median(results[n]["lat1"]) * 1000 for n in ("plugin", "plain"))
    print(f"throughput at concurrency {args.concurrency}: plugin {plugin_rps:.1f} req/s, plain {plain_rps:.1f} req/s, ratio {plugin_rps / plain_rps:.3f} (target >= 0.95)")
    print(f"p50 latency at concurrency 1: plugin {plugin_p50:.2f} ms, plain {plain_p50:.2f} ms, ratio {plugin_p50 / plain_p50:.3f}")
    classify_ms, view_ms, size = classifier_timings()
    print(f"classifier on a {size / 1024:.0f} KB Cline-shaped request: p50 {classify_ms:.3f} ms (target < 1 ms)")
    print(f"request view (ask + whole-prompt token count, cached) on the same request: p50 {view_ms:.3f} ms")


if __name__ == "__main__":
    main()
