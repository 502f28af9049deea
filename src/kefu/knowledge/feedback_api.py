"""REST routes of article feedback threads: thin wrappers over ``knowledge.feedback``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, StringConstraints
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam, IdQuery, RequestModel, ResponseModel, multi_line, single_line
from kefu.db.session import get_db
from kefu.knowledge import feedback
from kefu.settings import Settings

router = APIRouter(prefix="/api/v1/kb", tags=["knowledge feedback"])
Db = Annotated[AsyncSession, Depends(get_db)]

Subject = Annotated[
    str, StringConstraints(min_length=1, max_length=feedback.MAX_SUBJECT_CHARS), AfterValidator(single_line)
]
MessageBody = Annotated[
    str, StringConstraints(min_length=1, max_length=feedback.MAX_MESSAGE_CHARS), AfterValidator(multi_line)
]
Reason = Annotated[str, StringConstraints(max_length=feedback.MAX_REASON_CHARS), AfterValidator(multi_line)]
RequiredReason = Annotated[
    str, StringConstraints(min_length=1, max_length=feedback.MAX_REASON_CHARS), AfterValidator(multi_line)
]
Kind = Literal["question", "error", "suggestion"]
Status = Literal["open", "answered", "accepted", "rejected"]


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


class FeedbackCreate(RequestModel):
    kind: Kind
    subject: Subject
    body: MessageBody


class ReplyCreate(RequestModel):
    body: MessageBody


class AcceptIn(RequestModel):
    reason: Reason = ""


class RejectIn(RequestModel):
    reason: RequiredReason


class MessageOut(ResponseModel):
    id: int
    author_id: int | None
    author_name: str | None
    # Sanitized HTML: safe to insert into a page as is.
    body_html: str
    created_at: datetime


class ThreadSummaryOut(ResponseModel):
    id: int
    article_id: int
    article_title: str
    version_number: int | None
    kind: str
    status: str
    subject: str
    author_id: int | None
    author_name: str | None
    assignee_id: int | None  # None: the knowledge-manager pool
    assignee_name: str | None
    resolution_reason: str
    resolved_by_id: int | None
    resolved_by_name: str | None
    resolved_at: datetime | None
    draft_version_id: int | None
    draft_version_number: int | None
    message_count: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def fields_of(cls, view: feedback.ThreadView) -> dict:
        t = view.thread
        return {
            "id": t.id,
            "article_id": t.article_id,
            "article_title": view.article_title,
            "version_number": t.version_number,
            "kind": t.kind,
            "status": t.status,
            "subject": t.subject,
            "author_id": t.author_id,
            "author_name": view.name(t.author_id),
            "assignee_id": t.assignee_id,
            "assignee_name": view.name(t.assignee_id),
            "resolution_reason": t.resolution_reason,
            "resolved_by_id": t.resolved_by_id,
            "resolved_by_name": view.name(t.resolved_by_id),
            "resolved_at": t.resolved_at,
            "draft_version_id": t.draft_version_id,
            "draft_version_number": view.draft_version_number,
            "message_count": view.message_count,
            "created_at": t.created_at,
            "updated_at": t.updated_at,
        }

    @classmethod
    def of(cls, view: feedback.ThreadView) -> ThreadSummaryOut:
        return cls(**cls.fields_of(view))


class ThreadOut(ThreadSummaryOut):
    messages: list[MessageOut]

    @classmethod
    def of(cls, view: feedback.ThreadView) -> ThreadOut:
        return cls(
            **cls.fields_of(view),
            messages=[
                MessageOut(
                    id=m.id,
                    author_id=m.author_id,
                    author_name=view.name(m.author_id),
                    body_html=m.body_html,
                    created_at=m.created_at,
                )
                for m in view.messages
            ],
        )


class ThreadPage(BaseModel):
    items: list[ThreadSummaryOut]
    # Newest first: pass this as before_id for the next (older) page; None on the last page.
    next_before_id: int | None


@router.post("/articles/{article_id}/feedback", status_code=201)
async def open_feedback(
    article_id: IdParam,
    body: FeedbackCreate,
    request: Request,
    db: Db,
    principal: Principal = authorize("feedback", "create"),
) -> ThreadOut:
    async with db.begin():
        view = await feedback.open_thread(
            db, principal, settings_of(request), article_id, body.kind, body.subject, body.body
        )
    return ThreadOut.of(view)


@router.get("/feedback")
async def feedback_inbox(
    db: Db,
    principal: Principal = authorize("feedback", "list"),
    status: Status | None = None,
    mine: bool = False,
    article_id: IdQuery | None = None,
    assignee_id: IdQuery | None = None,
    unassigned: bool = False,
    before_id: IdQuery | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ThreadPage:
    views = await feedback.list_threads(
        db,
        principal,
        status=status,
        mine=mine,
        article_id=article_id,
        assignee_id=assignee_id,
        unassigned=unassigned,
        before_id=before_id,
        limit=limit,
    )
    return ThreadPage(
        items=[ThreadSummaryOut.of(v) for v in views],
        next_before_id=views[-1].thread.id if len(views) == limit else None,
    )


@router.get("/feedback/{thread_id}")
async def get_feedback(
    thread_id: IdParam, db: Db, principal: Principal = authorize("feedback", "read", by_id=True)
) -> ThreadOut:
    return ThreadOut.of(await feedback.get_thread(db, principal, thread_id))


@router.post("/feedback/{thread_id}/replies", status_code=201)
async def reply_to_feedback(
    thread_id: IdParam,
    body: ReplyCreate,
    db: Db,
    principal: Principal = authorize("feedback", "reply", by_id=True),
) -> ThreadOut:
    async with db.begin():
        view = await feedback.reply(db, principal, thread_id, body.body)
    return ThreadOut.of(view)


@router.post("/feedback/{thread_id}/accept")
async def accept_feedback(
    thread_id: IdParam,
    request: Request,
    db: Db,
    body: AcceptIn | None = None,
    principal: Principal = authorize("feedback", "resolve", by_id=True),
) -> ThreadOut:
    async with db.begin():
        view = await feedback.accept(
            db, principal, settings_of(request), thread_id, body.reason if body is not None else ""
        )
    return ThreadOut.of(view)


@router.post("/feedback/{thread_id}/reject")
async def reject_feedback(
    thread_id: IdParam,
    body: RejectIn,
    db: Db,
    principal: Principal = authorize("feedback", "resolve", by_id=True),
) -> ThreadOut:
    async with db.begin():
        view = await feedback.reject(db, principal, thread_id, body.reason)
    return ThreadOut.of(view)
