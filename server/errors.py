"""The one error type of livedm. The service raises it; only rpc.py turns it into a JSON-RPC error."""

from __future__ import annotations

from typing import Any

# JSON-RPC 2.0 codes, then livedm's domain codes (SPEC §5).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NOT_FOUND = -32001
FORBIDDEN = -32002
CONFLICT = -32003
UNAUTHENTICATED = -32004

NAME_BY_CODE: dict[int, str] = {
    PARSE_ERROR: "ParseError",
    INVALID_REQUEST: "InvalidRequest",
    METHOD_NOT_FOUND: "MethodNotFound",
    INVALID_PARAMS: "InvalidParams",
    INTERNAL_ERROR: "InternalError",
    NOT_FOUND: "NotFound",
    FORBIDDEN: "Forbidden",
    CONFLICT: "Conflict",
    UNAUTHENTICATED: "Unauthenticated",
}


class ApiError(Exception):
    """An error a caller can act on: a JSON-RPC code, a class name and a message that says what to do."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.name = NAME_BY_CODE[code]
        self.message = message
        self.data = data or {}


def invalid_params(message: str, **data: Any) -> ApiError:
    return ApiError(INVALID_PARAMS, message, data)


def not_found(message: str, **data: Any) -> ApiError:
    return ApiError(NOT_FOUND, message, data)


def forbidden(message: str, **data: Any) -> ApiError:
    return ApiError(FORBIDDEN, message, data)


def conflict(message: str, **data: Any) -> ApiError:
    return ApiError(CONFLICT, message, data)


def unauthenticated(message: str) -> ApiError:
    return ApiError(UNAUTHENTICATED, message)
