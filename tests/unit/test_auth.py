"""glm_saver.auth's key ring: who gets in, as whom, and where; and `glm-saver hash-key`."""

from __future__ import annotations

import hashlib
import io
import sys

import pytest
from litellm.proxy._types import LitellmUserRoles, ProxyException

from glm_saver.auth import KEY_ALIAS_METADATA, KeyRing
from glm_saver.callers import hash_key
from glm_saver.cli import main
from glm_saver.settings import ApiKeySettings, ConfigError, parse_settings

MASTER = "sk-master-0123456789"
ALPHA = "sk-alpha-0123456789"
BETA = "sk-beta-key-42"
CHAT = "/v1/chat/completions"


def _ring(master: str | None = MASTER) -> KeyRing:
    keys = parse_settings(
        {
            "keys": [
                {"alias": "alpha", "key_sha256": hash_key(ALPHA)},
                {"alias": "beta", "key_sha256": hash_key(BETA), "models": ["glm-saver"], "budget": {"limit_usd": 2.5, "period": "daily"}},
            ]
        }
    ).keys
    return KeyRing(tuple(keys), hash_key(master) if master else None)


def _refusal(ring: KeyRing, key: str | None, route: str = CHAT) -> ProxyException:
    with pytest.raises(ProxyException) as caught:
        ring.authorize(key, route)
    return caught.value


def test_hash_key_is_the_sha256_hex_of_the_key() -> None:
    assert hash_key(ALPHA) == hashlib.sha256(ALPHA.encode()).hexdigest()


def test_a_configured_key_is_known_by_its_alias_and_hash_never_the_key() -> None:
    auth = _ring().authorize(ALPHA, CHAT)
    assert auth.key_alias == "alpha"
    assert auth.api_key == hash_key(ALPHA) == auth.token
    assert auth.metadata == {KEY_ALIAS_METADATA: "alpha"}
    assert auth.user_role == LitellmUserRoles.INTERNAL_USER
    assert ALPHA not in auth.model_dump_json()


def test_a_key_carries_its_models_and_budget() -> None:
    auth = _ring().authorize(BETA, CHAT)
    assert auth.models == ["glm-saver"]
    assert auth.max_budget == 2.5
    unlimited = _ring().authorize(ALPHA, CHAT)
    assert unlimited.models == [] and unlimited.max_budget is None


def test_a_bearer_prefix_left_on_the_key_is_ignored() -> None:
    assert _ring().authorize(f"Bearer {ALPHA}", CHAT).key_alias == "alpha"


def test_the_master_key_is_the_admin_under_litellms_alias_not_its_hash() -> None:
    auth = _ring().authorize(MASTER, "/stats")
    assert auth.user_role == LitellmUserRoles.PROXY_ADMIN
    assert auth.api_key == "litellm_proxy_master_key"
    assert hash_key(MASTER) not in auth.model_dump_json()


@pytest.mark.parametrize("key", ["sk-unknown-0123456789", ALPHA.upper(), ALPHA[:-1], ALPHA + "0", hash_key(ALPHA)])
def test_an_unknown_key_gets_401_without_the_key_in_the_message(key: str) -> None:
    refusal = _refusal(_ring(), key)
    assert refusal.code == "401"
    assert refusal.type == "auth_error"
    assert key.strip() not in refusal.message


@pytest.mark.parametrize("key", [None, "", "   ", "Bearer "])
def test_no_key_gets_401(key: str | None) -> None:
    assert _refusal(_ring(), key).code == "401"


def test_a_configured_key_cannot_read_stats_or_metrics_but_can_list_models() -> None:
    ring = _ring()
    for route in ("/stats", "/metrics", "/key/generate", "/global/spend/reset"):
        refusal = _refusal(ring, ALPHA, route)
        assert refusal.code == "403" and "master key" in refusal.message
    for route in ("/v1/models", "/models", "/v1/model/info", "/chat/completions", "/v1/completions"):
        assert ring.authorize(ALPHA, route).key_alias == "alpha"


def test_public_routes_need_no_key() -> None:
    assert _ring().authorize(None, "/").user_role == LitellmUserRoles.INTERNAL_USER_VIEW_ONLY


def test_without_master_key_only_configured_keys_get_in() -> None:
    ring = _ring(master=None)
    assert ring.authorize(ALPHA, CHAT).key_alias == "alpha"
    assert _refusal(ring, MASTER).code == "401"
    assert _refusal(ring, None).code == "401"


def test_with_no_master_key_and_no_keys_the_proxy_stays_open_like_litellm() -> None:
    ring = KeyRing(())
    assert ring.open
    auth = ring.authorize("anything-at-all", CHAT)
    assert auth.user_role == LitellmUserRoles.INTERNAL_USER
    assert ring.authorize(None, "/stats").user_role == LitellmUserRoles.INTERNAL_USER


def test_the_master_key_alone_is_not_open() -> None:
    ring = KeyRing((), hash_key(MASTER))
    assert not ring.open
    assert ring.authorize(MASTER, CHAT).user_role == LitellmUserRoles.PROXY_ADMIN
    assert _refusal(ring, ALPHA).code == "401"


def test_a_key_whose_hash_matches_two_entries_is_the_last_configured() -> None:
    # Every entry is compared (no early exit); duplicates are a config mistake but must not crash.
    entry = {"key_sha256": hash_key(ALPHA)}
    keys = tuple(ApiKeySettings(alias=alias, **entry) for alias in ("first", "second"))
    assert KeyRing(keys).authorize(ALPHA, CHAT).key_alias == "second"


def test_a_stored_key_must_be_a_sha256_hex_not_the_key_itself() -> None:
    with pytest.raises(ConfigError, match=r"glm_saver\.keys\.0\.key_sha256"):
        parse_settings({"keys": [{"alias": "alpha", "key_sha256": ALPHA}]})


def test_hash_key_command_prints_the_hash_of_an_argument_or_stdin(monkeypatch, capsys) -> None:
    assert main(["hash-key", ALPHA]) == 0
    assert capsys.readouterr().out == hash_key(ALPHA) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(BETA + "\n"))
    assert main(["hash-key"]) == 0
    assert capsys.readouterr().out == hash_key(BETA) + "\n"


def test_hash_key_command_refuses_a_key_without_the_sk_prefix(capsys) -> None:
    assert main(["hash-key", "beta-key-without-prefix-42"]) == 2
    assert "must start with 'sk-'" in capsys.readouterr().err


def test_hash_key_command_refuses_an_empty_key(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["hash-key"]) == 2
    assert "no key" in capsys.readouterr().err


def test_litellm_can_load_custom_auth_by_path_from_the_repo_folder() -> None:
    # Started as `litellm --config litellm_config.yaml` in the repo, LiteLLM finds ./glm_saver/auth.py
    # and loads it by file path, outside sys.modules (a @dataclass there used to stop the proxy).
    import inspect

    from litellm.proxy.types_utils.utils import get_instance_fn

    from glm_saver import auth
    from tests.e2e.proxy import SHIPPED_CONFIG

    loaded = get_instance_fn("glm_saver.auth.custom_auth", config_file_path=str(SHIPPED_CONFIG))
    assert loaded is not auth.custom_auth  # a second copy, loaded from the file
    assert inspect.iscoroutinefunction(loaded)
