"""`glm-saver classify` and `glm-saver check-config` as a user runs them."""

import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from glm_saver.cli import main
from tests import cline_shapes as cline
from tests.e2e.proxy import SHIPPED_CONFIG


def test_classify_text_prints_label_and_reasons(capsys) -> None:
    assert main(["classify", "refactor the module to fix the race condition"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("complex")
    assert "race condition" in out


def test_classify_reads_a_cline_request_body_from_stdin(monkeypatch, capsys) -> None:
    body = {"model": "glm-saver", "messages": cline.vscode_task("fix the typo in the title")}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(body)))
    assert main(["classify", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["label"] == "simple"
    assert set(verdict) == {"score", "label", "reasons"}


@pytest.mark.parametrize("text", ["", "   "])
def test_classify_says_there_is_no_ask_instead_of_scoring_nothing(text: str) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["classify", text])
    assert "no ask to classify" in str(raised.value.code)


def test_classify_uses_the_config_keywords(tmp_path, capsys) -> None:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["glm_saver"]["classifier"]["complexity_keywords"] = {"frobnicate": 5.0}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["classify", "--config", str(path), "frobnicate it"]) == 0
    assert capsys.readouterr().out.startswith("complex")


def test_classify_with_tiers_names_the_bands_that_pick_the_tier(capsys) -> None:
    assert main(["classify", "--config", str(SHIPPED_CONFIG), "Find the deadlock between the cache refresher and the request handlers"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "(bands local < 0.5 <= cerebras-oss < 0.75 <= cerebras)" in first
    assert first.endswith("tier cerebras")


def test_classify_without_tiers_names_the_threshold(capsys) -> None:
    assert main(["classify", "fix the typo in the title"]) == 0
    assert "(threshold 0.5)" in capsys.readouterr().out.splitlines()[0]


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written, as after `| head -1`
    try:
        done = subprocess.run(
            [sys.executable, "-m", "glm_saver.cli", "classify", "fix the typo"], stdout=write_end, stderr=subprocess.PIPE, check=False, timeout=120
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert b"Traceback" not in done.stderr


def test_check_config_accepts_the_shipped_config(capsys) -> None:
    assert main(["check-config", str(SHIPPED_CONFIG)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_names_the_bad_key(tmp_path, capsys) -> None:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["glm_saver"]["strategy"] = "fastest"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["check-config", str(path)]) == 2
    assert "glm_saver.strategy" in capsys.readouterr().err


def test_check_config_fails_when_no_callback_loads_the_plugin(tmp_path, capsys) -> None:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["litellm_settings"]["callbacks"] = ["prometheus"]
    path = tmp_path / "no-plugin.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["check-config", str(path)]) == 2
    assert "litellm_settings.callbacks: none loads the glm_saver plugin" in capsys.readouterr().err


def test_check_config_fails_when_the_hook_file_is_not_beside_the_config(tmp_path, capsys) -> None:
    path = tmp_path / "litellm_config.yaml"
    path.write_text(SHIPPED_CONFIG.read_text())
    assert main(["check-config", str(path)]) == 2
    assert f"needs {tmp_path / 'hooks' / 'glm_saver_hook.py'}" in capsys.readouterr().err
    shutil.copytree(SHIPPED_CONFIG.parent / "hooks", tmp_path / "hooks")
    assert main(["check-config", str(path)]) == 0


@pytest.mark.parametrize("redis_env", [None, "http://cache.internal:6379"], ids=["no-url", "not-a-redis-url"])
def test_check_config_fails_where_the_start_would_on_redis_without_a_usable_url(tmp_path, monkeypatch, capsys, redis_env) -> None:
    for name in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT"):
        monkeypatch.delenv(name, raising=False)
    if redis_env:
        monkeypatch.setenv("REDIS_URL", redis_env)
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["glm_saver"]["state"] = "redis"
    path = tmp_path / "redis.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "glm_saver.state" in err and "REDIS_URL" in err
    assert redis_env or "REDIS_HOST and REDIS_PORT" in err  # every place the start would read it from
    assert "cache.internal" not in err


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as raised:
        main(["frobnicate"])
    assert raised.value.code == 2
