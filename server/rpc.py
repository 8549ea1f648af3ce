"""JSON-RPC 2.0 dispatch: each call authenticated, bound to its method's signature, checked (params.py) and
allowed before it runs; errors turned into the wire shape in one place (`error_object`)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from jsonrpcserver import Success
from jsonrpcserver.async_dispatcher import dispatch_request
from jsonrpcserver.async_dispatcher import logger as library_log
from jsonrpcserver.async_main import dispatch_to_response
from jsonrpcserver.dispatcher import create_request, to_response
from jsonrpcserver.exceptions import JsonRpcError
from jsonrpcserver.main import default_validator
from jsonrpcserver.request import Request
from jsonrpcserver.result import ErrorResult, InternalErrorResult
from jsonrpcserver.sentinels import NOID
from oslash.either import Left

from .errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NAME_BY_CODE,
    PARSE_ERROR,
    ApiError,
    forbidden,
)
from .params import SURROGATE_ESCAPE, check_arguments, check_text, short
from .store import DamagedRegistry, StoreUnavailable

if TYPE_CHECKING:  # the methods get the services; the services never import the API
    from .services import Services

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ApiMethod:
    name: str
    func: Callable[..., Any]
    access: str  # "user" (everyone), "manage" (needs the live data management permission), "admin"
    signature: inspect.Signature
    hints: dict[str, Any]
    read_when: dict[str, Any] = field(default_factory=dict)  # arguments that make a call a read (dry_run=True)

    def access_for(self, arguments: dict[str, Any]) -> str:
        """The access this call needs: a read ("user") when its arguments say so, else the method's."""
        if self.read_when and all(arguments.get(k) == v for k, v in self.read_when.items()):
            return "user"
        return self.access

    @property
    def param_names(self) -> list[str]:
        return list(self.signature.parameters)[1:]  # the first is the call context

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)


def error_object(code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one shape of every error livedm sends: name at the top (cryosparc-tools reads it) and in data."""
    name = NAME_BY_CODE.get(code, "Error")
    return {"code": code, "message": message, "name": name, "data": {"name": name, **(data or {})}}


def error_response(code: int, message: str, request_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error_object(code, message), "id": request_id}


def _library_error_message(code: int, detail: Any) -> str:
    """jsonrpcserver's own errors carry a terse `data`; say what went wrong and what to do."""
    if code == PARSE_ERROR:
        return f"the request body is not valid JSON ({detail}); send one JSON-RPC 2.0 object or a list of them"
    if code == INVALID_REQUEST:
        return ('not a JSON-RPC 2.0 request: send {"jsonrpc": "2.0", "method": NAME, "params": {...} or [...], '
                '"id": ID}' + f" ({detail})")
    if code == METHOD_NOT_FOUND:  # the name is cut short: a reply never echoes megabytes back
        return (f"method {short(detail)} does not exist; `livedm icli` lists the methods (dir(cli)), as "
                "system.describe does")
    if code == INVALID_PARAMS:
        return f"invalid params: {short(detail, 200)}"
    return detail if isinstance(detail, str) and len(detail) <= 200 else short(detail, 200)


def _post_process(response: Any) -> dict[str, Any]:
    if isinstance(response, Left):
        err = response._error
        data = err.data if isinstance(err.data, dict) else None
        if data is not None and "name" in data:  # raised by our wrapper: already a livedm error
            extra = {k: v for k, v in data.items() if k != "name"}
            body = error_object(err.code, err.message, extra)
        else:
            body = error_object(err.code, _library_error_message(err.code, err.data))
        return {"jsonrpc": "2.0", "error": body, "id": err.id}
    ok = response._value
    return {"jsonrpc": "2.0", "result": ok.result, "id": ok.id}


@dataclass
class CallContext:
    """What a method runs with: the services, the caller, and why the caller could not be
    authenticated (if so)."""

    services: Services
    user: dict[str, Any] | None
    auth_error: ApiError | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, outcome) for the request's log line
    may_hold_surrogates: bool = True  # False when the body holds no surrogate escape: nothing to check

    @property
    def actor(self) -> str:
        return (self.user or {}).get("name", "?")

    @property
    def caller(self) -> dict[str, Any]:
        """The signed-in user: every method runs only once the caller is known."""
        if self.user is None:
            raise self.auth_error or ApiError(INTERNAL_ERROR, "no caller")
        return self.user


# The methods that only read. A scoped token (a hook run's: one project, session and datatype) may call these,
# and SCOPED_CHANGE for exactly its own category. Everything else, including any method added later, is refused.
READ_METHODS = SCOPED_READS = frozenset({
    "system.describe", "whoami", "list_projects", "get_overview", "get_project", "list_sessions", "get_session",
    "get_datatype_file_paths", "get_datatype_size", "get_data_management_stats", "get_project_file_paths",
    "get_audit_log", "get_job", "list_jobs", "get_discovery_report", "get_all_sessions_in_project"})
SCOPED_CHANGE = "change_session_data_management_state"
SCOPE_KEYS = ("project_uid", "session_uid", "datatype")


def check_scope(method: ApiMethod, user: dict[str, Any], arguments: dict[str, Any]) -> None:
    scope = user.get("token_scope")
    if scope is None or method.name in SCOPED_READS:
        return
    scope = scope if isinstance(scope, dict) else {}
    if method.name == SCOPED_CHANGE and all(scope.get(k) is not None and arguments.get(k) == scope[k]
                                            for k in SCOPE_KEYS):
        return
    where = "/".join(str(scope.get(k)) for k in SCOPE_KEYS)
    raise forbidden(f"{method.name} is not allowed with this token: it was issued to a hook run for {where} and "
                    f"may only read, and change that one category's state ({SCOPED_CHANGE}); use a user's "
                    "own token for anything else")


def check_access(method: ApiMethod, user: dict[str, Any], arguments: dict[str, Any] | None = None) -> None:
    check_scope(method, user, arguments or {})
    access = method.access_for(arguments or {})
    if access == "admin" and user.get("role") != "admin":
        raise forbidden(f"{method.name} needs an admin")
    if access == "manage" and not user.get("live_data_management"):
        raise forbidden(f"{method.name} needs the live data management permission, which {user.get('name')!r} "
                        "does not have; an admin grants it: livedm user allow NAME")


Observer = Callable[[str, str, float], None]  # (method, outcome, seconds)


Checked = Callable[[CallContext, list[Any], dict[str, Any]], Awaitable[Any]]


def _wrap(method: ApiMethod, observe: Observer) -> tuple[Checked, Callable[..., Any]]:
    """The method behind every check: `checked(ctx, args, kwargs)` returns its result or raises JsonRpcError (the
    fast path calls it), and the same as jsonrpcserver calls it (the method's signature; a Result back)."""
    names, is_async = method.param_names, method.is_async

    async def checked(ctx: CallContext, args: list[Any], kwargs: dict[str, Any]) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            if ctx.user is None:
                raise ctx.auth_error or ApiError(INTERNAL_ERROR, "no caller")
            # the params were bound against the signature already: no missing or extra ones
            arguments = dict(zip(names, args, strict=False))
            arguments.update(kwargs)
            check_arguments(method.name, method.hints, arguments)
            if ctx.may_hold_surrogates:
                check_text(method.name, arguments)
            check_access(method, ctx.user, arguments)
            if is_async:
                return await method.func(ctx, **arguments)
            return await asyncio.to_thread(method.func, ctx, **arguments)
        except ApiError as exc:
            outcome = str(exc.code)
            raise JsonRpcError(exc.code, exc.message, {"name": exc.name, **exc.data}) from None
        except StoreUnavailable as exc:
            outcome = str(INTERNAL_ERROR)
            log.warning("%s: %s", method.name, exc)
            raise JsonRpcError(INTERNAL_ERROR, f"{exc}; try again in a few seconds (livedmd restarts an embedded "
                               "store by itself; /healthz shows the state)",
                               {"name": NAME_BY_CODE[INTERNAL_ERROR]}) from None
        except DamagedRegistry as exc:  # the caller can repair it: say what and how, not only in the log
            outcome = str(INTERNAL_ERROR)
            log.error("%s: %s", method.name, exc)
            raise JsonRpcError(INTERNAL_ERROR, f"{method.name} failed: {exc}",
                               {"name": NAME_BY_CODE[INTERNAL_ERROR]}) from None
        except Exception:
            outcome = str(INTERNAL_ERROR)
            log.exception("%s failed", method.name)
            raise JsonRpcError(INTERNAL_ERROR, f"{method.name} failed inside livedmd; the daemon's log has "
                               "the details", {"name": NAME_BY_CODE[INTERNAL_ERROR]}) from None
        finally:
            ctx.calls.append((method.name, outcome))
            observe(method.name, outcome, time.perf_counter() - started)

    async def call(ctx: CallContext, *args: Any, **kwargs: Any) -> Any:
        return Success(await checked(ctx, list(args), kwargs))

    call.__signature__ = method.signature  # type: ignore[attr-defined]  # jsonrpcserver binds against it
    return checked, call


_REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id"})


def is_plain_request(request: Any) -> bool:
    """One well-formed JSON-RPC 2.0 request, checked in a few comparisons."""
    if (isinstance(request, dict) and request.get("jsonrpc") == "2.0" and isinstance(request.get("method"), str)
            and request.keys() <= _REQUEST_KEYS and isinstance(request.get("params", ()), (list, dict))):
        request_id = request.get("id")
        return request_id is None or (isinstance(request_id, (str, int, float)) and not isinstance(request_id, bool))
    return False


def validate_request(request: Any) -> Any:
    """The common case passes at once; anything else goes to jsonrpcserver's JSON-Schema validator, which
    stays the authority (it costs ~60 us a request)."""
    return request if is_plain_request(request) else default_validator(request)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _finite_float(text: str) -> float:
    """A number too large for a float (1e400) would become Infinity, which is no JSON value to answer with."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {short(text)} is out of range (it would be Infinity, which is not a JSON "
                         "value); send numbers within ±1.8e308")
    return value


_STRICT_JSON = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite_float)

MAX_ID_CHARS = 256  # a JSON-RPC id is echoed in the reply: a longer one is refused, never sent back
_MAX_ID_INT = 10**MAX_ID_CHARS


def _id_too_long(request: Any) -> bool:
    request_id = request.get("id") if isinstance(request, dict) else None
    if isinstance(request_id, str):
        return len(request_id) > MAX_ID_CHARS
    return isinstance(request_id, int) and abs(request_id) >= _MAX_ID_INT


def parse_json(body: str) -> Any:
    """The body as JSON, strictly: NaN, Infinity and numbers that overflow to it are refused. Raises ApiError
    (-32700)."""
    try:
        return _STRICT_JSON.decode(body)
    except RecursionError:
        raise ApiError(PARSE_ERROR, "the request body is nested too deeply to parse; send a flat JSON-RPC "
                       "request (params are plain values, lists and objects)") from None
    except ValueError as exc:
        raise ApiError(PARSE_ERROR, _library_error_message(PARSE_ERROR, exc)) from None


@dataclass(frozen=True)
class _Binding:
    """What params a method's signature binds, for a check in a few comparisons (inspect's bind costs ~10 us)."""

    names: frozenset[str]
    required: frozenset[str]
    most: int

    @classmethod
    def of(cls, method: ApiMethod) -> _Binding | None:
        """None when the signature is not plain (keyword-only, *args, **kwargs): such calls take the library's path."""
        params = list(method.signature.parameters.values())[1:]
        if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
            return None
        return cls(names=frozenset(p.name for p in params),
                   required=frozenset(p.name for p in params if p.default is inspect.Parameter.empty),
                   most=len(params))

    def binds(self, params: list[Any] | dict[str, Any]) -> bool:
        if isinstance(params, list):
            return len(self.required) <= len(params) <= self.most  # required params come first in a signature
        return params.keys() <= self.names and self.required <= params.keys()


KNOWN_BODY_CHARS = 1024  # a request body this short, of plain values, is remembered with what it parsed to ...
KNOWN_BODIES = 1024  # ... up to this many (then forgotten all at once): a client polling sends the same bytes


@dataclass(frozen=True)
class _FastCall:
    """A well-formed request as the fast path answers it. Parsing is a function of the body's text alone, so a
    body seen before is not parsed again; its params are then shared, hence only plain values (`flat`)."""

    checked: Checked
    method: str
    params: list[Any] | dict[str, Any]
    request_id: Any
    may_hold_surrogates: bool

    @property
    def flat(self) -> bool:
        values = self.params if isinstance(self.params, list) else self.params.values()
        return all(value is None or isinstance(value, (str, int, float)) for value in values)

    async def answer(self, ctx: CallContext) -> dict[str, Any]:
        """What jsonrpcserver's call() and to_response() make of the method's outcome, without their Result objects
        on success."""
        ctx.may_hold_surrogates = self.may_hold_surrogates
        args, kwargs = (self.params, {}) if isinstance(self.params, list) else ([], self.params)
        try:
            result = await self.checked(ctx, args, kwargs)
        except JsonRpcError as exc:
            outcome = Left(ErrorResult(code=exc.code, message=exc.message, data=exc.data))
        except Exception as exc:
            library_log.exception(exc)
            outcome = Left(InternalErrorResult(str(exc)))
        else:
            return {"jsonrpc": "2.0", "result": result, "id": self.request_id}
        return _post_process(to_response(Request(self.method, self.params, self.request_id), outcome))


class Dispatcher:
    """jsonrpcserver dispatches. With `fast_path`, one well-formed request whose method exists and whose params bind
    (nearly every call) skips the library's lookup, inspect's binding and the Result objects, and a body seen
    before is not parsed again (_FastCall); an error it meets is still turned into a reply by the library's own
    to_response. Everything else takes the library's path (tests/unit/test_fast_path.py holds the two equal)."""

    def __init__(self, methods: dict[str, ApiMethod], observe: Observer = lambda *_: None,
                 max_batch_calls: int = 100, *, fast_path: bool = True) -> None:
        self.methods = methods
        self.max_batch_calls = max_batch_calls
        self.fast_path = fast_path
        wrapped = {name: _wrap(m, observe) for name, m in methods.items()}
        self._callables = {name: call for name, (_checked, call) in wrapped.items()}
        self._fast = {name: (checked, binding) for name, (checked, _call) in wrapped.items()
                      if (binding := _Binding.of(methods[name])) is not None}
        self._known: dict[str, _FastCall] = {}  # body text: what it parsed to

    def _check_batch(self, parsed: Any) -> None:
        if isinstance(parsed, list) and len(parsed) > self.max_batch_calls:
            raise ApiError(INVALID_REQUEST, f"a batch may hold at most {self.max_batch_calls} calls "
                           f"(max_batch_calls) and this one has {len(parsed)}: none of them ran; send them in "
                           "smaller batches")

    @staticmethod
    def _check_ids(parsed: Any) -> None:
        requests = parsed if isinstance(parsed, list) else [parsed]
        if any(_id_too_long(request) for request in requests):
            raise ApiError(INVALID_REQUEST, f"a JSON-RPC id may be at most {MAX_ID_CHARS} characters (a string) or "
                           "digits (a number): nothing ran; use a short id, such as a counter or a UUID")

    def _fast_call(self, parsed: Any, body: str) -> _FastCall | None:
        """One well-formed request (not a notification, a short id, a method that exists, params that bind) that
        the fast path answers; None for anything else."""
        if not (is_plain_request(parsed) and "id" in parsed) or _id_too_long(parsed):
            return None
        fast = self._fast.get(parsed["method"])
        params = parsed.get("params", [])
        if fast is None or not fast[1].binds(params):
            return None
        return _FastCall(fast[0], parsed["method"], params, parsed["id"],
                         may_hold_surrogates=SURROGATE_ESCAPE.search(body) is not None)

    async def dispatch(self, body: str, ctx: CallContext) -> dict[str, Any] | list[dict[str, Any]] | None:
        if self.fast_path and (known := self._known.get(body)) is not None:
            return await known.answer(ctx)
        try:
            parsed = parse_json(body)
        except ApiError as exc:
            return error_response(exc.code, exc.message)
        fast = self._fast_call(parsed, body) if self.fast_path else None
        if fast is not None:
            if len(body) <= KNOWN_BODY_CHARS and fast.flat:
                if len(self._known) >= KNOWN_BODIES:
                    self._known.clear()
                self._known[body] = fast
            return await fast.answer(ctx)
        ctx.may_hold_surrogates = SURROGATE_ESCAPE.search(body) is not None
        try:
            self._check_batch(parsed)
            self._check_ids(parsed)
        except ApiError as exc:
            return error_response(exc.code, exc.message)
        if is_plain_request(parsed):  # one request: straight to jsonrpcserver's dispatch_request
            request = create_request(parsed)
            _request, result = await dispatch_request(self._callables, ctx, request)
            return None if request.id is NOID else _post_process(to_response(request, result))
        # batches and anything malformed take the library's whole path, which answers them to the letter
        response = await dispatch_to_response(body, self._callables, context=ctx, deserializer=lambda _body: parsed,
                                              validator=validate_request, post_process=_post_process)
        return cast(dict[str, Any] | list[dict[str, Any]] | None, response)
