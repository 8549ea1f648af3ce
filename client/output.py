"""What every command shares: exit statuses, JSON for scripts, and asking a person to confirm."""

from __future__ import annotations

import json
import sys
from typing import Any

EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141  # as a program ended by SIGPIPE: `livedm ls | head` stops quietly


def print_json(value: Any) -> None:
    print(json.dumps(value))


def print_result(result: Any) -> None:
    """Strings and numbers bare (shell scripts capture them); everything else as JSON."""
    if isinstance(result, str) or (isinstance(result, (int, float)) and not isinstance(result, bool)):
        print(result)
    else:
        print_json(result)


def confirmed(command: str, question: str, expected: str) -> bool | None:
    """Ask a person at a terminal to type `expected`: True when they did, False when not, None when no one is
    at a terminal to ask (scripts pass --yes)."""
    if not sys.stdin.isatty():
        print(f"livedm {command}: refusing without --yes when not at a terminal", file=sys.stderr)
        return None
    try:
        answer = input(f"{question} Type {expected} to confirm: ")
    except EOFError:
        answer = ""
    if " ".join(answer.split()) != expected:
        print(f"not confirmed (you typed {answer.strip()!r}, not {expected!r}): nothing was done", file=sys.stderr)
        return False
    return True
