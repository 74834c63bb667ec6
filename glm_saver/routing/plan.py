"""The one plan per request: who answers, why, at what clamp and reservation, and where LiteLLM may
fall back to. Made here, applied by the plugin's pre-call hook (the only writer of the request),
held at the deployment boundary by the gate (gate.py) whatever path LiteLLM takes.

Every client request that can cost money is planned, whatever model it names: an entry model
(`glm-saver`) is decided by the strategy; a concrete group (`local`, `cerebras`) is taken as an
override of the same decision, so budgets, the clamp, headroom and context windows hold for it too.

Order: images no tier takes (a 400); a spent budget; the context windows, images, override and
strategy (routing/policy); the draft/verify cascade when the strategy asks for it; then, for
Cerebras, the gate. A store that cannot be reached sends the request local when the local model
takes it, else a 503 that names the store. A prompt with images goes, and falls back, only to
tiers that take images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from litellm.proxy._types import ProxyException

import glm_saver.books.metrics as metrics
from glm_saver.books.budgets import BudgetBook
from glm_saver.books.counters import RoutingStats
from glm_saver.books.store import StoreUnavailable
from glm_saver.callers import key_label
from glm_saver.classifier import Classification, Classifier
from glm_saver.deployments import Prices
from glm_saver.money import usd
from glm_saver.request import RequestView
from glm_saver.routing.gate import CloudGate, Refusal, Ticket
from glm_saver.routing.policy import Decision, RequestTooLarge, decide, moved_off
from glm_saver.routing.tiers import Route, Tier, Tiers
from glm_saver.settings import GlmSaverSettings

if TYPE_CHECKING:  # the cascade calls through the gate: a type only, no import circle
    from glm_saver.cascade.speculator import Speculator

logger = logging.getLogger(__name__)

# Reasons that keep a request off a stronger tier for money or limits: no fallback may take it there.
_KEPT_OFF_CLOUD = frozenset({"budget", "key-budget", "store-down"})


def _kept_off(reason: str) -> bool:
    return reason in _KEPT_OFF_CLOUD or reason.startswith("rate-limit-") or reason.endswith("-not-configured")


@dataclass(frozen=True)
class Plan:
    """The decision for one request, as one value."""

    route: Route  # the tier that serves the response (a cascade's answer is served on local)
    reason: str  # low-cardinality code, counted in /stats
    detail: str  # human-readable, sent in x-glm-saver-reason
    requested: str  # the model the client asked for
    key: str  # who pays, as the books name it
    prompt_tokens: int
    score: float | None = None
    label: str | None = None  # a speculative outcome (draft-accepted, ...); route stays the group
    ticket: Ticket | None = None  # the gate's grant for a paid tier (clamp, headroom, budget hold)
    fallbacks: tuple[Route, ...] = ()  # the tiers LiteLLM may fall back to, in order (none: no fallback)
    mock: Any = None  # the cascade's answer (a ModelResponse), replayed on the local group
    live: Any = None  # a draft committed on its prefix (cascade/live.py), streamed on the local group
    images: bool = False  # the prompt has images: only a tier that takes them may answer or be fallen back to

    @property
    def shown(self) -> str:
        return self.label or self.route


class ClientError(ProxyException):
    """A 400 whose body's `code` is OpenAI's (`context_length_exceeded`): LiteLLM's own to_dict puts
    the status there and drops `openai_code`; the status still comes from `code`."""

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = super().to_dict()
        body["code"] = str(self.openai_code)
        return body


def client_error(message: str, param: str | None = None, code: str | None = None) -> ProxyException:
    """A 400 in OpenAI's error shape (LiteLLM renders ProxyException as-is), with OpenAI's `code` when one names the problem."""
    return ClientError(message=message, type="invalid_request_error", param=param, code=400, openai_code=code)


def _cloud_busy_error(refusal: Refusal, images: bool) -> ProxyException:
    """Not for local and no paid tier may take it now: retry after the reset, or a 503 for the store."""
    not_local = "the local model does not take images" if images else "the prompt does not fit the local model"
    if refusal.reason == "store-down":
        return ProxyException(message=f"{refusal.detail}, and {not_local}", type="service_unavailable", param=None, code=503)
    retry_after = max(1, int(refusal.retry_in or 60))
    # The headroom's detail names the tier that had no room.
    message = f"rate limit reached ({refusal.detail}) and {not_local}; retry in {retry_after}s"
    return ProxyException(message=message, type="rate_limit_error", param=None, code=429, headers={"retry-after": str(retry_after)})


def _budget_error(detail: str, period: str) -> ProxyException:
    return ProxyException(message=f"{detail}; it renews with the next {period} period", type="budget_exceeded", param=None, code=429)


def _litellm_key_nearly_spent(auth: Any, view: RequestView, cloud: Prices) -> bool:
    """A LiteLLM virtual key (DB-backed) whose budget this request could overrun on Cerebras."""
    max_budget, spent = getattr(auth, "max_budget", None), getattr(auth, "spend", None) or 0.0
    if not max_budget:
        return False
    return bool(spent + cloud.cost(view.prompt_tokens, view.max_tokens or 0) >= max_budget)


# LiteLLM's names for "every model" in a key's models list.
_EVERY_MODEL = frozenset({"*", "all-proxy-models"})


def reach_of(auth: Any, entry_models: Collection[str]) -> Callable[[str], bool] | None:
    """Which model groups the plan's fallbacks may use for this key (None: any). A key that may name
    an entry model (glm-saver) reaches every tier, as its plan may send it to any; one limited to
    tiers reaches those alone (LiteLLM's wildcards too; an access group reaches none). LiteLLM's
    own check of fallbacks against a key's models is off (the shipped config): it knew no entry
    model, and refused every fallback of a key limited to glm-saver."""
    models = [str(model) for model in getattr(auth, "models", None) or []]
    if not models or _EVERY_MODEL.intersection(models) or any(model in entry_models for model in models):
        return None
    return lambda group: any(fnmatchcase(group, model) for model in models)


class Planner:
    def __init__(
        self,
        settings: GlmSaverSettings,
        classifier: Classifier,
        tiers: Tiers,
        gate: CloudGate,
        budgets: BudgetBook,
        speculator: Speculator,
        stats: RoutingStats,
    ) -> None:
        self.settings = settings
        self.classifier = classifier
        self.tiers = tiers
        self.gate = gate
        self.budgets = budgets
        self.speculator = speculator
        self.stats = stats
        self._config_key_aliases = frozenset(key.alias for key in settings.keys)

    @property
    def local(self) -> Tier:
        return self.tiers.local

    async def plan(self, data: Mapping[str, Any], view: RequestView, auth: Any, chat: bool) -> Plan:
        """The plan for one request; raises a ProxyException for a request that must be refused."""
        requested = str(data["model"])
        key = key_label(auth)
        start = Plan(self.local.name, "", "", requested, key, view.prompt_tokens, images=view.images)
        named = self.tiers.of_group(requested)
        if named is not None and not named.fits(view.prompt_tokens):
            self.stats.record_rejection("context-window")
            raise client_error(
                f"the prompt is about {view.prompt_tokens} tokens, more than the context window of {requested}", "messages", "context_length_exceeded"
            )
        if view.images:
            self._check_images(named)
        try:
            decision = await self._budget_decision(auth, key, view) or self.decide(view, named.name if named else self._override(data), chat)
        except RequestTooLarge as err:
            self.stats.record_rejection("context-window")
            raise client_error(str(err), param="messages", code="context_length_exceeded") from None
        except StoreUnavailable as err:
            return self._store_down(start, str(err))
        if named is not None and decision.reason == "override":
            decision = replace(decision, reason="direct", detail=f"the client asked for model {requested}")
        plan = Plan(decision.route, decision.reason, decision.detail, requested, key, view.prompt_tokens, score=decision.score, images=view.images)
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
        if self.tiers[plan.route].paid:
            plan = await self._through_gate(plan, view)
        return replace(plan, fallbacks=self._fallbacks(plan, reach_of(auth, self.settings.entry_models)))

    def decide(self, view: RequestView, override: Route | None = None, chat: bool = True) -> Decision:
        decision = decide(
            self.settings.strategy,
            view.prompt_tokens,
            self.tiers,
            lambda: self._classify(view),
            override,
            has_tools=view.has_tools,
            # The cascade drafts chat answers; text completions are routed as smart_routing.
            speculate_with_tools=self.settings.speculative.speculate_with_tools,
            # The cascade sends the prompt to local and to a paid tier: images only if all take them.
            speculate=chat and (not view.images or all(tier.images for tier in self.tiers.ladder)),
            images=view.images,
        )
        return decision if self.tiers[decision.route].configured else self._configured_instead(view, decision)

    def _configured_instead(self, view: RequestView, wanted: Decision) -> Decision:
        """Without its API key every call to a tier would fail: the nearest tier that has one and fits."""
        instead = next((tier for tier in self.tiers.nearest(wanted.route, view.prompt_tokens, view.images) if tier.configured), None)
        if instead is None:
            raise RequestTooLarge(
                f"the prompt is about {view.prompt_tokens} tokens, more than the local model's context window "
                f"({self.local.window}), and {wanted.route} is not configured (no API key)"
            )
        why = f"{wanted.route}-not-configured"
        return Decision(instead.name, why, moved_off(f"{wanted.route} has no API key", wanted.route, wanted.reason), wanted.score)

    async def _budget_decision(self, auth: Any, key: str, view: RequestView) -> Decision | None:
        """A spent budget decides on its own: `local` answers locally at no cost, `reject` refuses."""
        spent = await self.budgets.exhausted(key)
        if spent is not None:
            name, budget, use = spent
            detail = f"budget {name} spent ({usd(use.spent_usd)} of {usd(budget.limit_usd)}, {budget.period})"
            if budget.action == "reject" or not self.local.takes(view.prompt_tokens, view.images):
                self.stats.record_rejection("budget")
                raise _budget_error(detail, budget.period)
            return Decision(self.local.name, "budget", detail)
        if key not in self._config_key_aliases and _litellm_key_nearly_spent(auth, view, self.tiers.strongest.prices):
            detail = f"LiteLLM key budget {usd(auth.max_budget)} nearly spent ({usd(auth.spend or 0.0)})"
            if view.images and not self.local.images:
                self.stats.record_rejection("budget")
                raise ProxyException(message=f"{detail}, and the local model does not take images", type="budget_exceeded", param=None, code=429)
            return Decision(self.local.name, "key-budget", detail)
        return None

    def _check_images(self, named: Tier | None) -> None:
        """A 400 for images that no tier the request may go to takes (before any model is called)."""
        if named is not None and not named.images:
            why = f"model {named.group} does not take images"
        elif not any(tier.images and tier.configured for tier in self.tiers.ladder):
            why = f"none of the models it may go to ({', '.join(tier.group for tier in self.tiers.ladder)}) takes images"
        else:
            return
        self.stats.record_rejection("images")
        raise client_error(
            f"the request has image input, and {why}; send it without images, or configure a model that takes them "
            "(its model_list entry says model_info.supports_vision: true)",
            "messages",
            "image_input_not_supported",
        )

    async def _through_gate(self, plan: Plan, view: RequestView) -> Plan:
        """A paid tier only with the gate's ticket (clamp, headroom, budget hold). A tier without
        headroom hands the request to the nearest tier that can take it: a cheaper one whose window
        fits, else a stronger one with room (its own ticket holds the budget); else it is refused.
        A tier the budget cannot take hands it to a cheaper paid tier it can, else to `_over_budget`."""
        wanted = self.tiers[plan.route]
        granted = await self._admit(plan, wanted, view)
        if isinstance(granted, Ticket):
            return replace(plan, ticket=granted)
        if granted.budget is not None:
            return await self._within_budget(plan, view, wanted, granted)
        for tier in self.tiers.nearest(wanted.name, view.prompt_tokens, view.images):
            if not tier.configured:
                continue
            ticket = await self._admit(plan, tier, view) if tier.paid else None
            if isinstance(ticket, Refusal):
                if ticket.budget is None:
                    continue
                # Going up, a budget refusal ends the climb; going down, a cheaper tier may still fit.
                return self._over_budget(plan, ticket) if tier.rank > wanted.rank else await self._within_budget(plan, view, tier, ticket)
            self._count_shift(granted, wanted.name, tier.name)
            detail = moved_off(granted.detail, wanted.name, plan.reason)
            return replace(plan, route=tier.name, reason=granted.reason, detail=detail, label=None, ticket=ticket)
        self.stats.record_rejection(granted.reason)
        raise _cloud_busy_error(granted, view.images and self.local.fits(view.prompt_tokens))

    async def _admit(self, plan: Plan, tier: Tier, view: RequestView) -> Ticket | Refusal:
        cheaper_left = bool(self._cheaper_paid(tier, view))
        return await self.gate.admit(plan.key, tier.group, view.prompt_tokens, view.max_tokens, cheaper_left=cheaper_left)

    def _cheaper_paid(self, tier: Tier, view: RequestView) -> list[Tier]:
        """The configured paid tiers cheaper than `tier` that take the prompt, nearest first."""
        nearest = self.tiers.nearest(tier.name, view.prompt_tokens, view.images)
        return [other for other in nearest if other.paid and other.configured and other.rank < tier.rank]

    async def _within_budget(self, plan: Plan, view: RequestView, refused: Tier, refusal: Refusal) -> Plan:
        """The budget cannot take `refused`'s worst case: a cheaper paid tier whose worst case it
        takes answers (its ticket holds it, and reason "budget" keeps fallbacks from going up)."""
        for tier in self._cheaper_paid(refused, view):
            ticket = await self._admit(plan, tier, view)
            if isinstance(ticket, Ticket):
                logger.warning("glm_saver: %s would overrun a budget, routing to %s", refused.name, tier.name)
                detail = moved_off(refusal.detail, refused.name, plan.reason)
                return replace(plan, route=tier.name, reason="budget", detail=detail, label=None, ticket=ticket)
            if ticket.budget is not None:
                refusal = ticket
        return self._over_budget(plan, refusal)

    def _over_budget(self, plan: Plan, refusal: Refusal) -> Plan:
        """A budget the paid call would overrun: local (at no cost) when its window fits and the budget says so."""
        assert refusal.budget is not None
        if refusal.budget.budget.action == "reject" or not self.local.takes(plan.prompt_tokens, plan.images):
            self.stats.record_rejection("budget")
            raise _budget_error(refusal.detail, refusal.budget.budget.period)
        logger.warning("glm_saver: %s would overrun a budget, routing local", plan.route)
        return replace(plan, route=self.local.name, reason=refusal.reason, detail=moved_off(refusal.detail, plan.route, plan.reason), label=None)

    def _count_shift(self, refusal: Refusal, wanted: Route, taken: Route) -> None:
        if refusal.reason.startswith("rate-limit-"):
            self.stats.record_shift(refusal.reason)
            metrics.RATE_LIMIT_SHIFTS.labels(reason=refusal.reason).inc()
        logger.warning("glm_saver: %s may not take this request now, routing to %s (%s)", wanted, taken, refusal.reason)

    def _store_down(self, plan: Plan, why: str) -> Plan:
        refusal = Refusal("store-down", f"{why}; paid models are off until it answers")
        if not self.local.takes(plan.prompt_tokens, plan.images):
            self.stats.record_rejection("store-down")
            raise _cloud_busy_error(refusal, plan.images and self.local.fits(plan.prompt_tokens))
        logger.warning("glm_saver: %s; answering locally", why)
        return replace(plan, route=self.local.name, reason="store-down", detail=refusal.detail, fallbacks=())

    def _fallbacks(self, plan: Plan, reach: Callable[[str], bool] | None) -> tuple[Route, ...]:
        """Where LiteLLM may fall back to, nearest first, only where it cannot break the plan: never
        to a stronger tier for a request kept off it for money or limits, never to a tier whose
        window cannot take the prompt, never to a tier without its API key, never to a tier the
        key may not reach."""
        if plan.reason == "store-down":
            return ()
        rank = self.tiers[plan.route].rank
        kept_off = _kept_off(plan.reason)
        nearest = self.tiers.nearest(plan.route, plan.prompt_tokens, plan.images)
        return tuple(tier.name for tier in nearest if tier.configured and not (kept_off and tier.rank > rank) and (reach is None or reach(tier.group)))

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
        wanted = self.tiers.named(str(raw).strip().lower())
        if wanted is not None:
            return wanted.name
        self.stats.record_rejection("bad-override-header")
        names = ", ".join(self.tiers.names)
        raise client_error(f"header {self.settings.override_header} must be one of: {names}", param=self.settings.override_header)
