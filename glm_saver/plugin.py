"""The LiteLLM CustomLogger that wires the rooms into the proxy's hooks.

`async_pre_call_hook` asks the planner (routing/plan.py) for the request's one plan and applies it:
it is the only writer of the request. `async_pre_call_deployment_hook` holds the plan at the
deployment boundary: every call to a paid group, a fallback hop included, passes the gate (clamp,
headroom, budget hold) or is refused. The log events are the one place where facts come back.
A bug in the plugin must never cost the user a request nor money: anything unexpected in the
pre-call hook fails open to plain LiteLLM routing, which the deployment gate still governs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

import glm_saver.books.metrics as metrics
from glm_saver import proxy
from glm_saver.books.counters import RoutingStats
from glm_saver.books.headroom import CloudHeadroom, Quota
from glm_saver.books.history import History, Slot
from glm_saver.books.ledger import ROLES, Ledger, Tally
from glm_saver.books.store import STORE_HEALTH, StoreUnavailable, build_store, raise_first, side_by_side
from glm_saver.callers import caller_label
from glm_saver.cascade.live import LiveAnswers, stream_live
from glm_saver.cascade.speculator import PASSTHROUGH, Speculator, call_metadata, placeholder_mock
from glm_saver.classifier import Classifier, build_classifier
from glm_saver.deployments import ALWAYS_STOP, with_always_stop
from glm_saver.events import CALL_KEY, PLAN_KEY, SERVED_KEY, CallRecord, failure_of, read_failure, read_success
from glm_saver.failures import REFUSALS_KEY, no_model_answered, note_refusal, redacted, refused_fallback
from glm_saver.reasoning import guard_stream, history_for_cerebras, room_for_retry, spent_on_reasoning
from glm_saver.request import RequestView, asked_max_tokens, max_tokens_field, prompt_tokens
from glm_saver.routing.gate import TICKET_KEY, CloudGate, Refusal, Ticket
from glm_saver.routing.plan import Plan, Planner, client_error
from glm_saver.routing.tiers import Route, Tiers, build_tiers
from glm_saver.routing.validation import Invalid, request_problem, text_prompt_problem
from glm_saver.settings import ConfigError, GlmSaverSettings, load_config_file, settings_from_config

logger = logging.getLogger(__name__)

CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})
TEXT_CALL_TYPES = frozenset({"text_completion", "atext_completion"})
# The calls whose money the plugin governs (chat and text completions, every model name it routes).
GOVERNED_CALL_TYPES = CHAT_CALL_TYPES | TEXT_CALL_TYPES
LIVE_KEY = "glm_saver_live"
# The failed call (group and fallback hop) whose reservation and holds the deployment failure hook
# gave back, so the log event of that same call does not give them back again.
FAILED_KEY = "glm_saver_failed"
# Kept on LiteLLM's logging object of a request: the metadata of its first call to a deployment.
FIRST_CALL_KEY = "glm_saver_first_call_metadata"
# What the plugin writes into a request's metadata for its later hooks and the books. A client's own
# copy is dropped first: a ticket in it would pass the gate on a fallback hop (no clamp, no budget
# hold), a served count or a call role would book a Cerebras answer as free or to another key.
OWN_METADATA = (PLAN_KEY, TICKET_KEY, CALL_KEY, SERVED_KEY, LIVE_KEY, FAILED_KEY, REFUSALS_KEY)
# Request fields a client's `extra_body` must not carry: LiteLLM merges it over what it sends, past the
# plan and the gate. The prompt and the answer's length and count size the clamp, the headroom
# reservation and the budget hold; `stream` decides how the answer is read, and so booked.
GOVERNED_FIELDS = frozenset({"model", "messages", "prompt", "tools", "functions", "max_tokens", "max_completion_tokens", "n", "best_of", "stream"})


def _ascii_header(value: str) -> str:
    """HTTP header values must be latin-1; keep them plain ASCII and short."""
    return value.encode("ascii", "replace").decode("ascii").replace("\n", " ")[:300]


def _drop_client_copies(data: dict[str, Any]) -> None:
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        for name in OWN_METADATA:
            metadata.pop(name, None)


def _drop_governed_extra_body(kwargs: dict[str, Any]) -> None:
    """The call goes as the plan and the gate made it, whatever the client put in `extra_body`."""
    extra = kwargs.get("extra_body")
    if isinstance(extra, Mapping) and not GOVERNED_FIELDS.isdisjoint(extra):
        kwargs["extra_body"] = {name: value for name, value in extra.items() if name not in GOVERNED_FIELDS}


def _view_of(data: Mapping[str, Any], chat: bool) -> RequestView:
    """A text completion is judged like a chat request whose one user message is its prompt."""
    if chat:
        return RequestView.from_data(data)
    prompt = data.get("prompt")
    text = prompt if isinstance(prompt, str) else " ".join(part for part in prompt or [] if isinstance(part, str)) if isinstance(prompt, list) else ""
    return RequestView.from_data({**data, "messages": [{"role": "user", "content": text}]})


# The books' rows of the cascade: its answers (by route label, with the speculator's cloud_label) and its internal calls (by role).
_CASCADE_ROUTES = ("draft-accepted", "draft-verified", "draft-corrected", "draft", "verify")


def _cascade_books(books: Mapping[str, Any], cloud_label: str) -> dict[str, Any]:
    """What the cascade's calls cost and saved, read from the books (booked once, there)."""
    routes, roles = books.get("by_route") or {}, books.get("by_role") or {}
    saved = sum(routes[name]["savings_usd"] for name in (*_CASCADE_ROUTES, cloud_label) if name in routes)
    return {"by_role": {role: roles.get(role) or Tally().view() for role in ROLES}, "cloud_cost_saved": round(saved, 8)}


def _refusal_error(refusal: Refusal, group: str) -> Exception:
    """A paid hop the gate refused: LiteLLM treats it as that deployment failing."""
    from litellm.exceptions import RateLimitError, ServiceUnavailableError

    message = f"glm_saver: {group} may not take this request now ({refusal.reason}: {refusal.detail})"
    if refusal.reason == "store-down":
        return ServiceUnavailableError(message=message, llm_provider="cerebras", model=group)
    return RateLimitError(message=message, llm_provider="cerebras", model=group)


def _empty_answer_error(message: str) -> ProxyException:
    """The model answered, but with nothing the client could use: a 502 that says why."""
    return ProxyException(message=f"glm_saver: {message}; raise max_tokens or lower reasoning_effort", type="empty_answer", param="max_tokens", code=502)


class GlmSaver(CustomLogger):
    def __init__(self, settings: GlmSaverSettings, config: Mapping[str, Any] | None = None, config_dir: Path | None = None) -> None:
        super().__init__()
        config = config or {}
        self.settings = settings
        self.classifier: Classifier = build_classifier(settings.classifier)
        self.tiers: Tiers = build_tiers(settings, config, self.classifier)
        self.cloud_configured = self.tiers.strongest.configured
        self.stats = RoutingStats()
        paid = [tier.group for tier in self.tiers.ladder if tier.paid]
        # The entry models are Cerebras deployments too when the plugin is bypassed (shipped config).
        self._cloud_groups = frozenset({*paid, *settings.entry_models})
        self._governed_models = frozenset({*settings.tier_groups, *settings.entry_models})
        self.headroom: CloudHeadroom | None = None
        if settings.rate_limits.enabled:
            # Cerebras limits each model on its own: one quota per paid tier (entry models share the strongest's).
            store = build_store(Quota, settings, config, namespace="quota")
            self.headroom = CloudHeadroom(store, settings.rate_limits, key=settings.cloud_group, groups=paid)
        self.ledger = Ledger(settings, config, config_dir or Path.cwd())
        history_store = build_store(Slot, settings, config, namespace="history", sqlite_path=(config_dir or Path.cwd()) / settings.sqlite_path)
        # On Redis the history is counters every proxy increments, over the books' link.
        self.history = History(getattr(history_store, "link", history_store), settings.history_minutes, settings.tier_groups)
        self.gate = CloudGate(self.headroom, self.ledger.budgets, self.ledger.prices_of, settings.rate_limits)
        self.speculator = Speculator(settings, config, cloud_exhausted=self._unavailable, cloud_gate=self.gate)
        self.live = LiveAnswers(settings.speculative.draft_timeout)  # committed drafts awaiting their stream
        self.planner = Planner(
            settings,
            self.classifier,
            self.tiers,
            self.gate,
            self.ledger.budgets,
            self.speculator,
            self.stats,
        )

    # ---- the decision -------------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str) -> dict[str, Any]:
        if call_type not in GOVERNED_CALL_TYPES:
            return data
        _drop_client_copies(data)
        if data.get("model") not in self._governed_models:
            return data
        chat = call_type in CHAT_CALL_TYPES
        if chat:
            self._validate(data, request_problem)
        elif self._may_reach_cerebras(str(data["model"])):
            self._validate(data, text_prompt_problem)
        try:
            plan = await self.planner.plan(data, _view_of(data, chat), user_api_key_dict, chat)
        except ProxyException:
            raise
        except Exception:
            # Fail open: plain LiteLLM routing, which the deployment gate still holds to the money rules.
            logger.exception("glm_saver: routing failed; passing the request to LiteLLM unchanged")
            self.stats.record_plugin_error()
            return data
        self._apply(data, plan)
        return data

    def _may_reach_cerebras(self, model: str) -> bool:
        """An entry model or a paid group (a free group's server may take what Cerebras cannot)."""
        tier = self.tiers.of_group(model)
        return tier is None or tier.paid

    def _validate(self, data: Mapping[str, Any], problem_of: Callable[[Any], Invalid | None]) -> None:
        """A malformed request is a 400 here, before any model sees it (a bug in the check fails open)."""
        try:
            problem = problem_of(data)
        except Exception:
            logger.exception("glm_saver: request validation failed; passing the request on unchecked")
            self.stats.record_plugin_error()
            return
        if problem is not None:
            self.stats.record_rejection("invalid-request")
            raise client_error(problem.message, param=problem.param)

    async def _unavailable(self, group: str) -> bool:
        """Whether a call to this paid group now would surely fail (no key, rate-limited until a reset, no store)."""
        return not self._configured(group) or await self._resting(group) is not None

    async def _resting(self, group: str) -> Refusal | None:
        """Why a configured paid group may not be called now (a 429's rest, the day spent, no store)."""
        if self.headroom is None:
            return None
        try:
            rest = await self.headroom.resting(group)
        except StoreUnavailable as err:
            return Refusal("store-down", f"{err}; paid models are off until it answers")
        return None if rest is None else Refusal(rest.reason, rest.detail, rest.retry_in)

    def _configured(self, group: str) -> bool:
        tier = self.tiers.of_group(group)
        return tier.configured if tier is not None else self.cloud_configured

    def _apply(self, data: dict[str, Any], plan: Plan) -> None:
        """The only writer of the request: its group, clamp, fallbacks, the cascade's answer, the tag."""
        data["model"] = group = self.tiers[plan.route].group
        if plan.ticket is not None:
            data[max_tokens_field(data)] = plan.ticket.max_tokens
        if plan.fallbacks:
            # The plan's own list replaces router_settings.fallbacks for this request (LiteLLM's request-level fallbacks).
            data["fallbacks"] = [{group: [self.tiers[name].group for name in plan.fallbacks]}]
        else:
            data["disable_fallbacks"] = True
        if plan.mock is not None:
            data["mock_response"] = plan.mock
        metadata = data.setdefault("metadata", {})
        metadata[REFUSALS_KEY] = []  # the paid hops the gate refuses, for the failure hook
        if plan.live is not None:
            # LiteLLM holds an empty answer; the streaming iterator hook sends the live draft instead.
            data["mock_response"] = placeholder_mock(plan.prompt_tokens)
            metadata[LIVE_KEY] = live_id = str(data.get("litellm_call_id") or id(plan.live))
            self.live.hold(live_id, plan.live)
        metadata[PLAN_KEY] = {
            "requested": plan.requested,
            "route": plan.route,
            "reason": plan.reason,
            "detail": plan.detail,
            "strategy": self.settings.strategy,
            "score": plan.score,
            "label": plan.label,
            "key": plan.key,
            "prompt_tokens": plan.prompt_tokens,
        }
        if plan.ticket is not None:
            metadata[TICKET_KEY] = plan.ticket.model_dump()
        self.stats.record_decision(plan.shown, self.settings.strategy, plan.reason)
        metrics.series(metrics.REQUESTS, plan.shown, self.settings.strategy, plan.reason).inc()
        # The reason code only: the detail may quote keywords of the user's ask.
        logger.info("glm_saver: %s -> %s (%s, score %s)", plan.requested, plan.shown, plan.reason, plan.score)

    # ---- the plan held at the deployment boundary ---------------------------------------------

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        """Every chat/text call to a paid group goes with the gate's ticket or not at all; a prompt
        too big for the local window never reaches it, whatever hop LiteLLM is on."""
        kind = getattr(call_type, "value", call_type)
        if kind not in GOVERNED_CALL_TYPES:
            return None
        _drop_governed_extra_body(kwargs)
        metadata = kwargs.get("metadata")
        if not isinstance(metadata, dict):
            return None
        details = getattr(kwargs.get("litellm_logging_obj"), "model_call_details", None)
        if isinstance(details, dict):
            details.setdefault(FIRST_CALL_KEY, metadata)  # see async_log_failure_event
        group = metadata.get("model_group")
        depth = int(kwargs.get("fallback_depth") or 0)
        await self._give_back_earlier_hop(metadata, str(group), depth)
        planned = metadata.get(PLAN_KEY)
        tag: Mapping[str, Any] = planned if isinstance(planned, Mapping) else {}
        self._hold_window(tag, str(group))
        self._keep_always_stop(kwargs, metadata)
        if group not in self._cloud_groups:
            self._cap_free_output(kwargs, str(group))
            return None
        held = metadata.get(TICKET_KEY)
        ticket = Ticket.model_validate(held) if isinstance(held, Mapping) and held.get("group") == group else None
        if ticket is None or ticket.depth != depth:
            ticket = await self._ticket_for_hop(kwargs, metadata, tag, str(group), depth)
            metadata[TICKET_KEY] = ticket.model_dump()
        name = max_tokens_field(kwargs)
        asked = kwargs.get(name)
        kwargs[name] = min(asked, ticket.max_tokens) if isinstance(asked, int) else ticket.max_tokens
        for several in ("n", "best_of"):  # the ticket holds one answer; a client's allowed_openai_params would let n through
            kwargs.pop(several, None)
        self._fit_for_cerebras(kwargs, str(group), text=kind in TEXT_CALL_TYPES)
        return kwargs

    async def _give_back_earlier_hop(self, metadata: dict[str, Any], group: str, depth: int) -> None:
        """A fallback hop begins, so the hop before it is over: its ticket, copied into this hop's
        metadata, is given back here unless another path settled it. The failure's log event of a
        stream that broke before its first text may run only now and read this hop's metadata
        (LiteLLM's logging object holds the latest hop's), where it finds no ticket of its group."""
        held = metadata.get(TICKET_KEY)
        if not isinstance(held, Mapping) or (held.get("group"), held.get("depth")) == (group, depth):
            return
        metadata.pop(TICKET_KEY)
        await self.gate.give_back(Ticket.model_validate(held), "an earlier hop's")

    def _fit_for_cerebras(self, kwargs: dict[str, Any], group: str, text: bool) -> None:
        """What Cerebras would refuse or miss: reasoning fields on the history's assistant turns
        (a 400 otherwise), a text completion's logprobs count (LiteLLM sends it to the chat API,
        whose logprobs is a boolean, and brings none back to a text answer) and the group's
        default reasoning_effort. The client's value wins."""
        if text:
            kwargs.pop("logprobs", None)
            kwargs.pop("top_logprobs", None)
        messages = kwargs.get("messages")
        cleaned = history_for_cerebras(messages) if isinstance(messages, list) else None
        if cleaned is not None:
            kwargs["messages"] = cleaned  # a new list: the client's request itself is not changed
        effort = self.settings.reasoning_of(group).effort
        if effort is not None and kwargs.get("reasoning_effort") is None:
            kwargs["reasoning_effort"] = effort

    @staticmethod
    def _keep_always_stop(kwargs: dict[str, Any], metadata: Mapping[str, Any]) -> None:
        """The deployment's always_stop sequences go with the request's own `stop` (deployments.py)."""
        info = metadata.get("model_info")
        stops = with_always_stop(kwargs.get("stop"), info.get(ALWAYS_STOP) if isinstance(info, Mapping) else None)
        if stops is not None:
            kwargs["stop"] = stops

    def _cap_free_output(self, kwargs: dict[str, Any], group: str) -> None:
        """A free tier's answer is capped at its deployments' max_output_tokens: a local server asked
        for more (Cline asks 16,384) generates on, holding one of its few slots, past what it can send."""
        tier = self.tiers.of_group(group)
        cap = tier.max_output if tier is not None else None
        for name in ("max_tokens", "max_completion_tokens"):
            asked = kwargs.get(name)
            if cap is not None and isinstance(asked, int) and asked > cap:
                kwargs[name] = cap

    def _hold_window(self, tag: Mapping[str, Any], group: str) -> None:
        """A planned prompt never reaches a tier whose window is too small for it, on any hop."""
        tokens, tier = tag.get("prompt_tokens"), self.tiers.of_group(group)
        if isinstance(tokens, int) and tier is not None and not tier.fits(tokens):
            from litellm.exceptions import ContextWindowExceededError

            raise ContextWindowExceededError(
                message=f"glm_saver: the prompt ({tokens} tokens) exceeds the {group} window ({tier.window})", model=group, llm_provider="openai"
            )

    async def _ticket_for_hop(self, kwargs: Mapping[str, Any], metadata: Mapping[str, Any], tag: Mapping[str, Any], group: str, depth: int) -> Ticket:
        """A paid call the plan did not grant (a fallback hop, a request that bypassed the plan)."""
        call = metadata.get(CALL_KEY)
        key = str(tag.get("key") or (call.get("caller") if isinstance(call, Mapping) else None) or caller_label(metadata))
        tokens = tag.get("prompt_tokens")
        if not isinstance(tokens, int):
            messages = kwargs.get("messages")
            tokens = prompt_tokens(
                messages if isinstance(messages, list) else [{"role": "user", "content": str(kwargs.get("prompt") or "")}], kwargs.get("tools")
            )
        granted = await self.gate.admit(key, group, tokens, asked_max_tokens(kwargs), depth)
        if isinstance(granted, Refusal):
            logger.warning("glm_saver: refused a call to %s (%s)", group, granted.reason)
            note_refusal(metadata, group, granted)
            raise _refusal_error(granted, group)
        return granted

    # ---- answers coming back --------------------------------------------------------------------

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any, response: Any) -> Any:
        """A non-streamed Cerebras answer left empty because reasoning used the whole max_tokens is
        never handed to the client: it is asked again once with more room (through the gate, like
        any paid call), else the client gets a 502 that says why."""
        group = proxy.group_of_deployment((getattr(response, "_hidden_params", None) or {}).get("model_id"))
        if group not in self._cloud_groups or not spent_on_reasoning(response):
            return None
        used = int(getattr(getattr(response, "usage", None), "completion_tokens", 0) or 0)
        used = used or (asked_max_tokens(data) or 0)
        room = room_for_retry(used, self.settings.reasoning_of(str(group)).retry_room, self.settings.rate_limits.max_tokens_cap)
        why = f"{group} spent all {used} max_tokens on reasoning and returned no answer"
        if room is None:
            raise _empty_answer_error(f"{why}, and the clamp ({self.settings.rate_limits.max_tokens_cap}) leaves no room to retry")
        logger.warning("glm_saver: %s; asking once more with max_tokens %d", why, room)
        self.stats.record_failure(str(group), "reasoning-spent-budget")
        try:
            retried = await self._retry_with_room(data, str(group), room)
        except Exception as err:  # noqa: BLE001 - whatever failed, the client gets the 502 that says why
            raise _empty_answer_error(f"{why}; the retry with max_tokens {room} failed ({type(err).__name__})") from None
        if spent_on_reasoning(retried):
            raise _empty_answer_error(f"{why}; the retry with max_tokens {room} was empty too")
        return retried

    async def _retry_with_room(self, data: Mapping[str, Any], group: str, room: int) -> Any:
        """One more call to the same group with more room; the deployment hook gives it its own
        ticket (clamp, headroom, budget hold), so it can never go past a budget."""
        params = {key: data[key] for key in (*PASSTHROUGH, "reasoning_effort") if data.get(key) is not None}
        return await proxy.router().acompletion(
            model=group,
            messages=data.get("messages") or [],
            metadata=call_metadata(data, "retry"),
            max_tokens=room,
            disable_fallbacks=True,
            num_retries=0,
            stream=False,
            **params,
        )

    # ---- facts coming back --------------------------------------------------------------------

    def _route_of_group(self, group: str | None) -> Route | None:
        tier = self.tiers.of_group(group)
        return tier.name if tier is not None else None

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        tag = (data.get("metadata") or {}).get(PLAN_KEY)
        if not isinstance(tag, Mapping) or response is None:
            return None
        model_id = (litellm_call_info or {}).get("model_id") or (getattr(response, "_hidden_params", None) or {}).get("model_id")
        answered = self._route_of_group(proxy.group_of_deployment(model_id)) or tag["route"]
        if answered != tag["route"]:
            return {"x-glm-saver-route": answered, "x-glm-saver-reason": _ascii_header(f"fallback: {tag['route']} failed ({tag['reason']})")}
        if tag["reason"] == "direct":
            return None  # a group named by the client answered as asked: nothing was decided
        shown = tag.get("label") or tag["route"]  # a speculative answer is served by `route` as planned
        return {"x-glm-saver-route": shown, "x-glm-saver-reason": _ascii_header(f"{tag['reason']}: {tag['detail']}")}

    async def async_post_call_streaming_iterator_hook(  # type: ignore[override]  # yields SSE keep-alive comments (str) besides chunks
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """A draft committed on its prefix streams here, in place of the placeholder LiteLLM holds;
        a stream from Cerebras that reasoning left empty ends with an error, not as an empty answer
        (the chunks already sent cannot be taken back to retry); every other stream passes untouched,
        and one that breaks gives back what its call held."""
        metadata = request_data.get("metadata") or {}
        live = self.live.claim(metadata.get(LIVE_KEY))
        # The group of the hop this stream comes from: after a fallback, not the request's first.
        group = (_latest_hop_metadata(request_data) or metadata).get("model_group") or request_data.get("model")
        if live is not None:
            include_usage = bool((request_data.get("stream_options") or {}).get("include_usage"))
            stream = stream_live(live, response, metadata, include_usage, self.settings.speculative.keepalive_seconds)
        elif group in self._cloud_groups:
            stream = guard_stream(self._settled_if_broken(response, request_data), str(group))
        else:
            stream = self._settled_if_broken(response, request_data)
        async for item in stream:
            yield item

    async def _settled_if_broken(self, response: AsyncIterator[Any], request_data: Mapping[str, Any]) -> AsyncIterator[Any]:
        """A stream that breaks after it reached the client has no deployment failure hook, and on a
        fallback hop no log event either (LiteLLM logs a request's first failure only): its failure
        is settled here, unless the log event settled it first (the failed call's mark)."""
        try:
            async for chunk in response:
                yield chunk
        except Exception as err:
            call = _latest_hop_call(request_data)
            metadata = _metadata_of(call)
            if metadata is not None and _claim_failure(metadata):
                await self._settle_failure(read_failure(call, err))
            raise

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        record = read_success(kwargs, response_obj)
        kept = self.ledger.keeps(record.group)
        # Side by side on Redis: the headroom, the books, the budgets and the history of one answer
        # go in one round trip.
        # Only the steps with something to do: on Redis each step is a task of its own.
        steps = [*self._headroom_step(record), *([self.ledger.record(record)] if kept else [])]
        steps.append(self.history.observe(record, self.ledger.charge_of(record) if kept else None))
        raise_first(await side_by_side(steps, at_once=self.settings.batches_round_trips))
        if record.tag is None:
            return
        answered = self._route_of_group(record.group) or str(record.group)
        self.stats.record_answer(answered, record.tag["route"] if answered != record.tag["route"] else None)

    async def async_post_call_failure_hook(
        self, request_data: dict[str, Any], original_exception: Exception, user_api_key_dict: Any, traceback_str: str | None = None
    ) -> Any:
        """A routed request whose paid fallbacks the gate refused: the refusal's 429/503; every model
        unreachable or too slow: a 503/504, not LiteLLM's 500/408; any other error of a routed
        request reaches the client without the upstreams' URLs."""
        live = self.live.claim((request_data.get("metadata") or {}).get(LIVE_KEY))
        if live is not None:
            await live.close()
        tag = (request_data.get("metadata") or {}).get(PLAN_KEY)
        if not isinstance(tag, Mapping):
            return None
        refused = refused_fallback(original_exception, str(tag["route"]), request_data["metadata"].get(REFUSALS_KEY))
        return refused or no_model_answered(original_exception, f"{tag['route']} and its fallback") or redacted(original_exception)

    async def async_post_call_failure_deployment_hook(
        self, request_data: Mapping[str, Any], exception: Exception, call_type: Any, fallback_depth: int | None = None
    ) -> None:
        """Every failed call to a deployment, each fallback hop included. LiteLLM logs one failure
        per request (async_log_failure_event, its first), so a later hop's failure (local's 500,
        then Cerebras' 401) would keep its headroom reservation and budget hold for good: the
        failure is settled here, and the log event passes over the call settled here."""
        metadata = request_data.get("metadata")
        if not isinstance(metadata, dict):
            return  # no place to mark it settled: the log event settles it, if LiteLLM logs it
        if not _claim_failure(metadata):
            return  # settled already, by the log event of this very call
        record = failure_of(metadata, exception)
        metadata.pop(TICKET_KEY, None)  # given back: a retry of this hop asks the gate anew
        await self._settle_failure(record)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        """LiteLLM logs a request's first failure only, from a task that may run after a fallback
        hop began (a stream that broke before its first text falls back at once) and then finds
        that hop's kwargs on the logging object: the first call's metadata says which call failed."""
        first = kwargs.get(FIRST_CALL_KEY)
        metadata = first if isinstance(first, dict) else _metadata_of(kwargs) or {}
        if not _claim_failure(metadata):
            return  # settled by the deployment failure hook, or as a broken stream
        await self._settle_failure(read_failure(kwargs, metadata=metadata))

    async def _settle_failure(self, record: CallRecord) -> None:
        """A failed call: its reservation given back, counted and logged (once per call). Its budget
        hold is released, or, for a paid stream cut after text was sent, turned into the charge of
        what it spent (the provider bills the tokens it delivered)."""
        spent = record.ticket is not None and record.completion_tokens > 0 and self.ledger.keeps(record.group)
        charge = self.ledger.charge_of(record) if spent else None
        settle = self.ledger.record(record) if spent else self._release_holds(record)
        steps = [*self._headroom_step(record), self.history.observe(record, charge), settle]
        raise_first(await side_by_side(steps, at_once=self.settings.batches_round_trips))
        if record.tag is None:
            return
        what = "resting" if record.status == 429 and record.headers is None else str(record.status or record.error)
        self.stats.record_failure(self._route_of_group(record.group) or str(record.group), what)
        booked = f" after {record.completion_tokens} tokens, booked" if spent else ""
        logger.warning("glm_saver: %s failed with %s%s; LiteLLM falls back if it can", record.group, record.status or record.error, booked)

    async def _release_holds(self, record: CallRecord) -> None:
        if record.ticket is None:
            return
        try:
            await self.ledger.budgets.release(record.ticket.key, record.ticket.id)
        except StoreUnavailable as err:
            logger.error("glm_saver: a failed call's budget hold was not released: %s (it expires on its own)", err)

    def _headroom_step(self, record: CallRecord) -> list[Awaitable[None]]:
        """The headroom's update for a call to a paid group; none for any other call (the headroom
        has nothing to learn from it)."""
        return [self._observe_cloud(record)] if self.headroom is not None and record.group in self._cloud_groups else []

    async def _observe_cloud(self, record: CallRecord) -> None:
        """Fold Cerebras' rate-limit headers into the headroom and release the call's reservation."""
        if self.headroom is None:
            return
        reservation = record.ticket.reservation if record.ticket is not None and self.gate.settled.first(record.ticket) else None
        try:
            quota = await self.headroom.observe(
                record.headers, reservation, record.rate_limited, record.received_at, group=record.group, answered=record.error is None
            )
        except StoreUnavailable as err:
            logger.error("glm_saver: cerebras' headroom not updated: %s", err)
            return
        group = self.headroom.key_of(record.group)
        metrics.record_quota(group, quota)
        if record.rate_limited:
            metrics.CEREBRAS_429.labels(group=group).inc()
            self.stats.record_rate_limited()
            wait = max(0.0, quota.exhausted_until - time.time())
            logger.warning("glm_saver: %s answered 429; no request goes to it for %.1fs", record.group, wait)

    async def async_filter_deployments(
        self, model: str, healthy_deployments: list[dict[str, Any]], messages: Any, request_kwargs: dict[str, Any] | None = None, parent_otel_span: Any = None
    ) -> list[dict[str, Any]]:
        """While Cerebras is known to refuse (429 window, day spent, no store to account in), offer
        LiteLLM no Cerebras deployment, so direct requests and fallbacks go local instead. A call that
        already holds the gate's ticket for this group was admitted moments ago: no second read of
        the store (a Redis round trip) for it."""
        if model not in self._cloud_groups or _ticketed(request_kwargs, model) or not self._configured(model):
            return healthy_deployments
        resting = await self._resting(model)
        if resting is None:
            return healthy_deployments
        metadata = (request_kwargs or {}).get("metadata")
        if isinstance(metadata, Mapping):
            note_refusal(metadata, model, resting)
        logger.warning("glm_saver: %s may not be called now; it has no deployment until it may", model)
        return []

    # ---- state for /health and /stats ---------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if STORE_HEALTH.ok else "degraded",
            "store": STORE_HEALTH.describe(self.settings.state),
            "plugin": "glm-saver",
            "strategy": self.settings.strategy,
            "entry_models": list(self.settings.entry_models),
            "local": {"group": self.settings.local_group, "context_window": self.tiers.local.window},
            "cerebras": {"group": self.settings.cloud_group, "configured": self.cloud_configured, "context_window": self.tiers.strongest.window},
            **({"tiers": self.tiers.describe()} if len(self.tiers.ladder) > 2 else {}),
        }

    async def stats_snapshot(self) -> dict[str, Any]:
        try:
            headroom = await self.headroom.describe() if self.headroom is not None else None
            books = await self.ledger.describe()
            history = await self.history.describe()
            tiers = await self._tiers_snapshot(books) if len(self.tiers.ladder) > 2 else None
        except StoreUnavailable as err:
            headroom, books, history, tiers = None, {"error": str(err), "unbooked": self.ledger.unbooked}, None, None
        return {
            "strategy": self.settings.strategy,
            "cerebras_configured": self.cloud_configured,
            **self.stats.snapshot(),
            "books": books,
            **({"tiers": tiers} if tiers is not None else {}),
            "cerebras_headroom": headroom,
            "speculative": {**self.speculator.stats.snapshot(), **_cascade_books(books, self.speculator.cloud_label)},
            "store": STORE_HEALTH.describe(self.settings.state),
            "history": history,
            "recent_decisions": self.history.recent(),
        }

    async def _tiers_snapshot(self, books: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each tier's share of the requests and tokens, its cost and savings against always-strongest,
        read from the books' per-model rows, and its own Cerebras headroom."""
        rows = books.get("by_model") or {}
        tallies = [rows.get(tier.group) or Tally().view() for tier in self.tiers.ladder]
        requests = sum(tally["requests"] for tally in tallies)
        tokens = sum(tally["total_tokens"] for tally in tallies)
        described = []
        for tier, tally, about in zip(self.tiers.ladder, tallies, self.tiers.describe(), strict=True):
            headroom = await self.headroom.describe(tier.group) if self.headroom is not None and tier.paid else None
            described.append(
                {
                    **about,
                    "requests": tally["requests"],
                    "total_tokens": tally["total_tokens"],
                    "request_share": round(tally["requests"] / requests, 4) if requests else 0.0,
                    "token_share": round(tally["total_tokens"] / tokens, 4) if tokens else 0.0,
                    "cost_usd": tally["cost_usd"],
                    "savings_usd": tally["savings_usd"],
                    "headroom": headroom,
                }
            )
        return described


def _attempt(metadata: Mapping[str, Any]) -> str:
    """Which call of a request the metadata is of: its group and fallback hop (a hop's metadata is
    a copy of the one before it, a mark included)."""
    return f"{metadata.get('model_group')}#{metadata.get('attempted_fallbacks') or 0}"


def _claim_failure(metadata: dict[str, Any]) -> bool:
    """Mark the call's failure as settled here; False if it already was. No await between the look
    and the mark: a broken stream's log event and its iterator may both try, only one settles."""
    if metadata.get(FAILED_KEY) == _attempt(metadata):
        return False
    metadata[FAILED_KEY] = _attempt(metadata)
    return True


def _metadata_of(call: Any) -> dict[str, Any] | None:
    """The metadata of a call's kwargs (LiteLLM's `litellm_params.metadata`), if it has any."""
    params = call.get("litellm_params") if isinstance(call, Mapping) else None
    metadata = params.get("metadata") if isinstance(params, Mapping) else None
    return metadata if isinstance(metadata, dict) else None


def _latest_hop_call(request_data: Mapping[str, Any]) -> Any:
    """The kwargs of the call a stream comes from: LiteLLM's logging object of the request holds
    the latest hop's (the request's own metadata is the first hop's)."""
    return getattr(request_data.get("litellm_logging_obj"), "model_call_details", None)


def _latest_hop_metadata(request_data: Mapping[str, Any]) -> dict[str, Any] | None:
    return _metadata_of(_latest_hop_call(request_data))


def _ticketed(request_kwargs: Mapping[str, Any] | None, group: str) -> bool:
    metadata = (request_kwargs or {}).get("metadata")
    held = metadata.get(TICKET_KEY) if isinstance(metadata, Mapping) else None
    return isinstance(held, Mapping) and held.get("group") == group


def plugin_from_proxy_config() -> GlmSaver:
    """Build the plugin from the proxy's config and mount its routes; a bad config stops the proxy."""
    from glm_saver.api import install_routes

    try:
        config = load_config_file(proxy.config_path())
        plugin = GlmSaver(settings_from_config(config), config, Path(proxy.config_path()).resolve().parent)
    except ConfigError as err:
        # Exit here: raising would bury the message under LiteLLM's 300-line startup traceback.
        print(f"glm_saver: {err}\nThe proxy did not start.", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    install_routes(plugin)
    from glm_saver.logs import configure_logging

    configure_logging(plugin.settings.logging, Path(proxy.config_path()).resolve().parent)  # rotating file + console, redacted
    return plugin
