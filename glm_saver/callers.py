"""Who pays for a request, named safely for the books: a key alias, or the start of a hash."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

_SHA256 = re.compile(r"[0-9a-f]{64}")
# What LiteLLM logs as the api_key of master-key requests (litellm.constants.LITELLM_PROXY_MASTER_KEY_ALIAS).
_MASTER_KEY_ALIAS = "litellm_proxy_master_key"


def hash_key(key: str) -> str:
    """The sha256 hex digest of a key: what the config stores and what identifies the key in logs."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def caller_label(metadata: Mapping[str, Any]) -> str:
    """Who made a request, fit for /stats: the key's alias, else the start of LiteLLM's key hash.

    LiteLLM logs a virtual key as its sha256 and the master key under a fixed alias; anything else
    (a custom auth may hand over the raw key) is hashed here first, so no key ever shows.
    """
    alias = metadata.get("user_api_key_alias")
    if isinstance(alias, str) and alias:
        return alias
    key = str(metadata.get("user_api_key_hash") or metadata.get("user_api_key") or "")
    if not key:
        return "unknown"
    if key == _MASTER_KEY_ALIAS:
        return "master-key"
    digest = key if _SHA256.fullmatch(key) else hash_key(key)
    return f"key-{digest[:12]}"


def key_label(auth: Any) -> str:
    """The same name for the key LiteLLM authenticated (a UserAPIKeyAuth) in the pre-call hook."""
    return caller_label({"user_api_key_alias": getattr(auth, "key_alias", None), "user_api_key_hash": getattr(auth, "api_key", None)})
