"""The one adapter to LiteLLM's `proxy_server` module globals (its router, app, config path, master
key and general settings). They are set while the proxy starts, after this package is imported, so
every read is lazy; nothing else in the package touches them.
"""

from __future__ import annotations

import os
from typing import Any


def _proxy_server() -> Any:
    from litellm.proxy import proxy_server

    return proxy_server


def router() -> Any:
    """LiteLLM's router (raises until the proxy has built it)."""
    found = _proxy_server().llm_router
    if found is None:
        raise RuntimeError("the LiteLLM router is not ready")
    return found


# Deployment id -> its group. An id names one deployment for the proxy's life (LiteLLM's hash of its
# parameters, or the config's model_info.id), so its group does not change; looking it up builds a
# pydantic Deployment each time (py-spy: 0.6% of the loop's samples, twice per request). As many
# entries as deployments configured.
_GROUP_OF_DEPLOYMENT: dict[str, str] = {}


def group_of_deployment(model_id: str | None) -> str | None:
    """The model group a deployment id belongs to (None when unknown)."""
    if model_id in _GROUP_OF_DEPLOYMENT:
        return _GROUP_OF_DEPLOYMENT[model_id]
    found = _proxy_server().llm_router
    deployment = found.get_deployment(model_id) if found is not None and model_id else None
    if deployment is None:
        return None
    _GROUP_OF_DEPLOYMENT[str(model_id)] = deployment.model_name
    return str(deployment.model_name)


def app() -> Any:
    """The proxy's FastAPI app."""
    return _proxy_server().app


def config_path() -> str:
    """The config the proxy was started with."""
    path = os.environ.get("GLM_SAVER_CONFIG") or _proxy_server().user_config_file_path or os.environ.get("CONFIG_FILE_PATH")
    if not path:
        raise RuntimeError("glm_saver: cannot find the proxy's config file; start with `litellm --config FILE`")
    return str(path)


def master_key() -> tuple[str | None, str]:
    """The master key the proxy resolved at start, and the user id LiteLLM gives its admin."""
    server = _proxy_server()
    master = getattr(server, "master_key", None)
    return (master if isinstance(master, str) and master else None), getattr(server, "litellm_proxy_admin_name", "default_user_id")


def general_settings() -> dict[str, Any]:
    return dict(_proxy_server().general_settings or {})
