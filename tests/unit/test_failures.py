"""The status of a request whose model failed and whose paid fallbacks the gate refused."""

from __future__ import annotations

from typing import Any

import pytest
from litellm.exceptions import InternalServerError

from glm_saver.failures import TypedHTTPException, refused_fallback

LOCAL_500 = InternalServerError(message="Internal server error", llm_provider="openai", model="local")


def refusal(reason: str, detail: str, retry_in: float | None = None, period: str | None = None, group: str = "cerebras") -> dict[str, Any]:
    return {"group": group, "reason": reason, "detail": detail, "retry_in": retry_in, "period": period}


def test_no_refused_hop_leaves_the_error_to_the_other_mappings() -> None:
    assert refused_fallback(LOCAL_500, "local", []) is None
    assert refused_fallback(LOCAL_500, "local", None) is None


def test_a_budget_refusal_is_a_429_budget_exceeded_naming_both_failures() -> None:
    refused = refused_fallback(LOCAL_500, "local", [refusal("budget", "budget key:alice has $0.0001 left", period="daily")])
    assert isinstance(refused, TypedHTTPException)
    assert (refused.status_code, refused.type) == (429, "budget_exceeded")
    assert (
        refused.detail
        == "local answered 500, and the fallback to cerebras was refused: budget key:alice has $0.0001 left; it renews with the next daily period"
    )


@pytest.mark.parametrize(("retry_in", "wait"), [(2.2, "3"), (None, "60")])
def test_a_rate_limit_refusal_is_a_429_with_retry_after(retry_in: float | None, wait: str) -> None:
    refused = refused_fallback(LOCAL_500, "local", [refusal("rate-limit-tokens", "cerebras has 0 tokens left this minute", retry_in)])
    assert isinstance(refused, TypedHTTPException)
    assert (refused.status_code, refused.type, refused.headers) == (429, "rate_limit_error", {"retry-after": wait})
    assert refused.detail.endswith(f"; retry in {wait}s")


def test_the_last_refused_hop_decides_every_refused_group_is_named_once_and_no_address_is_shown() -> None:
    hops = [
        refusal("rate-limit-probe", "probe out", group="cerebras-oss"),
        refusal("store-down", "first"),
        refusal("store-down", "redis at 10.0.0.5:6379 is down"),
    ]
    refused = refused_fallback(LOCAL_500, "local", hops)
    assert isinstance(refused, TypedHTTPException)
    assert (refused.status_code, refused.type) == (503, "service_unavailable")
    assert refused.detail == "no model could answer: local answered 500, and the fallback to cerebras-oss, cerebras was refused: redis at <upstream> is down"
