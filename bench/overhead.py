"""What the plugin costs: the same proxy with and without it, in front of the same fake upstream.

All proxies run at once and are measured interleaved (round after round, rotating which goes
first), so machine noise hits them alike; the figures that matter are the ratios of one run:

- throughput at concurrency 16 and p50/p99 latency at concurrency 1, plugin against plain, with
  `state: sqlite` (the default) and `state: redis`;
- Redis round trips per request (the server's `total_reads_processed`: one per request a client
  sends, a pipeline or a script call being one) and the commands behind them (`INFO commandstats`,
  commands run inside scripts included), for the bench's ask (routed local) and for asks routed to
  Cerebras;
- two plugin proxies on one Redis, loaded at once: their combined throughput against one alone;
- the CPU time the proxy's process spends per request, plugin against plain: unlike the wall-clock
  figures it hardly moves with what else the machine runs.

    python bench/overhead.py [--rounds 5] [--requests 150] [--concurrency 16]

Also times the classifier alone on a 60 KB Cline-shaped request (target p50 < 1 ms). Everything
runs on 127.0.0.1 and is bounded by the counts above.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glm_saver.classifier import ComplexityClassifier
from glm_saver.request import RequestView, content_text
from tests import cline_shapes as cline
from tests.e2e import proxy as e2e_proxy
from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config

# Six engineers share two cores: a proxy may take minutes to start, not the tests' two.
e2e_proxy.STARTUP_TIMEOUT = 600.0
from tests.e2e.redis_server import running_redis

ASK = [{"role": "user", "content": "hello, what is a tuple?"}]
# Requests that did not get a 200, by status or error (printed: a run with many is not worth much).
FAILURES: Counter[str] = Counter()
COMPLEX_ASK = [{"role": "user", "content": "Refactor the scheduler architecture to remove the race condition in the distributed lock"}]


def start_fake(kind: str) -> tuple[subprocess.Popen[str], str]:
    """The fake upstream in its own process, so it does not share a GIL with the load generator."""
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.upstream", "--kind", kind, "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


async def one_pass(url: str, model: str, requests: int, concurrency: int, messages: list[dict[str, str]] = ASK) -> tuple[float, list[float]]:
    """Send `requests` chats with `concurrency` in flight; return requests/s and latencies."""
    latencies: list[float] = []
    queue = iter(range(requests))
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=60) as http:

        async def worker() -> None:
            for _ in queue:
                began = time.perf_counter()
                try:
                    response = await http.post("/v1/chat/completions", json={"model": model, "messages": messages})
                except httpx.HTTPError as err:
                    FAILURES[type(err).__name__] += 1
                    continue
                if response.status_code != 200:  # a starved machine's fake or Redis may fail: count it, go on
                    FAILURES[str(response.status_code)] += 1
                    continue
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - began), latencies


def classifier_timings(rounds: int = 2000) -> tuple[float, float, float, int]:
    """p50 of the classifier on a new ask (the first request of a task), on an ask it has judged
    already (the task's later tool rounds), and of the request view; the request's size."""
    request = {"messages": cline.vscode_task_of_size("Fix the typo in the README title", 60_000), "tools": [cline.READ_FILE_TOOL]}
    size = sum(len(text) for message in request["messages"] for text in content_text(message["content"]))
    classifier = ComplexityClassifier()
    classifier.classify(request["messages"])  # warm the encoder
    times, again = [], []
    for round_ in range(rounds):
        messages = cline.vscode_task_of_size(f"Fix the typo in the README title ({round_})", 60_000)
        began = time.perf_counter()
        classifier.classify(messages)
        times.append(time.perf_counter() - began)
        began = time.perf_counter()
        classifier.classify(messages)
        again.append(time.perf_counter() - began)
    view_times = []
    for _ in range(rounds // 10):
        began = time.perf_counter()
        RequestView.from_data(request)
        view_times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000, statistics.median(again) * 1000, statistics.median(view_times) * 1000, size


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


class RedisCounter:
    """Round trips (reads the server processed) and commands run, between two readings."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self.round_trips = 0
        self.commands: Counter[str] = Counter()

    def _reading(self) -> tuple[int, Counter[str]]:
        reads = int(self._client.info("stats")["total_reads_processed"])
        calls = Counter({name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in self._client.info("commandstats").items()})
        return reads, calls

    def measure(self, work: Any) -> Any:
        reads, calls = self._reading()
        result = work()
        after_reads, after_calls = self._reading()
        self.round_trips += after_reads - reads - 2  # the two INFO requests of the second reading
        after_calls.subtract(calls)
        after_calls["info"] -= 2
        self.commands.update({name: count for name, count in after_calls.items() if count > 0})
        return result


def run_at_once(passes: list[tuple[str, str]], requests: int, concurrency: int) -> float:
    """Load several proxies at the same time (one thread each); their combined requests/s."""
    rates: list[float] = []

    def load(url: str, model: str) -> None:
        rates.append(asyncio.run(one_pass(url, model, requests, concurrency))[0])

    threads = [threading.Thread(target=load, args=target) for target in passes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(rates)


def start_all(proxies: list[tuple[Proxy, dict[str, Any]]]) -> None:
    """Proxies start in 7-60 s on a busy machine: start them side by side."""
    errors: list[BaseException] = []

    def start(proxy: Proxy, config: dict[str, Any]) -> None:
        try:
            proxy.start(config)
        except BaseException as err:  # noqa: BLE001 - reported below, on the main thread
            errors.append(err)

    threads = [threading.Thread(target=start, args=pair) for pair in proxies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def cpu_seconds(proxy: Proxy) -> float:
    """CPU time the proxy's process has used so far (user + system): what a request costs it,
    whatever else the machine is running."""
    assert proxy.process is not None
    fields = Path(f"/proc/{proxy.process.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(results: dict[str, dict[str, list[float]]], concurrency: int) -> None:
    plain_rps = statistics.median(results["plain"]["rps"])
    plain_cpu = statistics.median(results["plain"]["cpu"])
    plain = results["plain"]["lat1"]
    for name, label in (("sqlite", "state: sqlite (default)"), ("redis", "state: redis")):
        rps, lat = statistics.median(results[name]["rps"]), results[name]["lat1"]
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        plain_p50, plain_p99 = percentile(plain, 0.5), percentile(plain, 0.99)
        print(f"{label}:")
        print(f"  throughput at concurrency {concurrency}: plugin {rps:.1f} req/s, plain {plain_rps:.1f} req/s, ratio {rps / plain_rps:.3f}")
        print(
            f"  latency at concurrency 1 ({len(lat)} requests each): p50 plugin {p50:.2f} ms, plain {plain_p50:.2f} ms, ratio {p50 / plain_p50:.3f}, added {p50 - plain_p50:+.2f} ms"
        )
        print(f"                                         p99 plugin {p99:.2f} ms, plain {plain_p99:.2f} ms, ratio {p99 / plain_p99:.3f}")
        cpu = statistics.median(results[name]["cpu"])
        print(
            f"  proxy CPU per request (load-independent): plugin {cpu * 1000:.2f} ms, plain {plain_cpu * 1000:.2f} ms, ratio {cpu / plain_cpu:.3f}, added {(cpu - plain_cpu) * 1000:+.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-requests", type=int, default=40)
    args = parser.parse_args()

    fake, fake_url = start_fake("local")
    work = Path(tempfile.mkdtemp(prefix="glm-saver-bench-"))
    names = ("plain", "sqlite", "redis", "redis-b")
    for name in names:
        (work / name).mkdir()
    proxies = {name: Proxy(directory=work / name, cerebras_url=fake_url) for name in names}
    plain = proxy_config(fake_url)
    plain["litellm_settings"]["callbacks"] = ["prometheus"]  # everything but the plugin
    plain.pop("glm_saver")
    results: dict[str, dict[str, list[float]]] = {name: {"rps": [], "lat1": [], "cpu": []} for name in ("plain", "sqlite", "redis")}
    one_alone: list[float] = []
    two_at_once: list[float] = []
    (work / "redis-data").mkdir()
    with running_redis(work / "redis-data") as redis_url:
        counter, cloud_counter = RedisCounter(redis_url), RedisCounter(redis_url)
        on_redis = proxy_config(fake_url, glm_saver={"strategy": "smart_routing", "state": "redis", "redis_url": redis_url})
        try:
            start_all(
                [
                    (proxies["plain"], plain),
                    (proxies["sqlite"], proxy_config(fake_url, glm_saver={"strategy": "smart_routing"})),
                    (proxies["redis"], on_redis),
                    (proxies["redis-b"], on_redis),
                ]
            )
            # The plugin routes this simple ask to `local`; without it the client names `local` itself.
            targets = {"plain": (proxies["plain"].url, "local"), "sqlite": (proxies["sqlite"].url, "glm-saver"), "redis": (proxies["redis"].url, "glm-saver")}
            measured = 0
            for round_ in range(args.rounds):
                order = list(targets)[round_ % 3 :] + list(targets)[: round_ % 3]
                for name in order:
                    url, model = targets[name]

                    def passes(url: str = url, model: str = model, name: str = name) -> tuple[float, list[float], float]:
                        cpu = cpu_seconds(proxies[name])
                        rps, _ = asyncio.run(one_pass(url, model, args.requests, args.concurrency))
                        _, single = asyncio.run(one_pass(url, model, args.latency_requests, 1))
                        return rps, single, (cpu_seconds(proxies[name]) - cpu) / (args.requests + args.latency_requests)

                    rps, single, cpu = counter.measure(passes) if name == "redis" and round_ > 0 else passes()
                    if round_ > 0:  # the first round warms every proxy up
                        results[name]["rps"].append(rps)
                        results[name]["lat1"].extend(single)
                        results[name]["cpu"].append(cpu)
                        measured += (args.requests + args.latency_requests) * (name == "redis")
                pair = [targets["redis"], (proxies["redis-b"].url, "glm-saver")]
                alone = run_at_once(pair[:1], args.requests, args.concurrency)
                both = run_at_once(pair, args.requests, args.concurrency)
                if round_ > 0:
                    one_alone.append(alone)
                    two_at_once.append(both)
            cloud = 40
            cloud_counter.measure(lambda: asyncio.run(one_pass(targets["redis"][0], "glm-saver", cloud, 1, COMPLEX_ASK)))
        finally:
            for proxy in proxies.values():
                proxy.stop()
            fake.terminate()

    report(results, args.concurrency)
    print(
        f"redis round trips per request (bench ask, routed local): {counter.round_trips / measured:.2f} (target <= 3); commands per request: "
        + ", ".join(f"{name} {count / measured:.2f}" for name, count in counter.commands.most_common())
    )
    print(
        f"redis round trips per request routed to cerebras (headroom, books; no budget configured): {cloud_counter.round_trips / cloud:.2f}; commands per request: "
        + ", ".join(f"{name} {count / cloud:.2f}" for name, count in cloud_counter.commands.most_common())
    )
    alone, both = statistics.median(one_alone), statistics.median(two_at_once)
    print(
        f"two proxies on one redis, loaded at once at concurrency {args.concurrency} each: {both:.1f} req/s combined, one alone {alone:.1f} req/s, ratio {both / alone:.2f}"
    )
    print(f"failed requests (all proxies): {dict(FAILURES) or 'none'}")
    classify_ms, again_ms, view_ms, size = classifier_timings()
    print(
        f"classifier on a {size / 1024:.0f} KB Cline-shaped request: p50 {classify_ms:.3f} ms (target < 1 ms); the same ask again (kept verdict) {again_ms:.3f} ms"
    )
    print(f"request view (ask + whole-prompt token count, cached) on the same request: p50 {view_ms:.3f} ms")


if __name__ == "__main__":
    main()
