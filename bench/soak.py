"""A bounded soak: mixed load with injected Cerebras faults through one proxy, with and without the plugin.

    python bench/soak.py [--requests 20000] [--concurrency 32] [--fault-every 25] [--plain-requests 2000] [--max-minutes 40]

Half the requests stream, half are simple asks (local) and half complex (Cerebras). Every
`--fault-every`-th request first injects a Cerebras fault (500, 503, 429, not JSON, in turn). The
same traffic then runs through a proxy without the plugin (clients name `local` / `cerebras`
themselves; the same fallbacks). Prints the success rate, p50/p99 latency of both runs and what the
plugin adds, the proxy's resident memory at the start, after the first 2,000 requests, in the middle
and at the end (the books' tables are bounded, so it must stay flat once warm: end within 5% of
after 2,000), and whether the books hold every answered request exactly once (books == client
successes == answers the fakes delivered). The plain run takes `--plain-requests` (default 2,000)
for the latency comparison, and its RSS is printed too (what LiteLLM alone does with memory). Bounded
in count and in time (`--max-minutes`: past it no new request starts and the figures say how many
ran); only 127.0.0.1. The machine's load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e import proxy as e2e_proxy
from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config

# Six engineers share two cores: a proxy may take minutes to start, not the tests' two.
e2e_proxy.STARTUP_TIMEOUT = 600.0

SIMPLE = "hello, what is a tuple?"
COMPLEX = "Refactor the scheduler architecture to remove the race condition in the distributed lock"
FAULTS = [{"mode": "500"}, {"mode": "503"}, {"mode": "429", "retry_after": 1}, {"mode": "not_json"}]
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}


def start_fake(kind: str) -> tuple[subprocess.Popen[str], str]:
    """A fake upstream in its own process (no shared GIL with the load generator)."""
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.upstream", "--kind", kind, "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    sent: int = 0

    @property
    def successes(self) -> int:
        return len(self.latencies)

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


async def one(http: httpx.AsyncClient, model: str, text: str, stream: bool, run: Run) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    began = time.perf_counter()
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            raw = (await response.aread()).decode()
    except httpx.HTTPError as err:
        run.fail(type(err).__name__)
        return
    if response.status_code != 200:
        run.fail(str(response.status_code))
    elif stream and (not raw.rstrip().endswith("data: [DONE]") or '"error"' in raw):
        run.fail("stream-error")
    elif not stream and not json.loads(raw)["choices"][0]["message"]["content"]:
        run.fail("empty")
    else:
        run.latencies.append(time.perf_counter() - began)


def load_average() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


async def load(
    url: str,
    plugin: bool,
    cerebras_url: str,
    requests: int,
    concurrency: int,
    fault_every: int,
    first: int = 0,
    run: Run | None = None,
    deadline: float = float("inf"),
) -> Run:
    """Requests number `first` .. `first + requests - 1` of the soak (the number picks the mix and
    the faults); none starts after `deadline` (time.monotonic())."""
    run = run if run is not None else Run()
    jobs = iter(range(first, first + requests))
    async with httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=120) as http, httpx.AsyncClient(timeout=10) as control:
        control_url = cerebras_url.removesuffix("/v1") + "/_control/faults"

        async def worker() -> None:
            for index in jobs:
                if time.monotonic() > deadline:
                    return
                run.sent += 1
                if fault_every and index % fault_every == 0:
                    await control.post(control_url, json=FAULTS[(index // fault_every) % len(FAULTS)])
                complex_ = index % 2 == 1
                model = "glm-saver" if plugin else ("cerebras" if complex_ else "local")
                await one(http, model, COMPLEX if complex_ else SIMPLE, stream=(index // 2) % 2 == 1, run=run)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await control.post(control_url, json={"clear": True})
    return run


def served(url: str) -> int:
    return httpx.get(url.removesuffix("/v1") + "/_control/state", params={"records": 0}, timeout=10).json()["counts"]["served"]


def books_requests(proxy: Proxy) -> int:
    return httpx.get(f"{proxy.url}/stats", headers=ADMIN, timeout=10).json()["books"]["totals"]["requests"]


def wait_for_books(proxy: Proxy, count: int, timeout: float = 30.0) -> int:
    """Success events are logged just after each answer: give the last ones a moment."""
    deadline = time.monotonic() + timeout
    while (seen := books_requests(proxy)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return seen


# Resident memory is compared from this many requests on: the first ones fill caches and pools.
WARM = 2000


def checkpoints(requests: int) -> list[int]:
    """Where RSS is read: after WARM requests, in the middle, at every further tenth, and at the end."""
    marks = {min(WARM, requests), requests // 2, requests, *range(requests // 10, requests, max(1, requests // 10))}
    return sorted(mark for mark in marks if mark > 0)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000 if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--plain-requests", type=int, default=2000, help="requests of the run without the plugin")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fault-every", type=int, default=25, help="inject a Cerebras fault before every Nth request (0: none)")
    parser.add_argument("--max-minutes", type=float, default=40.0, help="no request of the plugin's run starts after this")
    args = parser.parse_args()
    print(f"machine at the start: {load_average()}", flush=True)

    local, local_url = start_fake("local")
    cerebras, cerebras_url = start_fake("cerebras")
    work = Path(tempfile.mkdtemp(prefix="glm-saver-soak-"))
    (work / "with").mkdir()
    (work / "without").mkdir()
    with_plugin = Proxy(directory=work / "with", cerebras_url=cerebras_url)
    without = Proxy(directory=work / "without", cerebras_url=cerebras_url)
    plain = proxy_config(local_url)
    plain["litellm_settings"]["callbacks"] = ["prometheus"]  # everything but the plugin
    plain.pop("glm_saver")
    try:
        with_plugin.start(proxy_config(local_url))
        without.start(plain)
        for proxy, is_plugin in ((with_plugin, True), (without, False)):  # warm both up
            asyncio.run(load(proxy.url, is_plugin, cerebras_url, 40, 4, 0))
        assert with_plugin.process is not None
        rss_start = rss_mb(with_plugin.process.pid)
        books_before = wait_for_books(with_plugin, 40)
        served_before = served(local_url) + served(cerebras_url)
        began = time.perf_counter()
        deadline = time.monotonic() + 60 * args.max_minutes
        plugin_run = Run()
        rss: list[tuple[int, float]] = [(0, rss_start)]
        print(f"  0 requests: proxy RSS {rss_start:.1f} MB", flush=True)
        for upto in checkpoints(args.requests):
            done = rss[-1][0]
            asyncio.run(load(with_plugin.url, True, cerebras_url, upto - done, args.concurrency, args.fault_every, done, plugin_run, deadline))
            if plugin_run.sent < upto:
                print(f"  stopped after {plugin_run.sent} requests: --max-minutes {args.max_minutes:g} reached", flush=True)
                break
            rss.append((upto, rss_mb(with_plugin.process.pid)))
            print(f"  {upto} requests: proxy RSS {rss[-1][1]:.1f} MB ({time.perf_counter() - began:.0f} s, {load_average()})", flush=True)
        elapsed = time.perf_counter() - began
        books = wait_for_books(with_plugin, books_before + plugin_run.successes) - books_before
        delivered = served(local_url) + served(cerebras_url) - served_before
        plain_n = args.plain_requests
        assert without.process is not None
        plain_rss_start = rss_mb(without.process.pid)
        plain_run = asyncio.run(load(without.url, False, cerebras_url, plain_n, args.concurrency, args.fault_every))
        plain_rss_end = rss_mb(without.process.pid)
    finally:
        with_plugin.stop()
        without.stop()
        local.terminate()
        cerebras.terminate()

    n = plugin_run.sent
    print(
        f"{n} requests, {args.concurrency} concurrent, half streamed, a Cerebras fault every {args.fault_every} ({n // args.fault_every if args.fault_every else 0} faults)"
    )
    print(
        f"with plugin: {plugin_run.successes}/{n} succeeded ({100 * plugin_run.successes / n:.2f}%), failures {plugin_run.failures or 'none'}, {n / elapsed:.1f} req/s"
    )
    print(f"without plugin: {plain_run.successes}/{plain_n} succeeded ({100 * plain_run.successes / plain_n:.2f}%), failures {plain_run.failures or 'none'}")
    print(f"proxy without plugin RSS: {plain_rss_start:.1f} MB after its warm-up, {plain_rss_end:.1f} MB after its {plain_n} requests")
    for name, share in (("p50", 0.5), ("p99", 0.99)):
        mine, theirs = percentile(plugin_run.latencies, share), percentile(plain_run.latencies, share)
        print(f"latency {name}: plugin {mine:.1f} ms, plain {theirs:.1f} ms, added {mine - theirs:+.1f} ms (ratio {mine / theirs:.2f})")
    marks = dict(rss)
    last = rss[-1][0]
    warm, middle, end = marks.get(min(WARM, last), float("nan")), marks.get(args.requests // 2, float("nan")), marks[last]
    print(
        f"proxy RSS: start {rss_start:.1f} MB, after {min(WARM, last)} {warm:.1f} MB, middle ({args.requests // 2}) {middle:.1f} MB, end ({last}) {end:.1f} MB;"
        f" end vs after {min(WARM, last)}: {100 * (end / warm - 1):+.1f}% (target within 5%)"
    )
    exact = books == plugin_run.successes == delivered
    print(f"machine at the end: {load_average()}")
    print(
        f"books: {books} requests booked, {plugin_run.successes} client successes, {delivered} answers delivered by the fakes -> {'exactly once each' if exact else 'MISMATCH'}"
    )


if __name__ == "__main__":
    main()
