"""The one plan per request: who answers, why, at what clamp and reservation, and where LiteLLM may
fall back to. Made here, applied by the plugin's pre-call hook (the only writer of the request),
held at the deployment boundary by the gate (gate.py) whatever path LiteLLM takes.

Every client request that can cost money is planned, whatever model it names: an entry model
(`glm-saver`) is decided by the strategy; a concrete group (`local`, `cerebras`) is taken as an
override of the same decision, so budgets, the clamp, headroom and context windows hold for it too.

Order: a spent budget; the context windows, override and strategy (routing/strategies); the
draft/verify cascade when the strategy asks for it; then, for Cerebras, the gate. A store that
cannot be reached sends the request local when its prompt fits, else a 503 that names the store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from litellm.proxy._types import ProxyException

import glm_saver.books.metrics as metrics
from glm_saver.books.budgets import BudgetBook
from glm_saver.books.counters import RoutingStats
from glm_saver.books.store import StoreUnavailable
from glm_saver.callers import key_label
from glm_saver.classifier import Classification, Classifier
from glm_saver.deployments import Prices
from glm_saver.request import RequestView
from glm_saver.routing.gate import CloudGate, Refusal, Ticket
from glm_saver.routing.policy import ROUTES, Decision, RequestTooLarge, Route, Windows, decide
from glm_saver.settings import GlmSaverSettings

if TYPE_CHECKING:  # the cascade calls through the gate: a type only, no import circle
    from glm_saver.cascade.speculator import Speculator

logger = logging.getLogger(__name__)

# Reasons that keep a request off Cerebras for money or limits: no fallback may take it there.
_KEPT_OFF_CLOUD = frozenset({"budget", "key-budget", "store-down", "cerebras-not-configured"})


@dataclass(frozen=True)
class Plan:
    """The decision for one request, as one value."""

    route: Route  # the group that serves the response (a cascade's answer is served on local)
    reason: str  # low-cardinality code, counted in /stats
    detail: str  # human-readable, sent in x-glm-saver-reason
    requested: str  # the model the client asked for
    key: str  # who pays, as the books name it
    prompt_tokens: int
    score: float | None = None
    label: str | None = None  # a speculative outcome (draft-accepted, ...); route stays the group
    ticket: Ticket | None = None  # the gate's grant for a Cerebras route (clamp, headroom, budget hold)
    fallbacks: bool = True  # whether LiteLLM may fall back to the other group
    mock: Any = None  # the cascade's answer (a ModelResponse), replayed on the local group
    live: Any = None  # a draft committed on its prefix (cascade/live.py), streamed on the local group

    @property
    def shown(self) -> str:
        return self.label or self.route


def client_error(message: str, param: str | None = None, code: str | None = None) -> ProxyException:
    """A 400 in OpenAI's error shape (LiteLLM renders ProxyException as-is)."""
    return ProxyException(message=message, type="invalid_request_error", param=param, code=400, openai_code=code)


def _cloud_busy_error(refusal: Refusal) -> ProxyException:
    """Too big for local and Cerebras may not take it now: retry after the reset, or a 503 for the store."""
    if refusal.reason == "store-down":
        return ProxyException(message=f"{refusal.detail}, and the prompt does not fit the local model", type="service_unavailable", param=None, code=503)
    retry_after = max(1, int(refusal.retry_in or 60))
    message = f"cerebras rate limit reached ({refusal.detail}) and the prompt does not fit the local model; retry in {retry_after}s"
    return ProxyException(message=message, type="rate_limit_error", param=None, code=429, headers={"retry-after": str(retry_after)})


def _budget_error(detail: str, period: str) -> ProxyException:
    return ProxyException(message=f"{detail}; it renews with the next {period} period", type="budget_exceeded", param=None, code=429)


def _litellm_key_nearly_spent(auth: Any, view: RequestView, cloud: Prices) -> bool:
    """A LiteLLM virtual key (DB-backed) whose budget this request could overrun on Cerebras."""
    max_budget, spent = getattr(auth, "max_budget", None), getattr(auth, "spend", None) or 0.0
    if not max_budget:
        return False
    return bool(spent + cloud.cost(view.prompt_tokens, view.max_tokens or 0) >= max_budget)


class Planner:
    def __init__(
        self,
        settings: GlmSaverSettings,
        classifier: Classifier,
        windows: Windows,
        cloud_configured: bool,
        gate: CloudGate,
        budgets: BudgetBook,
        cloud_prices: Prices,
        speculator: Speculator,
        stats: RoutingStats,
    ) -> None:
        self.settings = settings
        self.classifier = classifier
        self.windows = windows
        self.cloud_configured = cloud_configured
        self.gate = gate
        self.budgets = budgets
        self.cloud_prices = cloud_prices
        self.speculator = speculator
        self.stats = stats
        self.groups: dict[Route, str] = {"local": settings.local_group, "cerebras": settings.cloud_group}
        self._config_key_aliases = frozenset(key.alias for key in settings.keys)

    async def plan(self, data: Mapping[str, Any], view: RequestView, auth: Any, chat: bool) -> Plan:
        """The plan for one request; raises a ProxyException for a request that must be refused."""
        requested = str(data["model"])
        key = key_label(auth)
        start = Plan("local", "", "", requested, key, view.prompt_tokens)
        named = next((route for route, group in self.groups.items() if group == requested), None)
        if named is not None and not self.windows.fits(named, view.prompt_tokens):
            self.stats.record_rejection("context-window")
            raise client_error(
                f"the prompt is about {view.prompt_tokens} tokens, more than the context window of {requested}", "messages", "context_length_exceeded"
            )
        try:
            decision = await self._budget_decision(auth, key, view) or self.decide(view, named or self._override(data), chat)
        except RequestTooLarge as err:
            self.stats.record_rejection("context-window")
            raise client_error(str(err), param="messages", code="context_length_exceeded") from None
        except StoreUnavailable as err:
            return self._store_down(start, str(err))
        if named is not None and decision.reason == "override":
            decision = replace(decision, reason="direct", detail=f"the client asked for model {requested}")
        plan = replace(start, route=decision.route, reason=decision.reason, detail=decision.detail, score=decision.score)
        if decision.speculate:
            outcome = await self.speculator.answer(data, view, decision, key)
            plan = replace(
                plan,
                route=outcome.decision.route,
                reason=outcome.decision.reason,
                detail=outcome.decision.detail,
                label=outcome.decision.label,
                mock=outcome.mock,
                live=outcome.live,
            )
        if plan.route == "cerebras":
            plan = await self._through_gate(plan, view)
        return replace(plan, fallbacks=self._may_fall_back(plan))

    def decide(self, view: RequestView, override: Route | None = None, chat: bool = True) -> Decision:
        decision = decide(
            self.settings.strategy,
            view.prompt_tokens,
            self.windows,
            lambda: self._classify(view),
            override,
            has_tools=view.has_tools,
            # The cascade drafts chat answers; text completions are routed as smart_routing.
            speculate_with_tools=self.settings.speculative.speculate_with_tools,
            speculate=chat,
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

    async def _budget_decision(self, auth: Any, key: str, view: RequestView) -> Decision | None:
        """A spent budget decides on its own: `local` answers locally at no cost, `reject` refuses."""
        spent = await self.budgets.exhausted(key)
        if spent is not None:
            name, budget, use = spent
            detail = f"budget {name} spent (${use.spent_usd:.4f} of ${budget.limit_usd:.2f}, {budget.period})"
            if budget.action == "reject" or not self.windows.fits("local", view.prompt_tokens):
                self.stats.record_rejection("budget")
                raise _budget_error(detail, budget.period)
            return Decision("local", "budget", detail)
        if key not in self._config_key_aliases and _litellm_key_nearly_spent(auth, view, self.cloud_prices):
            return Decision("local", "key-budget", f"LiteLLM key budget ${auth.max_budget:.2f} nearly spent (${auth.spend:.4f})")
        return None

    async def _through_gate(self, plan: Plan, view: RequestView) -> Plan:
        """Cerebras only with the gate's ticket (clamp, headroom, budget hold); else local, or refused."""
        granted = await self.gate.admit(plan.key, self.settings.cloud_group, view.prompt_tokens, view.max_tokens)
        if isinstance(granted, Ticket):
            return replace(plan, ticket=granted)
        if granted.budget is not None and (granted.budget.budget.action == "reject" or not self.windows.fits("local", view.prompt_tokens)):
            self.stats.record_rejection("budget")
            raise _budget_error(granted.detail, granted.budget.budget.period)
        if not self.windows.fits("local", view.prompt_tokens):
            self.stats.record_rejection(granted.reason)
            raise _cloud_busy_error(granted)
        if granted.reason.startswith("rate-limit-"):
            self.stats.record_shift(granted.reason)
            metrics.RATE_LIMIT_SHIFTS.labels(reason=granted.reason).inc()
        logger.warning("glm_saver: cerebras may not take this request now, routing local (%s)", granted.reason)
        return replace(plan, route="local", reason=granted.reason, detail=f"{granted.detail} (wanted cerebras: {plan.reason})", label=None)

    def _store_down(self, plan: Plan, why: str) -> Plan:
        refusal = Refusal("store-down", f"{why}; paid models are off until it answers")
        if not self.windows.fits("local", plan.prompt_tokens):
            self.stats.record_rejection("store-down")
            raise _cloud_busy_error(refusal)
        logger.warning("glm_saver: %s; answering locally", why)
        return replace(plan, route="local", reason="store-down", detail=refusal.detail, fallbacks=False)

    def _may_fall_back(self, plan: Plan) -> bool:
        """Fallbacks only where they cannot break the plan: never to Cerebras for a request kept off
        it for money or limits, never to local for a prompt its window cannot take."""
        if plan.route == "cerebras":
            return self.windows.fits("local", plan.prompt_tokens)
        kept_off = plan.reason in _KEPT_OFF_CLOUD or plan.reason.startswith("rate-limit-")
        return not kept_off and self.windows.fits("cerebras", plan.prompt_tokens)

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
        if wanted == "local":
            return "local"
        if wanted == "cerebras":
            return "cerebras"
        self.stats.record_rejection("bad-override-header")
        raise client_error(f"header {self.settings.override_header} must be one of: {', '.join(ROUTES)}", param=self.settings.override_header)
