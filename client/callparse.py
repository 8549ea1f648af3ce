"""Parse an `rtpcli` call string like "get_datatype_size(project_uid='P45', session_uid='S1', datatype='raw')"
without evaluating it: only a plain function name and literal arguments are accepted."""

from __future__ import annotations

import ast
from typing import Any

MAX_CALL_CHARS = 1_000_000


class CallSyntaxError(ValueError):
    """The string is not a call livedm can send; the message says why."""


def _literal(node: ast.expr, what: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise CallSyntaxError(f"{what} is not a literal (strings, numbers, True/False/None, lists, dicts): "
                              f"{ast.unparse(node)[:80]}") from None


def parse_call(text: str) -> tuple[str, list[Any] | dict[str, Any]]:
    """(method, params): params is a list (positional) or a dict (keyword), never both."""
    if len(text) > MAX_CALL_CHARS:
        raise CallSyntaxError(f"the call is longer than {MAX_CALL_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise CallSyntaxError(f"not a Python call: {exc.msg} (like: get_datatype_size(project_uid='P1', "
                              "session_uid='S1', datatype='raw'))") from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise CallSyntaxError(f"not a Python call: {exc}") from None
    call = tree.body
    if not isinstance(call, ast.Call):
        raise CallSyntaxError("not a call: write method_name(arg=value, ...)")
    if not isinstance(call.func, ast.Name):
        raise CallSyntaxError(f"the method must be a plain name, not {ast.unparse(call.func)[:80]}")
    if call.args and call.keywords:
        raise CallSyntaxError("give either positional or keyword arguments, not both")
    args = []
    for index, node in enumerate(call.args):
        if isinstance(node, ast.Starred):
            raise CallSyntaxError("*arguments are not allowed")
        args.append(_literal(node, f"argument {index + 1}"))
    kwargs: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise CallSyntaxError("**arguments are not allowed")
        if keyword.arg in kwargs:
            raise CallSyntaxError(f"keyword argument {keyword.arg!r} repeated")
        kwargs[keyword.arg] = _literal(keyword.value, f"argument {keyword.arg!r}")
    return call.func.id, (kwargs if call.keywords else args)
