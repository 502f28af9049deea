"""``Idempotency-Key`` for every API write: a retried request never creates a second object.

How it holds without a window:
1. The route's authorization (``Authorize``) looks the key up for the signed-in user. A finished
   earlier request with the same key and the same request (method, path, query, body) is replayed
   byte for byte; the same key with a different request is refused (422); a request still running
   (or whose answer was lost) answers 409, and the client retries later.
2. Otherwise the key is reserved **in the same transaction as the write** (a ``before_commit`` hook on
   the request's session), so the object and the key commit or roll back together. Two concurrent
   requests with one key both do the work, but the second commit fails on the unique key and rolls
   its work back: it answers 409, and its retry gets the first one's answer.
3. A middleware keeps the answer (status, type, body) on the key row once the response is complete.

Requests that do not commit anything (refused, invalid) leave no key behind and may be retried freely.
Keys are per user; rows older than ``RETENTION`` are pruned by a job.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kefu.core.errors import ApiError, error_response
from kefu.core.jobs import Job, periodic
from kefu.db.base import Base, BigId, IdMixin, UTCDateTime, utcnow
from kefu.settings import Settings

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
HEADER_BYTES = HEADER.lower().encode()  # ASGI header names are lower-case bytes
MAX_KEY_LENGTH = 255
MAX_STORED_BODY = 1024 * 1024
RETENTION = timedelta(hours=48)
STATE_KEY = "idempotency"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class IdempotencyRecord(IdMixin, Base):
    __tablename__ = "idempotency_keys"

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(String(127))
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (
        UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),
        Index("ix_idempotency_keys_created", "created_at"),
    )


@dataclass
class PendingKey:
    """Set on ``request.state`` when a write carries a new key; reserved at the first commit."""

    user_id: int
    key: str
    fingerprint: str
    method: str
    path: str
    record_id: int | None = None
    reserving: bool = False
    conflicted: bool = False  # another request reserved the same key first


class Replay(Exception):
    def __init__(self, record: IdempotencyRecord) -> None:
        super().__init__(record.key)
        self.record = record


def applies_to(request: Request) -> bool:
    return request.method in UNSAFE_METHODS and request.url.path.startswith("/api/") and HEADER in request.headers


async def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.url.path}?{request.url.query}\n".encode())
    try:
        digest.update(await request.body())
    except RuntimeError:
        # A multipart body was streamed into a form already; fingerprint what the form holds.
        form = await request.form()
        for name, value in sorted(form.multi_items(), key=lambda item: item[0]):
            if isinstance(value, str):
                digest.update(f"{name}={value}\n".encode())
            else:
                digest.update(f"{name}=<file {value.filename} {value.size}>\n".encode())
    return digest.hexdigest()


async def prepare(request: Request, user_id: int) -> None:
    """Called by ``Authorize`` for API writes that carry the header: replay, refuse or reserve."""
    key = request.headers[HEADER].strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ApiError(400, "bad_idempotency_key", f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable characters")
    fingerprint = await _fingerprint(request)
    async with request.app.state.session_factory() as db:
        record = await db.scalar(
            select(IdempotencyRecord).where(IdempotencyRecord.user_id == user_id, IdempotencyRecord.key == key)
        )
    if record is None:
        request.state.idempotency = PendingKey(user_id, key, fingerprint, request.method, request.url.path)
        return
    if record.fingerprint != fingerprint:
        raise ApiError(422, "idempotency_key_reused", f"this {HEADER} was used for a different request; use a new key")
    if record.status_code is None:
        raise ApiError(409, "idempotency_key_in_progress", "a request with this key is still being processed")
    raise Replay(record)


def attach(session: Any, request: Request) -> None:
    """Let the session reserve the request's key at its first commit (see ``_reserve``)."""
    session.sync_session.info["request_state"] = request.state


@event.listens_for(Session, "before_commit")
def _reserve(session: Session) -> None:
    state = session.info.get("request_state")
    pending: PendingKey | None = getattr(state, STATE_KEY, None) if state is not None else None
    if pending is None or pending.record_id is not None or pending.reserving:
        return
    pending.reserving = True
    session.flush()  # the request's own changes first: their errors are theirs, not the key's
    try:
        pending.record_id = session.execute(
            insert(IdempotencyRecord)
            .values(
                user_id=pending.user_id,
                key=pending.key,
                fingerprint=pending.fingerprint,
                method=pending.method,
                path=pending.path[:500],
                created_at=utcnow(),
            )
            .returning(IdempotencyRecord.id)
        ).scalar_one()
    except IntegrityError:
        pending.conflicted = True
        raise


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    state = session.info.get("request_state")
    pending: PendingKey | None = getattr(state, STATE_KEY, None) if state is not None else None
    if pending is not None:
        pending.record_id = None
        pending.reserving = False


class IdempotencyMiddleware:
    """Stores the finished answer on the reserved key row."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in UNSAFE_METHODS
            or not any(name == HEADER_BYTES for name, _ in scope.get("headers", ()))
        ):
            await self.app(scope, receive, send)  # nothing to keep: answers are copied only for keyed writes
            return
        state = scope.setdefault("state", {})
        captured: dict[str, Any] = {"status": None, "type": None, "body": bytearray(), "too_big": False}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        captured["type"] = value.decode("latin-1")[:127]
            elif message["type"] == "http.response.body" and not captured["too_big"]:
                captured["body"].extend(message.get("body", b""))
                if len(captured["body"]) > MAX_STORED_BODY:
                    captured["too_big"] = True
            await send(message)

        await self.app(scope, receive, capture)
        pending: PendingKey | None = state.get(STATE_KEY)
        if pending is None or pending.record_id is None or captured["status"] is None:
            return
        body = b"" if captured["too_big"] else bytes(captured["body"])
        try:
            async with scope["app"].state.session_factory() as db, db.begin():
                await db.execute(
                    update(IdempotencyRecord)
                    .where(IdempotencyRecord.id == pending.record_id)
                    .values(status_code=captured["status"], content_type=captured["type"], response_body=body)
                )
        except Exception:  # noqa: BLE001 - the write itself is safe; a retry answers 409 until pruned
            log.exception("could not store the answer of an idempotent request")


def install(app: FastAPI) -> None:
    app.add_middleware(IdempotencyMiddleware)

    @app.exception_handler(Replay)
    async def _replay(request: Request, exc: Replay) -> Response:
        record = exc.record
        return Response(
            content=record.response_body or b"",
            status_code=record.status_code or 200,
            media_type=record.content_type,
            headers={"Idempotent-Replayed": "true"},
        )

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> Response:
        pending: PendingKey | None = getattr(request.state, STATE_KEY, None)
        if pending is not None and pending.conflicted:
            return error_response(
                request,
                409,
                "idempotency_key_in_progress",
                "a request with this key was processed concurrently; retry to get its answer",
            )
        # Services check what they can; a race they could not see (two inserts of one unique value)
        # still ends as a clear conflict, never a 500.
        log.warning("integrity error", extra={"path": request.url.path})
        return error_response(request, 409, "conflict", "the change conflicts with existing data")


@periodic("idempotency.prune", every_seconds=3600)
async def prune(session: AsyncSession, job: Job, settings: Settings) -> None:
    await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < utcnow() - RETENTION))
