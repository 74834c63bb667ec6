"""Cerebras refusing a call outright (401 wrong key, 403, 400), through a real proxy.

A refused call reaches no answer, so it must give back what the gate held for it: its headroom
reservation and its budget hold, exactly once, whether it was the plan's own route or a fallback
hop after local failed (LiteLLM logs only a request's first failure). The refusal is counted in
/stats `upstream_failures` and logged as a WARNING without the key, and the tier takes the next
request once the key is right.

One proxy in front of a fake Cerebras of its own, with a global budget (to see holds in /stats).
LiteLLM's deployment cooldown is off here: it is LiteLLM's own (a 401 cools the deployment for
5 s) and would only hide, for a while, the tier whose books these tests read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.e2e.held import DEADLINE, failures, grew, held, proxy_showing_holds, settled, stats
from tests.e2e.polling import poll
from tests.e2e.proxy import CEREBRAS_KEY, MASTER_KEY, Proxy
from tests.fakes.upstream import FakeUpstream

SIMPLE = "hello, what is a tuple?"  # the plan sends it local; local's 500 sends it to Cerebras
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
REFUSALS = ["401", "403", "400"]
MODES = [False, True]


@pytest.fixture(scope="module")
def refusing() -> Iterator[FakeUpstream]:
    """A fake Cerebras that reports its limits on every answer (so its headroom is known once probed)."""
    with FakeUpstream("cerebras", name="refusing", tokens_per_minute=1_000_000) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], refusing: FakeUpstream) -> Proxy:
    return proxy_showing_holds(start_proxy, refusing)


@pytest.fixture(autouse=True)
def _cerebras_answers_by_default(proxy: Proxy, refusing: FakeUpstream, local_upstream: FakeUpstream) -> Iterator[None]:
    """Each test starts with both models answering and Cerebras probed, and leaves them so."""
    refusing.reset()
    refusing.configure(api_key=None)
    assert ask(proxy, route="cerebras").headers["x-glm-saver-route"] == "cerebras"
    settled(proxy)
    refusing.reset_records()
    yield
    refusing.reset()
    refusing.configure(api_key=None)
    local_upstream.reset()


def ask(proxy: Proxy, *, route: str | None = None, stream: bool = False) -> httpx.Response:
    body = {"model": "glm-saver", "messages": [{"role": "user", "content": SIMPLE}], "stream": stream}
    headers = {**ADMIN, **({"x-glm-saver-route": route} if route else {})}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=60) as response:
        response.read()
    return response


def refuse(upstream: FakeUpstream, status: str) -> None:
    """The next call is refused with `status`: a 401 is what a wrong key gets (no rate-limit headers)."""
    if status == "401":
        upstream.configure(api_key="csk-the-right-one-000000")
    else:
        upstream.inject(status)


def failure_warnings(proxy: Proxy, status: str) -> list[str]:
    return [line for line in proxy.log().splitlines() if "WARNING" in line and f"cerebras failed with {status}" in line]


@pytest.mark.parametrize("stream", MODES, ids=["json", "stream"])
@pytest.mark.parametrize("status", REFUSALS)
def test_a_cerebras_refusal_on_a_fallback_hop_gives_back_what_it_held_and_is_counted(
    proxy: Proxy, refusing: FakeUpstream, local_upstream: FakeUpstream, status: str, stream: bool
) -> None:
    before, warned = failures(proxy), len(failure_warnings(proxy, status))
    local_upstream.inject("500")
    refuse(refusing, status)
    reply = ask(proxy, stream=stream)
    assert reply.status_code >= 400  # local failed, then its fallback Cerebras refused
    assert [r.status for r in refusing.requests] == [int(status)]
    settled(proxy)
    assert poll(lambda: grew(before, failures(proxy)) == {"local:500": 1, f"cerebras:{status}": 1}, "both failures counted once", DEADLINE)
    assert poll(lambda: len(failure_warnings(proxy, status)) == warned + 1, "one warning for the refusal", DEADLINE)
    assert CEREBRAS_KEY not in proxy.log()


@pytest.mark.parametrize("stream", MODES, ids=["json", "stream"])
@pytest.mark.parametrize("status", REFUSALS)
def test_a_cerebras_refusal_of_a_request_routed_to_it_gives_back_what_it_held_and_is_counted(
    proxy: Proxy, refusing: FakeUpstream, status: str, stream: bool
) -> None:
    before, warned = failures(proxy), len(failure_warnings(proxy, status))
    refuse(refusing, status)
    reply = ask(proxy, route="cerebras", stream=stream)
    assert (reply.status_code, reply.headers["x-glm-saver-route"]) == (200, "local")  # the plan's fallback answered
    settled(proxy)
    assert poll(lambda: grew(before, failures(proxy)) == {f"cerebras:{status}": 1}, "the refusal counted once", DEADLINE)
    assert poll(lambda: len(failure_warnings(proxy, status)) == warned + 1, "one warning for the refusal", DEADLINE)
    assert CEREBRAS_KEY not in proxy.log()


@pytest.mark.parametrize("fallback", [False, True], ids=["routed", "fallback-hop"])
def test_a_refused_call_gives_back_only_its_own_reservation_and_hold_while_another_is_in_flight(
    proxy: Proxy, refusing: FakeUpstream, local_upstream: FakeUpstream, fallback: bool
) -> None:
    refusing.hold()
    answered: list[httpx.Response] = []
    in_flight = threading.Thread(target=lambda: answered.append(ask(proxy, route="cerebras")))
    in_flight.start()
    try:
        refusing.wait_until(lambda upstream: upstream.in_flight == 1, timeout=DEADLINE)
        first = held(poll(lambda: (lambda s: s if held(s)[0] == 1 else None)(stats(proxy)), "the held call's reservation", DEADLINE))
        if fallback:
            local_upstream.inject("500")
        refusing.inject("403")
        before = failures(proxy)
        ask(proxy, route=None if fallback else "cerebras")
        assert [r.outcome for r in refusing.requests] == ["pending", "fault:403"]
        poll(lambda: grew(before, failures(proxy)).get("cerebras:403") == 1, "the refusal counted", DEADLINE)
        assert held(stats(proxy)) == first  # what is held now is the other call's alone
    finally:
        refusing.release()
        in_flight.join(timeout=60)
    assert answered[0].headers["x-glm-saver-route"] == "cerebras"
    settled(proxy)


def test_after_a_wrong_key_on_a_fallback_hop_cerebras_takes_the_next_request_once_the_key_is_right(
    start_proxy: Callable[..., Proxy], local_upstream: FakeUpstream
) -> None:
    """The wrong key's 401 is the first call Cerebras ever got: its limits are still unknown, and
    the next call must be let through as the probe it is, not refused as a second one in flight."""
    with FakeUpstream("cerebras", name="locked", tokens_per_minute=1_000_000, api_key="csk-the-right-one-000000") as locked:
        fresh = start_proxy(cerebras=locked, router_settings={"disable_cooldowns": True})
        local_upstream.inject("500")
        assert ask(fresh).status_code >= 400
        assert [r.status for r in locked.requests] == [401]
        locked.configure(api_key=None)
        reply = ask(fresh, route="cerebras")
        assert (reply.status_code, reply.headers.get("x-glm-saver-route")) == (200, "cerebras"), reply.headers.get("x-glm-saver-reason")
        assert [r.status for r in locked.requests] == [401, 200]
