"""The draft/verify cascade of the speculative strategies (DESIGN.md, "Speculative decoding over
chat APIs, honestly").

    1..N drafts on the local group at once, each bounded by max_draft_tokens and draft_timeout
    -> scored (draft_scoring.py) -> the best draft and its confidence
    -> confidence >= min_confidence:        the draft is the answer, no cloud call    draft-accepted
       confidence >= verify_min_confidence: one Cerebras call gets the draft and answers
                                            ACCEPT (the draft stands)                 draft-verified
                                            or the corrected answer                   draft-corrected
       below:                               Cerebras answers the request itself       cloud

An answer the cascade already holds goes back through LiteLLM as `mock_response` on the local
group: LiteLLM streams it (SSE, usage chunk included) when the client asked for a stream, and prices
it at 0. The internal calls that made it are logged by LiteLLM on their own, so they carry the
caller's key fields and their role (draft / verify) in their metadata; their tokens and cost are
counted per role here. A "cloud" answer is the client's request itself, re-routed to Cerebras
(real streaming, LiteLLM's fallback to local), counted as the "final" role.

A streamed request (Cline always streams) drafts in streams instead, read to `commit_tokens`
(live.py): a draft that finished by then is judged as above; an unfinished trusted prefix is the
answer and streams on live (the plan carries it, the plugin's streaming iterator hook sends it); an
unfinished unsure one is cancelled and Cerebras answers the request itself, live.

Failures: no draft at all (local down, every draft failed) -> cloud; Cerebras failing, timing out,
rate-limited or without headroom at verify time -> the best draft, with the reason in the headers.
Parallel drafts that the local server refuses (429/503) fall back to one draft at a time for
`parallel_retry_seconds`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from glm_saver import proxy
from glm_saver.callers import caller_label
from glm_saver.cascade.live import LiveDraft, close_all
from glm_saver.cascade.scoring import DraftFacts, Score, best_draft, score_drafts
from glm_saver.cascade.stats import SpeculativeStats
from glm_saver.events import CALL_KEY
from glm_saver.failures import is_unreachable
from glm_saver.layers.keepalive import hold_open
from glm_saver.reasoning import room_for_retry, spent_on_reasoning, with_room
from glm_saver.request import RequestView, prompt_tokens
from glm_saver.routing.gate import TICKET_KEY, CloudGate, Ticket
from glm_saver.routing.policy import Decision
from glm_saver.routing.tiers import tier_name_of
from glm_saver.settings import GlmSaverSettings, SpeculativeSettings

logger = logging.getLogger(__name__)

Band = Literal["accept", "verify", "cloud"]

# LiteLLM's fields naming the calling key, copied onto internal calls so its own logs attribute them.
CALLER_KEYS = (
    "user_api_key",
    "user_api_key_hash",
    "user_api_key_alias",
    "user_api_key_user_id",
    "user_api_key_team_id",
    "user_api_key_org_id",
    "user_api_key_end_user_id",
)
# Request parameters the internal calls keep (sampling, format, tools); never stream options.
PASSTHROUGH = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
)
# A local server that cannot take more requests at once answers one of these.
BUSY = frozenset({"rate-limited", "busy"})

VERIFY_INSTRUCTION = (
    "Below, between <draft> tags, is a draft answer to my last message above. If the draft is correct "
    "and complete, reply with exactly ACCEPT and nothing else. Otherwise reply with the complete, "
    "corrected answer to my last message, written as if you were answering it directly, without "
    "mentioning the draft.\n\n<draft>\n{draft}\n</draft>"
)
_ACCEPTANCE = re.compile(r"[\W_]*accept(ed)?[\W_]*", re.IGNORECASE)


class _EmptyVerdict(Exception):
    """Cerebras answered the verify with nothing usable; the message is the short reason."""


# ---- pure pieces --------------------------------------------------------------------------------


def band(confidence: float, options: SpeculativeSettings) -> Band:
    if confidence >= options.min_confidence:
        return "accept"
    if confidence >= options.verify_min_confidence:
        return "verify"
    return "cloud"


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a pydantic/OpenAI object or of a dict alike."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _tool_call(call: Any) -> dict[str, Any]:
    function = _get(call, "function") or {}
    return {
        "id": _get(call, "id") or "",
        "type": "function",
        "function": {"name": _get(function, "name") or "", "arguments": _get(function, "arguments") or ""},
    }


@dataclass(frozen=True)
class Draft:
    """One answer of an internal call (a draft, or Cerebras' verdict on one)."""

    content: str | None
    tool_calls: tuple[dict[str, Any], ...] = ()
    finish_reason: str | None = None
    logprobs: tuple[float, ...] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def text(self) -> str:
        if self.tool_calls:
            calls = "\n".join(f"call tool {c['function']['name']} with arguments {c['function']['arguments']}" for c in self.tool_calls)
            return f"{self.content or ''}\n{calls}".strip()
        return self.content or ""

    def facts(self) -> DraftFacts:
        arguments = tuple(call["function"]["arguments"] for call in self.tool_calls)
        return DraftFacts(self.text, self.finish_reason, self.logprobs, arguments)


def draft_from_response(response: Any) -> Draft:
    choices = _get(response, "choices") or []
    if not choices:
        return Draft(content=None)
    choice = choices[0]
    message = _get(choice, "message") or {}
    entries = _get(_get(choice, "logprobs"), "content")
    logprobs = tuple(float(_get(entry, "logprob")) for entry in entries if isinstance(_get(entry, "logprob"), (int, float))) if entries else None
    usage = _get(response, "usage")
    return Draft(
        content=_get(message, "content"),
        tool_calls=tuple(_tool_call(call) for call in _get(message, "tool_calls") or []),
        finish_reason=_get(choice, "finish_reason"),
        logprobs=logprobs or None,
        prompt_tokens=int(_get(usage, "prompt_tokens") or 0),
        completion_tokens=int(_get(usage, "completion_tokens") or 0),
    )


def verify_messages(messages: Sequence[Mapping[str, Any]], draft: Draft) -> list[dict[str, Any]]:
    """The conversation as the client sent it, plus one user turn asking Cerebras to check the draft."""
    return [*(copy.deepcopy(dict(message)) for message in messages), {"role": "user", "content": VERIFY_INSTRUCTION.format(draft=draft.text)}]


def is_acceptance(verdict: Draft) -> bool:
    return not verdict.tool_calls and bool(_ACCEPTANCE.fullmatch(verdict.content or ""))


def _limit(asked: int | None, cap: int) -> int:
    return cap if asked is None else max(1, min(asked, cap))


def draft_params(data: Mapping[str, Any], view: RequestView, options: SpeculativeSettings, parallel: bool) -> dict[str, Any]:
    params = {key: data[key] for key in PASSTHROUGH if data.get(key) is not None}
    params["max_tokens"] = _limit(view.max_tokens, options.max_draft_tokens)
    if parallel and options.draft_temperature is not None:
        params["temperature"] = options.draft_temperature  # agreement means something only between varied drafts
    if options.request_logprobs:
        params["logprobs"] = True
    return params


def verify_params(data: Mapping[str, Any], ticket: Ticket) -> dict[str, Any]:
    params = {key: data[key] for key in PASSTHROUGH if data.get(key) is not None}
    params["max_tokens"] = ticket.max_tokens  # the gate's clamp: Cerebras reserves it up front
    return params


def call_metadata(data: Mapping[str, Any], role: str, ticket: Ticket | None = None) -> dict[str, Any]:
    """Metadata of an internal call: who asked (LiteLLM's own key fields), what the call is for, and
    the gate's ticket when it goes to a paid model."""
    source = data.get("metadata") or {}
    metadata = {key: source[key] for key in CALLER_KEYS if isinstance(source.get(key), (str, int, float))}
    metadata[CALL_KEY] = {"role": role, "caller": caller_label(source), "request_id": data.get("litellm_call_id")}
    if ticket is not None:
        metadata[TICKET_KEY] = ticket.model_dump()
    return metadata


def failure_kind(error: BaseException) -> str:
    """A short, prompt-free name for why an internal call failed."""
    status = getattr(error, "status_code", None)
    name = type(error).__name__
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in name or status == 408:
        return "timeout"
    if status == 429 or "RateLimit" in name:
        return "rate-limited"
    if status == 503 or "ServiceUnavailable" in name:
        return "busy"
    if is_unreachable(error):
        return "unreachable"
    return f"http-{status}" if isinstance(status, int) else name


@dataclass(frozen=True)
class Outcome:
    """What the cascade decided: an answer it holds (`mock`, served on local), a draft committed on
    its prefix that streams on live (`live`, served on local), or Cerebras answers."""

    decision: Decision
    mock: Any = None
    live: LiveDraft | None = None


def placeholder_mock(prompt_tokens: int) -> Any:
    """What LiteLLM holds for a live answer: the streaming iterator hook sends the draft instead."""
    import litellm

    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens}
    return litellm.ModelResponse(choices=[{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}], usage=usage)


def finished_draft(live: LiveDraft, prompt_tokens: int) -> Draft:
    """A streamed draft that ended before the commit point, as a whole draft."""
    usage = live.usage
    return Draft(
        content=live.content if live.content or not live.calls else None,
        tool_calls=live.tool_calls,
        finish_reason=live.finish_reason,
        logprobs=tuple(live.logprobs) or None,
        prompt_tokens=int(_get(usage, "prompt_tokens") or 0) or prompt_tokens,
        completion_tokens=int(_get(usage, "completion_tokens") or 0) or live.tokens,
    )


def build_mock(answer: Draft, prompt_tokens: int) -> Any:
    """The answer as a LiteLLM ModelResponse, with the usage a single call would have reported."""
    import litellm

    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.tool_calls:
        message["tool_calls"] = [dict(call) for call in answer.tool_calls]
    finish = answer.finish_reason or ("tool_calls" if answer.tool_calls else "stop")
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": answer.completion_tokens, "total_tokens": prompt_tokens + answer.completion_tokens}
    return litellm.ModelResponse(choices=[{"index": 0, "message": message, "finish_reason": finish}], usage=usage)


class ParallelGate:
    """Whether to draft in parallel now: not for a while after the local server refused it."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._until = float("-inf")

    def allows(self) -> bool:
        return self.clock() >= self._until

    def refuse(self) -> None:
        self._until = self.clock() + self.seconds


def _summary(score: Score, count: int) -> str:
    return f"{score.summary()}; best of {count} draft{'s' if count > 1 else ''}"


# ---- the cascade --------------------------------------------------------------------------------


class Speculator:
    def __init__(
        self,
        settings: GlmSaverSettings,
        config: Mapping[str, Any] | None = None,
        cloud_exhausted: Callable[[str], Awaitable[bool]] | None = None,
        cloud_gate: CloudGate | None = None,
    ) -> None:
        self.settings = settings
        self.options = settings.speculative
        self.stats = SpeculativeStats()
        self.gate = ParallelGate(self.options.parallel_retry_seconds)
        self._cloud_exhausted = cloud_exhausted
        self._cloud_gate = cloud_gate
        # Which paid tiers verify drafts and answer for a rejected one (the strongest unless configured).
        self._verifier = self.options.verify_group or settings.cloud_group
        self._answerer = self.options.answer_group or settings.cloud_group
        # ... and their tier names, which the details name (`cerebras` for the strongest, as with two tiers).
        names = tier_name_of(settings.tier_groups)
        self._verify_tier, self._answer_tier = names.get(self._verifier, self._verifier), names.get(self._answerer, self._answerer)
        # The route a rejected draft's answer is shown and booked under: `cloud` with two tiers (one
        # paid tier, nothing to tell apart), else it names the tier that answers.
        self.cloud_label = "cloud" if len(settings.tier_groups) == 2 else f"cloud-{self._answer_tier}"

    def draft_count(self) -> int:
        return 1 if self.settings.strategy == "speculative_decoding" else self.options.max_concurrent_drafts

    async def answer(self, data: Mapping[str, Any], view: RequestView, decision: Decision, key: str = "unknown") -> Outcome:
        """Run the cascade for one request (it writes nothing to the request).

        Returns route "local" with the answer it holds, or the answering tier (label `cloud_label`,
        the strongest unless `answer_group` says) for the request to be answered by it. `key` pays for
        the verify call.
        """
        if data.get("stream") is True:
            return await self._streamed(data, view, decision, key)
        drafts, failures = await self._drafts(data, view)
        if not drafts:
            return self._no_drafts(failures, decision)
        scores = score_drafts([draft.facts() for draft in drafts], self.options.confidence_without_evidence)
        index = best_draft(scores)
        return await self._judge(data, view, decision, drafts[index], scores[index], _summary(scores[index], len(drafts)), key)

    def _no_drafts(self, failures: list[str], decision: Decision) -> Outcome:
        why = ", ".join(sorted(set(failures))) or "no answer"
        return self._cloud("drafts-failed", f"no local draft ({why}); {self._answer_tier} answers", decision)

    async def _judge(self, data: Mapping[str, Any], view: RequestView, decision: Decision, draft: Draft, score: Score, summary: str, key: str) -> Outcome:
        """A whole draft, scored: the answer, verified by Cerebras, or Cerebras answers instead."""
        chosen = band(score.confidence, self.options)
        if chosen == "accept":
            return self._with_draft(view, decision, draft, "draft-accepted", "confident", summary, spent=(0, 0))
        if chosen == "cloud":
            if await self._cloud_busy(self._answerer):
                busy = f"{self._answer_tier} has no headroom; weak draft returned ({summary})"
                return self._with_draft(view, decision, draft, "draft-accepted", "cloud-unavailable", busy, spent=(0, 0))
            return self._cloud("low-confidence", f"{summary}; {self._answer_tier} answers", decision)
        return await self._verify(data, view, decision, draft, summary, key)

    # -- streamed: commit on a prefix -----------------------------------------------------------

    async def _streamed(self, data: Mapping[str, Any], view: RequestView, decision: Decision, key: str) -> Outcome:
        """Drafts read up to the commit point; the trusted one streams on, else Cerebras live.

        A draft that finished within the commit point is a whole draft and is judged as one (its
        verify band included). An unfinished prefix cannot be verified (Cerebras would need the
        whole draft, and the client would wait for it): outside the accept band it goes to Cerebras,
        which then streams its own answer live.

        Drafting (and a verify) may outlast a client's or a proxy's idle timeout: past
        `open_after_seconds` the response opens under the headers true now, with keep-alives, and
        the outcome follows as SSE comments (layers/keepalive.py); it is in /stats and the log as always.
        """
        deciding = {
            "x-glm-saver-route": "cascade",
            "x-glm-saver-reason": f"cascade-deciding: {self.settings.strategy} had not decided when the stream opened; the outcome follows as an SSE comment",
        }
        hold_open(deciding, self.options.open_after_seconds, self.options.keepalive_seconds)
        drafts, failures = await self._drafts(data, view, self._live_draft)
        if not drafts:
            return self._no_drafts(failures, decision)
        scores = score_drafts([draft.facts() for draft in drafts], self.options.confidence_without_evidence)
        index = best_draft(scores)
        live, score = drafts[index], scores[index]
        await close_all([draft for draft in drafts if draft is not live])  # the others are cancelled
        summary = _summary(score, len(drafts))
        if live.finished:
            whole = finished_draft(await live.finish(), view.prompt_tokens)
            return await self._judge(data, view, decision, whole, score, summary, key)
        summary = f"{summary}, committed on {live.tokens} tokens"
        if band(score.confidence, self.options) == "accept":
            return self._live(decision, live, "confident", summary)
        if await self._cloud_busy(self._answerer):
            return self._live(decision, live, "cloud-unavailable", f"{self._answer_tier} has no headroom; unsure draft streamed ({summary})")
        await live.close()
        reason = "low-confidence" if band(score.confidence, self.options) == "cloud" else "unsure-prefix"
        return self._cloud(reason, f"{summary}; {self._answer_tier} answers", decision)

    async def _live_draft(self, data: Mapping[str, Any], view: RequestView, parallel: bool) -> LiveDraft:
        params = {**draft_params(data, view, self.options, parallel), "stream_options": {"include_usage": True}}
        timeout = self.options.draft_timeout
        stream = await self._call(self.settings.local_group, "draft", view.messages, params, timeout, data, stream=True)
        live = LiveDraft(stream)
        try:
            return await asyncio.wait_for(live.fill(self.options.commit_tokens), timeout)
        except BaseException:
            await live.close()
            raise

    def _live(self, decision: Decision, live: LiveDraft, reason: str, detail: str) -> Outcome:
        self.stats.record_outcome("draft-accepted", reason)
        logger.info("glm_saver: speculative draft-accepted on a prefix (%s)", reason)
        return Outcome(Decision("local", reason, detail, decision.score, label="draft-accepted"), live=live)

    # -- drafts ---------------------------------------------------------------------------------

    async def _drafts(self, data: Mapping[str, Any], view: RequestView, make: Callable[..., Awaitable[Any]] | None = None) -> tuple[list[Any], list[str]]:
        """1..N drafts at once (whole `Draft`s, or `LiveDraft`s read to the commit point)."""
        make = make or self._draft
        wanted = self.draft_count()
        count = wanted if wanted == 1 or self.gate.allows() else 1
        results = await asyncio.gather(*(make(data, view, parallel=count > 1) for _ in range(count)), return_exceptions=True)
        drafts, failures = self._split(results)
        fell_back = count > 1 and any(kind in BUSY for kind in failures)
        if fell_back:
            # The local server cannot take drafts at once: one at a time for a while.
            self.gate.refuse()
            if not drafts:
                drafts, more = self._split(await asyncio.gather(make(data, view, parallel=False), return_exceptions=True))
                failures += more
        self.stats.record_drafts(len(drafts), failures, fell_back)
        return drafts, failures

    @staticmethod
    def _split(results: Sequence[Any]) -> tuple[list[Any], list[str]]:
        drafts, failures = [], []
        for result in results:
            if isinstance(result, (Draft, LiveDraft)):
                drafts.append(result)
            elif isinstance(result, Exception):
                failures.append(failure_kind(result))
                logger.warning("glm_saver: a local draft failed: %s", failure_kind(result))
            else:
                raise result  # CancelledError and friends: the request is going away
        return drafts, failures

    async def _draft(self, data: Mapping[str, Any], view: RequestView, parallel: bool) -> Draft:
        params = draft_params(data, view, self.options, parallel)
        response = await self._call(self.settings.local_group, "draft", view.messages, params, self.options.draft_timeout, data)
        return draft_from_response(response)

    async def _call(
        self,
        group: str,
        role: str,
        messages: Sequence[Any],
        params: dict[str, Any],
        timeout: float,
        data: Mapping[str, Any],
        ticket: Ticket | None = None,
        stream: bool = False,
    ) -> Any:
        call = proxy.router().acompletion(
            model=group,
            messages=copy.deepcopy(list(messages)),
            metadata=call_metadata(data, role, ticket),
            disable_fallbacks=True,  # a draft must not come from Cerebras, nor a verify from local
            num_retries=0,
            timeout=timeout,
            stream=stream,
            **params,
        )
        try:
            return await asyncio.wait_for(call, timeout)
        except TimeoutError:
            await self._give_back(ticket)
            raise

    async def _give_back(self, ticket: Ticket | None) -> None:
        """A paid call given up at its timeout is cancelled inside LiteLLM, where no failure hook
        runs for it: what its ticket holds is given back here (once, whoever else settles it)."""
        if ticket is not None and self._cloud_gate is not None:
            await self._cloud_gate.give_back(ticket, "a timed-out call's")

    # -- verify ---------------------------------------------------------------------------------

    async def _cloud_busy(self, group: str) -> bool:
        return self._cloud_exhausted is not None and await self._cloud_exhausted(group)

    async def _verify_ticket(self, key: str, messages: list[dict[str, Any]], view: RequestView) -> Ticket | str:
        """The gate's ticket for the verify call, or why Cerebras may not take it (reason: detail)."""
        if await self._cloud_busy(self._verifier):
            return f"{self._verify_tier} has no headroom (rate-limited or not configured)"
        if self._cloud_gate is None:
            return "no-gate: the cascade has no gate to Cerebras"
        # A reasoning model thinks before its verdict: room for that on top of the answer's length.
        asked = with_room(view.max_tokens, self.settings.reasoning_of(self._verifier).retry_room)
        granted = await self._cloud_gate.admit(key, self._verifier, prompt_tokens(messages), asked)
        return granted if isinstance(granted, Ticket) else f"{granted.reason}: {granted.detail}"

    async def _verify_call(self, data: Mapping[str, Any], messages: list[dict[str, Any]], ticket: Ticket, key: str) -> Any:
        """The verify call; a verdict left empty because reasoning used its budget is asked once
        more with room, through the gate again (a refusal leaves the empty verdict to fail)."""
        group = self._verifier
        response = await self._call(group, "verify", messages, verify_params(data, ticket), self.options.verify_timeout, data, ticket)
        room = room_for_retry(ticket.max_tokens, self.settings.reasoning_of(group).retry_room, self.settings.rate_limits.max_tokens_cap)
        if not spent_on_reasoning(response) or room is None or self._cloud_gate is None:
            return response
        granted = await self._cloud_gate.admit(key, group, prompt_tokens(messages), room)
        if not isinstance(granted, Ticket):
            return response
        logger.warning("glm_saver: the verify's reasoning used all %d max_tokens; asking once more with %d", ticket.max_tokens, room)
        return await self._call(group, "verify", messages, verify_params(data, granted), self.options.verify_timeout, data, granted)

    async def _verify(self, data: Mapping[str, Any], view: RequestView, decision: Decision, draft: Draft, summary: str, key: str) -> Outcome:
        messages = verify_messages(view.messages, draft)
        ticket = await self._verify_ticket(key, messages, view)
        if not isinstance(ticket, Ticket):
            return self._with_draft(view, decision, draft, "draft-accepted", "verify-skipped", f"{ticket}; draft unverified ({summary})", spent=(0, 0))
        try:
            response = await self._verify_call(data, messages, ticket, key)
            # The verdict is the answer's content; a reasoning model's thinking is not read.
            verdict = draft_from_response(response)
            if not verdict.text.strip():
                raise _EmptyVerdict("reasoning-spent-budget" if spent_on_reasoning(response) else "empty")
        except Exception as err:  # noqa: BLE001 - any verify failure serves the draft unverified, with its kind as the reason
            kind = str(err) if isinstance(err, _EmptyVerdict) else failure_kind(err)
            self.stats.record_verify(kind)
            logger.warning("glm_saver: verify failed (%s); answering with the best draft", kind)
            failed = f"{self._verify_tier} {kind} during verify; draft unverified ({summary})"
            return self._with_draft(view, decision, draft, "draft-accepted", "verify-failed", failed, spent=(0, 0))
        spent = (verdict.prompt_tokens, verdict.completion_tokens)
        if is_acceptance(verdict):
            self.stats.record_verify("verified")
            return self._with_draft(view, decision, draft, "draft-verified", "verified", f"{self._verify_tier} accepted the draft ({summary})", spent=spent)
        self.stats.record_verify("corrected")
        corrected = f"{self._verify_tier} corrected the draft ({summary})"
        return self._with_draft(view, decision, verdict, "draft-corrected", "corrected", corrected, spent=spent, prompt_tokens=draft.prompt_tokens)

    # -- outcomes -------------------------------------------------------------------------------

    def _with_draft(
        self,
        view: RequestView,
        decision: Decision,
        answer: Draft,
        label: str,
        reason: str,
        detail: str,
        spent: tuple[int, int],
        prompt_tokens: int | None = None,
    ) -> Outcome:
        """Answer with text the cascade holds: a mock on the local group, priced 0 by LiteLLM."""
        prompt = answer.prompt_tokens if prompt_tokens is None else prompt_tokens
        mock = build_mock(answer, prompt or view.prompt_tokens)
        self.stats.record_outcome(label, reason)
        logger.info("glm_saver: speculative %s (%s)", label, reason)
        return Outcome(Decision("local", reason, detail, decision.score, label=label), mock)

    def _cloud(self, reason: str, detail: str, decision: Decision) -> Outcome:
        self.stats.record_outcome(self.cloud_label, reason)
        logger.info("glm_saver: speculative %s (%s)", self.cloud_label, reason)
        return Outcome(Decision(self._answer_tier, reason, detail, decision.score, label=self.cloud_label))
