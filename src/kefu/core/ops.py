"""Operations: liveness, readiness, Prometheus metrics, the jobs view, request metrics and body limits."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kefu.core.errors import error_body
from kefu.core.jobs import Job
from kefu.core.policy import Principal, authorize
from kefu.db.session import get_db

router = APIRouter()
access_log = logging.getLogger("kefu.access")

REQUESTS = Counter("kefu_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "kefu_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
READY_TIMEOUT_SECONDS = 2.0
UPLOAD_PATH_SUFFIX = "/attachments"


@router.get("/healthz", tags=["ops"])
async def healthz(principal: Principal = authorize("public", "read")) -> dict[str, str]:
    """The process is alive (says nothing about its dependencies)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
async def readyz(request: Request, principal: Principal = authorize("public", "read")) -> JSONResponse:
    """Ready to serve: the database answers. Turns ready again by itself when the database returns."""
    engine = request.app.state.engine
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ready", "database": "ok"})


@router.get("/metrics", tags=["ops"])
async def metrics(principal: Principal = authorize("metrics", "read")) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None

    model_config = {"from_attributes": True}


@router.get("/api/v1/jobs", tags=["ops"])
async def list_jobs(
    db: Annotated[AsyncSession, Depends(get_db)],
    principal: Principal = authorize("job", "list"),
    status: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobOut]:
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(Job.status == status)
    return [JobOut.model_validate(j) for j in (await db.scalars(stmt)).all()]


class RequestLimitsMiddleware:
    """Refuses bodies over the limit with 413 (by Content-Length, or while streaming) and records metrics."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, upload_max_bytes: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_max_bytes = upload_max_bytes or max_body_bytes

    def limit_for(self, scope: Scope) -> int:
        # File uploads (POST .../attachments) may be larger than any other request body.
        if scope["method"] == "POST" and scope.get("path", "").endswith(UPLOAD_PATH_SUFFIX):
            return self.upload_max_bytes
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limit = self.limit_for(scope)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._too_large(send, limit)
            self._observe(scope, 413, started)
            return

        received = 0
        refused = False
        response_started = False

        async def limited_receive() -> Message:
            # Over the limit: answer 413 ourselves and tell the app the client went away, so
            # nothing downstream ever sees (or half-processes) a truncated body.
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not response_started and not refused:
                        refused = True
                        status_holder["status"] = 413
                        await self._too_large(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return  # the 413 is already on its way; drop whatever the app answers
            if message["type"] == "http.response.start":
                response_started = True
                status_holder["status"] = message["status"]
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        self._observe(scope, status_holder["status"], started)

    async def _too_large(self, send: Send, limit: int) -> None:
        body = JSONResponse(
            error_body("payload_too_large", f"request body is larger than {limit} bytes"),
            status_code=413,
        )
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})

    @staticmethod
    def _observe(scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        # Label by route template, not raw path: ids in paths would explode the series count.
        name = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - started
        REQUESTS.labels(scope["method"], name, str(status)).inc()
        LATENCY.labels(scope["method"], name).observe(elapsed)
        client = scope.get("client") or ("", 0)
        # The access log names the path only: query strings may carry tokens (password reset links).
        access_log.info(
            "request",
            extra={
                "method": scope["method"],
                "path": scope.get("path", ""),
                "route": name,
                "status": status,
                "ms": round(elapsed * 1000, 1),
                "client": client[0],
            },
        )
