"""`glm-saver hash-key`: the sha256 of a client key, for `glm_saver.keys[].key_sha256`.

The config stores only the hash; the proxy hashes each presented key and compares (glm_saver.auth).
"""

from __future__ import annotations

import argparse
import sys

from glm_saver.callers import hash_key

# LiteLLM hashes a key in its failure logs and metrics only when it starts with this.
CLIENT_KEY_PREFIX = "sk-"


def _run(args: argparse.Namespace) -> int:
    key = args.key if args.key not in (None, "-") else sys.stdin.read()
    key = key.strip()
    if not key:
        print("glm-saver hash-key: no key given (pass KEY, or pipe it on stdin)", file=sys.stderr)
        return 2
    if not key.startswith(CLIENT_KEY_PREFIX):
        # LiteLLM hashes a key in its failure logs and metrics only when it starts with sk-.
        print(f"glm-saver hash-key: client keys must start with {CLIENT_KEY_PREFIX!r} (LiteLLM would log others in clear)", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("hash-key", help="print the sha256 of a client key, for glm_saver.keys[].key_sha256")
    command.add_argument("key", nargs="?", help="the key; omit or '-' to read it from stdin (keeps it out of shell history)")
    command.set_defaults(run=_run)
