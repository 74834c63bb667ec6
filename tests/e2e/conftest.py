"""Fixtures: fake upstreams on free ports and real `litellm` proxy processes in front of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.embedded import EmbeddedServer, embedded_proxy_config
from tests.e2e.proxy import MASTER_KEY, Proxy, proxy_config
from tests.fakes.upstream import FakeUpstream

# Small windows so the context-window rules can be exercised with modest prompts.
LOCAL_WINDOW = 8192
CLOUD_WINDOW = 32768


@pytest.fixture(scope="session")
def local_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("local") as upstream:
        yield upstream


@pytest.fixture(scope="session")
def cerebras_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("cerebras") as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def _fresh_upstream_records(request: pytest.FixtureRequest) -> None:
    """Each test sees only its own upstream traffic (and no fault left over from another test)."""
    for name in ("local_upstream", "cerebras_upstream"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


@pytest.fixture(scope="session")
def start_proxy(tmp_path_factory: pytest.TempPathFactory, local_upstream: FakeUpstream, cerebras_upstream: FakeUpstream) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(cerebras: FakeUpstream | None = None, **changes: Any) -> Proxy:
        """A proxy with the shipped config and `changes` merged in, in front of the session's fakes
        (or of another fake Cerebras)."""
        directory = Path(tmp_path_factory.mktemp("proxy"))
        config = proxy_config(local_upstream.url, local_window=LOCAL_WINDOW, cloud_window=CLOUD_WINDOW, **changes)
        proxy = Proxy(directory=directory, cerebras_url=(cerebras or cerebras_upstream).url)
        started.append(proxy)
        return proxy.start(config)

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    """The shipped config, unchanged but for the upstream addresses and the small windows."""
    return start_proxy()


@pytest.fixture(scope="session")
def client(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(log_path=Path(tmp_path_factory.mktemp("llama")) / "llama-server.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedded_proxy(tmp_path_factory: pytest.TempPathFactory, embedded: EmbeddedServer, cerebras_upstream: FakeUpstream) -> Iterator[Proxy]:
    """No CEREBRAS_API_KEY, as on a newcomer's machine (the fake Cerebras only proves nothing goes there)."""
    proxy = Proxy(directory=Path(tmp_path_factory.mktemp("embedded-proxy")), cerebras_url=cerebras_upstream.url, cerebras_key=None)
    proxy.start(embedded_proxy_config(embedded.options))
    yield proxy
    proxy.stop()
