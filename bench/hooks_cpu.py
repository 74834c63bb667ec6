"""The plugin's own CPU per request, without LiteLLM around it: its pre-call hook and its success
event, called in-process on the bench's ask, one request after the other.

    python bench/hooks_cpu.py [--requests 2000] [--state sqlite|redis]

bench/overhead.py measures the whole proxy, where a gen-2 garbage collection (a few hundred ms,
about once per thousand requests, with or without the plugin) falls in some rounds and not others;
this measures only the plugin's code, so a change to it shows here in microseconds. With `redis`
a redis-server of its own is started; the success event then awaits its round trip alone (in the
proxy, answers that arrive together share one). Only 127.0.0.1; bounded by the counts above.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no model cost map download at import

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litellm import ModelResponse
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from bench.overhead import ASK
from glm_saver.plugin import GlmSaver
from glm_saver.settings import settings_from_config
from tests.e2e.proxy import proxy_config
from tests.e2e.redis_server import running_redis

ADMIN = UserAPIKeyAuth(api_key="litellm-proxy-master-key", user_role=LitellmUserRoles.PROXY_ADMIN, user_id="default_user_id")


def request() -> dict[str, Any]:
    return {"model": "glm-saver", "messages": [dict(message) for message in ASK], "metadata": {}, "litellm_call_id": "bench"}


async def cpu_per_call(call: Callable[[], Awaitable[Any]], requests: int) -> float:
    """Microseconds of this process's CPU per call, after a warm-up."""
    for _ in range(100):
        await call()
    began = time.process_time()
    for _ in range(requests):
        await call()
    return (time.process_time() - began) / requests * 1e6


async def measure(config: dict[str, Any], requests: int) -> tuple[float, float]:
    plugin = GlmSaver(settings_from_config(config), config, Path(tempfile.mkdtemp(prefix="glm-saver-hooks-")))
    routed = await plugin.async_pre_call_hook(ADMIN, None, request(), "acompletion")
    # What LiteLLM logs for that request once the local group answered it.
    metadata = {**routed["metadata"], "model_group": routed["model"]}
    answer = ModelResponse(
        model=routed["model"],
        choices=[{"message": {"role": "assistant", "content": "A tuple is an immutable sequence."}}],
        usage={"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50},
    )
    now = datetime.datetime.now()

    async def pre_call() -> Any:
        return await plugin.async_pre_call_hook(ADMIN, None, request(), "acompletion")

    async def success() -> None:
        kwargs = {"litellm_params": {"metadata": metadata}, "messages": routed["messages"], "response_headers": {}, "completion_start_time": now}
        await plugin.async_log_success_event(kwargs, answer, now, now)

    return await cpu_per_call(pre_call, requests), await cpu_per_call(success, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--state", choices=("sqlite", "redis"), default="sqlite")
    args = parser.parse_args()
    glm: dict[str, Any] = {"strategy": "smart_routing", "state": args.state}
    with tempfile.TemporaryDirectory(prefix="glm-saver-hooks-redis-") as directory:
        if args.state == "redis":
            with running_redis(Path(directory)) as url:
                pre_call, success = asyncio.run(measure(proxy_config("http://127.0.0.1:9/v1", glm_saver={**glm, "redis_url": url}), args.requests))
        else:
            pre_call, success = asyncio.run(measure(proxy_config("http://127.0.0.1:9/v1", glm_saver=glm), args.requests))
    print(f"state {args.state}, {args.requests} requests one after the other, CPU per request in-process:")
    print(f"  pre-call hook {pre_call:.1f} us, success event {success:.1f} us, both {pre_call + success:.1f} us")


if __name__ == "__main__":
    main()
