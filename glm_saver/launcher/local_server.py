"""`glm-saver local-model serve`: llama-server on 127.0.0.1 with the settings a model needs.

The embedded Gemma 3 270M is a *base* model with no chat template in its GGUF: it answers only
when the chat is rendered as "Question: ... / Answer:" text (templates/question_answer.jinja) and
generation stops at the next "Question:". Any other GGUF is served with its own chat template.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from glm_saver.launcher.local_model import InstallError, Layout

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


def server_command(layout: Layout, options: ServeOptions) -> list[str]:
    if not layout.server_built():
        raise InstallError(f"llama-server is not built in {layout.root}: run `glm-saver local-model install` first")
    model = options.model or layout.model
    if not model.is_file():
        hint = "run `glm-saver local-model install` first" if options.embedded else "pass the path of a .gguf file"
        raise InstallError(f"no model at {model}: {hint}")
    if options.parallel < 1 or options.slot_context < 256:
        raise InstallError("--parallel must be >= 1 and --context >= 256")
    command = [
        str(layout.server),
        "--model", str(model),
        "--alias", options.alias,
        "--host", "127.0.0.1",
        "--port", str(options.port),
        "--threads", str(options.threads or default_threads()),
        "--parallel", str(options.parallel),
        # Total context, split evenly between the slots.
        "--ctx-size", str(options.slot_context * options.parallel),
        "--jinja",
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
