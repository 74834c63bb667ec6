"""Where the plugin's time goes: py-spy samples one proxy (with the plugin) under the bench's load.

    python bench/profile.py [--seconds 25] [--concurrency 16] [--state sqlite|redis] [--top 25] [--proxy plugin|noop|plain]

`--proxy noop` samples the no-op logger of bench/hook_floor.py (the plugin's hook methods, each
returning at once) and `--proxy plain` LiteLLM without either: with `--out`, their stacks set
beside the plugin's show what LiteLLM does per request because the hooks are there.

py-spy is the proxy's parent (it starts it), so it may trace it where ptrace is limited to
descendants. Prints the functions with the most samples: own time of the plugin's frames in the
event loop's samples, and the leaves they end in. Only 127.0.0.1; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.hook_floor import NOOP_HOOKS, noop_proxy
from bench.overhead import one_pass, start_fake
from tests.e2e.proxy import Proxy, proxy_config, wait_for_http

# The ASGI layers wrap the whole app: every completion request's frames sit under their entry points.
WRAPPERS = ("CompletionLayer.__call__", "KeepAliveLayer.completion", "NonObjectBodyGuard.completion")


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0]}" + ")" if where else frame


def top_frames(raw: Path, count: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """From py-spy's collapsed stacks (`frame;frame;... N`), samples of the event loop serving
    requests (start-up imports left out): the plugin's frames by total samples, and the leaf
    functions they spend them in."""
    plugin: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, weight = line.rpartition(" ")
        if "Runner.run" not in stack or "_find_and_load" in stack or "LifespanOn.main" in stack:  # start-up: imports, the plugin's load
            continue
        frames = stack.split(";")
        samples += int(weight)
        ours = [_short(frame) for frame in frames if "glm_saver/" in frame and frame.partition(" (")[0] not in WRAPPERS]
        for frame in set(ours):
            plugin[frame] += int(weight)
        if ours:
            leaves[f"{ours[-1]} -> {_short(frames[-1])}"] += int(weight)
    return samples, plugin.most_common(count), leaves.most_common(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--state", default="sqlite")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--out", default=None, help="keep the raw collapsed stacks here")
    parser.add_argument("--proxy", choices=("plugin", "noop", "plain"), default="plugin")
    args = parser.parse_args()

    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:  # before anything starts: nothing is left running
        raise SystemExit("bench/profile.py needs py-spy: pip install py-spy")
    fake, fake_url = start_fake("local")
    work = Path(tempfile.mkdtemp(prefix="glm-saver-profile-"))
    glm = {"strategy": "smart_routing", "state": args.state}
    if args.redis_url:
        glm["redis_url"] = args.redis_url
    proxy, config, model = Proxy(directory=work, cerebras_url=fake_url), proxy_config(fake_url, glm_saver=glm), "glm-saver"
    if args.proxy != "plugin":
        proxy, config = noop_proxy(work, args.proxy, fake_url, list(NOOP_HOOKS) if args.proxy == "noop" else [])
        model = "local"
        if args.proxy == "plain":
            config["litellm_settings"]["callbacks"] = ["prometheus"]
    raw = Path(args.out) if args.out else work / "profile.txt"
    command = [spy, "record", "--format", "raw", "--rate", "100", "--nonblocking", "-o", str(raw), "--", *proxy.command(config)]
    with proxy.log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=work, env=proxy.environment(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(process, f"{proxy.url}/health/liveliness", proxy.log_path, 900, "proxy")  # type: ignore[arg-type]  # py-spy's Popen is text-less, as wait_for_http expects
        asyncio.run(one_pass(proxy.url, model, 100, 4))  # warm up
        deadline = time.monotonic() + args.seconds
        sent = 0
        while time.monotonic() < deadline:
            try:
                asyncio.run(one_pass(proxy.url, model, 200, args.concurrency))
            except httpx.HTTPError as err:  # a busy machine's fake may drop a connection: keep sampling
                print(f"a pass failed ({err}); going on", file=sys.stderr)
            sent += 200
    finally:
        # SIGINT makes py-spy stop the proxy and write its file.
        process.send_signal(2)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        fake.terminate()
    samples, plugin, leaves = top_frames(raw, args.top)
    print(
        f"py-spy: {samples} event-loop samples (start-up left out) over {sent} requests at concurrency {args.concurrency}, state {args.state}, proxy {args.proxy}"
    )
    print("plugin frames by share of those samples (the frame anywhere on the stack):")
    for frame, count in plugin:
        print(f"  {100 * count / samples:5.1f}%  {frame}")
    print("where the plugin's samples end (its innermost frame -> the leaf):")
    for frame, count in leaves:
        print(f"  {100 * count / samples:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
