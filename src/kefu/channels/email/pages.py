"""Email pages: mailboxes (list, create, edit; the IMAP password is write-only) and the quarantine
(list, one mail with its raw source shown as escaped text, release or discard)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.email import service
from kefu.channels.email.api import raw_text
from kefu.channels.email.models import Mailbox, QuarantineReason
from kefu.channels.email.schemas import DiscardIn, MailboxCreate, MailboxUpdate, ReleaseIn
from kefu.core.errors import ApiError
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import IdParam, IdQuery
from kefu.db.session import get_db
from kefu.web.pages import form_data, render, see_other, validate

router = APIRouter(prefix="", tags=["email"], include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]
CHECKBOXES = ("active", "imap_tls")
REASONS = tuple(r.value for r in QuarantineReason)


def _mailbox_form(data: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """Form fields to API fields: checkboxes (hidden 0 + checkbox 1), blanks, the write-only password."""
    out = dict(data)
    for key in CHECKBOXES:
        if key in out:  # the form sends a hidden "0" and, when ticked, "1"
            values = out[key]
            out[key] = "1" in values if isinstance(values, list) else values == "1"
    if out.get("queue") == "":
        out["queue"] = None
    if not creating and not out.get("imap_password"):
        out.pop("imap_password", None)  # blank keeps the stored password
    if out.pop("imap_password_clear", None) == "1":
        out["imap_password"] = ""
    for key in ("imap_port", "poll_seconds"):
        if out.get(key) == "":
            out.pop(key)
    return out


async def _form_data(request: Request) -> dict[str, Any]:
    form = await request.form()
    data: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key == "csrf_token" or not isinstance(value, str):
            continue
        if key in CHECKBOXES:
            data.setdefault(key, []).append(value)
        else:
            data[key] = value
    return data


def _form_values(mailbox: Mailbox | None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    if data is not None:
        values = {k: v for k, v in data.items() if k != "imap_password"}
        for key in CHECKBOXES:
            raw = data.get(key)
            values[key] = "1" in raw if isinstance(raw, list) else bool(raw)
        return values
    if mailbox is None:
        return {"active": True, "imap_tls": True, "imap_port": 993, "imap_folder": "INBOX", "poll_seconds": 60}
    return {
        "code": mailbox.code,
        "address": mailbox.address,
        "display_name": mailbox.display_name,
        "queue": mailbox.queue or "",
        "active": mailbox.active,
        "imap_host": mailbox.imap_host,
        "imap_port": mailbox.imap_port,
        "imap_tls": mailbox.imap_tls,
        "imap_username": mailbox.imap_username,
        "imap_folder": mailbox.imap_folder,
        "poll_seconds": mailbox.poll_seconds,
    }


async def _queues(db: AsyncSession) -> list[Any]:
    from kefu.routing import queues

    return [v.queue for v in await queues.list_queues(db)]


# --- mailboxes -----------------------------------------------------------------------------------------
@router.get("/email/mailboxes")
async def mailboxes_page(
    request: Request, db: Db, principal: Principal = authorize("email_mailbox", "list")
) -> Response:
    return render(
        request,
        "email/mailboxes.html",
        principal,
        mailboxes=await service.list_mailboxes(db),
        can_create=allows(principal, "email_mailbox", "create"),
        can_quarantine=allows(principal, "email_quarantine", "list"),
        open_quarantine=await service.open_quarantine_count(db),
    )


@router.get("/email/mailboxes/new")
async def mailbox_new_page(
    request: Request, db: Db, principal: Principal = authorize("email_mailbox", "create")
) -> Response:
    return render(
        request,
        "email/mailbox_form.html",
        principal,
        mailbox=None,
        f=_form_values(None),
        errors=[],
        queues=await _queues(db),
        can_edit=True,
    )


@router.post("/email/mailboxes")
async def mailbox_create_submit(
    request: Request, db: Db, principal: Principal = authorize("email_mailbox", "create")
) -> Response:
    data = await _form_data(request)
    body, errors = validate(MailboxCreate, _mailbox_form(data, creating=True))
    if body is not None:
        try:
            async with db.begin():
                mailbox = await service.create_mailbox(db, principal, body.model_dump())
            return see_other(f"/email/mailboxes/{mailbox.id}?saved=1")
        except ApiError as exc:
            errors = [exc.message]
    return render(
        request,
        "email/mailbox_form.html",
        principal,
        status_code=422,
        mailbox=None,
        f=_form_values(None, data),
        errors=errors,
        queues=await _queues(db),
        can_edit=True,
    )


@router.get("/email/mailboxes/{mailbox_id}")
async def mailbox_page(
    request: Request, mailbox_id: IdParam, db: Db, principal: Principal = authorize("email_mailbox", "read")
) -> Response:
    mailbox = await service.get_mailbox(db, mailbox_id)
    return render(
        request,
        "email/mailbox_form.html",
        principal,
        mailbox=mailbox,
        f=_form_values(mailbox),
        errors=[],
        queues=await _queues(db),
        can_edit=allows(principal, "email_mailbox", "update"),
        saved=request.query_params.get("saved") == "1",
    )


@router.post("/email/mailboxes/{mailbox_id}")
async def mailbox_update_submit(
    request: Request, mailbox_id: IdParam, db: Db, principal: Principal = authorize("email_mailbox", "update")
) -> Response:
    data = await _form_data(request)
    body, errors = validate(MailboxUpdate, _mailbox_form(data, creating=False))
    if body is not None:
        try:
            async with db.begin():
                await service.update_mailbox(db, principal, mailbox_id, body.model_dump(exclude_unset=True))
            return see_other(f"/email/mailboxes/{mailbox_id}?saved=1")
        except ApiError as exc:
            if exc.status == 404:
                raise
            errors = [exc.message]
    mailbox = await service.get_mailbox(db, mailbox_id)
    return render(
        request,
        "email/mailbox_form.html",
        principal,
        status_code=422,
        mailbox=mailbox,
        f=_form_values(mailbox, data),
        errors=errors,
        queues=await _queues(db),
        can_edit=True,
    )


# --- quarantine ----------------------------------------------------------------------------------------
@router.get("/email/quarantine")
async def quarantine_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("email_quarantine", "list"),
    status: Annotated[str, Query(pattern="^(open|released|discarded|all)$")] = "open",
    reason: Annotated[str, Query(max_length=32)] = "",
    mailbox_id: IdQuery | None = None,
    before_id: IdQuery | None = None,
) -> Response:
    rows, next_before = await service.list_quarantine(
        db,
        status=status,
        reason=reason if reason in REASONS else None,
        mailbox_id=mailbox_id,
        before_id=before_id,
        limit=50,
    )
    mailboxes = {m.id: m for m in await service.list_mailboxes(db)}
    return render(
        request,
        "email/quarantine.html",
        principal,
        rows=rows,
        next_before=next_before,
        status=status,
        reason=reason if reason in REASONS else "",
        reasons=REASONS,
        mailboxes=mailboxes,
        mailbox_id=mailbox_id,
    )


async def _quarantine_item(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    quarantine_id: int,
    *,
    status_code: int = 200,
    errors: list[str] | None = None,
    done: str = "",
) -> Response:
    row = await service.get_quarantine(db, quarantine_id, with_raw=True)
    text, truncated = raw_text(row.raw)
    mailbox = await service.get_mailbox(db, row.mailbox_id) if row.mailbox_id else None
    return render(
        request,
        "email/quarantine_item.html",
        principal,
        status_code=status_code,
        row=row,
        mailbox=mailbox,
        raw_text=text,
        raw_truncated=truncated,
        errors=errors or [],
        done=done,
        can_update=allows(principal, "email_quarantine", "update"),
    )


@router.get("/email/quarantine/{quarantine_id}")
async def quarantine_item_page(
    request: Request, quarantine_id: IdParam, db: Db, principal: Principal = authorize("email_quarantine", "read")
) -> Response:
    return await _quarantine_item(request, db, principal, quarantine_id, done=request.query_params.get("done", ""))


@router.post("/email/quarantine/{quarantine_id}/release")
async def quarantine_release_submit(
    request: Request, quarantine_id: IdParam, db: Db, principal: Principal = authorize("email_quarantine", "update")
) -> Response:
    body, errors = validate(ReleaseIn, await form_data(request))
    if body is not None:
        try:
            async with db.begin():
                await service.release(db, request.app.state.settings, principal, quarantine_id, body.note)
            return see_other(f"/email/quarantine/{quarantine_id}?done=released")
        except ApiError as exc:
            if exc.status == 404:
                raise
            detail = exc.details.get("detail") if isinstance(exc.details, dict) else None
            errors = [exc.message + (f" ({detail})" if detail else "")]
    return await _quarantine_item(request, db, principal, quarantine_id, status_code=409, errors=errors)


@router.post("/email/quarantine/{quarantine_id}/discard")
async def quarantine_discard_submit(
    request: Request, quarantine_id: IdParam, db: Db, principal: Principal = authorize("email_quarantine", "update")
) -> Response:
    body, errors = validate(DiscardIn, await form_data(request))
    if body is not None:
        try:
            async with db.begin():
                await service.discard(db, principal, quarantine_id, body.note)
            return see_other(f"/email/quarantine/{quarantine_id}?done=discarded")
        except ApiError as exc:
            if exc.status == 404:
                raise
            errors = [exc.message]
    return await _quarantine_item(request, db, principal, quarantine_id, status_code=422, errors=errors)
