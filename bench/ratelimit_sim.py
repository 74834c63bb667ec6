"""Rate-limit simulation: a fixed Cline-sized workload that arrives faster than Cerebras allows.

The same workload runs twice against the same fake Cerebras (token budget per window, reservation
of input + max completion tokens up front, 429 + retry-after when over):
  plugin: the proxy with glm_saver (strategy always_cerebras: every request wants Cerebras);
  plain:  the same proxy without the plugin, clients asking for `cerebras`, LiteLLM's fallback to
          local on errors (num_retries 0), as the shipped config sets it.

    python bench/ratelimit_sim.py [--requests 300] [--rate 12] [--tokens-per-window 200000] [--window 10]

Prints client-visible errors (target 0), 429s Cerebras answered (target <= 1 per window) and the
share of Cerebras' allowed tokens actually used in the windows the workload filled (target >= 90%).
"""

from __future__ import annotations

import argparse
import asyncio
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

from tests import cline_shapes as cline
from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config

TASKS = [
    "Refactor the auth module to remove the race condition in token refresh",
    "Implement pagination for the /orders endpoint with cursor-based navigation",
    "Debug why the distributed cache loses writes under concurrency",
]


def start_fake(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.upstream", *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


@dataclass
class Outcome:
    errors: int
    answered_by_cerebras: int
    seconds: float


async def run_workload(url: str, model: str, count: int, rate: float) -> Outcome:
    """`count` Cline-shaped requests, one every 1/rate seconds (open loop: arrivals do not wait)."""
    errors = 0
    by_cerebras = 0
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=120) as http:

        async def one(index: int) -> None:
            nonlocal errors, by_cerebras
            body = {"model": model, "messages": cline.vscode_task(TASKS[index % len(TASKS)]), "max_tokens": 16384, "stream": index % 2 == 0}
            response = await http.post("/v1/chat/completions", json=body)
            if response.status_code != 200 or (body["stream"] and "data: [DONE]" not in response.text):
                errors += 1
            elif "Hello from cerebras" in response.text:
                by_cerebras += 1

        began = time.perf_counter()
        tasks = []
        for index in range(count):
            tasks.append(asyncio.create_task(one(index)))
            await asyncio.sleep(1 / rate)  # the arrival schedule of the workload, not synchronisation
        await asyncio.gather(*tasks)
        return Outcome(errors, by_cerebras, time.perf_counter() - began)


def cerebras_state(base_url: str) -> dict[str, Any]:
    return httpx.get(base_url.removesuffix("/v1") + "/_control/state", params={"records": 0}, timeout=10).json()


def reset_cerebras(base_url: str) -> None:
    httpx.post(base_url.removesuffix("/v1") + "/_control/reset", timeout=10).raise_for_status()


def report(name: str, outcome: Outcome, state: dict[str, Any], tokens_per_window: int) -> None:
    windows = state["windows"]
    full = windows[:-1] or windows  # the last window is cut short by the end of the workload
    used = sum(w["tokens_spent"] for w in full) / (tokens_per_window * len(full))
    rejected = [w["requests_rejected"] for w in windows]
    print(
        f"{name:<8} client errors {outcome.errors:>3} | cerebras 429s {sum(rejected):>4} (max {max(rejected)} per window, {len(windows)} windows)"
        f" | allowed tokens used {used:6.1%} | answered by cerebras {outcome.answered_by_cerebras:>3} | {outcome.seconds:5.1f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=12.0, help="arrivals per second")
    parser.add_argument("--tokens-per-window", type=int, default=200_000)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per token window (Cerebras: 60)")
    args = parser.parse_args()

    local, local_url = start_fake("--kind", "local", "--port", "0", "--latency", "0.05")
    cerebras, cerebras_url = start_fake(
        "--kind",
        "cerebras",
        "--port",
        "0",
        "--tokens-per-minute",
        str(args.tokens_per_window),
        "--window-seconds",
        str(args.window),
        "--requests-per-day",
        "1000000",
    )
    work = Path(tempfile.mkdtemp(prefix="glm-saver-ratelimit-"))
    plain_config = proxy_config(local_url)
    plain_config["litellm_settings"]["callbacks"] = []
    plain_config.pop("glm_saver")
    runs = {
        "plugin": (proxy_config(local_url, glm_saver={"strategy": "always_cerebras"}), "glm-saver"),
        "plain": (plain_config, "cerebras"),
    }
    try:
        for name, (config, model) in runs.items():
            (work / name).mkdir()
            proxy = Proxy(directory=work / name, cerebras_url=cerebras_url).start(config)
            try:
                reset_cerebras(cerebras_url)
                outcome = asyncio.run(run_workload(proxy.url, model, args.requests, args.rate))
                report(name, outcome, cerebras_state(cerebras_url), args.tokens_per_window)
            finally:
                proxy.stop()
    finally:
        local.terminate()
        cerebras.terminate()


if __name__ == "__main__":
    main()
