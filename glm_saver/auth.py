"""LiteLLM `custom_auth`: client keys from `glm_saver.keys`, so per-key budgets need no database.

LiteLLM's own virtual keys need Postgres and Prisma's engines. These keys live in the config as
sha256 hashes (`glm-saver hash-key KEY` prints one), each with an alias, an optional budget and
the models it may use. Enable with `general_settings.custom_auth: glm_saver.auth.custom_auth`.

- The proxy's master key is still accepted, as the admin it was (same identity LiteLLM gives it).
- Configured keys may call chat completions, text completions and the model list (CLIENT_ROUTES)
  and nothing else: every other model route, `/stats` and LiteLLM's admin routes answer 403,
  `/metrics` 401 (they show every key's spend).
- An unknown or missing key answers 401 in OpenAI's error shape; the key is never echoed or logged.
- With no master key and no configured keys the proxy stays open, as LiteLLM is without auth.

`models` is returned in UserAPIKeyAuth.models; LiteLLM enforces it when
`general_settings.custom_auth_run_common_checks` and `litellm_settings.enable_post_custom_auth_checks`
are true (the shipped config sets both).
"""

from __future__ import annotations

import hmac
import logging
import threading

from fastapi import Request, status
from litellm.proxy._types import LiteLLMRoutes, LitellmUserRoles, ProxyErrorTypes, ProxyException, UserAPIKeyAuth

from glm_saver import proxy
from glm_saver.callers import hash_key
from glm_saver.settings import ApiKeySettings

logger = logging.getLogger(__name__)

KEY_ALIAS_METADATA = "glm_saver_key"
# The routes a configured (non-admin) key may call: chat and text completions (every request there
# is planned and gated by the plugin) and the model list. Every other model route can spend money
# outside the plugin's budgets, so only the master key reaches it.
CLIENT_ROUTES = frozenset(
    {"/chat/completions", "/v1/chat/completions", "/completions", "/v1/completions", "/models", "/v1/models", *LiteLLMRoutes.model_info_routes.value}
)


def _strip_bearer(presented: str | None) -> str:
    key = (presented or "").strip()
    return key[7:].strip() if key[:7].lower() == "bearer " else key


def _refuse(message: str, code: int = status.HTTP_401_UNAUTHORIZED) -> ProxyException:
    # LiteLLM renders a ProxyException as {"error": {"message", "type", "param", "code"}}.
    return ProxyException(message=message, type=ProxyErrorTypes.auth_error, param="api_key", code=code)


def _is_public_route(route: str) -> bool:
    """LiteLLM's own public routes (`/`, `/routes`, ...) stay keyless: custom_auth runs before its check."""
    from litellm.proxy.auth.auth_utils import route_in_additonal_public_routes

    return route in LiteLLMRoutes.public_routes.value or route_in_additonal_public_routes(current_route=route)


class KeyRing:
    """The keys the proxy accepts: configured client keys and the master key, all as sha256 hex."""

    # A plain class, not a dataclass: LiteLLM may load this file by path, outside sys.modules,
    # where @dataclass fails.
    def __init__(self, keys: tuple[ApiKeySettings, ...], master_sha256: str | None = None, admin_user_id: str = "default_user_id") -> None:
        self.keys = tuple(keys)
        self.master_sha256 = master_sha256
        self.admin_user_id = admin_user_id

    @property
    def open(self) -> bool:
        """No master key and no keys: LiteLLM runs without auth, and so do we."""
        return self.master_sha256 is None and not self.keys

    def find(self, digest: str) -> ApiKeySettings | None:
        """The configured key with this hash; every entry is compared (constant time, no early exit)."""
        found = None
        for entry in self.keys:
            if hmac.compare_digest(entry.key_sha256, digest):
                found = entry
        return found

    def is_master(self, digest: str) -> bool:
        return self.master_sha256 is not None and hmac.compare_digest(self.master_sha256, digest)

    def authorize(self, presented: str | None, route: str) -> UserAPIKeyAuth:
        """What LiteLLM should know about the caller, or a ProxyException (401 / 403)."""
        key = _strip_bearer(presented)
        if _is_public_route(route):
            return UserAPIKeyAuth(user_role=LitellmUserRoles.INTERNAL_USER_VIEW_ONLY)
        if self.open:
            return UserAPIKeyAuth(api_key=key or None, user_role=LitellmUserRoles.INTERNAL_USER)
        if not key:
            raise _refuse("Authentication Error: no API key was sent")
        digest = hash_key(key)
        if self.is_master(digest):
            return self._admin()
        entry = self.find(digest)
        if entry is None:
            raise _refuse("Authentication Error: invalid API key")
        if route not in CLIENT_ROUTES:
            raise _refuse(
                f"key '{entry.alias}' may only call chat completions, completions and the model list; {route} needs the master key", status.HTTP_403_FORBIDDEN
            )
        return self._client(entry)

    def _admin(self) -> UserAPIKeyAuth:
        # The same identity LiteLLM gives its master key: an alias, never the key or its hash.
        from litellm.constants import LITELLM_PROXY_MASTER_KEY_ALIAS

        return UserAPIKeyAuth(api_key=LITELLM_PROXY_MASTER_KEY_ALIAS, user_role=LitellmUserRoles.PROXY_ADMIN, user_id=self.admin_user_id)

    @staticmethod
    def _client(entry: ApiKeySettings) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(
            api_key=entry.key_sha256,  # LiteLLM's key id is the sha256 hex too: logs and metrics match the config
            key_alias=entry.alias,
            key_name=entry.alias,
            user_role=LitellmUserRoles.INTERNAL_USER,
            models=list(entry.models),
            max_budget=entry.budget.limit_usd if entry.budget else None,
            metadata={KEY_ALIAS_METADATA: entry.alias},
        )


# ---- the proxy's key ring, built once from its config ---------------------------------------------

_lock = threading.Lock()
_cached: tuple[str | None, KeyRing] | None = None
_configured_keys: tuple[ApiKeySettings, ...] | None = None


def _keys_from_proxy_config() -> tuple[ApiKeySettings, ...]:
    """The config's keys, read once (the plugin instance is not needed: same file, same validation)."""
    global _configured_keys  # noqa: PLW0603 - a cache read once per process
    if _configured_keys is None:
        from glm_saver.settings import load_config_file, settings_from_config

        _configured_keys = tuple(settings_from_config(load_config_file(proxy.config_path())).keys)
        logger.info("glm_saver: custom_auth accepts %d configured key(s) and the master key", len(_configured_keys))
        _warn_if_models_unenforced(_configured_keys)
    return _configured_keys


def _warn_if_models_unenforced(keys: tuple[ApiKeySettings, ...]) -> None:
    """A key's `models` list is enforced by LiteLLM only with both flags on, and LiteLLM's check of
    fallbacks against it refuses every fallback of a key limited to glm-saver: say so if so."""
    import litellm

    limited = [entry.alias for entry in keys if entry.models]
    enforced = bool(proxy.general_settings().get("custom_auth_run_common_checks")) and bool(getattr(litellm, "enable_post_custom_auth_checks", False))
    if limited and not enforced:
        logger.warning(
            "glm_saver: the models of key(s) %s are NOT enforced: set general_settings.custom_auth_run_common_checks "
            "and litellm_settings.enable_post_custom_auth_checks to true",
            ", ".join(limited),
        )
    if limited and proxy.general_settings().get("enforce_fallback_model_access", True) is not False:
        logger.warning(
            "glm_saver: key(s) %s get no fallback (local down, Cerebras resting: an error instead): set "
            "general_settings.enforce_fallback_model_access to false, the plugin keeps fallbacks to what a key reaches",
            ", ".join(limited),
        )


def proxy_key_ring() -> KeyRing:
    global _cached  # noqa: PLW0603 - a cache per master key, swapped whole
    master, admin_user_id = proxy.master_key()
    cached = _cached
    if cached is not None and cached[0] == master:
        return cached[1]
    with _lock:
        ring = KeyRing(_keys_from_proxy_config(), hash_key(master) if master else None, admin_user_id)
        _cached = (master, ring)
    return ring


def _route(request: Request) -> str:
    from litellm.proxy.auth.auth_utils import get_request_route

    return get_request_route(request=request)


async def custom_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """LiteLLM calls this for every authenticated route with the presented key, `Bearer ` stripped
    (from `x-litellm-api-key` when sent, else `Authorization`)."""
    # Started from the repo's folder, LiteLLM loads ./glm_saver/auth.py by path as a second copy of
    # this module; the key ring is cached in the imported package module, the one copy.
    from glm_saver import auth  # noqa: PLW0406 - the package copy, not the by-path copy LiteLLM loaded

    return auth.proxy_key_ring().authorize(api_key, auth._route(request))
