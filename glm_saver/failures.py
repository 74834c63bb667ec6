"""The status a client gets when no model could answer at all (every upstream down or too slow).

LiteLLM reports an unreachable upstream as a 500 `internal_server_error` (which reads as a bug in
the proxy) and a timed-out one as a 408 (which blames the client). Once the fallbacks are spent,
the truthful answers are 503 (nothing reachable: retry later) and 504 (nothing answered in time).
"""

from __future__ import annotations

import re

from fastapi import HTTPException
from litellm.exceptions import Timeout

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
