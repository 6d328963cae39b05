"""Every error the API returns, in one JSON shape::

    {"error": {"code": "not_found", "message": "task 7 does not exist", "hint": "..."}}

``BosunError`` subclasses map to a status (``NotFound`` 404, ``InputError`` and
``ConfigError`` 400, ``InvalidTransition`` and ``LeaseLost`` 409, ``StoreError`` 503, the
rest 500). Request validation errors (a body, path or query that does not fit the schema)
are 422 with one message naming every bad field. ``ApiError`` is for HTTP-level failures
(401, 403, 404 of a route, ...). Unexpected exceptions become a 500 whose body says
nothing about the internals (the traceback goes to the server's log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bosun.errors import (
    API_ERRORS,
    BosunError,
)

log = logging.getLogger("bosun.server")

__all__ = ["ERROR_RESPONSES", "ApiError", "error_body", "install_error_handlers", "status_of"]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An HTTP-level error with bosun's body: status, code, message, hint, headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        hint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.headers = dict(headers or {})


def status_of(exc: BosunError) -> tuple[int, str]:
    """The HTTP status and error code of a bosun error."""
    for cls, status, code in API_ERRORS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def error_body(code: str, message: str, hint: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint}}


def _response(
    status: int,
    code: str,
    message: str,
    hint: str | None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, hint), status_code=status, headers=dict(headers or {})
    )


def _loc(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        where, rest = parts[0], parts[1:]
        return f"{where} {'.'.join(rest)}" if rest else where
    return ".".join(parts) or "request"


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line: ``body.priority: Input should be a valid integer``."""
    items = [f"{_loc(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:10]]
    more = len(errors) - len(items)
    text = "; ".join(items)
    if more > 0:
        text += f"; and {more} more"
    return f"invalid request: {text}"


async def _bosun_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BosunError)
    status, code = status_of(exc)
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return _response(status, code, exc.message, exc.hint)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _response(exc.status, exc.code, exc.message, exc.hint, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _response(
        422,
        "validation_error",
        validation_message(exc.errors()),
        "fix the named fields; the schema is at /openapi.json (and /docs)",
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _HTTP_CODES.get(status, "error" if status < 500 else "internal_error")
    hint: str | None = None
    generic = exc.detail == _phrase(status)  # raised by routing, not by a route
    if status == 404 and generic:
        message = f"no such route: {request.url.path}"
        hint = "see /openapi.json for the routes"
    elif status == 405 and generic:
        message = f"{request.method} is not allowed on {request.url.path}"
        hint = "see /openapi.json for the methods of each route"
    elif isinstance(exc.detail, Mapping) and "message" in exc.detail:
        message = str(exc.detail["message"])
        hint = None if exc.detail.get("hint") is None else str(exc.detail["hint"])
    else:
        message = str(exc.detail)
    return _response(status, code, message, hint, exc.headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _response(
        500,
        "internal_error",
        "the server failed to handle this request",
        "this is a bug in bosun; the server's log has the details",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BosunError, _bosun_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "hint"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "hint": {"type": ["string", "null"]},
            },
        }
    },
}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


#: ``responses=`` for routes: the error statuses in the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _err("Invalid input"),
    401: _err("Missing, unknown or revoked token"),
    403: _err("The token may not use this route"),
    404: _err("Not found"),
    409: _err("Conflict (state change not allowed, lease lost)"),
    422: _err("The request does not fit the schema"),
}
