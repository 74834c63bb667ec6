"""Every test runs offline: LiteLLM reads its bundled price map and the hub is never asked."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
