"""Requests shaped like the ones Cline sends (see shared/notes/cerebras-and-cline.md)."""

from __future__ import annotations

from typing import Any

# Words that would make the classifier say "complex" if it wrongly read them.
LOADED_WORDS = "refactor the architecture, fix the race condition, optimize the distributed algorithm. "

SYSTEM_PROMPT = (
    "You are Cline, a highly skilled software engineer. " + LOADED_WORDS * 40 + "\n"
    "TOOL USE\nYou have access to a set of tools. " + "Use tools step by step. " * 400
)

ENVIRONMENT = (
    "<environment_details>\n# VSCode Visible Files\nsrc/app.py\n# Current Time\n2026-11-25\n"
    + LOADED_WORDS * 30
    + "\n# Current Working Directory Files\n"
    + "\n".join(f"src/module_{i}.py" for i in range(200))
    + "\n</environment_details>"
)

READ_FILE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read the contents of a file at the given path.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}


def vscode_task(task: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    """First turn of the VS Code extension: system prompt, then <task> plus environment details."""
    return [
        {"role": "system", "content": system_prompt},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"<task>\n{task}\n</task>"},
                {"type": "text", "text": ENVIRONMENT, "cache_control": {"type": "ephemeral"}},
            ],
        },
    ]


def vscode_tool_result_turn(task: str) -> list[dict[str, Any]]:
    """A later turn: the assistant used a tool; the user turn only returns its result."""
    return [
        *vscode_task(task),
        {"role": "assistant", "content": "<read_file>\n<path>src/app.py</path>\n</read_file>"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "[read_file for 'src/app.py'] Result:\n" + "def main():\n    refactor()\n" * 50},
                {"type": "text", "text": ENVIRONMENT},
            ],
        },
    ]


def vscode_feedback_turn(task: str, feedback: str) -> list[dict[str, Any]]:
    return [
        *vscode_task(task),
        {"role": "assistant", "content": "I made the change."},
        {"role": "user", "content": f"<feedback>\n{feedback}\n</feedback>\n{ENVIRONMENT}"},
    ]


def cli_task(task: str) -> list[dict[str, Any]]:
    """Cline CLI 3.x with --yolo: small system prompt, the plain task, then its own [SYSTEM] reminder."""
    return [
        {"role": "system", "content": "You are Cline. <env>cwd: /repo</env> " + LOADED_WORDS * 5},
        {"role": "user", "content": task},
        {"role": "user", "content": "[SYSTEM] This run is not complete until you call submit_and_exit. " + LOADED_WORDS},
    ]


def cli_tool_result_turn(task: str) -> list[dict[str, Any]]:
    return [
        *cli_task(task),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read_files", "arguments": '{"paths": ["a.py"]}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"a.py": "' + LOADED_WORDS * 10 + '"}'},
    ]


def vscode_task_of_size(task: str, total_chars: int) -> list[dict[str, Any]]:
    """A first turn whose system prompt is grown until the whole request is about `total_chars`."""
    others = len(ENVIRONMENT) + len(task) + 20
    repeats = max(1, (total_chars - others) // len(SYSTEM_PROMPT) + 1)
    return vscode_task(task, (SYSTEM_PROMPT * repeats)[: max(0, total_chars - others)])
