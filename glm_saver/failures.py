"""The status a client gets when no model could answer at all (every upstream down or too slow,
or the fallbacks refused by the plugin).

LiteLLM reports an unreachable upstream as a 500 `internal_server_error` (which reads as a bug in
the proxy) and a timed-out one as a 408 (which blames the client). Once the fallbacks are spent,
the truthful answers are 503 (nothing reachable: retry later) and 504 (nothing answered in time).
A fallback hop the plugin refused (budget, rate limits, the store) is reported by LiteLLM as the
first model's error with the refusal buried in its text: the client gets the refusal's own status
instead, as when the plan refuses up front (429 `budget_exceeded`, 429 with retry-after, 503).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import HTTPException
from litellm.exceptions import Timeout

from glm_saver.routing.gate import Refusal

# Metadata key of the paid hops the plugin refused for a request: a list the pre-call hook puts in
# place, shared by every hop's (shallow) copy of the metadata, so the failure hook can read it.
REFUSALS_KEY = "glm_saver_refusals"

_MAX_DETAIL = 600
# Where the upstreams live is nobody's business but the operator's.
_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\"<>)\]]+", re.IGNORECASE)
_HOST_PORT = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}:\d{2,5}\b|\blocalhost:\d{2,5}\b", re.IGNORECASE)


def without_urls(text: str) -> str:
    return _HOST_PORT.sub("<upstream>", _URL.sub("<upstream>", text))


def is_unreachable(error: BaseException) -> bool:
    """A refused or dropped connection to an upstream. openai's "Connection error." arrives as a 500
    (InternalServerError) or an APIConnectionError, so the message and the exception chain are
    read, not the status; LiteLLM also wraps its own bugs on bad input as APIConnectionError, which
    must not read as "unreachable"."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            break
        if "ConnectError" in type(seen).__name__:  # httpx's own, under openai's wrapper
            return True
        seen = seen.__cause__ or seen.__context__
    return "connection error" in str(error).lower()


def no_model_answered(error: BaseException, tried: str) -> HTTPException | None:
    """A 503/504 for a connection failure or timeout of every model tried, else None (LiteLLM's own)."""
    if isinstance(error, Timeout):
        status, what = 504, "did not answer within the deployment timeout"
    elif is_unreachable(error):
        status, what = 503, "could not be reached"
    else:
        return None
    detail = without_urls(str(getattr(error, "message", None) or error))[:_MAX_DETAIL]
    return HTTPException(status_code=status, detail=f"no model could answer: {tried} {what}. ({detail})")


def redacted(error: BaseException) -> HTTPException | None:
    """The same error without the upstreams' URLs, if its text names any (else None: LiteLLM's own)."""
    text = str(getattr(error, "message", None) or error)
    if without_urls(text) == text:
        return None
    status = getattr(error, "status_code", None)
    headers = getattr(error, "litellm_response_headers", None) or {}
    retry = {"retry-after": str(headers["retry-after"])} if "retry-after" in headers else None
    return HTTPException(status_code=status if isinstance(status, int) and 400 <= status < 600 else 500, detail=without_urls(text)[:_MAX_DETAIL], headers=retry)


class TypedHTTPException(HTTPException):
    """An HTTPException with OpenAI's error `type` (LiteLLM reads the attribute when it renders it)."""

    def __init__(self, status_code: int, detail: str, type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.type = type


def note_refusal(metadata: Mapping[str, Any], group: str, refusal: Refusal) -> None:
    """Remember a refused paid hop where the failure hook finds it (nothing if the plan set no list)."""
    refusals = metadata.get(REFUSALS_KEY)
    if isinstance(refusals, list):
        period = refusal.budget.budget.period if refusal.budget is not None else None
        refusals.append({"group": group, "reason": refusal.reason, "detail": refusal.detail, "retry_in": refusal.retry_in, "period": period})


def _what_failed(error: BaseException) -> str:
    if isinstance(error, Timeout):
        return "did not answer in time"
    if is_unreachable(error):
        return "could not be reached"
    status = getattr(error, "status_code", None)
    return f"answered {status}" if isinstance(status, int) else f"failed ({type(error).__name__})"


def refused_fallback(error: BaseException, route: str, refusals: Any) -> HTTPException | None:
    """The refusal's status for a request whose model failed and whose paid fallbacks the plugin
    refused (the last refusal decides: the strongest tier tried), else None."""
    if not isinstance(refusals, Sequence) or not refusals or not all(isinstance(item, Mapping) for item in refusals):
        return None
    last = refusals[-1]
    groups = ", ".join(dict.fromkeys(str(item["group"]) for item in refusals))
    told = f"{route} {_what_failed(error)}, and the fallback to {groups} was refused: {without_urls(str(last['detail']))}"
    reason = str(last["reason"])
    if reason == "budget":
        return TypedHTTPException(429, f"{told}; it renews with the next {last['period']} period", "budget_exceeded")
    if reason == "store-down":
        return TypedHTTPException(503, f"no model could answer: {told}", "service_unavailable")
    retry_in = last.get("retry_in")
    wait = max(1, math.ceil(retry_in)) if isinstance(retry_in, (int, float)) else 60
    return TypedHTTPException(429, f"{told}; retry in {wait}s", "rate_limit_error", headers={"retry-after": str(wait)})
