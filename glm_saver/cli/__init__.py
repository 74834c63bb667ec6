"""The `glm-saver` command: one module per command group (main.py wires them: classify and
check-config; keys.py: hash-key; stats.py: stats; calibrate.py: calibrate; local_model.py:
local-model and up). Nothing in the runtime imports from here."""

from glm_saver.cli.main import main

__all__ = ["main"]
