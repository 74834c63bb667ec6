"""The plugin's HTTP routes on LiteLLM's app: a cheap `/health` and `/stats` behind key auth.

LiteLLM's own `/health` needs a key and sends a paid completion to every deployment; ours calls no
upstream, so it is inserted ahead of LiteLLM's route (the first matching route wins).
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter, Depends
from litellm.proxy.auth.user_api_key_auth import user_api_key_auth


class StateSource(Protocol):
    """What the routes read: the plugin, seen through the two calls they need."""

    def health(self) -> dict[str, Any]: ...

    async def stats_snapshot(self) -> dict[str, Any]: ...

HEALTH_PATH = "/health"
STATS_PATH = "/stats"


def build_router(plugin: StateSource) -> APIRouter:
    router = APIRouter(tags=["glm-saver"])

    @router.get(HEALTH_PATH)
    async def health() -> dict[str, Any]:
        return plugin.health()

    @router.get(STATS_PATH, dependencies=[Depends(user_api_key_auth)])
    async def stats() -> dict[str, Any]:
        return await plugin.stats_snapshot()

    return router


def install_routes(plugin: StateSource) -> None:
    from glm_saver import proxy

    app = proxy.app()
    ours = build_router(plugin).routes
    paths = {getattr(route, "path", None) for route in ours}
    # A reload of the plugin must replace, not stack, its routes.
    kept = [route for route in app.router.routes if not (getattr(route, "endpoint", None) and getattr(route.endpoint, "__module__", "") == __name__ and route.path in paths)]
    app.router.routes[:] = [*ours, *kept]
    from glm_saver.body_guard import install

    install(app)
