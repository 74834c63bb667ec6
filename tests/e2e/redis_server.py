"""A real redis-server (Debian's package) on a free port, for tests of state shared by several proxies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.e2e.proxy import free_port

START_TIMEOUT = 20.0


@contextmanager
def running_redis(directory: Path, port: int | None = None) -> Iterator[str]:
    """Start redis-server without persistence (on `port`, or a free one); yield its URL; stop it.

    Leaving the block stops the server; entering another block with the same `port` starts it
    again at the same URL ("Redis went down, then came back"), with no data kept.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed: `apt-get install redis-server` (.ci/run does this)")
    port = port or free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if redis.Redis.from_url(url).ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def stalled(url: str) -> Iterator[None]:
    """Redis stops answering inside the block (SIGSTOP: it takes what it is sent, as a slow Redis
    does) and catches up on all of it when the block is left (SIGCONT)."""
    pid = int(redis.Redis.from_url(url).info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
