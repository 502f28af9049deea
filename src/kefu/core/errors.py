"""One error shape for the API: ``{"error": {"code", "message", "details"}}``, with HTTP codes that mean it."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SqlPoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by services and routes; rendered in the one error shape."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


class Forbidden(ApiError):
    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(403, "forbidden", message, details)


class NotFound(ApiError):
    def __init__(self, what: str = "object") -> None:
        super().__init__(404, "not_found", f"{what} not found")


class Conflict(ApiError):
    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(409, "conflict", message, details)


class Invalid(ApiError):
    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(422, "invalid", message, details)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    503: "unavailable",
}


FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def wants_html(request: Request) -> bool:
    if request.url.path.startswith(("/api/", "/ws")):
        return False
    return "text/html" in request.headers.get("accept", "")


def error_response(
    request: Request, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    if wants_html(request):
        renderer = getattr(request.app.state, "render_error_page", None)
        if renderer is not None:
            return renderer(request, status, code, message)
        return HTMLResponse(f"<h1>{status}</h1>", status_code=status, headers=headers)
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _clean_validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Echo location, type and message only: never the raw input, which may be huge or binary.
    return [{"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")} for e in errors]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request, exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = _clean_validation_errors(list(exc.errors()))
        if any(e["type"] == "json_invalid" for e in errors):
            return error_response(request, 400, "malformed_json", "request body is not valid JSON", errors)
        return error_response(request, 422, "invalid", "request is invalid", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
            # FastAPI's answer to a body it cannot decode at all (e.g. invalid UTF-8 in JSON).
            is_json = "json" in request.headers.get("content-type", "")
            return error_response(
                request,
                400,
                "malformed_json" if is_json else "malformed_body",
                "request body could not be decoded (invalid JSON or not UTF-8)",
            )
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(request, exc.status_code, code, message, None, getattr(exc, "headers", None))

    @app.exception_handler(UnicodeDecodeError)
    async def _bad_encoding(request: Request, exc: UnicodeDecodeError) -> Response:
        return error_response(request, 400, "bad_encoding", "request is not valid UTF-8")

    @app.exception_handler(SqlPoolTimeout)
    async def _pool_exhausted(request: Request, exc: SqlPoolTimeout) -> Response:
        # Every database connection is busy: a moment of overload, not a bug. Say so and when to retry.
        log.warning("database connection pool exhausted", extra={"path": request.url.path})
        return error_response(
            request, 503, "unavailable", "the service is busy; retry shortly", headers={"Retry-After": "1"}
        )

    @app.exception_handler(OperationalError)
    async def _database_busy(request: Request, exc: OperationalError) -> Response:
        if "database is locked" in str(exc.orig):
            # SQLite's single writer waited its whole busy timeout: overload, retryable.
            log.warning("database busy", extra={"path": request.url.path})
            return error_response(
                request, 503, "unavailable", "the service is busy; retry shortly", headers={"Retry-After": "1"}
            )
        log.exception("database error", extra={"path": request.url.path})
        return error_response(request, 500, "internal_error", "internal error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(request, 500, "internal_error", "internal error")
