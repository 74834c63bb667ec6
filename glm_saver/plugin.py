"""The LiteLLM CustomLogger that wires the rooms into the proxy's hooks.

`async_pre_call_hook` is the one place where a routing decision is made; the log events are the
one place where facts come back. A bug in the plugin must never cost the user a request: anything
unexpected in the pre-call hook fails open to plain LiteLLM routing and is logged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

from glm_saver.classifier import Classification, Classifier, build_classifier
from glm_saver.request import RequestView
from glm_saver.settings import ConfigError, GlmSaverSettings, load_config_file, settings_from_config
from glm_saver.stats import RoutingStats
from glm_saver.strategies import ROUTES, Decision, RequestTooLarge, Route, Windows, decide

logger = logging.getLogger("glm_saver")

METADATA_KEY = "glm_saver"
CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})


def _client_error(message: str, param: str | None = None, code: str | None = None) -> ProxyException:
    """A 400 in OpenAI's error shape (LiteLLM renders ProxyException as-is)."""
    return ProxyException(message=message, type="invalid_request_error", param=param, code=400, openai_code=code)


def _ascii_header(value: str) -> str:
    """HTTP header values must be latin-1; keep them plain ASCII and short."""
    return value.encode("ascii", "replace").decode("ascii").replace("\n", " ")[:300]


def _group_window(config: Mapping[str, Any], group: str) -> int | None:
    """Smallest max_input_tokens declared for the group's deployments (None if none is declared)."""
    import litellm

    windows = []
    for entry in config.get("model_list") or []:
        if entry.get("model_name") != group:
            continue
        info = entry.get("model_info") or {}
        window = info.get("max_input_tokens")
        if window is None:
            window = (litellm.model_cost.get((entry.get("litellm_params") or {}).get("model", "")) or {}).get("max_input_tokens")
        if isinstance(window, int) and window > 0:
            windows.append(window)
    return min(windows) if windows else None


def _env_secret_present(config: Mapping[str, Any], group: str) -> bool:
    """Whether the group's api_key resolves to something (without ever reading the value out)."""
    for entry in config.get("model_list") or []:
        if entry.get("model_name") == group:
            key = (entry.get("litellm_params") or {}).get("api_key")
            if isinstance(key, str) and key.startswith("os.environ/"):
                return bool(os.environ.get(key.removeprefix("os.environ/")))
            return bool(key)
    return False


class GlmSaver(CustomLogger):
    def __init__(self, settings: GlmSaverSettings, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        config = config or {}
        self.settings = settings
        self.classifier: Classifier = build_classifier(settings.classifier)
        self.windows = Windows(local=_group_window(config, settings.local_group), cloud=_group_window(config, settings.cloud_group))
        self.cloud_configured = _env_secret_present(config, settings.cloud_group) if config else True
        self.stats = RoutingStats()
        self._groups: dict[Route, str] = {"local": settings.local_group, "cerebras": settings.cloud_group}

    # ---- the decision -------------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> dict:
        if call_type not in CHAT_CALL_TYPES or data.get("model") not in self.settings.entry_models:
            return data
        override = self._override(data)
        try:
            decision = self.decide(data, override)
        except RequestTooLarge as err:
            self.stats.record_rejection("context-window")
            raise _client_error(str(err), param="messages", code="context_length_exceeded") from None
        except Exception:
            # Fail open: the entry model still routes through plain LiteLLM.
            logger.exception("glm_saver: routing failed; passing the request to LiteLLM unchanged")
            self.stats.record_plugin_error()
            return data
        self._apply(data, decision)
        return data

    def decide(self, data: Mapping[str, Any], override: Route | None = None) -> Decision:
        view = RequestView.from_data(data)
        return decide(self.settings.strategy, view.prompt_tokens, self.windows, lambda: self._classify(view), override)

    def _classify(self, view: RequestView) -> Classification:
        verdict = self.classifier.classify(view.messages)
        if not 0.0 <= float(verdict.score) <= 1.0 or verdict.label not in ("simple", "complex"):
            raise ValueError(f"classifier returned an invalid verdict: score={verdict.score!r} label={verdict.label!r}")
        return verdict

    def _override(self, data: Mapping[str, Any]) -> Route | None:
        headers = (data.get("proxy_server_request") or {}).get("headers") or {}
        raw = next((value for name, value in headers.items() if name.lower() == self.settings.override_header), None)
        if raw is None:
            return None
        wanted = str(raw).strip().lower()
        if wanted not in ROUTES:
            self.stats.record_rejection("bad-override-header")
            raise _client_error(f"header {self.settings.override_header} must be one of: {', '.join(ROUTES)}", param=self.settings.override_header)
        return wanted  # type: ignore[return-value]

    def _apply(self, data: dict, decision: Decision) -> None:
        requested = data["model"]
        data["model"] = self._groups[decision.route]
        metadata = data.setdefault("metadata", {})
        metadata[METADATA_KEY] = {
            "requested": requested,
            "route": decision.route,
            "reason": decision.reason,
            "detail": decision.detail,
            "strategy": self.settings.strategy,
            "score": decision.score,
        }
        self.stats.record_decision(decision.route, self.settings.strategy, decision.reason)
        logger.info("glm_saver: %s -> %s (%s)", requested, decision.route, decision.detail)

    # ---- facts coming back --------------------------------------------------------------------

    def _route_of_group(self, group: str | None) -> Route | None:
        return next((route for route, name in self._groups.items() if name == group), None)

    @staticmethod
    def _group_of_model_id(model_id: str | None) -> str | None:
        if not model_id:
            return None
        from litellm.proxy import proxy_server

        deployment = proxy_server.llm_router.get_deployment(model_id) if proxy_server.llm_router else None
        return deployment.model_name if deployment else None

    async def async_post_call_response_headers_hook(
        self,
        data: dict,
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        tag = (data.get("metadata") or {}).get(METADATA_KEY)
        if not isinstance(tag, Mapping) or response is None:
            return None
        model_id = (litellm_call_info or {}).get("model_id") or (getattr(response, "_hidden_params", None) or {}).get("model_id")
        answered = self._route_of_group(self._group_of_model_id(model_id)) or tag["route"]
        if answered != tag["route"]:
            return {"x-glm-saver-route": answered, "x-glm-saver-reason": _ascii_header(f"fallback: {tag['route']} failed ({tag['reason']})")}
        return {"x-glm-saver-route": tag["route"], "x-glm-saver-reason": _ascii_header(f"{tag['reason']}: {tag['detail']}")}

    async def async_log_success_event(self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any) -> None:
        metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
        tag = metadata.get(METADATA_KEY)
        if not isinstance(tag, Mapping):
            return
        group = kwargs.get("model_group") or metadata.get("model_group")
        answered = self._route_of_group(group) or str(group)
        self.stats.record_answer(answered, tag["route"] if answered != tag["route"] else None)

    async def async_log_failure_event(self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any) -> None:
        metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
        if not isinstance(metadata.get(METADATA_KEY), Mapping):
            return
        group = kwargs.get("model_group") or metadata.get("model_group")
        error = kwargs.get("exception")
        status = getattr(error, "status_code", None)
        self.stats.record_failure(self._route_of_group(group) or str(group), str(status or type(error).__name__))
        logger.warning("glm_saver: %s failed with %s; LiteLLM falls back if it can", group, status or type(error).__name__)

    # ---- state for /health and /stats ---------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "plugin": "glm-saver",
            "strategy": self.settings.strategy,
            "entry_models": list(self.settings.entry_models),
            "local": {"group": self.settings.local_group, "context_window": self.windows.local},
            "cerebras": {"group": self.settings.cloud_group, "configured": self.cloud_configured, "context_window": self.windows.cloud},
        }

    def stats_snapshot(self) -> dict[str, Any]:
        return {"strategy": self.settings.strategy, **self.stats.snapshot()}


def config_path() -> str:
    """The config the proxy was started with (LiteLLM keeps it in a module global)."""
    from litellm.proxy import proxy_server

    path = os.environ.get("GLM_SAVER_CONFIG") or proxy_server.user_config_file_path or os.environ.get("CONFIG_FILE_PATH")
    if not path:
        raise RuntimeError("glm_saver: cannot find the proxy's config file; start with `litellm --config FILE`")
    return path


def plugin_from_proxy_config() -> GlmSaver:
    """Build the plugin from the proxy's config and mount its routes; a bad config stops the proxy."""
    from glm_saver.api import install_routes

    try:
        config = load_config_file(config_path())
        plugin = GlmSaver(settings_from_config(config), config)
    except ConfigError as err:
        # Exit here: raising would bury the message under LiteLLM's 300-line startup traceback.
        print(f"glm_saver: {err}\nThe proxy did not start.", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    install_routes(plugin)
    return plugin
