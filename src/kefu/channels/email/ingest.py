"""Filing one inbound mail: dedupe, thread, bounce, loop protection, quarantine.

``ingest_raw_message`` is the one entry point of every inbound mail (SMTP receiver, IMAP poller,
tests, a quarantine release). It works in the caller's transaction and never raises for a bad mail:
whatever is wrong with the mail ends as an ``EmailQuarantine`` row (raw source kept) in the same
transaction. It raises only for infrastructure errors (the database is down, a deadlock), so the
transport answers "try again later" and the mail is delivered again.

How a mail is filed:
1. ``parse.parse_mail`` enforces the limits and reads it; a rejection is quarantined with its reason.
2. Loop protection: X-Loop naming one of our mailboxes, or a mail from one of our own addresses, is
   quarantined (``loop``).
3. Dedupe: the mail's row is inserted first with ``ON CONFLICT DO NOTHING`` on (mailbox, Message-ID,
   direction), so the same mail delivered twice, also concurrently, is stored once (the loser of a
   race waits for the winner's commit and reports ``duplicate``).
4. Bounces (DSN and the common non-standard shapes) are matched to the mail they return by the
   Message-ID found in the returned headers or the text, and become an internal note on its work
   order; an unmatched bounce is quarantined. Bounces are never answered.
5. Threading: In-Reply-To, then References (newest first) naming a stored mail, then the signed reply
   token (``[#WO-<id>-<sig>]``) in the subject or body name the case. A human reply is a new contact
   on that case through ``channels.intake.receive_contact`` (the one inbound path), its text a public
   customer comment; a resolved or closed case is reopened, a pending one opened.
   A mail starting a thread goes through the same path: the customer's open case, or a new one with
   the mail as its description.
6. Automatic mails (auto-replies, lists, bulk) are stored on their thread as an internal note and
   never reopen a case, route a contact or get an acknowledgement; an auto-reply to nothing of ours is
   quarantined. A new human mail is acknowledged through ``outbound.auto_acknowledge`` (which keeps the
   one-per-sender-per-thread-per-day rule).
Filing runs in a savepoint after the mail's row is written: if it fails for a reason that is not the
database's (a bug, a misconfigured queue), the savepoint is rolled back and the mail is quarantined
(``error``) with the reason, so nothing is lost and a person can release it after the fix.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels import intake
from kefu.channels.email import parse
from kefu.channels.email.models import (
    AutoKind,
    EmailMessage,
    EmailQuarantine,
    Mailbox,
    MailDirection,
    QuarantineReason,
)
from kefu.core.errors import ApiError
from kefu.db.base import dialect_insert, utcnow
from kefu.settings import Settings
from kefu.tickets.models import WorkOrder, WorkOrderStatus

log = logging.getLogger(__name__)

Outcome = Literal["threaded", "new_case", "duplicate", "bounce", "quarantined"]
TOKEN_RE = re.compile(r"\[#WO-(\d{1,18})-([0-9a-f]{10})\]", re.IGNORECASE)
AUTO_KINDS = frozenset({AutoKind.auto_reply, AutoKind.list, AutoKind.bulk})
NOTE_MAX_CHARS = 20_000


@dataclass
class IngestResult:
    outcome: Outcome
    email_message_id: int | None = None
    work_order_id: int | None = None
    interaction_id: int | None = None
    quarantine_id: int | None = None
    reason: str | None = None
    case_created: bool = False  # a new work order was opened for this mail


# =====================================================================================================
# Reply token
# =====================================================================================================
def _token_signature(settings: Settings, work_order_id: int) -> str:
    key = settings.resolved_secret_key.encode()
    return hmac.new(key, f"kefu-email-reply:{work_order_id}".encode(), hashlib.sha256).hexdigest()[:10]


def reply_token(settings: Settings, work_order_id: int) -> str:
    """``[#WO-<id>-<signature>]``: put it in the subject of mails about the work order."""
    return f"[#WO-{work_order_id}-{_token_signature(settings, work_order_id)}]"


def parse_reply_token(settings: Settings, text: str | None) -> int | None:
    """The work order a genuine token in ``text`` names (signature compared in constant time)."""
    for match in TOKEN_RE.finditer(text or ""):
        work_order_id = int(match.group(1))
        if hmac.compare_digest(match.group(2).lower(), _token_signature(settings, work_order_id)):
            return work_order_id
    return None


# =====================================================================================================
# Helpers
# =====================================================================================================
class _Refiled(Exception):
    """Inside the savepoint: the contact turned out to be recorded already (a race): undo, say duplicate."""


async def own_addresses(db: AsyncSession) -> set[str]:
    return set((await db.scalars(select(Mailbox.address))).all())


def synthetic_message_id(raw: bytes) -> str:
    """For a mail without a Message-ID: its content hash (the same bytes again are the same mail)."""
    return f"sha256.{hashlib.sha256(raw).hexdigest()}@no-message-id.kefu"


async def _quarantine(
    db: AsyncSession,
    mailbox: Mailbox,
    raw: bytes,
    source: str,
    reason: str,
    detail: str,
    headers: parse.HeaderSummary | None,
) -> IngestResult:
    headers = headers or parse.HeaderSummary()
    sha = hashlib.sha256(raw).hexdigest()
    row_id = await db.scalar(
        dialect_insert(db)(EmailQuarantine)
        .values(
            mailbox_id=mailbox.id,
            reason=reason,
            detail=parse.storable(detail)[:4000],
            source=source[:16],
            message_id=headers.message_id,
            from_address=(headers.from_address or "")[:254],
            subject=(headers.subject or "")[:500],
            raw=raw,
            raw_size=len(raw),
            raw_sha256=sha,
            received_at=utcnow(),
            resolution_note="",
        )
        .on_conflict_do_nothing(index_elements=["mailbox_id", "raw_sha256"])
        .returning(EmailQuarantine.id)
    )
    if row_id is not None:
        log.info("mail quarantined", extra={"mailbox": mailbox.code, "reason": reason, "quarantine_id": row_id})
        return IngestResult("quarantined", quarantine_id=row_id, reason=reason)
    existing = await db.scalar(
        select(EmailQuarantine).where(EmailQuarantine.mailbox_id == mailbox.id, EmailQuarantine.raw_sha256 == sha)
    )
    assert existing is not None  # the conflict proves it
    if existing.resolution is None:
        if (existing.reason, existing.detail) != (reason, detail):  # the latest attempt says why
            existing.reason = reason
            existing.detail = parse.storable(detail)[:4000]
            await db.flush()
        return IngestResult("quarantined", quarantine_id=existing.id, reason=existing.reason)
    return IngestResult(
        "duplicate", email_message_id=existing.email_message_id, quarantine_id=existing.id, reason=existing.reason
    )


async def _stored(db: AsyncSession, mailbox_id: int, message_id: str) -> EmailMessage | None:
    return await db.scalar(
        select(EmailMessage).where(
            EmailMessage.mailbox_id == mailbox_id,
            EmailMessage.message_id == message_id,
            EmailMessage.direction == MailDirection.inbound,
        )
    )


def _duplicate(row: EmailMessage) -> IngestResult:
    return IngestResult(
        "duplicate", email_message_id=row.id, work_order_id=row.work_order_id, interaction_id=row.interaction_id
    )


async def _messages_named(db: AsyncSession, ids: list[str]) -> list[EmailMessage]:
    """Stored mails with these Message-IDs, in the order of ``ids`` (our own sent mails first per id)."""
    if not ids:
        return []
    rows = (await db.scalars(select(EmailMessage).where(EmailMessage.message_id.in_(ids)))).all()
    order = {mid: i for i, mid in enumerate(ids)}
    return sorted(rows, key=lambda r: (order[r.message_id], r.direction != MailDirection.outbound, r.id))


async def _case(db: AsyncSession, work_order_id: int | None) -> WorkOrder | None:
    """The work order named, followed through merges."""
    if work_order_id is None:
        return None
    contact = intake.InboundContact(channel="email", external_id=None, work_order_id=work_order_id, open_case=False)
    case, _ = await intake.case_for(db, contact, None)
    return case


@dataclass
class _Thread:
    parent: EmailMessage | None
    work_order: WorkOrder | None
    by: str  # in_reply_to | references | token | ""


async def _thread_of(db: AsyncSession, settings: Settings, mail: parse.ParsedMail) -> _Thread:
    ids = ([mail.in_reply_to] if mail.in_reply_to else []) + list(reversed(mail.references))
    ids = [i for i in dict.fromkeys(ids) if i != mail.message_id]
    for row in await _messages_named(db, ids):
        case = await _case(db, row.work_order_id)
        if case is not None:
            by = "in_reply_to" if row.message_id == mail.in_reply_to else "references"
            return _Thread(row, case, by)
    token_case = parse_reply_token(settings, mail.subject) or parse_reply_token(settings, mail.text[:50_000])
    case = await _case(db, token_case)
    if case is not None:
        parent = await db.scalar(
            select(EmailMessage).where(EmailMessage.work_order_id == case.id).order_by(EmailMessage.id.desc()).limit(1)
        )
        return _Thread(parent, case, "token")
    return _Thread(None, None, "")


# =====================================================================================================
# The entry point
# =====================================================================================================
async def ingest_raw_message(
    db: AsyncSession,
    settings: Settings,
    mailbox: Mailbox,
    raw: bytes,
    *,
    source: str,
    ignore: Iterable[str] = (),
) -> IngestResult:
    """File one inbound mail for ``mailbox`` in the caller's transaction (see the module docstring).
    ``source``: smtp | imap | test | release. ``ignore``: quarantine reasons waived (a release)."""
    ignore = frozenset(ignore)
    raw = bytes(raw)
    own = await own_addresses(db)
    try:
        mail = parse.parse_mail(raw, parse.Limits.from_settings(settings), own_addresses=own, ignore=ignore)
    except parse.MailRejected as rejected:
        return await _quarantine(db, mailbox, raw, source, rejected.reason, rejected.detail, rejected.headers)
    R = QuarantineReason
    if R.loop not in ignore:
        if mail.auto_kind == AutoKind.loop:
            return await _quarantine(
                db, mailbox, raw, source, R.loop, "X-Loop names one of our addresses", mail.summary
            )
        if mail.from_address in own:
            return await _quarantine(
                db, mailbox, raw, source, R.loop, "sent from one of our own mailbox addresses", mail.summary
            )
    message_id = mail.message_id or synthetic_message_id(raw)
    existing = await _stored(db, mailbox.id, message_id)
    if existing is not None:
        return _duplicate(existing)

    bounce_of: EmailMessage | None = None
    bounce_case: WorkOrder | None = None
    is_bounce = mail.auto_kind == AutoKind.bounce and R.bounce_unmatched not in ignore
    if is_bounce:
        assert mail.bounce is not None
        for row in await _messages_named(db, mail.bounce.original_message_ids):
            bounce_case = await _case(db, row.work_order_id)
            if bounce_case is not None:
                bounce_of = row
                break
        if bounce_of is None:
            detail = "a bounce that returns no mail of ours"
            if mail.bounce.original_message_ids:
                detail += f" (returned Message-ID: {mail.bounce.original_message_ids[0][:200]})"
            return await _quarantine(db, mailbox, raw, source, R.bounce_unmatched, detail, mail.summary)
        thread = _Thread(bounce_of, bounce_case, "bounce")
    else:
        thread = await _thread_of(db, settings, mail)
        if (
            mail.auto_kind == AutoKind.auto_reply
            and thread.work_order is None
            and R.auto_reply_unthreaded not in ignore
        ):
            return await _quarantine(
                db, mailbox, raw, source, R.auto_reply_unthreaded, "an automatic reply to no mail of ours", mail.summary
            )

    # The mail's row first: the dedupe gate (and, on SQLite, the write that opens the transaction
    # before the savepoint).
    now = utcnow()
    auto_kind = (
        AutoKind.bounce if is_bounce else (mail.auto_kind if mail.auto_kind != AutoKind.bounce else AutoKind.none)
    )
    row_id = await db.scalar(
        dialect_insert(db)(EmailMessage)
        .values(
            mailbox_id=mailbox.id,
            direction=MailDirection.inbound,
            message_id=message_id,
            in_reply_to=mail.in_reply_to,
            references=mail.references,
            from_address=(mail.from_address or "")[:254],
            from_name=mail.from_name[:255],
            to_addresses=mail.to,
            cc_addresses=mail.cc,
            subject=mail.subject[:500],
            text_body=mail.text,
            html_body=mail.html,
            received_at=now,
            sent_at=mail.date,
            auto_kind=auto_kind,
            is_auto=auto_kind in AUTO_KINDS,
            is_bounce=is_bounce,
            bounce_of_id=bounce_of.id if bounce_of is not None else None,
            source=source[:16],
            raw=raw,
            raw_size=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest(),
            attachments=[],
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["mailbox_id", "message_id", "direction"])
        .returning(EmailMessage.id)
    )
    if row_id is None:
        existing = await _stored(db, mailbox.id, message_id)
        assert existing is not None  # the conflict proves the winner's row is committed
        return _duplicate(existing)
    row = await db.get(EmailMessage, row_id)
    assert row is not None
    try:
        async with db.begin_nested():
            if is_bounce:
                result = await _file_bounce(db, row, mail, thread)
            else:
                result = await _file(db, settings, mailbox, row, mail, thread)
    except _Refiled:
        await db.execute(delete(EmailMessage).where(EmailMessage.id == row_id))
        existing = await _stored(db, mailbox.id, message_id)
        return _duplicate(existing) if existing is not None else IngestResult("duplicate")
    except (DBAPIError, OSError):
        raise  # the database (or the disk) failed: the transport retries later
    except Exception as exc:  # noqa: BLE001 - a bad mail (or a bug) must not lose the mail
        log.exception("mail could not be filed", extra={"mailbox": mailbox.code, "email_message_id": row_id})
        await db.execute(delete(EmailMessage).where(EmailMessage.id == row_id))
        detail = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
        return await _quarantine(db, mailbox, raw, source, R.error, f"filing failed: {detail}", mail.summary)
    log.info(
        "mail filed",
        extra={
            "mailbox": mailbox.code,
            "outcome": result.outcome,
            "email_message_id": row_id,
            "work_order_id": result.work_order_id,
        },
    )
    return result


# =====================================================================================================
# Filing
# =====================================================================================================
async def _store_attachments(
    db: AsyncSession, settings: Settings, work_order_id: int, mail: parse.ParsedMail
) -> list[dict[str, Any]]:
    from kefu.tickets import attachments as ticket_attachments

    stored: list[dict[str, Any]] = []
    for item in mail.attachments:
        entry: dict[str, Any] = {
            "filename": item.filename,
            "content_type": item.content_type,
            "size": len(item.data),
            "inline": item.inline,
            "content_id": item.content_id,
            "attachment_id": None,
        }
        if not item.data:
            entry["note"] = "empty"
        else:
            try:
                saved = await ticket_attachments.add(
                    db,
                    intake.CHANNEL_PRINCIPAL,
                    work_order_id,
                    filename=item.filename,
                    data=item.data,
                    max_bytes=max(settings.email_max_attachment_bytes, len(item.data)),
                )
            except ApiError as exc:  # e.g. the work order's attachment limit: the raw source keeps it
                entry["note"] = exc.message
            else:
                entry["attachment_id"] = saved.id
        stored.append(entry)
    return stored


async def _reopen(db: AsyncSession, case: WorkOrder) -> None:
    from kefu.tickets import service as tickets

    target = {
        WorkOrderStatus.resolved: WorkOrderStatus.reopened,
        WorkOrderStatus.closed: WorkOrderStatus.reopened,
        WorkOrderStatus.pending: WorkOrderStatus.open,
    }.get(WorkOrderStatus(case.status))
    if target is not None:
        await tickets.change_status(db, intake.CHANNEL_PRINCIPAL, case, target, reason="customer replied by email")


def _note_of_auto(mail: parse.ParsedMail) -> str:
    label = {
        AutoKind.auto_reply: "Automatic reply",
        AutoKind.list: "Mailing-list mail",
        AutoKind.bulk: "Automatic mail",
    }.get(mail.auto_kind, "Mail")
    head = f"{label} from {mail.from_address or '?'}: {mail.subject}".strip()
    return f"{head}\n\n{mail.text}"[:NOTE_MAX_CHARS]


async def _acknowledge(db: AsyncSession, settings: Settings, mailbox: Mailbox, row: EmailMessage) -> None:
    try:
        outbound = importlib.import_module("kefu.channels.email.outbound")
    except ImportError:
        return
    acknowledge = getattr(outbound, "auto_acknowledge", None)
    if acknowledge is not None:
        await acknowledge(db, settings, mailbox, row)


async def _file(
    db: AsyncSession,
    settings: Settings,
    mailbox: Mailbox,
    row: EmailMessage,
    mail: parse.ParsedMail,
    thread: _Thread,
) -> IngestResult:
    from kefu.tickets import service as tickets

    if thread.parent is not None:
        row.thread_root_id = thread.parent.thread_root_id or thread.parent.id
    if mail.auto_kind in AUTO_KINDS and thread.work_order is not None:
        # On its thread, as a note: it neither reopens the case nor asks an agent for anything.
        case = thread.work_order
        await tickets.add_comment(db, intake.CHANNEL_PRINCIPAL, case.id, _note_of_auto(mail), internal=True)
        row.work_order_id = case.id
        row.attachments = await _store_attachments(db, settings, case.id, mail)
        await db.flush()
        return IngestResult("threaded", email_message_id=row.id, work_order_id=case.id)

    threaded = thread.work_order is not None
    contact = intake.InboundContact(
        channel="email",
        external_id=f"{mailbox.code}:{row.message_id}"[:255],
        identity_kind="email" if mail.from_address else None,
        identity_value=mail.from_address,
        display_name=mail.from_name or None,
        subject=mail.subject or None,
        queue=mailbox.queue,
        work_order_id=thread.work_order.id if thread.work_order is not None else None,
        case_title=mail.subject or None,
        case_description=mail.text,
        attributes={
            "mailbox": mailbox.code,
            "email_message_id": row.id,
            "auto_kind": str(mail.auto_kind),
            **({"thread_by": thread.by} if thread.by else {}),
        },
    )
    result = await intake.receive_contact(db, contact)
    if not result.created:
        raise _Refiled
    row.interaction_id = result.interaction.id
    row.work_order_id = result.work_order_id
    if result.work_order_id is not None:
        case = await db.get(WorkOrder, result.work_order_id)
        assert case is not None
        if not result.case_created:
            body = parse.strip_quoted(mail.text) if threaded else f"{mail.subject}\n\n{mail.text}".strip()
            await tickets.add_comment(
                db,
                intake.CHANNEL_PRINCIPAL,
                case.id,
                body[: settings.email_max_body_chars] or "(empty mail)",
                internal=False,
            )
            if mail.auto_kind == AutoKind.none:
                await _reopen(db, case)
        row.attachments = await _store_attachments(db, settings, case.id, mail)
    await db.flush()
    if mail.auto_kind == AutoKind.none:
        await _acknowledge(db, settings, mailbox, row)
    return IngestResult(
        "threaded" if threaded else "new_case",
        email_message_id=row.id,
        work_order_id=result.work_order_id,
        interaction_id=result.interaction.id,
        case_created=result.case_created,
    )


async def _file_bounce(db: AsyncSession, row: EmailMessage, mail: parse.ParsedMail, thread: _Thread) -> IngestResult:
    from kefu.tickets import service as tickets

    assert thread.work_order is not None and thread.parent is not None and mail.bounce is not None
    case = thread.work_order
    original = thread.parent
    info = mail.bounce
    lines = [f"Mail delivery failed: {original.subject or '(no subject)'}"]
    recipients = info.recipients or list(original.to_addresses or [])
    if recipients:
        lines.append("Recipients: " + ", ".join(recipients[:20]))
    if info.status or info.action:
        lines.append(f"Status: {info.status} {info.action}".strip())
    if info.diagnostic:
        lines.append(f"Diagnostic: {info.diagnostic}")
    lines.append("")
    lines.append(mail.text[:4000])
    await tickets.add_comment(db, intake.CHANNEL_PRINCIPAL, case.id, "\n".join(lines)[:NOTE_MAX_CHARS], internal=True)
    row.work_order_id = case.id
    row.thread_root_id = original.thread_root_id or original.id
    await db.flush()
    try:
        outbound = importlib.import_module("kefu.channels.email.outbound")
    except ImportError:
        outbound = None
    mark = getattr(outbound, "mark_bounced", None)
    if mark is not None:
        await mark(db, original, row)
    return IngestResult("bounce", email_message_id=row.id, work_order_id=case.id)
