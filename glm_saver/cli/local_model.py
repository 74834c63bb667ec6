"""The `glm-saver local-model install|serve` and `glm-saver up` subcommands (registered by cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glm_saver.launcher.local_model import BUILT, PREBUILT, SERVERS, InstallError, Layout, cache_dir, install
from glm_saver.launcher.local_server import DEFAULT_PARALLEL, DEFAULT_PORT, DEFAULT_SLOT_CONTEXT, ServeOptions, prove_server, start_server
from glm_saver.launcher.processes import ChildFailed, Stopped, Supervisor, stop_on_signals

EXIT_NEEDS_ACTION = 3


def _layout(args: argparse.Namespace) -> Layout:
    return Layout(cache_dir(args.cache_dir))


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(
        model=Path(args.model).expanduser().resolve() if args.model else None,
        port=args.local_port,
        parallel=args.parallel,
        slot_context=args.context,
        threads=args.threads,
        chat_template_file=Path(args.chat_template_file).expanduser().resolve() if args.chat_template_file else None,
        server=args.server,
    )


def _failed(err: Exception) -> int:
    print(f"glm-saver: {err}", file=sys.stderr, flush=True)
    return EXIT_NEEDS_ACTION


def _install(args: argparse.Namespace) -> int:
    layout = _layout(args)
    try:
        server = install(layout, build=args.build, jobs=args.jobs)
        print(f"checking that the {ServeOptions(server=server).server_name} loads the model and answers ...", flush=True)
        prove_server(layout, ServeOptions(server=server))
    except InstallError as err:
        return _failed(err)
    how = "" if server == PREBUILT else " --server built"
    print(f"installed and checked: run `glm-saver up{how}` (or `glm-saver local-model serve{how}`)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """The server as our child, "serving" printed once it answers; Ctrl-C or SIGTERM stop it."""
    options = _serve_options(args)
    layout = _layout(args)
    supervisor = Supervisor()
    try:
        with stop_on_signals():
            try:
                start_server(layout, options, supervisor, layout.logs / f"{options.server}-server-{options.port}.log")
                print(f"serving {options.alias} on {options.base_url} (model name {options.alias!r}, {options.server_name}); Ctrl-C stops it", flush=True)
                exited = supervisor.watch()
                raise exited.failure(f"exited with code {exited.process.returncode}")
            except Stopped:
                return 0
            finally:
                supervisor.stop_all()
    except (InstallError, ChildFailed) as err:
        return _failed(err)


def _up(args: argparse.Namespace) -> int:
    from glm_saver.launcher.up import UpOptions, run

    options = UpOptions(config=Path(args.config).expanduser().resolve(), layout=_layout(args), serve=_serve_options(args), port=args.port)
    try:
        return run(options)
    except (InstallError, ChildFailed) as err:
        return _failed(err)


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="where the model, a compiled llama-server and the logs live (default $GLM_SAVER_CACHE_DIR or ~/.cache/glm-saver)")


def _add_serve_options(parser: argparse.ArgumentParser, port_flag: str) -> None:
    parser.add_argument("--model", help="serve this .gguf (with its own chat template) instead of the embedded Gemma 3 270M")
    parser.add_argument(port_flag, dest="local_port", type=int, default=DEFAULT_PORT, help=f"the model server's port (default {DEFAULT_PORT})")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, help=f"requests served at once (default {DEFAULT_PARALLEL})")
    parser.add_argument("--context", type=int, default=DEFAULT_SLOT_CONTEXT, help=f"context tokens per request (default {DEFAULT_SLOT_CONTEXT})")
    parser.add_argument("--threads", type=int, help="CPU threads (default: half the CPUs, at least 1)")
    parser.add_argument("--chat-template-file", help="a Jinja chat template to use instead of the model's")
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default=PREBUILT,
        help=f"{PREBUILT!r}: the xllamacpp wheel's (default); {BUILT!r}: the llama-server `install --build` compiled",
    )
    _add_cache_dir(parser)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    local = commands.add_parser("local-model", help="the embedded local model (Gemma 3 270M on a llama.cpp server)")
    actions = local.add_subparsers(dest="action", required=True)

    install_parser = actions.add_parser("install", help="assemble the weights in the cache and check that the server answers with them")
    install_parser.add_argument(
        "--build", action="store_true", help=f"also compile llama-server from source (portable; about 6 min on 2 cores; then use --server {BUILT})"
    )
    install_parser.add_argument("--jobs", type=int, help="parallel compile jobs with --build (default: all CPUs)")
    _add_cache_dir(install_parser)
    install_parser.set_defaults(run=_install)

    serve = actions.add_parser("serve", help="run the model's server on 127.0.0.1 until Ctrl-C")
    _add_serve_options(serve, "--port")
    serve.set_defaults(run=_serve)

    up = commands.add_parser("up", help="start a local model and the proxy, print what to put into Cline; Ctrl-C stops both")
    up.add_argument("--config", default="litellm_config.yaml", help="the proxy's config (default ./litellm_config.yaml)")
    up.add_argument("--port", type=int, default=4000, help="the proxy's port (default 4000)")
    _add_serve_options(up, "--local-port")
    up.set_defaults(run=_up)
