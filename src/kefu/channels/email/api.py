"""REST routes of the email channel: mailboxes (admins) and the quarantine (supervisors, admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.email import service
from kefu.channels.email.models import EmailQuarantine, Mailbox
from kefu.channels.email.schemas import (
    DiscardIn,
    MailboxCreate,
    MailboxOut,
    MailboxUpdate,
    QuarantineDetail,
    QuarantineOut,
    QuarantinePage,
    ReleaseIn,
    ReleaseOut,
    ReplyIn,
    ReplyOut,
)
from kefu.core import files
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam, IdQuery
from kefu.db.session import get_db

router = APIRouter(prefix="/api/v1/email", tags=["email"])
Db = Annotated[AsyncSession, Depends(get_db)]
RAW_TEXT_MAX = 512 * 1024


def mailbox_out(mailbox: Mailbox) -> MailboxOut:
    return MailboxOut(
        id=mailbox.id,
        code=mailbox.code,
        address=mailbox.address,
        display_name=mailbox.display_name,
        queue=mailbox.queue,
        active=mailbox.active,
        imap_host=mailbox.imap_host,
        imap_port=mailbox.imap_port,
        imap_tls=mailbox.imap_tls,
        imap_username=mailbox.imap_username,
        imap_password_set=bool(mailbox.imap_password),
        imap_folder=mailbox.imap_folder,
        poll_seconds=mailbox.poll_seconds,
        imap_uidvalidity=mailbox.imap_uidvalidity,
        imap_last_uid=mailbox.imap_last_uid,
        created_at=mailbox.created_at,
        updated_at=mailbox.updated_at,
    )


def _quarantine_fields(row: EmailQuarantine) -> dict:
    return {
        "id": row.id,
        "mailbox_id": row.mailbox_id,
        "reason": row.reason,
        "detail": row.detail,
        "source": row.source,
        "message_id": row.message_id,
        "from_address": row.from_address,
        "subject": row.subject,
        "raw_size": row.raw_size,
        "received_at": row.received_at,
        "resolution": row.resolution,
        "resolved_at": row.released_at,
        "resolved_by_id": row.released_by_id,
        "resolution_note": row.resolution_note,
        "email_message_id": row.email_message_id,
    }


def quarantine_out(row: EmailQuarantine) -> QuarantineOut:
    return QuarantineOut(**_quarantine_fields(row))


def raw_text(raw: bytes) -> tuple[str, bool]:
    """The raw source as text for people to read (never as HTML: templates escape it)."""
    return raw[:RAW_TEXT_MAX].decode("utf-8", "replace").replace("\x00", "\ufffd"), len(raw) > RAW_TEXT_MAX


# --- mailboxes -----------------------------------------------------------------------------------------
@router.get("/mailboxes")
async def list_mailboxes(db: Db, principal: Principal = authorize("email_mailbox", "list")) -> list[MailboxOut]:
    return [mailbox_out(m) for m in await service.list_mailboxes(db)]


@router.post("/mailboxes", status_code=201)
async def create_mailbox(
    body: MailboxCreate, db: Db, principal: Principal = authorize("email_mailbox", "create")
) -> MailboxOut:
    async with db.begin():
        mailbox = await service.create_mailbox(db, principal, body.model_dump())
    return mailbox_out(mailbox)


@router.get("/mailboxes/{mailbox_id}")
async def read_mailbox(
    mailbox_id: IdParam, db: Db, principal: Principal = authorize("email_mailbox", "read")
) -> MailboxOut:
    return mailbox_out(await service.get_mailbox(db, mailbox_id))


@router.patch("/mailboxes/{mailbox_id}")
async def update_mailbox(
    mailbox_id: IdParam, body: MailboxUpdate, db: Db, principal: Principal = authorize("email_mailbox", "update")
) -> MailboxOut:
    async with db.begin():
        mailbox = await service.update_mailbox(db, principal, mailbox_id, body.model_dump(exclude_unset=True))
    return mailbox_out(mailbox)


# --- quarantine ----------------------------------------------------------------------------------------
@router.get("/quarantine")
async def list_quarantine(
    db: Db,
    principal: Principal = authorize("email_quarantine", "list"),
    status: Annotated[str, Query(pattern="^(open|released|discarded|all)$")] = "open",
    mailbox_id: IdQuery | None = None,
    reason: Annotated[str | None, Query(max_length=32, pattern="^[a-z_]+$")] = None,
    before_id: IdQuery | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> QuarantinePage:
    rows, next_before = await service.list_quarantine(
        db, status=status, mailbox_id=mailbox_id, reason=reason, before_id=before_id, limit=limit
    )
    return QuarantinePage(items=[quarantine_out(r) for r in rows], next_before_id=next_before)


@router.get("/quarantine/{quarantine_id}")
async def read_quarantine(
    quarantine_id: IdParam, db: Db, principal: Principal = authorize("email_quarantine", "read")
) -> QuarantineDetail:
    row = await service.get_quarantine(db, quarantine_id, with_raw=True)
    text, truncated = raw_text(row.raw)
    return QuarantineDetail(**_quarantine_fields(row), raw_text=text, raw_truncated=truncated)


@router.get("/quarantine/{quarantine_id}/raw")
async def download_quarantine_raw(
    quarantine_id: IdParam, db: Db, principal: Principal = authorize("email_quarantine", "read")
) -> Response:
    """The exact bytes, as a download (never rendered by the browser)."""
    row = await service.get_quarantine(db, quarantine_id, with_raw=True)
    headers = files.download_headers(f"quarantine-{row.id}.eml")
    return Response(row.raw, media_type="application/octet-stream", headers=headers)


@router.post("/quarantine/{quarantine_id}/release")
async def release_quarantine(
    request: Request,
    quarantine_id: IdParam,
    body: ReleaseIn,
    db: Db,
    principal: Principal = authorize("email_quarantine", "update"),
) -> ReleaseOut:
    async with db.begin():
        done = await service.release(db, request.app.state.settings, principal, quarantine_id, body.note)
    return ReleaseOut(
        quarantine=quarantine_out(done.quarantine),
        outcome=done.result.outcome,
        email_message_id=done.result.email_message_id,
        work_order_id=done.result.work_order_id,
    )


@router.post("/quarantine/{quarantine_id}/discard")
async def discard_quarantine(
    quarantine_id: IdParam, body: DiscardIn, db: Db, principal: Principal = authorize("email_quarantine", "update")
) -> QuarantineOut:
    async with db.begin():
        row = await service.discard(db, principal, quarantine_id, body.note)
    return quarantine_out(row)


@router.post("/work-orders/{work_order_id}/reply", status_code=201)
async def reply_by_mail(
    request: Request,
    work_order_id: IdParam,
    body: ReplyIn,
    db: Db,
    principal: Principal = authorize("email_reply", "create"),
) -> ReplyOut:
    """Reply on a case by mail: the reply is also the work order's public comment, sent once."""
    from kefu.channels.email import outbound

    async with db.begin():
        sent = await outbound.send_reply(
            db,
            request.app.state.settings,
            principal,
            work_order_id,
            body.body,
            mailbox=body.mailbox_id,
            to=body.to,
            cc=body.cc,
            record_comment=True,
        )
    return ReplyOut(outbound_id=sent.id, message_id=sent.message_id, state=sent.state)
