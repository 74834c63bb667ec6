"""The one reader of LiteLLM's log events: a success or failure event becomes one typed `CallRecord`
(group, the plan's tag, the internal-call marker, the gate's ticket, who pays, tokens, cost,
headers, status). Everyone else (headroom, books, budgets, counters) takes the record, never the
event's raw kwargs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from glm_saver.books.ledger import FINAL
from glm_saver.callers import caller_label
from glm_saver.reasoning import reasoning_text, reasoning_tokens
from glm_saver.request import content_text, prompt_tokens
from glm_saver.routing.gate import TICKET_KEY, Ticket
from glm_saver.tokens import count_tokens

# Metadata key of the plan's tag on a request the plugin routed.
PLAN_KEY = "glm_saver"
# Metadata key of the cascade's internal calls: {"role", "caller", "request_id"}.
CALL_KEY = "glm_saver_call"


@dataclass(frozen=True)
class CallRecord:
    """One call as LiteLLM logged it: an answer, or a failure."""

    group: str | None  # the model group that answered (or failed)
    tag: Mapping[str, Any] | None  # the plan's tag (None: the plugin did not plan this request)
    internal: bool  # one of the cascade's own calls (a draft or a verify)
    role: str  # final (the client's answer), draft or verify
    caller: str  # who pays: a key alias or a short hash label, never a key
    ticket: Ticket | None  # the gate's ticket for this very group, if it went through the gate
    headers: Mapping[str, Any] | None  # upstream response headers (rate limits, retry-after)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # reasoning tokens included (OpenAI's convention, Cerebras' too)
    reasoning_tokens: int = 0  # of completion_tokens, how many went on reasoning (shown, not billed again)
    received_at: float | None = None  # when the answer's headers arrived (a stream logs at its end)
    status: int | None = None  # of a failure
    error: str | None = None  # a failure's exception class name

    @property
    def rate_limited(self) -> bool:
        """A 429 from the upstream itself (LiteLLM's own 429, no deployment left, has no headers)."""
        return self.status == 429 and self.headers is not None


def _metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    return (kwargs.get("litellm_params") or {}).get("metadata") or {}


def _ticket_in(metadata: Mapping[str, Any], group: str | None) -> Ticket | None:
    """The ticket a call carries for `group` (one copied from another hop of a fallback does not count)."""
    held = metadata.get(TICKET_KEY)
    if not isinstance(held, Mapping) or held.get("group") != group:
        return None
    return Ticket.model_validate(held)


def _epoch(moment: Any) -> float | None:
    if isinstance(moment, datetime):
        return moment.timestamp()
    return float(moment) if isinstance(moment, (int, float)) else None


def _common(metadata: Mapping[str, Any]) -> dict[str, Any]:
    tag = metadata.get(PLAN_KEY)
    call = metadata.get(CALL_KEY) if isinstance(metadata.get(CALL_KEY), Mapping) else None
    group = metadata.get("model_group")
    return {
        "group": group,
        "tag": tag if isinstance(tag, Mapping) else None,
        "internal": call is not None,
        "role": str(call["role"]) if call else FINAL,
        "caller": str(call["caller"]) if call else caller_label(metadata),
        "ticket": _ticket_in(metadata, group),
    }


def answer_text(response: Any) -> str:
    """The text of an answer (content and tool-call arguments), to count tokens a stream did not report."""
    parts: list[str] = []
    for choice in getattr(response, "choices", None) or []:
        message = getattr(choice, "message", None) or getattr(choice, "delta", None)
        if message is None:
            continue
        parts += content_text(getattr(message, "content", None))
        parts.append(reasoning_text(message))  # reasoning is output too: it is billed as such
        for call in getattr(message, "tool_calls", None) or []:
            function = getattr(call, "function", None)
            parts += [getattr(function, "name", "") or "", getattr(function, "arguments", "") or ""]
    return "".join(parts)


def usage_tokens(kwargs: Mapping[str, Any], response: Any) -> tuple[int, int]:
    """Prompt and completion tokens of an answer; a 0 that cannot be true is counted instead."""
    usage = getattr(response, "usage", None)
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    if completion == 0:
        completion = count_tokens(answer_text(response))
    if prompt == 0:
        messages = kwargs.get("messages")
        prompt = prompt_tokens(messages if isinstance(messages, list) else [], (kwargs.get("optional_params") or {}).get("tools"))
    return prompt, completion


# Metadata key of what a draft committed on its prefix really served (cascade/live.py): the answer
# LiteLLM logs for it is a placeholder, so its tokens are taken from here.
SERVED_KEY = "glm_saver_served"


def answer_reasoning_tokens(response: Any) -> int:
    """Reasoning tokens of an answer: from its usage, else counted from its reasoning text (when
    the usage has no completion count either, so the two counts agree)."""
    usage = getattr(response, "usage", None)
    reported = reasoning_tokens(usage)
    if reported or int(getattr(usage, "completion_tokens", 0) or 0):
        return reported
    choices = getattr(response, "choices", None) or []
    return sum(count_tokens(reasoning_text(getattr(c, "message", None) or getattr(c, "delta", None))) for c in choices)


def read_success(kwargs: Mapping[str, Any], response: Any) -> CallRecord:
    served = _metadata(kwargs).get(SERVED_KEY)
    prompt, completion = usage_tokens(kwargs, response)
    if isinstance(served, Mapping):
        prompt, completion = int(served.get("prompt_tokens") or prompt), int(served.get("completion_tokens") or 0)
    return CallRecord(
        **_common(_metadata(kwargs)),
        headers=kwargs.get("response_headers"),
        prompt_tokens=prompt,
        completion_tokens=completion,
        reasoning_tokens=answer_reasoning_tokens(response),
        received_at=_epoch(kwargs.get("completion_start_time")),
    )


def read_failure(kwargs: Mapping[str, Any], error: BaseException | None = None, metadata: Mapping[str, Any] | None = None) -> CallRecord:
    """One failed call from its logged kwargs (a log event's, or the logging object's of a broken
    stream) and its metadata (by default the kwargs'). A stream cut after text was sent carries
    what it spent: LiteLLM's usage of the chunks delivered (`combined_usage_object`), as the
    provider bills them; the kwargs of another call (a later hop's) say nothing of its spend."""
    own = _metadata(kwargs)
    record = failure_of(own if metadata is None else metadata, error if error is not None else kwargs.get("exception"))
    usage = kwargs.get("combined_usage_object") if metadata is None or metadata is own else None
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    if completion == 0:
        return record
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    return replace(record, prompt_tokens=prompt, completion_tokens=completion, reasoning_tokens=reasoning_tokens(usage))


def failure_of(metadata: Mapping[str, Any], error: BaseException | None) -> CallRecord:
    """One failed call, from its metadata (a log event's, or a deployment hook's own kwargs)."""
    status = getattr(error, "status_code", None)
    return CallRecord(
        **_common(metadata),
        headers=getattr(error, "litellm_response_headers", None),
        status=status if isinstance(status, int) else None,
        error=type(error).__name__ if error is not None else None,
    )
