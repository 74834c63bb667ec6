"""`python -m glm_saver.launcher.serve_prebuilt [llama-server flags]`: the prebuilt llama.cpp server of
the `xllamacpp` wheel, run as a child process of ours.

It takes the subset of llama-server's flags that `local_server.server_command` passes, so both
servers are started from one command line. xllamacpp serves inside this Python process and its
native code installs its own SIGINT/SIGTERM handlers that do not end the process, so once the server
is up we put ours back: SIGINT or SIGTERM end the process at once (nothing here needs cleaning up:
the model is memory-mapped read-only). If our parent dies we die too (PDEATHSIG = SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serve_prebuilt", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--ctx-size", type=int, default=4096)
    parser.add_argument("--n-predict", type=int, default=None)
    parser.add_argument("--jinja", action="store_true")
    parser.add_argument("--cache-ram", type=int, default=None)
    parser.add_argument("--chat-template-file", default=None)
    parser.add_argument("--reverse-prompt", action="append", default=[])
    parser.add_argument("--repeat-penalty", type=float, default=None)
    parser.add_argument("--temp", type=float, default=None)
    return parser.parse_args(list(argv))


def server_params(args: argparse.Namespace) -> Any:
    """xllamacpp's CommonParams with what llama-server would have made of the same flags."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    if args.alias:
        params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_size
    params.use_jinja = args.jinja
    if args.n_predict is not None:
        params.n_predict = args.n_predict
    if args.cache_ram is not None:
        params.cache_ram_mib = args.cache_ram
    if args.chat_template_file:
        # llama-server's --chat-template-file reads the file into this same field.
        params.chat_template = Path(args.chat_template_file).read_text()
    if args.reverse_prompt:
        params.antiprompt = list(args.reverse_prompt)
    if args.repeat_penalty is not None:
        params.sampling.penalty_repeat = args.repeat_penalty
    if args.temp is not None:
        params.sampling.temp = args.temp
    return params


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # not glibc: the parent's own shutdown still stops us
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def _exit_now(signum: int, frame: object) -> None:
    print(f"serve_prebuilt: {signal.Signals(signum).name}, stopping", file=sys.stderr, flush=True)
    os._exit(0)  # the server's threads would keep a normal exit waiting


def main(argv: Sequence[str] | None = None) -> None:
    _die_with_parent()
    args = parse(sys.argv[1:] if argv is None else argv)
    import xllamacpp

    server = xllamacpp.Server(server_params(args))  # loads the model, starts serving in its threads
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit_now)
    print(f"serve_prebuilt: xllamacpp {xllamacpp.__version__} listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    while server is not None:  # holds the reference: the server lives as long as its object
        signal.pause()  # until SIGINT / SIGTERM end the process in _exit_now


if __name__ == "__main__":
    main()
