"""The embedded model's plumbing without running a model: toolchain checks, the server command lines
(prebuilt and built), the portable build flags, the weights' assembly, the config `glm-saver up`
derives, its master key and who finds it, and the build's progress display."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from glm_saver.cli import main
from glm_saver.cli.stats import proxy_key
from glm_saver.launcher import local_server
from glm_saver.launcher.local_model import (
    BUILT,
    CMAKE_FLAGS,
    PREBUILT,
    BuildProgress,
    InstallError,
    Layout,
    assemble_weights,
    build_stamp,
    cache_dir,
    check_toolchain,
    host_has_amx,
)
from glm_saver.launcher.local_server import EMBEDDED_ALIAS, QA_STOP, QA_TEMPLATE, ServeOptions, server_command
from glm_saver.launcher.serve_prebuilt import parse, server_params
from glm_saver.launcher.up import derive_config, master_key
from glm_saver.settings import settings_from_config
from tests.e2e.proxy import SHIPPED_CONFIG


@pytest.fixture()
def fake_install(tmp_path: Path) -> Layout:
    """A cache that looks installed (a stand-in executable, the stamp, a model file)."""
    layout = Layout(tmp_path / "cache")
    layout.server.parent.mkdir(parents=True)
    layout.server.write_text("#!/bin/sh\n")
    layout.server.chmod(layout.server.stat().st_mode | stat.S_IXUSR)
    layout.server_stamp.write_text(json.dumps(build_stamp()))
    layout.model.parent.mkdir(parents=True)
    layout.model.write_bytes(b"GGUF")
    return layout


def test_cache_dir_is_the_flag_then_the_environment_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GLM_SAVER_CACHE_DIR", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "glm-saver"
    monkeypatch.setenv("GLM_SAVER_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"


def test_missing_cmake_and_compilers_are_named_with_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no tool at all
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(InstallError) as raised:
        check_toolchain()
    message = str(raised.value)
    for needed in ("cmake", "a C compiler", "a C++ compiler", "make", "apt-get install cmake build-essential"):
        assert needed in message


def test_a_binary_built_with_other_flags_is_not_reused(fake_install: Layout) -> None:
    assert fake_install.installed(BUILT)
    fake_install.server_stamp.write_text(json.dumps({**build_stamp(), "cmake_flags": list(CMAKE_FLAGS[:-1])}))
    assert not fake_install.installed(BUILT)
    assert fake_install.installed(PREBUILT)  # the wheel and the weights are all the default needs


def test_the_build_is_portable_and_never_targets_the_building_cpu() -> None:
    assert "-DGGML_NATIVE=OFF" in CMAKE_FLAGS and "-DGGML_AVX2=ON" in CMAKE_FLAGS
    for isa in ("AVX512", "AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{isa}=OFF" in CMAKE_FLAGS
    assert build_stamp()["cmake_flags"] == list(CMAKE_FLAGS)  # a native build of before is rebuilt


def test_amx_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    assert host_has_amx(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert not host_has_amx(cpuinfo)
    assert not host_has_amx(tmp_path / "missing")


def _flags(command: list[str]) -> dict[str, str]:
    return {flag: command[command.index(flag) + 1] for flag in command if flag.startswith("--") and flag not in ("--jinja", "--no-repack")}


def test_the_prebuilt_server_runs_as_our_python_child_by_default(fake_install: Layout) -> None:
    command = server_command(fake_install, ServeOptions(port=9001))
    assert command[:3] == [sys.executable, "-m", "glm_saver.launcher.serve_prebuilt"]
    assert "--no-repack" not in command


@pytest.mark.parametrize("amx", [True, False])
def test_the_built_server_gets_no_repack_exactly_where_the_cpu_has_amx(fake_install: Layout, monkeypatch: pytest.MonkeyPatch, amx: bool) -> None:
    monkeypatch.setattr(local_server, "host_has_amx", lambda: amx)
    command = server_command(fake_install, ServeOptions(port=9001, server=BUILT))
    assert command[0] == str(fake_install.server)
    assert ("--no-repack" in command) is amx


def test_the_built_server_without_a_build_says_to_build(fake_install: Layout) -> None:
    fake_install.server_stamp.unlink()
    with pytest.raises(InstallError, match="install --build"):
        server_command(fake_install, ServeOptions(server=BUILT))


def test_the_prebuilt_server_gets_what_llama_server_would_from_the_same_flags(fake_install: Layout) -> None:
    command = server_command(fake_install, ServeOptions(port=9001, parallel=3, slot_context=4096, threads=1))
    params = server_params(parse(command[3:]))
    assert (params.model.path, params.port, params.hostnames) == (str(fake_install.model), 9001, ["127.0.0.1"])
    assert (params.n_parallel, params.n_ctx, params.cpuparams.n_threads) == (3, 3 * 4096, 1)
    assert params.model_alias == {EMBEDDED_ALIAS} and params.use_jinja
    assert params.chat_template == QA_TEMPLATE.read_text()
    assert params.antiprompt == [QA_STOP]
    assert round(params.sampling.penalty_repeat, 3) == 1.1 and round(params.sampling.temp, 3) == 0.5
    assert params.cache_ram_mib == local_server.PROMPT_CACHE_MIB
    assert params.n_predict == 2048


@pytest.mark.parametrize(("slot_context", "window", "answer_cap"), [(16384, 14336, 2048), (4096, 2048, 2048), (1024, 512, 512)])
def test_an_answer_is_capped_at_the_room_the_window_leaves_in_a_slot(fake_install: Layout, slot_context: int, window: int, answer_cap: int) -> None:
    options = ServeOptions(port=9001, slot_context=slot_context)
    assert options.max_input_tokens == window
    assert _flags(server_command(fake_install, options))["--n-predict"] == str(answer_cap)


def test_weights_are_joined_byte_for_byte(tmp_path: Path) -> None:
    chunks = []
    for index, size in enumerate((4096 * 3, 4096, 1234)):
        chunk = tmp_path / f"part{index}"
        chunk.write_bytes(bytes([index + 1]) * size)
        chunks.append(chunk)
    assemble_weights(chunks, tmp_path / "model.gguf")
    assert (tmp_path / "model.gguf").read_bytes() == b"".join(chunk.read_bytes() for chunk in chunks)


def test_the_runtime_never_imports_the_launcher() -> None:
    probe = "import sys, glm_saver.plugin; print(sorted(m for m in sys.modules if m.startswith('glm_saver.launcher')))"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env, check=True)
    assert finished.stdout.strip().splitlines()[-1] == "[]"


def test_stats_finds_the_key_up_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    monkeypatch.setenv("GLM_SAVER_CACHE_DIR", str(tmp_path))
    assert proxy_key(None) is None
    generated = master_key(Layout(tmp_path))
    assert proxy_key(None) == generated
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-env")
    assert proxy_key(None) == "sk-env" and proxy_key("sk-flag") == "sk-flag"


def test_embedded_model_is_served_with_the_question_answer_template_and_stop(fake_install: Layout) -> None:
    command = server_command(fake_install, ServeOptions(port=9001, parallel=3, slot_context=4096, threads=1))
    flags = _flags(command)
    assert flags["--chat-template-file"] == str(QA_TEMPLATE) and QA_TEMPLATE.is_file()
    assert flags["--reverse-prompt"] == QA_STOP
    assert flags["--host"] == "127.0.0.1"
    assert (flags["--port"], flags["--parallel"], flags["--ctx-size"], flags["--threads"]) == ("9001", "3", str(3 * 4096), "1")
    assert flags["--alias"] == EMBEDDED_ALIAS


def test_a_users_gguf_is_served_with_its_own_template(fake_install: Layout, tmp_path: Path) -> None:
    model = tmp_path / "qwen2.5-coder-7b.gguf"
    model.write_bytes(b"GGUF")
    command = server_command(fake_install, ServeOptions(model=model))
    assert command[command.index("--model") + 1] == str(model)
    assert command[command.index("--alias") + 1] == "qwen2.5-coder-7b"
    assert "--jinja" in command
    assert "--chat-template-file" not in command and "--reverse-prompt" not in command


def test_serve_without_install_says_to_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local-model", "serve", "--cache-dir", str(tmp_path)]) == 3
    assert "run `glm-saver local-model install` first" in capsys.readouterr().err


def test_up_without_install_says_to_install(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["model_list"][0]["litellm_params"]["api_base"] = "http://127.0.0.1:9/v1"  # nothing answers there
    path = tmp_path / "litellm_config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-unit")
    assert main(["up", "--config", str(path), "--cache-dir", str(tmp_path / "cache")]) == 3
    assert "run `glm-saver local-model install` first" in capsys.readouterr().err


def test_derived_config_points_only_the_local_group_at_the_embedded_server() -> None:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    options = ServeOptions(port=8282, slot_context=8192)
    derived = derive_config(config, settings_from_config(config), options)
    local = next(entry for entry in derived["model_list"] if entry["model_name"] == "local")
    assert local["litellm_params"]["api_base"] == "http://127.0.0.1:8282/v1"
    assert local["litellm_params"]["model"] == f"openai/{EMBEDDED_ALIAS}"
    assert local["model_info"]["max_input_tokens"] == options.max_input_tokens < 8192
    assert local["model_info"]["always_stop"] == [QA_STOP]  # a request's own stop list keeps it
    assert [e for e in derived["model_list"] if e["model_name"] != "local"] == [e for e in config["model_list"] if e["model_name"] != "local"]
    assert {k: v for k, v in derived.items() if k != "model_list"} == {k: v for k, v in config.items() if k != "model_list"}
    settings_from_config(derived)  # still a valid config


def test_master_key_is_generated_once_private_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    layout = Layout(tmp_path)
    key = master_key(layout)
    assert key.startswith("sk-glm-saver-") and master_key(layout) == key
    assert stat.S_IMODE(os.stat(tmp_path / "master_key").st_mode) == 0o600
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-mine")
    assert master_key(layout) == "sk-mine"


def test_build_progress_prints_a_line_per_ten_percent_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = BuildProgress(out)
    for percent in (0, 3, 9, 10, 11, 25, 99, 100):
        progress.update(percent)
    assert [line.split(":")[1].split("%")[0].strip() for line in out.getvalue().splitlines()] == ["0", "10", "25", "99", "100"]


def test_build_progress_redraws_one_line_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = BuildProgress(out)
    for percent in (4, 52, 100):
        progress.update(percent)
    progress.done()
    frames = out.getvalue().split("\r")[1:]
    assert [frame.split("]")[1].split("%")[0].strip() for frame in frames] == ["4", "52", "100"]
    assert frames[-1].startswith("  building llama-server [" + "#" * 25 + "]") and out.getvalue().endswith("\n")
