"""`glm-saver local-model serve`: a llama.cpp server on 127.0.0.1 with the settings a model needs.

Two servers take the same flags: the prebuilt one of the `xllamacpp` wheel (default; run as
`python -m glm_saver.launcher.serve_prebuilt`, a child of ours) and the `llama-server` that
`install --build` compiled (with `--no-repack` on CPUs with Intel AMX, where llama.cpp's repacked
AMX kernels crash at start).

The embedded Gemma 3 270M is a *base* model with no chat template in its GGUF: it answers only
when the chat is rendered as "Question: ... / Answer:" text (templates/question_answer.jinja) and
generation stops at the next "Question:". Any other GGUF is served with its own chat template.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from glm_saver.launcher.local_model import BUILT, PREBUILT, InstallError, Layout, check_prebuilt, host_has_amx
from glm_saver.launcher.processes import Child, ChildFailed, Supervisor, answers, spawn, wait_until

DEFAULT_PORT = 8181
DEFAULT_PARALLEL = 3
DEFAULT_SLOT_CONTEXT = 16384  # tokens per slot; Cline's system prompt alone is ~12K tokens
EMBEDDED_ALIAS = "gemma-3-270m"
QA_TEMPLATE = Path(__file__).parent / "templates" / "question_answer.jinja"
QA_STOP = "Question:"
# Leave room for the answer inside a slot's context.
OUTPUT_RESERVE = 2048
PROMPT_CACHE_MIB = 512


def default_threads() -> int:
    """One thread per physical core, roughly (half the logical CPUs); at least one.

    On a 2-core machine that is 1: beside the proxy, a second thread makes llama-server slower
    whenever the proxy needs the other core.
    """
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class ServeOptions:
    model: Path | None = None  # None: the embedded Gemma 3 270M from the cache
    port: int = DEFAULT_PORT
    parallel: int = DEFAULT_PARALLEL
    slot_context: int = DEFAULT_SLOT_CONTEXT
    threads: int | None = None
    chat_template_file: Path | None = None
    server: str = PREBUILT  # PREBUILT (the xllamacpp wheel) or BUILT (install --build's llama-server)

    @property
    def server_name(self) -> str:
        """What logs and messages call the server process."""
        return "llama-server" if self.server == BUILT else "xllamacpp server"

    @property
    def embedded(self) -> bool:
        return self.model is None

    @property
    def alias(self) -> str:
        """The model name the server answers to (clients and the proxy's config use it)."""
        return EMBEDDED_ALIAS if self.model is None else self.model.stem

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def max_input_tokens(self) -> int:
        return max(self.slot_context - OUTPUT_RESERVE, self.slot_context // 2)

    @property
    def max_output_tokens(self) -> int:
        """The rest of a slot: where the server ends an answer that sets no max_tokens."""
        return self.slot_context - self.max_input_tokens


def _executable(layout: Layout, options: ServeOptions) -> list[str]:
    if options.server == BUILT:
        if not layout.server_built():
            raise InstallError(f"llama-server is not built in {layout.root}: run `glm-saver local-model install --build` first")
        # The AMX kernels of a native build crash at start; a portable build has none, and the flag
        # costs nothing there.
        return [str(layout.server), *(["--no-repack"] if host_has_amx() else [])]
    check_prebuilt()
    return [sys.executable, "-m", "glm_saver.launcher.serve_prebuilt"]


def server_command(layout: Layout, options: ServeOptions) -> list[str]:
    model = options.model or layout.model
    if not model.is_file():
        hint = "run `glm-saver local-model install` first" if options.embedded else "pass the path of a .gguf file"
        raise InstallError(f"no model at {model}: {hint}")
    if options.parallel < 1 or options.slot_context < 256:
        raise InstallError("--parallel must be >= 1 and --context >= 256")
    command = [
        *_executable(layout, options),
        "--model", str(model),
        "--alias", options.alias,
        "--host", "127.0.0.1",
        "--port", str(options.port),
        "--threads", str(options.threads or default_threads()),
        "--parallel", str(options.parallel),
        # Total context, split evenly between the slots.
        "--ctx-size", str(options.slot_context * options.parallel),
        "--jinja",
        # The default max_tokens: without it an answer runs until the slot's context is full (a base
        # model rarely stops by itself: 12 minutes of one slot here), also for a client gone. The
        # server does not cut a request's own larger max_tokens; the plugin does (max_output_tokens).
        "--n-predict", str(options.max_output_tokens),
        # The prompt cache otherwise grows to 8 GiB of RAM; a few Cline prefixes fit in this.
        "--cache-ram", str(PROMPT_CACHE_MIB),
    ]  # fmt: skip
    template = options.chat_template_file or (QA_TEMPLATE if options.embedded else None)
    if template:
        command += ["--chat-template-file", str(template)]
    if options.embedded:
        # Sampling the base model needs to stay on topic: stop at the next question, no loops.
        command += ["--reverse-prompt", QA_STOP, "--repeat-penalty", "1.1", "--temp", "0.5"]
    return command


# ---- starting it, and proving it answers --------------------------------------------------------

PROBE = [{"role": "user", "content": "What is the capital of France?"}]
PROBE_MAX_TOKENS = 4
START_TIMEOUT = 120.0
PROBE_TIMEOUT = 60.0


def health_url(options: ServeOptions) -> str:
    return options.base_url.removesuffix("/v1") + "/health"


def completion_problem(options: ServeOptions, timeout: float = PROBE_TIMEOUT) -> str | None:
    """One short chat completion from the server: None when it answers, else what went wrong.

    /health only says the HTTP side is up; a server whose compute kernels crash (AMX) is healthy
    until the first token, so readiness means a generated token."""
    body = {"model": options.alias, "messages": PROBE, "max_tokens": PROBE_MAX_TOKENS, "temperature": 0}
    try:
        response = httpx.post(f"{options.base_url}/chat/completions", json=body, timeout=timeout)
    except httpx.HTTPError as err:
        return f"the test completion failed: {type(err).__name__}: {err}"
    if not response.is_success:
        return f"the test completion answered {response.status_code}: {response.text[:300]}"
    usage = (response.json().get("usage") or {}).get("completion_tokens") or 0
    return None if usage > 0 else f"the test completion generated no token: {response.text[:300]}"


def advice(options: ServeOptions) -> str:
    if options.server == BUILT:
        return "the prebuilt server may work where this build does not: run without `--server built`"
    return (
        "run `glm-saver local-model install --build` to compile llama-server for this machine and "
        "start with `--server built`, or point the config's local model at your own server (Ollama, llama.cpp)"
    )


def start_server(layout: Layout, options: ServeOptions, supervisor: Supervisor, log_path: Path) -> Child:
    """Start the server, wait until /health answers and it generates a token; fail with its log
    and what to do."""
    command = server_command(layout, options)  # fails early, saying what to install
    child = supervisor.add(spawn(options.server_name, command, log_path))
    try:
        wait_until(child, lambda: answers(health_url(options)), START_TIMEOUT, "serving")
        problem = completion_problem(options)
        if problem:
            # It may have crashed on that request: let it finish dying so its exit code is known.
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=2)
            state = "still running" if child.alive() else f"exit code {child.process.returncode}"
            raise child.failure(f"started, but {problem} ({state})")
    except ChildFailed as err:
        raise ChildFailed(f"{err}\nWhat to do: {advice(options)}") from None
    return child


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prove_server(layout: Layout, options: ServeOptions) -> None:
    """What `install` ends with: the server loads the model and answers, on a spare port, then stops."""
    probe = dataclasses.replace(options, port=free_port(), parallel=1, slot_context=2048)
    supervisor = Supervisor()
    try:
        start_server(layout, probe, supervisor, layout.logs / f"check-{options.server}.log")
    except ChildFailed as err:
        raise InstallError(f"the {options.server_name} does not work on this machine: {err}") from None
    finally:
        supervisor.stop_all()
