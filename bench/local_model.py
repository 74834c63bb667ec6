"""The embedded model's speed, direct and through the proxy, 3 parallel drafts against 1, and the
prebuilt server against the compiled one.

Starts the real prebuilt server (`glm-saver local-model serve`, the xllamacpp wheel), the compiled
llama-server too when `glm-saver local-model install --build` made it, and a real proxy in front of
the prebuilt one (no Cerebras key, the config `glm-saver up` derives), then measures interleaved
rounds:

- first-token latency and generation tokens/s of one streamed answer, straight to each server
  and through the proxy (model glm-saver); the ratios are what the proxy costs and what the
  compiled server gains;
- the wall time of 3 concurrent answers (what the parallel speculative strategy asks for) against
  1, and the tokens/s all 3 produce together (prebuilt server).

    python bench/local_model.py [--rounds 5] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glm_saver.launcher.local_model import BUILT, PREBUILT, Layout, cache_dir
from glm_saver.launcher.local_server import EMBEDDED_ALIAS
from tests.e2e.embedded import EmbeddedServer, embedded_proxy_config
from tests.e2e.proxy import MASTER_KEY, Proxy

# A question the base model answers at length; the stop string may still end it early, so speed is
# measured on the tokens actually generated (the usage chunk).
ASK = [{"role": "user", "content": "Describe in detail how a hash map works in Python, with an example."}]


@dataclass
class Timing:
    first_token: float  # seconds from request to the first content token
    total: float
    tokens: int

    @property
    def tokens_per_second(self) -> float:
        generating = self.total - self.first_token
        return (self.tokens - 1) / generating if generating > 0 and self.tokens > 1 else 0.0


async def stream_once(http: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> Timing:
    body = {"model": model, "messages": ASK, "max_tokens": max_tokens, "temperature": 0.5, "stream": True, "stream_options": {"include_usage": True}}
    began = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or []):
                first = time.perf_counter() - began
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - began
    return Timing(first if first is not None else total, total, tokens)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def measure(servers: dict[str, str], proxy: str, rounds: int, max_tokens: int) -> None:
    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    # A fresh connection per request, on every path: httpx reusing a kept-alive connection to
    # llama-server fails now and then ("server disconnected without sending a response"; ~1 in 50
    # requests here, even with a 2 s keep-alive expiry).
    async with httpx.AsyncClient(timeout=300, headers=auth, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        targets = {name: (f"{url}/v1/chat/completions", EMBEDDED_ALIAS) for name, url in servers.items()}
        targets["proxy"] = (f"{proxy}/v1/chat/completions", "glm-saver")
        for target in targets.values():  # warm up every path
            await stream_once(http, *target, 8)
        timings: dict[str, list[Timing]] = {name: [] for name in targets}
        singles, triples, triple_tokens = [], [], []
        prebuilt = targets[PREBUILT]
        for round_ in range(rounds):
            order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
            for name in order:
                timings[name].append(await stream_once(http, *targets[name], max_tokens))
            began = time.perf_counter()
            await stream_once(http, *prebuilt, max_tokens)
            singles.append(time.perf_counter() - began)
            began = time.perf_counter()
            three = await asyncio.gather(*(stream_once(http, *prebuilt, max_tokens) for _ in range(3)))
            triples.append(time.perf_counter() - began)
            triple_tokens.append(sum(t.tokens for t in three) / triples[-1])

    def row(name: str) -> tuple[float, float, float]:
        got = timings[name]
        return median([t.first_token for t in got]) * 1000, median([t.tokens_per_second for t in got]), median([t.tokens for t in got])

    labels = {PREBUILT: "direct, prebuilt server", BUILT: "direct, compiled server", "proxy": "proxy -> prebuilt server"}
    rows = {name: row(name) for name in targets}
    print(f"rounds {rounds}, max_tokens {max_tokens}, medians")
    for name, (first, tps, tokens) in rows.items():
        print(f"  {labels[name]:25}: first token {first:7.1f} ms   {tps:6.1f} tok/s   ({tokens:.0f} tokens)")
    (d_ft, d_tps, _), (p_ft, p_tps, _) = rows[PREBUILT], rows["proxy"]
    print(f"  proxy / direct           : first token x{p_ft / d_ft:.2f} (+{p_ft - d_ft:.0f} ms)   tok/s x{p_tps / d_tps:.2f}")
    if BUILT in rows:
        b_ft, b_tps, _ = rows[BUILT]
        print(f"  compiled / prebuilt      : first token x{b_ft / d_ft:.2f}   tok/s x{b_tps / d_tps:.2f}")
    else:
        print("  compiled server          : not built (glm-saver local-model install --build), not compared")
    print(f"  1 draft                  : {median(singles) * 1000:7.0f} ms wall")
    print(
        f"  3 parallel drafts        : {median(triples) * 1000:7.0f} ms wall  (x{median(triples) / median(singles):.2f} of 1)   {median(triple_tokens):.1f} tok/s together"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, help="llama-server threads (default: what serve picks)")
    args = parser.parse_args()
    kinds = [PREBUILT, *([BUILT] if Layout(cache_dir()).server_built() else [])]
    with tempfile.TemporaryDirectory() as scratch:
        servers: dict[str, EmbeddedServer] = {}
        proxy = Proxy(directory=Path(scratch), cerebras_url="http://127.0.0.1:9/v1", cerebras_key=None)
        try:
            for kind in kinds:
                servers[kind] = EmbeddedServer(log_path=Path(scratch) / f"{kind}.log", parallel=3, threads=args.threads, server=kind).start()
            proxy.start(embedded_proxy_config(servers[PREBUILT].options))
            asyncio.run(measure({kind: server.url for kind, server in servers.items()}, proxy.url, args.rounds, args.max_tokens))
        finally:
            proxy.stop()
            for server in servers.values():
                server.stop()


if __name__ == "__main__":
    main()
