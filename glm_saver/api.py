"""The plugin's HTTP routes on LiteLLM's app: a cheap `/health`, `/stats` behind key auth, and the
dashboard's page and static files (`glm_saver/dashboard/`).

The dashboard's page and files carry no data and need no key; the page reads `/stats` with the
master key the user types into it (sent as a header from the browser session, never in a URL).

LiteLLM's own `/health` needs a key and sends a paid completion to every deployment; ours calls no
upstream, so it is inserted ahead of LiteLLM's route (the first matching route wins).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Protocol

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import RedirectResponse, Response
from litellm.proxy.auth.user_api_key_auth import user_api_key_auth


class StateSource(Protocol):
    """What the routes read: the plugin, seen through the two calls they need."""

    def health(self) -> dict[str, Any]: ...

    async def stats_snapshot(self) -> dict[str, Any]: ...


HEALTH_PATH = "/health"
STATS_PATH = "/stats"
DASHBOARD_PATH = "/glm-saver/dashboard"
# The dashboard's files, by the name the page asks for, with their media types: nothing else is served.
DASHBOARD_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
    "vendor/uPlot.LICENSE": "text/plain; charset=utf-8",
}
# Only the page's own files run; it talks to this proxy only; no other site may frame it.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def dashboard_file(name: str) -> bytes:
    return resources.files("glm_saver.dashboard").joinpath(name).read_bytes()


def _dashboard_response(name: str, media_type: str) -> Response:
    return Response(dashboard_file(name), media_type=media_type, headers=DASHBOARD_HEADERS)


def build_router(plugin: StateSource) -> APIRouter:
    router = APIRouter(tags=["glm-saver"])

    @router.get(HEALTH_PATH)
    async def health() -> dict[str, Any]:
        return plugin.health()

    @router.get(STATS_PATH, dependencies=[Depends(user_api_key_auth)])
    async def stats() -> dict[str, Any]:
        return await plugin.stats_snapshot()

    @router.get(DASHBOARD_PATH, include_in_schema=False)
    async def dashboard() -> Response:
        return _dashboard_response("index.html", "text/html; charset=utf-8")

    @router.get(DASHBOARD_PATH + "/", include_in_schema=False)
    async def dashboard_slash() -> Response:
        return RedirectResponse(DASHBOARD_PATH)

    @router.get(DASHBOARD_PATH + "/{name:path}", include_in_schema=False)
    async def dashboard_static(name: str) -> Response:
        if name not in DASHBOARD_FILES:
            raise HTTPException(status_code=404, detail="not a dashboard file")
        return _dashboard_response(name, DASHBOARD_FILES[name])

    return router


def install_routes(plugin: StateSource) -> None:
    from glm_saver import proxy

    app = proxy.app()
    ours = build_router(plugin).routes
    paths = {getattr(route, "path", None) for route in ours}
    # A reload of the plugin must replace, not stack, its routes.
    kept = [
        route
        for route in app.router.routes
        if not (getattr(route, "endpoint", None) and getattr(route.endpoint, "__module__", "") == __name__ and route.path in paths)
    ]
    app.router.routes[:] = [*ours, *kept]
    from glm_saver.layers.body_guard import NonObjectBodyGuard
    from glm_saver.layers.keepalive import KeepAliveLayer
    from glm_saver.layers.metrics_refusal import MetricsRefusalLayer
    from glm_saver.layers.stack import install_layer

    install_layer(app, KeepAliveLayer)
    install_layer(app, NonObjectBodyGuard)  # outside the keep-alive layer: a body it refuses never gets a wire
    install_layer(app, MetricsRefusalLayer)
