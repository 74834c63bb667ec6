"""Child processes that `glm-saver up` and `local-model serve` run: start, wait healthy, stop.

Each child runs in its own session (process group) so that a Ctrl-C in the terminal reaches only
us, and we stop the children in a known order; the whole group is signalled so nothing a child
spawned survives. On Linux a child also dies with us if we are killed outright (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

STOP_TIMEOUT = 20.0
POLL_SECONDS = 0.2


class ChildFailed(RuntimeError):
    """A child process exited or never became healthy; the message carries its log's tail."""


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when our process dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def failure(self, what: str) -> ChildFailed:
        return ChildFailed(f"{self.name} {what}; last lines of {self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the child's process group, then SIGKILL whatever is left after `timeout`."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        # The leader may be gone while something it spawned still runs in its group.
        self.kill()

    def kill(self) -> None:
        """SIGKILL the child's process group now."""
        self._signal_group(signal.SIGKILL)
        self.process.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


def spawn(name: str, command: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:  # one log per run: a crash shows this run's lines only
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run here before the fork
        )
    return Child(name, process, log_path)


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether GET `url` gets a 2xx (a server is there and ready)."""
    try:
        return httpx.get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


def wait_until(child: Child, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `ready` until it holds; fail early, with the log, if the child exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.failure(f"exited with code {child.process.returncode} before it was {what}")
        if ready():
            return
        time.sleep(POLL_SECONDS)
    raise child.failure(f"was not {what} after {timeout:.0f} s")


@dataclass
class Supervisor:
    """The children of one command, stopped in reverse start order."""

    children: list[Child] = field(default_factory=list)
    stop_timeout: float = STOP_TIMEOUT

    def add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        return next((child for child in self.children if not child.alive()), None)

    def watch(self) -> Child:
        """Block until one child exits; return it. Signals interrupt this (see `stop_on_signals`)."""
        while True:
            exited = self.first_exited()
            if exited:
                return exited
            time.sleep(0.5)

    def stop_all(self) -> bool:
        """Stop every child, each given STOP_TIMEOUT to finish (a proxy its requests in flight).

        A Ctrl-C (or SIGTERM) while waiting cuts the wait short: every child left is killed at once,
        and True is returned. No signal can abort the clean-up half way and leave a child behind.
        """
        try:
            with _signals(_raise_forced):
                for child in reversed(self.children):
                    child.stop(self.stop_timeout)
        except _Forced:
            with _signals(signal.SIG_IGN):
                for child in self.children:
                    child.kill()
            return True
        return False


class _Forced(Exception):
    """A second signal while the children are stopping: stop waiting for them."""


def _raise_forced(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Forced


class Stopped(Exception):
    """Raised in the main thread when SIGINT or SIGTERM asks us to stop."""


@contextlib.contextmanager
def _signals(handler: Any) -> Iterator[None]:
    """SIGINT and SIGTERM handled by `handler` inside the block; the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and only it receives signals)
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_on_signals() -> contextlib.AbstractContextManager[None]:
    """Inside the block, SIGINT and SIGTERM raise `Stopped` so `finally` blocks stop the children."""

    def handler(signum: int, frame: object) -> None:
        # Only once: a second Ctrl-C must not interrupt the clean-up the first one started.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Stopped(signal.Signals(signum).name)

    return _signals(handler)
