"""Stopping the children of `glm-saver up`: each gets its time to finish, a second Ctrl-C cuts it short."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from glm_saver.launcher.processes import Supervisor, spawn
from tests.e2e.polling import poll

# Writes "ready" once its SIGTERM handler is in place and "term" when SIGTERM comes, then goes on
# sleeping: a proxy still serving a long answer.
STUBBORN = """
import pathlib, signal, sys, time
seen = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (seen / "term").write_text("term"))
(seen / "ready").write_text("ready")
while True:
    time.sleep(0.1)
"""
POLITE = """
import pathlib, sys, time
(pathlib.Path(sys.argv[1]) / "ready").write_text("ready")
while True:
    time.sleep(0.1)
"""


def _started(script: str, seen: Path) -> Supervisor:
    # A wait long enough that only the second signal can end it within the test's run.
    supervisor = Supervisor(stop_timeout=600)
    supervisor.add(spawn("child", [sys.executable, "-c", script, str(seen)], seen / "child.log"))
    poll((seen / "ready").exists, "the child started", timeout=30)
    return supervisor


def test_a_second_ctrl_c_while_a_child_finishes_its_work_kills_it_at_once(tmp_path: Path) -> None:
    supervisor = _started(STUBBORN, tmp_path)

    def second_ctrl_c() -> None:
        poll((tmp_path / "term").exists, "the child got SIGTERM", timeout=30)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=second_ctrl_c)
    thread.start()
    forced = supervisor.stop_all()
    thread.join()
    assert forced
    assert supervisor.children[0].process.returncode == -signal.SIGKILL


def test_a_child_that_stops_on_sigterm_is_not_killed(tmp_path: Path) -> None:
    supervisor = _started(POLITE, tmp_path)
    assert not supervisor.stop_all()
    assert supervisor.children[0].process.returncode == -signal.SIGTERM
