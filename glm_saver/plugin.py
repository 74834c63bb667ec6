"""The LiteLLM CustomLogger that wires the rooms into the proxy's hooks.

`async_pre_call_hook` is the one place where a routing decision is made; the log events are the
one place where facts come back. A bug in the plugin must never cost the user a request: anything
unexpected in the pre-call hook fails open to plain LiteLLM routing and is logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

from glm_saver import metrics
from glm_saver.callers import key_label
from glm_saver.classifier import Classification, Classifier, build_classifier
from glm_saver.deployments import Prices, api_key_configured, group_window
from glm_saver.failures import no_model_answered
from glm_saver.headroom import Admission, CloudHeadroom, Quota, Reservation
from glm_saver.ledger import Ledger
from glm_saver.request import RequestView
from glm_saver.settings import ConfigError, GlmSaverSettings, load_config_file, settings_from_config
from glm_saver.speculative import Speculator
from glm_saver.stats import RoutingStats
from glm_saver.store import build_store
from glm_saver.strategies import ROUTES, Decision, RequestTooLarge, Route, Windows, decide
from glm_saver.validation import request_problem

logger = logging.getLogger("glm_saver")

METADATA_KEY = "glm_saver"
_RESET_WAIT_SLACK = 0.05
CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})


def _client_error(message: str, param: str | None = None, code: str | None = None) -> ProxyException:
    """A 400 in OpenAI's error shape (LiteLLM renders ProxyException as-is)."""
    return ProxyException(message=message, type="invalid_request_error", param=param, code=400, openai_code=code)


def _cloud_busy_error(admission: Admission) -> ProxyException:
    """Too big for local and Cerebras has no room: the client should retry after the reset."""
    retry_after = max(1, int(admission.retry_in or 60))
    message = f"cerebras rate limit reached ({admission.detail}) and the prompt does not fit the local model; retry in {retry_after}s"
    return ProxyException(message=message, type="rate_limit_error", param=None, code=429, headers={"retry-after": str(retry_after)})


def _ascii_header(value: str) -> str:
    """HTTP header values must be latin-1; keep them plain ASCII and short."""
    return value.encode("ascii", "replace").decode("ascii").replace("\n", " ")[:300]


def _litellm_key_nearly_spent(auth: Any, view: RequestView, cloud: Prices) -> bool:
    """A LiteLLM virtual key (DB-backed) whose budget this request could overrun on Cerebras."""
    max_budget, spent = getattr(auth, "max_budget", None), getattr(auth, "spend", None) or 0.0
    if not max_budget:
        return False
    return spent + cloud.cost(view.prompt_tokens, view.max_tokens or 0) >= max_budget


def _epoch(moment: Any) -> float | None:
    if isinstance(moment, datetime):
        return moment.timestamp()
    return float(moment) if isinstance(moment, (int, float)) else None


def _event_facts(kwargs: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, str | None]:
    """A log event's plugin tag (None if the plugin did not route the request) and model group."""
    metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
    tag = metadata.get(METADATA_KEY)
    return tag if isinstance(tag, Mapping) else None, metadata.get("model_group")


class GlmSaver(CustomLogger):
    def __init__(self, settings: GlmSaverSettings, config: Mapping[str, Any] | None = None, config_dir: Path | None = None) -> None:
        super().__init__()
        config = config or {}
        self.settings = settings
        self.classifier: Classifier = build_classifier(settings.classifier)
        self.windows = Windows(local=group_window(config, settings.local_group), cloud=group_window(config, settings.cloud_group))
        self.cloud_configured = api_key_configured(config, settings.cloud_group) if config else True
        self.stats = RoutingStats()
        self._groups: dict[Route, str] = {"local": settings.local_group, "cerebras": settings.cloud_group}
        # The entry models are Cerebras deployments too when the plugin is bypassed (shipped config).
        self._cloud_groups = frozenset({settings.cloud_group, *settings.entry_models})
        self.headroom: CloudHeadroom | None = None
        if settings.rate_limits.enabled:
            self.headroom = CloudHeadroom(build_store(Quota, settings, config, namespace="quota"), settings.rate_limits, key=settings.cloud_group)
        self.speculator = Speculator(settings, config, cloud_exhausted=self._cloud_unavailable)
        self.ledger = Ledger(settings, config, config_dir or Path.cwd())
        self._config_key_aliases = frozenset(key.alias for key in settings.keys)

    # ---- the decision -------------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> dict:
        if call_type not in CHAT_CALL_TYPES or data.get("model") not in self.settings.entry_models:
            return data
        self._validate(data)
        override = self._override(data)
        try:
            view = RequestView.from_data(data)
            decision = await self._budget_decision(user_api_key_dict, view) or self.decide(view, override)
            if decision.speculate:  # draft/verify cascade: a mock answer on local, or on to cerebras
                decision = await self.speculator.answer(data, view, decision)
            reservation = None
            if decision.route == "cerebras" and self.headroom is not None:
                decision, reservation = await self._within_cloud_budget(data, view, decision)
        except RequestTooLarge as err:
            self.stats.record_rejection("context-window")
            raise _client_error(str(err), param="messages", code="context_length_exceeded") from None
        except ProxyException:
            raise
        except Exception:
            # Fail open: the entry model still routes through plain LiteLLM.
            logger.exception("glm_saver: routing failed; passing the request to LiteLLM unchanged")
            self.stats.record_plugin_error()
            return data
        self._apply(data, decision, reservation)
        return data

    def _validate(self, data: Mapping[str, Any]) -> None:
        """A malformed request is a 400 here, before any model sees it (a bug in the check fails open)."""
        try:
            problem = request_problem(data)
        except Exception:
            logger.exception("glm_saver: request validation failed; passing the request on unchecked")
            self.stats.record_plugin_error()
            return
        if problem is not None:
            self.stats.record_rejection("invalid-request")
            raise _client_error(problem.message, param=problem.param)

    def decide(self, view: RequestView, override: Route | None = None) -> Decision:
        decision = decide(
            self.settings.strategy,
            view.prompt_tokens,
            self.windows,
            lambda: self._classify(view),
            override,
            has_tools=view.has_tools,
            speculate_with_tools=self.settings.speculative.speculate_with_tools,
        )
        return decision if self.cloud_configured or decision.route != "cerebras" else self._local_instead(view, decision)

    def _local_instead(self, view: RequestView, wanted: Decision) -> Decision:
        """Without a Cerebras key every cloud call would fail: answer locally while the prompt fits."""
        if not self.windows.fits("local", view.prompt_tokens):
            raise RequestTooLarge(
                f"the prompt is about {view.prompt_tokens} tokens, more than the local model's context window "
                f"({self.windows.local}), and cerebras is not configured (no API key)"
            )
        return Decision("local", "cerebras-not-configured", f"cerebras has no API key (wanted cerebras: {wanted.reason})", wanted.score)

    async def _budget_decision(self, auth: Any, view: RequestView) -> Decision | None:
        """A spent budget decides on its own: `local` answers locally at no cost, `reject` refuses."""
        key = key_label(auth)
        spent = await self.ledger.budgets.exhausted(key)
        if spent is not None:
            name, budget, use = spent
            detail = f"budget {name} spent (${use.spent_usd:.4f} of ${budget.limit_usd:.2f}, {budget.period})"
            if budget.action == "reject" or not self.windows.fits("local", view.prompt_tokens):
                self.stats.record_rejection("budget")
                raise ProxyException(message=f"{detail}; it renews with the next {budget.period} period", type="budget_exceeded", param=None, code=429)
            return Decision("local", "budget", detail)
        if key not in self._config_key_aliases and _litellm_key_nearly_spent(auth, view, self.ledger.cloud_prices):
            return Decision("local", "key-budget", f"LiteLLM key budget ${auth.max_budget:.2f} nearly spent (${auth.spend:.4f})")
        return None

    async def _cloud_unavailable(self) -> bool:
        """Whether a Cerebras call now would surely fail (no key, or rate-limited until a reset)."""
        return not self.cloud_configured or (self.headroom is not None and await self.headroom.exhausted())

    async def _admit(self, tokens: int) -> Admission:
        assert self.headroom is not None
        admission = await self.headroom.admit(tokens)
        wait = admission.retry_in
        if not admission.admitted and wait is not None and wait <= self.settings.rate_limits.wait_for_reset_seconds:
            # Configured: a short wait for Cerebras beats a weaker answer. The loop's timers may
            # fire a hair early, so sleep a little past the reset.
            await asyncio.sleep(wait + _RESET_WAIT_SLACK)
            admission = await self.headroom.admit(tokens)
        return admission

    async def _within_cloud_budget(self, data: dict, view: RequestView, decision: Decision) -> tuple[Decision, Reservation | None]:
        """Clamp max_tokens and reserve Cerebras' quota for the request, or shift it local."""
        max_tokens = min(view.max_tokens or self.settings.rate_limits.max_tokens_cap, self.settings.rate_limits.max_tokens_cap)
        admission = await self._admit(view.prompt_tokens + max_tokens)
        if admission.admitted:
            data["max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"] = max_tokens
            return decision, admission.reservation
        if not self.windows.fits("local", view.prompt_tokens):
            self.stats.record_rejection(admission.reason)
            raise _cloud_busy_error(admission)
        self.stats.record_shift(admission.reason)
        metrics.RATE_LIMIT_SHIFTS.labels(reason=admission.reason).inc()
        logger.warning("glm_saver: cerebras has no headroom, routing local (%s)", admission.detail)
        return Decision("local", admission.reason, f"{admission.detail} (wanted cerebras: {decision.reason})", decision.score), None

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

    def _apply(self, data: dict, decision: Decision, reservation: Reservation | None = None) -> None:
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
            "reservation": reservation.model_dump() if reservation else None,
            "label": decision.label,  # a speculative outcome (draft-accepted, ...); route stays the group
        }
        shown = decision.label or decision.route
        self.stats.record_decision(shown, self.settings.strategy, decision.reason)
        metrics.REQUESTS.labels(route=shown, strategy=self.settings.strategy, reason=decision.reason).inc()
        # The reason code only: the detail may quote keywords of the user's ask.
        logger.info("glm_saver: %s -> %s (%s, score %s)", requested, shown, decision.reason, decision.score)

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
        shown = tag.get("label") or tag["route"]  # a speculative answer is served by `route` as planned
        return {"x-glm-saver-route": shown, "x-glm-saver-reason": _ascii_header(f"{tag['reason']}: {tag['detail']}")}

    async def async_log_success_event(self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any) -> None:
        tag, group = _event_facts(kwargs)
        if group in self._cloud_groups:
            await self._observe_cloud(kwargs.get("response_headers"), tag, rate_limited=False, received_at=_epoch(kwargs.get("completion_start_time")))
        self.speculator.observe(kwargs, response_obj, tag)  # tokens and cost of draft / verify / final calls
        if self.ledger.keeps(group):
            await self.ledger.record(self.ledger.charge_of(kwargs, response_obj, tag, group))
        if tag is None:
            return
        answered = self._route_of_group(group) or str(group)
        self.stats.record_answer(answered, tag["route"] if answered != tag["route"] else None)

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception, user_api_key_dict: Any, traceback_str: str | None = None) -> Any:
        """Every model of a routed request unreachable or too slow: a 503/504, not LiteLLM's 500/408."""
        tag = (request_data.get("metadata") or {}).get(METADATA_KEY)
        if not isinstance(tag, Mapping):
            return None
        return no_model_answered(original_exception, f"{tag['route']} and its fallback")

    async def async_log_failure_event(self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any) -> None:
        tag, group = _event_facts(kwargs)
        error = kwargs.get("exception")
        status = getattr(error, "status_code", None)
        headers = getattr(error, "litellm_response_headers", None)
        # A 429 without upstream headers is LiteLLM saying our filter left no deployment, not Cerebras.
        upstream_429 = status == 429 and headers is not None
        if group in self._cloud_groups:
            await self._observe_cloud(headers, tag, rate_limited=upstream_429)
        if tag is None:
            return
        what = "resting" if status == 429 and headers is None else str(status or type(error).__name__)
        self.stats.record_failure(self._route_of_group(group) or str(group), what)
        logger.warning("glm_saver: %s failed with %s; LiteLLM falls back if it can", group, status or type(error).__name__)

    async def _observe_cloud(
        self, headers: Mapping[str, Any] | None, tag: Mapping[str, Any] | None, rate_limited: bool, received_at: float | None = None
    ) -> None:
        """Fold Cerebras' rate-limit headers into the headroom and release this request's reservation."""
        if self.headroom is None:
            return
        held = (tag or {}).get("reservation")
        quota = await self.headroom.observe(headers, Reservation.model_validate(held) if held else None, rate_limited, received_at)
        metrics.record_quota(quota)
        if rate_limited:
            metrics.CEREBRAS_429.inc()
            self.stats.record_rate_limited()
            logger.warning("glm_saver: cerebras answered 429; no request goes to it for %.1fs", max(0.0, quota.exhausted_until - time.time()))

    async def async_filter_deployments(
        self, model: str, healthy_deployments: list, messages: Any, request_kwargs: dict | None = None, parent_otel_span: Any = None
    ) -> list:
        """While Cerebras is known to refuse (429 window, day spent), offer LiteLLM no Cerebras
        deployment, so direct requests and fallbacks go local instead of earning another 429."""
        if self.headroom is not None and model in self._cloud_groups and await self.headroom.exhausted():
            logger.warning("glm_saver: cerebras is rate-limited; %s has no deployment until the reset", model)
            return []
        return healthy_deployments

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

    async def stats_snapshot(self) -> dict[str, Any]:
        headroom = await self.headroom.describe() if self.headroom is not None else None
        books = await self.ledger.describe()
        return {
            "strategy": self.settings.strategy,
            "cerebras_configured": self.cloud_configured,
            **self.stats.snapshot(),
            "books": books,
            "cerebras_headroom": headroom,
            "speculative": self.speculator.stats.snapshot(),
        }


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
        plugin = GlmSaver(settings_from_config(config), config, Path(config_path()).resolve().parent)
    except ConfigError as err:
        # Exit here: raising would bury the message under LiteLLM's 300-line startup traceback.
        print(f"glm_saver: {err}\nThe proxy did not start.", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    install_routes(plugin)
    from glm_saver.logs import configure_logging

    configure_logging(plugin.settings.logging, Path(config_path()).resolve().parent)  # rotating file + console, redacted
    return plugin
