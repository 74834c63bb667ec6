"""`glm-saver up`: the one command a newcomer runs: a local model plus the proxy, until Ctrl-C.

1. If the config's local base URL already answers (a running Ollama, llama.cpp, LM Studio), it
   wins and the config is used as it is.
2. Otherwise the embedded model (`glm-saver local-model install`) is started on its server (the
   prebuilt xllamacpp one, or `--server built`) and must answer one short completion. The proxy
   gets a *derived* config: LiteLLM's `os.environ/VAR` has no default, so the local group's
   api_base cannot point at "the embedded server unless set". The derived copy, written to
   <cache>/run/<port>/ with the config's hooks/ beside it (LiteLLM loads the plugin shim relative
   to the config), differs only in the local group's model, api_base and window.
3. `litellm --config ...` starts; once both answer, "ready" and what to put into Cline are
   printed. Ctrl-C or SIGTERM stops the proxy (its requests in flight get up to 20 s; a second
   Ctrl-C stops at once), then the model; nothing is left running.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from glm_saver.deployments import ALWAYS_STOP, api_key_configured
from glm_saver.launcher.local_model import Layout
from glm_saver.launcher.local_server import QA_STOP, ServeOptions, server_command, start_server
from glm_saver.launcher.processes import STOP_TIMEOUT, ChildFailed, Stopped, Supervisor, answers, spawn, stop_on_signals, wait_until
from glm_saver.settings import GlmSaverSettings, load_config_file, settings_from_config

PROXY_START_TIMEOUT = 240.0
HOOK_SHIM = "from glm_saver.plugin import plugin_from_proxy_config\n\nproxy_handler_instance = plugin_from_proxy_config()\n"


@dataclass(frozen=True)
class UpOptions:
    config: Path
    layout: Layout
    serve: ServeOptions
    port: int = 4000


@dataclass(frozen=True)
class LocalModel:
    """What the proxy's local group points at, for the summary."""

    base_url: str
    name: str
    embedded: bool


def _local_entries(config: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [entry for entry in config.get("model_list") or [] if entry.get("model_name") == group]


def configured_local_base(config: dict[str, Any], settings: GlmSaverSettings) -> str | None:
    for entry in _local_entries(config, settings.local_group):
        base = (entry.get("litellm_params") or {}).get("api_base")
        if isinstance(base, str) and base.startswith("http"):
            return base.rstrip("/")
    return None


def derive_config(config: dict[str, Any], settings: GlmSaverSettings, serve: ServeOptions) -> dict[str, Any]:
    """The same config with the local group pointed at the embedded server and its window."""
    derived = copy.deepcopy(config)
    for entry in _local_entries(derived, settings.local_group):
        params = entry.setdefault("litellm_params", {})
        params.update(model=f"openai/{serve.alias}", api_base=serve.base_url, api_key=params.get("api_key") or "local-no-key")
        info = entry.setdefault("model_info", {})
        info["max_input_tokens"] = serve.max_input_tokens
        info["max_output_tokens"] = min(int(info.get("max_output_tokens") or serve.max_output_tokens), serve.max_output_tokens)
        if serve.embedded:  # its server stops at QA_STOP unless a request brings its own stop list
            stops = info.get(ALWAYS_STOP) or []
            info[ALWAYS_STOP] = [*stops, *([] if QA_STOP in stops else [QA_STOP])]
    return derived


def write_run_config(options: UpOptions, derived: dict[str, Any]) -> Path:
    run_dir = options.layout.root / "run" / str(options.port)
    run_dir.mkdir(parents=True, exist_ok=True)
    hooks = options.config.parent / "hooks"
    if hooks.is_dir():
        shutil.copytree(hooks, run_dir / "hooks", dirs_exist_ok=True)
    else:
        (run_dir / "hooks").mkdir(exist_ok=True)
        (run_dir / "hooks" / "glm_saver_hook.py").write_text(HOOK_SHIM)
    path = run_dir / "litellm_config.yaml"
    path.write_text(f"# Written by `glm-saver up` from {options.config}; edit that file, not this one.\n" + yaml.safe_dump(derived, sort_keys=False))
    return path


def master_key(layout: Layout) -> str:
    """$LITELLM_MASTER_KEY, else a key generated once and kept (0600) in the cache."""
    if os.environ.get("LITELLM_MASTER_KEY"):
        return os.environ["LITELLM_MASTER_KEY"]
    path = layout.master_key
    if path.is_file():
        return path.read_text().strip()
    layout.root.mkdir(parents=True, exist_ok=True)
    key = "sk-glm-saver-" + secrets.token_urlsafe(18)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    return key


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def litellm_executable() -> str:
    beside = Path(sys.executable).with_name("litellm")
    return str(beside) if beside.exists() else (shutil.which("litellm") or "litellm")


def _start_embedded(options: UpOptions, supervisor: Supervisor) -> LocalModel:
    server_command(options.layout, options.serve)  # fails early, before any port check, if not installed
    check_proxy_port(options.port)  # before the model starts: the proxy would not
    if port_in_use(options.serve.port):
        raise ChildFailed(f"port {options.serve.port} is already in use; pick another with --local-port")
    print(f"starting the local model {options.serve.alias} on {options.serve.base_url} ({options.serve.server_name}) ...", flush=True)
    start_server(options.layout, options.serve, supervisor, options.layout.logs / f"{options.serve.server}-server-{options.serve.port}.log")
    return LocalModel(options.serve.base_url, options.serve.alias, embedded=True)


def check_proxy_port(port: int) -> None:
    """Before anything starts: a port taken by a proxy is most often `up` still running elsewhere."""
    if not port_in_use(port):
        return
    if answers(f"http://127.0.0.1:{port}/health/liveliness"):
        raise ChildFailed(f"a LiteLLM proxy already answers on port {port} (glm-saver up in another terminal?): stop it, or pick another port with --port")
    raise ChildFailed(f"port {port} is already in use; pick another with --port")


def _start_proxy(options: UpOptions, config_path: Path, key: str, supervisor: Supervisor) -> None:
    check_proxy_port(options.port)
    print(f"starting the proxy on http://127.0.0.1:{options.port} ...", flush=True)
    env = {**os.environ, "LITELLM_MASTER_KEY": key, "GLM_SAVER_CONFIG": str(config_path), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    command = [litellm_executable(), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(options.port)]
    child = supervisor.add(spawn("litellm", command, options.layout.logs / f"proxy-{options.port}.log", env=env, cwd=options.config.parent))
    base = f"http://127.0.0.1:{options.port}"
    wait_until(child, lambda: answers(f"{base}/health/liveliness") and answers(f"{base}/health"), PROXY_START_TIMEOUT, "healthy")


def _summary(options: UpOptions, local: LocalModel, key: str, settings: GlmSaverSettings, cloud_configured: bool) -> str:
    base = f"http://127.0.0.1:{options.port}"
    where = f"embedded, {options.serve.server_name}, {options.serve.parallel} parallel slots" if local.embedded else "already running"
    cloud = "configured" if cloud_configured else "not configured (set CEREBRAS_API_KEY to send complex asks there); everything goes local"
    return "\n".join(
        [
            "",
            "GLM Token Saver is ready. In Cline:",
            f"  API provider: LiteLLM              base URL: {base}",
            f"  or API provider: OpenAI Compatible base URL: {base}/v1",
            f"  API key: {key}",
            f"  Model:   {settings.entry_models[0]}",
            "",
            f"Local model: {local.name} at {local.base_url} ({where})",
            f"Cerebras:    {cloud}",
            f"Logs:        {options.layout.logs}",
            "Press Ctrl-C to stop.",
        ]
    )


def run(options: UpOptions) -> int:
    config = load_config_file(options.config)
    settings = settings_from_config(config)
    key = master_key(options.layout)
    supervisor = Supervisor()
    with stop_on_signals():
        return _run(options, config, settings, key, supervisor)


def _run(options: UpOptions, config: dict[str, Any], settings: GlmSaverSettings, key: str, supervisor: Supervisor) -> int:
    try:
        configured = configured_local_base(config, settings)
        if configured and options.serve.embedded and answers(f"{configured}/models"):
            print(f"a local model server already answers at {configured}: using it", flush=True)
            local, config_path = LocalModel(configured, "as configured", embedded=False), options.config
        else:
            local = _start_embedded(options, supervisor)
            config_path = write_run_config(options, derive_config(config, settings, options.serve))
        _start_proxy(options, config_path, key, supervisor)
        print(_summary(options, local, key, settings, api_key_configured(config, settings.cloud_group)), flush=True)
        exited = supervisor.watch()
        raise exited.failure(f"exited with code {exited.process.returncode}")
    except Stopped:
        print(f"\nstopping (requests in flight get up to {STOP_TIMEOUT:.0f} s; Ctrl-C again stops at once) ...", flush=True)
        return 0
    except ChildFailed as err:
        print(f"glm-saver up: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        supervisor.stop_all()
