"""Runs the real `litellm --config` proxy process with the shipped config pointed at fake upstreams."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "litellm_config.yaml"
MASTER_KEY = "sk-test-master-0123456789"
CEREBRAS_KEY = "csk-test-secret-abcdef987654"
STARTUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def litellm_executable() -> str:
    candidate = Path(sys.executable).with_name("litellm")
    return str(candidate) if candidate.exists() else "litellm"


def wait_for_http(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float, what: str) -> None:
    """Poll `url` until it answers 200 (readiness polling, not a fixed sleep); fail with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(process)
    raise TimeoutError(f"{what} did not answer in {timeout}s:\n{log_path.read_text()[-4000:]}")


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def two_tiers(config: dict[str, Any]) -> dict[str, Any]:
    """The config with only its cheapest and strongest tiers: the simplest config, as it was before
    the shipped one had a tier between them (local_group / cloud_group, split by the classifier)."""
    section = config.get("glm_saver") or {}
    ladder = [tier["group"] for tier in section.pop("tiers", None) or []]
    middle = set(ladder[1:-1])
    if ladder:
        section.update(local_group=ladder[0], cloud_group=ladder[-1])
    config["model_list"] = [entry for entry in config["model_list"] if entry["model_name"] not in middle]
    router = config.get("router_settings") or {}
    router["fallbacks"] = [
        {group: [name for name in names if name not in middle]}
        for rule in router.get("fallbacks") or []
        for group, names in rule.items()
        if group not in middle
    ]
    return config


def proxy_config(local_url: str, *, local_window: int | None = None, cloud_window: int | None = None, tiers: bool = False, **changes: Any) -> dict[str, Any]:
    """The shipped config, with the local group pointed at `local_url` and `changes` merged in;
    with two tiers unless `tiers` (the shipped three-tier ladder) is asked for."""
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config = shipped if tiers else two_tiers(shipped)
    for entry in config["model_list"]:
        info = entry.setdefault("model_info", {})
        if entry["model_name"] == "local":
            entry["litellm_params"]["api_base"] = local_url
            if local_window is not None:
                info["max_input_tokens"] = local_window
        elif cloud_window is not None:
            info["max_input_tokens"] = cloud_window
    return deep_merge(config, changes)


@dataclass
class Proxy:
    """A running proxy: its URL, the log it writes, and how to stop it."""

    directory: Path
    cerebras_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    cerebras_key: str | None = CEREBRAS_KEY  # None: start with no CEREBRAS_API_KEY at all
    process: subprocess.Popen[bytes] | None = None
    config: dict[str, Any] = field(default_factory=dict)  # as last started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "proxy.log"

    def environment(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith(("OPENAI_", "CEREBRAS_"))}
        env.update(
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            HF_HUB_OFFLINE="1",
            LITELLM_MASTER_KEY=MASTER_KEY,
            CEREBRAS_API_BASE=self.cerebras_url,
            **self.extra_env,
        )
        if self.cerebras_key is not None:
            env["CEREBRAS_API_KEY"] = self.cerebras_key
        return env

    def command(self, config: dict[str, Any]) -> list[str]:
        """Lay out the config (and the hooks shim beside it, as users do) and return the command."""
        shutil.copytree(REPO / "hooks", self.directory / "hooks", dirs_exist_ok=True)
        config_path = self.directory / "litellm_config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [litellm_executable(), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self, config: dict[str, Any]) -> Proxy:
        self.config = config
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(config),
                cwd=self.directory,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_until_live()
        return self

    def wait_until_live(self) -> None:
        assert self.process is not None
        wait_for_http(self.process, f"{self.url}/health/liveliness", self.log_path, STARTUP_TIMEOUT, "proxy")

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def metric(proxy: Proxy, series: str) -> float:
    """One series' value on the proxy's /metrics (0 when absent), e.g. 'name{label="value"}'."""
    text = httpx.get(f"{proxy.url}/metrics", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10, follow_redirects=True).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")]
    return values[0] if values else 0.0


def run_proxy_until_exit(directory: Path, config: dict[str, Any], cerebras_url: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Start a proxy that is expected to refuse to start; return how it exited."""
    proxy = Proxy(directory=directory, cerebras_url=cerebras_url)
    return subprocess.run(
        proxy.command(config),
        check=False,
        cwd=directory,
        env=proxy.environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
