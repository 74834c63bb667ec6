"""What LiteLLM itself charges for the hooks the plugin registers: the floor under bench/overhead.py.

Proxies in front of one fake upstream, measured interleaved (round after round, rotating which
goes first): plain LiteLLM; a no-op CustomLogger with a chosen set of the plugin's hook methods
(each returns at once, passing its data through); and the real plugin. Per proxy: the CPU time its
process spends per request (load-independent) and throughput at concurrency 16, as ratios to plain
from one run. The difference plugin - no-op is our code; no-op - plain is LiteLLM's cost of having
these hooks.

    python bench/hook_floor.py [--rounds 4] [--requests 200] [--bisect]

`--bisect` adds one no-op proxy per hook with every hook but that one: what leaving it out saves.
`--rewrite` adds the no-op logger whose pre-call hook changes the request as the plugin does (asked
for `glm-saver`, sent to `local` with the plan's fallbacks and tag): what LiteLLM does more for that.
`--layers` adds the no-op logger with the plugin's ASGI layers (body guard, keep-alive) in front, both and each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.overhead import FAILURES, cpu_seconds, one_pass, start_all, start_fake
from tests.e2e.proxy import Proxy, proxy_config

# The CustomLogger methods glm_saver.plugin.GlmSaver defines, each as a no-op with its signature.
NOOP_HOOKS: dict[str, str] = {
    "async_pre_call_hook": "async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):\n    return data",
    "async_pre_call_deployment_hook": "async def async_pre_call_deployment_hook(self, kwargs, call_type):\n    return None",
    "async_post_call_success_hook": "async def async_post_call_success_hook(self, data, user_api_key_dict, response):\n    return None",
    "async_post_call_response_headers_hook": (
        "async def async_post_call_response_headers_hook(self, data, user_api_key_dict, response, request_headers=None, litellm_call_info=None):\n"
        "    return None"
    ),
    "async_post_call_streaming_iterator_hook": (
        "async def async_post_call_streaming_iterator_hook(self, user_api_key_dict, response, request_data):\n"
        "    async for item in response:\n        yield item"
    ),
    "async_log_success_event": "async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):\n    return None",
    "async_post_call_failure_hook": (
        "async def async_post_call_failure_hook(self, request_data, original_exception, user_api_key_dict, traceback_str=None):\n    return None"
    ),
    "async_log_failure_event": "async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):\n    return None",
    "async_filter_deployments": (
        "async def async_filter_deployments(self, model, healthy_deployments, messages, request_kwargs=None, parent_otel_span=None):\n"
        "    return healthy_deployments"
    ),
}


# What the plugin's pre-call hook does to a request it routes local (plugin._apply): the group, the
# plan's fallbacks, its tag in the metadata. `--rewrite` measures what LiteLLM does more for that.
REWRITING_PRE_CALL = (
    "async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):\n"
    "    if data.get('model') == 'glm-saver':\n"
    "        data['model'] = 'local'\n"
    "        data['fallbacks'] = [{'local': ['cerebras']}]\n"
    "        data.setdefault('metadata', {})['glm_saver'] = {'requested': 'glm-saver', 'route': 'local', 'reason': 'simple', 'detail': 'x', "
    "'strategy': 'smart_routing', 'score': 0.1, 'label': None, 'key': 'admin', 'prompt_tokens': 12}\n"
    "    return data"
)

# The plugin's ASGI layers in front of LiteLLM's app, in the order it installs them.
LAYERS = {"keepalive": ("glm_saver.layers.keepalive", "KeepAliveLayer"), "body_guard": ("glm_saver.layers.body_guard", "NonObjectBodyGuard")}


def noop_module(hooks: list[str], layers: tuple[str, ...], rewrite: bool = False) -> str:
    """A hooks file LiteLLM loads by path: a CustomLogger defining exactly `hooks`, and `layers`."""
    code = {**NOOP_HOOKS, **({"async_pre_call_hook": REWRITING_PRE_CALL} if rewrite else {})}
    body = "\n".join(f"    {line}" for name in hooks for line in (code[name] + "\n").splitlines()) or "    pass"
    install = "".join(
        f"from glm_saver import proxy\nfrom glm_saver.layers.stack import install_layer\nfrom {LAYERS[name][0]} import {LAYERS[name][1]}\n"
        f"install_layer(proxy.app(), {LAYERS[name][1]})\n"
        for name in layers
    )
    return f"from litellm.integrations.custom_logger import CustomLogger\n\nclass Noop(CustomLogger):\n{body}\n\n{install}proxy_handler_instance = Noop()\n"


def noop_proxy(work: Path, name: str, fake_url: str, hooks: list[str], layers: tuple[str, ...] = (), rewrite: bool = False) -> tuple[Proxy, dict[str, Any]]:
    directory = work / name
    (directory / "hooks").mkdir(parents=True)
    (directory / "hooks" / "noop_hook.py").write_text(noop_module(hooks, layers, rewrite))
    config = proxy_config(fake_url)
    config.pop("glm_saver")
    config["litellm_settings"]["callbacks"] = ["hooks.noop_hook.proxy_handler_instance", "prometheus"]
    return Proxy(directory=directory, cerebras_url=fake_url), config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bisect", action="store_true")
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--rewrite", action="store_true", help="add the no-op logger whose pre-call hook rewrites the request as the plugin does")
    parser.add_argument("--only", nargs="*", default=None, help="one extra no-op proxy per hook named, with that hook alone")
    args = parser.parse_args()

    fake, fake_url = start_fake("local")
    work = Path(tempfile.mkdtemp(prefix="glm-saver-floor-"))
    every = list(NOOP_HOOKS)
    plain_config = proxy_config(fake_url)
    plain_config.pop("glm_saver")
    plain_config["litellm_settings"]["callbacks"] = ["prometheus"]
    (work / "plain").mkdir()
    (work / "plugin").mkdir()
    proxies: dict[str, tuple[Proxy, dict[str, Any]]] = {
        "plain": (Proxy(directory=work / "plain", cerebras_url=fake_url), plain_config),
        "noop-all": noop_proxy(work, "noop-all", fake_url, every),
        "plugin": (Proxy(directory=work / "plugin", cerebras_url=fake_url), proxy_config(fake_url, glm_saver={"strategy": "smart_routing"})),
    }
    if args.layers:
        proxies["noop-all+layers"] = noop_proxy(work, "noop-all-layers", fake_url, every, layers=tuple(LAYERS))
        for layer in LAYERS:
            proxies[f"noop-all+{layer}"] = noop_proxy(work, f"noop-all-{layer}", fake_url, every, layers=(layer,))
    if args.rewrite:
        proxies["noop-all rewriting (asks glm-saver)"] = noop_proxy(work, "noop-all-rewriting", fake_url, every, rewrite=True)
    if args.bisect:
        for hook in every:
            proxies[f"noop-all - {hook}"] = noop_proxy(work, f"without-{hook}", fake_url, [name for name in every if name != hook])
    for hook in args.only or []:
        proxies[f"noop only {hook}"] = noop_proxy(work, f"only-{hook}", fake_url, [hook])
    models = {name: "glm-saver" if name == "plugin" or "rewriting" in name else "local" for name in proxies}
    cpu: dict[str, list[float]] = {name: [] for name in proxies}
    rps: dict[str, list[float]] = {name: [] for name in proxies}
    try:
        start_all(list(proxies.values()))
        names = list(proxies)
        for round_ in range(args.rounds + 1):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                proxy = proxies[name][0]
                began = cpu_seconds(proxy)
                rate, _ = asyncio.run(one_pass(proxy.url, models[name], args.requests, args.concurrency))
                if round_ > 0:  # the first round warms every proxy up
                    cpu[name].append((cpu_seconds(proxy) - began) / args.requests)
                    rps[name].append(rate)
    finally:
        for proxy, _ in proxies.values():
            proxy.stop()
        fake.terminate()
    plain_cpu, plain_rps = statistics.median(cpu["plain"]), statistics.median(rps["plain"])
    print(f"{args.rounds} rounds of {args.requests} requests at concurrency {args.concurrency} per proxy, interleaved")
    for name in proxies:
        each, rate = statistics.median(cpu[name]), statistics.median(rps[name])
        print(
            f"  {name:48s} CPU/request {each * 1000:6.2f} ms ({(each - plain_cpu) * 1000:+5.2f} ms vs plain)"
            f"  throughput {rate:6.1f} req/s (ratio {rate / plain_rps:.3f})"
        )
    print(f"failed requests: {dict(FAILURES) or 'none'}")


if __name__ == "__main__":
    main()
