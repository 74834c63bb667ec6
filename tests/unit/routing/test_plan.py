"""A LiteLLM virtual key (DB-backed, not testable here end to end) goes local before it runs out."""

from types import SimpleNamespace

from glm_saver.deployments import Prices
from glm_saver.request import RequestView
from glm_saver.routing.plan import _litellm_key_nearly_spent

CLOUD = Prices(input=2.25e-6, output=2.75e-6)


def view(prompt_tokens: int, max_tokens: int | None) -> RequestView:
    return RequestView(messages=[], ask="", prompt_tokens=prompt_tokens, has_tools=False, stream=False, max_tokens=max_tokens)


def test_key_without_a_budget_is_never_nearly_spent() -> None:
    assert not _litellm_key_nearly_spent(SimpleNamespace(max_budget=None, spend=100.0), view(1000, 1000), CLOUD)


def test_key_whose_budget_this_request_could_overrun_is_nearly_spent() -> None:
    auth = SimpleNamespace(max_budget=1.0, spend=0.99)
    assert _litellm_key_nearly_spent(auth, view(1000, 4000), CLOUD)  # worst case $0.01325 > $0.01 left
    assert not _litellm_key_nearly_spent(auth, view(1000, 1000), CLOUD)  # worst case $0.005 fits
