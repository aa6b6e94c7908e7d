"""JSON errors everywhere: `{"error": CODE, "message": TEXT, "fields": [...]}`.

Broker errors map to their status (InvalidInput 422 `invalid`, NotFound 404, Exists 409
`exists`, Conflict 409 `conflict`, Forbidden 403, Unauthenticated 401); FastAPI's own
validation errors become 400 `bad_request` (a malformed body or query) or 422 `invalid`
(field errors in a well-formed body); routing errors are 404 / 405; anything unexpected is
500 `internal` with no detail (the exception is logged by type only: a message could
carry request data). Messages never quote request values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from capgate.broker.errors import (
    CapgateError,
    Conflict,
    Exists,
    Forbidden,
    InvalidInput,
    NotFound,
    NotInitialized,
    Unauthenticated,
)
from capgate.broker.verify import VerifyFailed

log = logging.getLogger("capgate.server")


class FieldErrorBody(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    error: str
    message: str
    fields: list[FieldErrorBody] = []
    status: int | None = None  # verify_failed: the provider's HTTP status (or null)


class ApiError(Exception):
    """An error answer raised by a handler or dependency."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[dict[str, str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []
        self.extra = extra or {}


def error_response(
    status: int,
    code: str,
    message: str,
    fields: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = {"error": code, "message": message, "fields": fields or [], **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
}

# The error documented for every route (OpenAPI): the same body for each status.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": code}
    for status, code in _STATUS_CODES.items()
    if status not in (405, 415)
}


def broker_error(exc: CapgateError) -> ApiError:
    if isinstance(exc, VerifyFailed):
        return ApiError(422, "verify_failed", str(exc), extra={"status": exc.status})
    if isinstance(exc, InvalidInput):
        fields = [{"field": e.field, "message": e.message} for e in exc.errors]
        return ApiError(422, "invalid", "the request has invalid fields", fields)
    if isinstance(exc, Unauthenticated):
        return ApiError(401, "unauthenticated", str(exc))
    if isinstance(exc, Forbidden):
        return ApiError(403, "forbidden", str(exc))
    if isinstance(exc, NotFound):
        return ApiError(404, "not_found", "not found")  # the same for other orgs' ids
    if isinstance(exc, Exists):
        return ApiError(409, "exists", str(exc))
    if isinstance(exc, Conflict):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, NotInitialized):
        return ApiError(503, "unavailable", "the capgate home is not initialised")
    return ApiError(409, "conflict", str(exc))


def _validation_fields(exc: RequestValidationError) -> tuple[bool, list[dict[str, str]]]:
    """(malformed, fields): malformed when the body or a query/path value is unusable as a
    whole (not JSON, not an object, a bad query parameter)."""
    malformed = False
    fields = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        kind = error.get("type", "")
        where = loc[0] if loc else ""
        if where == "body" and (len(loc) == 1 or kind == "json_invalid"):
            malformed = True
        if where in ("query", "path", "header", "cookie"):
            malformed = True
        name = ".".join(loc[1:]) or where
        # pydantic's `msg` describes the expected type; it never contains the input value
        # for the error types these models raise, and `input` itself is dropped.
        fields.append({"field": name, "message": str(error.get("msg", "invalid"))[:200]})
    return malformed, fields


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, exc.fields, headers, exc.extra)

    @app.exception_handler(CapgateError)
    async def _broker_error(request: Request, exc: CapgateError) -> JSONResponse:
        api = broker_error(exc)
        return error_response(api.status, api.code, api.message, api.fields, None, api.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        malformed, fields = _validation_fields(exc)
        if malformed:
            return error_response(400, "bad_request", "the request is malformed", fields)
        return error_response(422, "invalid", "the request has invalid fields", fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = {404: "not found", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail) if isinstance(exc.detail, str) else code
        )
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s in %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(500, "internal", "internal error")
