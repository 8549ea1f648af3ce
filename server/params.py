"""Arguments checked against an API method's type hints before it runs: each of its type, every string
Unicode text; and a bad value described briefly, as an error message quotes it."""

from __future__ import annotations

import re
import reprlib
import types
import typing
from typing import Any

from .errors import invalid_params

_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object", type(None): "null"}


def describe_type(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return "a list" if item is Any else f"a list of {describe_type(item).split(' ', 1)[-1]}s"
    if origin is dict:
        return "an object"
    return _TYPE_WORDS.get(hint, "anything")


def matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(matches(k, key_type) and matches(v, value_type)
                                               for k, v in value.items())
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is type(None) or hint is None:
        return value is None
    return isinstance(value, hint)


def check_arguments(method: str, hints: dict[str, Any], arguments: dict[str, Any]) -> None:
    """Each argument of the type its hint says; -32602 naming the first that is not."""
    for name, value in arguments.items():
        hint = hints.get(name, Any)
        if hint is str and isinstance(value, str):  # most arguments: no need for matches' typing calls
            continue
        if not matches(value, hint):
            raise invalid_params(f"{method}: argument {name!r} must be {describe_type(hint)}, "
                                 f"got {type(value).__name__} {short(value)}", argument=name)


_SURROGATE = re.compile(r"[\ud800-\udfff]")
# A lone surrogate can only arrive as a JSON escape (a UTF-8 encoded one fails decoding the body).
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def check_text(method: str, arguments: dict[str, Any]) -> None:
    """Every string (and key) must be Unicode text: a lone surrogate cannot be stored, logged or encoded.
    Iterative: arguments may be nested as deep as the JSON parser allows."""
    pending: list[tuple[str, Any]] = list(arguments.items())
    while pending:
        name, value = pending.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                raise invalid_params(f"{method}: argument {name!r} holds a lone UTF-16 surrogate "
                                     f"({short(value)}); send Unicode text (UTF-8, or \\u escapes of whole "
                                     "characters)", argument=name)
        elif isinstance(value, list):
            pending.extend((name, item) for item in value)
        elif isinstance(value, dict):
            pending.extend((name, key) for key in value)
            pending.extend((name, item) for item in value.values())


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def short(value: Any, limit: int = 60) -> str:
    """A value as a reply may quote it: its repr, cut to `limit` characters."""
    text = _REPR.repr(value)  # bounded depth: a value nested 900 levels must not exhaust the stack
    return text if len(text) <= limit else text[: limit - 3] + "..."
