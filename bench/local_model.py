"""The embedded model's speed, direct and through the proxy, and 3 parallel drafts against 1.

Starts the real llama-server (`glm-saver local-model serve`, the cached build) and a real proxy in
front of it (no Cerebras key, the config `glm-saver up` derives), then measures interleaved rounds:

- first-token latency and generation tokens/s of one streamed answer, straight to llama-server
  and through the proxy (model glm-saver); the ratios are what the proxy costs;
- the wall time of 3 concurrent answers (what the parallel speculative strategy asks for) against
  1, and the tokens/s all 3 produce together.

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


async def measure(direct: str, proxy: str, rounds: int, max_tokens: int) -> None:
    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    # A fresh connection per request, on both paths: httpx reusing a kept-alive connection to
    # llama-server fails now and then ("server disconnected without sending a response"; ~1 in 50
    # requests here, even with a 2 s keep-alive expiry).
    async with httpx.AsyncClient(timeout=300, headers=auth, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        targets = {"direct": (f"{direct}/v1/chat/completions", EMBEDDED_ALIAS), "proxy": (f"{proxy}/v1/chat/completions", "glm-saver")}
        await stream_once(http, *targets["direct"], 8)  # warm up both paths
        await stream_once(http, *targets["proxy"], 8)
        timings: dict[str, list[Timing]] = {"direct": [], "proxy": []}
        singles, triples, triple_tokens = [], [], []
        for round_ in range(rounds):
            order = ["direct", "proxy"] if round_ % 2 == 0 else ["proxy", "direct"]
            for name in order:
                timings[name].append(await stream_once(http, *targets[name], max_tokens))
            began = time.perf_counter()
            await stream_once(http, *targets["direct"], max_tokens)
            singles.append(time.perf_counter() - began)
            began = time.perf_counter()
            three = await asyncio.gather(*(stream_once(http, *targets["direct"], max_tokens) for _ in range(3)))
            triples.append(time.perf_counter() - began)
            triple_tokens.append(sum(t.tokens for t in three) / triples[-1])

    def row(name: str) -> tuple[float, float, float]:
        got = timings[name]
        return median([t.first_token for t in got]) * 1000, median([t.tokens_per_second for t in got]), median([t.tokens for t in got])

    (d_ft, d_tps, d_tok), (p_ft, p_tps, p_tok) = row("direct"), row("proxy")
    print(f"rounds {rounds}, max_tokens {max_tokens}, medians")
    print(f"  direct to llama-server : first token {d_ft:7.1f} ms   {d_tps:6.1f} tok/s   ({d_tok:.0f} tokens)")
    print(f"  through the proxy      : first token {p_ft:7.1f} ms   {p_tps:6.1f} tok/s   ({p_tok:.0f} tokens)")
    print(f"  proxy / direct         : first token x{p_ft / d_ft:.2f} (+{p_ft - d_ft:.0f} ms)   tok/s x{p_tps / d_tps:.2f}")
    print(f"  1 draft                : {median(singles) * 1000:7.0f} ms wall")
    print(f"  3 parallel drafts      : {median(triples) * 1000:7.0f} ms wall  (x{median(triples) / median(singles):.2f} of 1)   {median(triple_tokens):.1f} tok/s together")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, help="llama-server threads (default: what serve picks)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        server = EmbeddedServer(log_path=Path(scratch) / "llama-server.log", parallel=3, threads=args.threads).start()
        proxy = Proxy(directory=Path(scratch), cerebras_url="http://127.0.0.1:9/v1", cerebras_key=None)
        try:
            proxy.start(embedded_proxy_config(server.options))
            asyncio.run(measure(server.url, proxy.url, args.rounds, args.max_tokens))
        finally:
            proxy.stop()
            server.stop()


if __name__ == "__main__":
    main()
