"""Mailboxes and the quarantine: the rules, and the only writer besides ingest.

Mailboxes: the address is unique and lower case; the routing queue must exist; the IMAP password is
write-only (stored, never returned, logged or audited: the audit says only that it changed); moving a
mailbox to another IMAP server, account or folder resets its poll cursor.

Quarantine: a person releases a mail (it is filed again with the check that stopped it waived, e.g.
the size limit or the loop check) or discards it with a reason. Both are audited; the raw source is
never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from kefu.channels.email import ingest
from kefu.channels.email.models import EmailQuarantine, Mailbox, QuarantineResolution
from kefu.core import audit
from kefu.core.errors import Conflict, Invalid, NotFound
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity.service import actor_of
from kefu.settings import Settings

MAILBOX_FIELDS = (
    "code",
    "address",
    "display_name",
    "queue",
    "active",
    "imap_host",
    "imap_port",
    "imap_tls",
    "imap_username",
    "imap_password",
    "imap_folder",
    "poll_seconds",
)
CURSOR_FIELDS = frozenset({"imap_host", "imap_port", "imap_username", "imap_folder"})
QUARANTINE_STATUSES = ("open", "released", "discarded", "all")


# =====================================================================================================
# Mailboxes
# =====================================================================================================
async def list_mailboxes(db: AsyncSession) -> list[Mailbox]:
    return list((await db.scalars(select(Mailbox).order_by(Mailbox.code))).all())


async def get_mailbox(db: AsyncSession, mailbox_id: int, *, for_update: bool = False) -> Mailbox:
    stmt = select(Mailbox).where(Mailbox.id == mailbox_id)
    if for_update:
        stmt = stmt.with_for_update()
    mailbox = await db.scalar(stmt)
    if mailbox is None:
        raise NotFound("mailbox")
    return mailbox


async def mailbox_by_address(db: AsyncSession, address: str) -> Mailbox | None:
    return await db.scalar(select(Mailbox).where(Mailbox.address == address.strip().lower()))


def _normalized_address(value: str) -> str:
    from kefu.customers.identities import normalize_email

    try:
        return normalize_email(value)
    except Invalid:
        raise Invalid("not an email address", {"field": "address"}) from None


async def _check(db: AsyncSession, values: dict[str, Any], mailbox_id: int | None) -> dict[str, Any]:
    if "address" in values:
        values["address"] = _normalized_address(values["address"])
        taken = await db.scalar(select(Mailbox.id).where(Mailbox.address == values["address"]))
        if taken is not None and taken != mailbox_id:
            raise Conflict("another mailbox has this address", {"field": "address"})
    if "code" in values:
        taken = await db.scalar(select(Mailbox.id).where(Mailbox.code == values["code"]))
        if taken is not None and taken != mailbox_id:
            raise Conflict("a mailbox with this code exists", {"field": "code"})
    if values.get("queue"):
        from kefu.routing import service as routing

        try:
            await routing.queue_by_code(db, values["queue"])
        except Invalid:
            raise Invalid("queue does not name a routing queue", {"field": "queue"}) from None
    elif "queue" in values:
        values["queue"] = None
    return values


def _audited(values: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in values.items() if k != "imap_password"}
    if "imap_password" in values:
        shown["imap_password"] = "set" if values["imap_password"] else "cleared"
    return shown


async def create_mailbox(db: AsyncSession, principal: Principal, data: dict[str, Any]) -> Mailbox:
    unknown = set(data) - set(MAILBOX_FIELDS)
    if unknown:
        raise Invalid("unknown mailbox fields", {"field": sorted(unknown)[0]})
    values = await _check(db, {k: v for k, v in data.items() if v is not None or k == "queue"}, None)
    mailbox = Mailbox(**values)
    db.add(mailbox)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "email.mailbox.create",
        object_type="email_mailbox",
        object_id=mailbox.id,
        details=_audited(values),
    )
    return mailbox


async def update_mailbox(db: AsyncSession, principal: Principal, mailbox_id: int, changes: dict[str, Any]) -> Mailbox:
    """``changes``: the fields sent. ``imap_password`` None or absent keeps it; "" clears it."""
    unknown = set(changes) - set(MAILBOX_FIELDS)
    if unknown:
        raise Invalid("unknown mailbox fields", {"field": sorted(unknown)[0]})
    mailbox = await get_mailbox(db, mailbox_id, for_update=True)
    changes = dict(changes)
    if changes.get("imap_password") is None:
        changes.pop("imap_password", None)
    values = await _check(db, changes, mailbox.id)
    changed = {k: v for k, v in values.items() if getattr(mailbox, k) != v}
    for key, value in changed.items():
        setattr(mailbox, key, value)
    if CURSOR_FIELDS & set(changed):
        mailbox.imap_uidvalidity = None
        mailbox.imap_last_uid = 0
    if changed:
        mailbox.updated_at = utcnow()
        await db.flush()
        await audit.record(
            db,
            actor_of(principal),
            "email.mailbox.update",
            object_type="email_mailbox",
            object_id=mailbox.id,
            details=_audited(changed),
        )
    return mailbox


# =====================================================================================================
# Quarantine
# =====================================================================================================
async def list_quarantine(
    db: AsyncSession,
    *,
    status: str = "open",
    mailbox_id: int | None = None,
    reason: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> tuple[list[EmailQuarantine], int | None]:
    """Newest first; returns the rows and the ``before_id`` of the next page (None at the end)."""
    if status not in QUARANTINE_STATUSES:
        raise Invalid("unknown status", {"field": "status"})
    stmt = select(EmailQuarantine)
    if status == "open":
        stmt = stmt.where(EmailQuarantine.resolution.is_(None))
    elif status != "all":
        stmt = stmt.where(EmailQuarantine.resolution == status)
    if mailbox_id is not None:
        stmt = stmt.where(EmailQuarantine.mailbox_id == mailbox_id)
    if reason:
        stmt = stmt.where(EmailQuarantine.reason == reason)
    if before_id is not None:
        stmt = stmt.where(EmailQuarantine.id < before_id)
    rows = list((await db.scalars(stmt.order_by(EmailQuarantine.id.desc()).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


async def open_quarantine_count(db: AsyncSession) -> int:
    return (
        await db.scalar(select(func.count()).select_from(EmailQuarantine).where(EmailQuarantine.resolution.is_(None)))
    ) or 0


async def get_quarantine(
    db: AsyncSession, quarantine_id: int, *, with_raw: bool = False, for_update: bool = False
) -> EmailQuarantine:
    stmt = select(EmailQuarantine).where(EmailQuarantine.id == quarantine_id)
    if with_raw:
        stmt = stmt.options(undefer(EmailQuarantine.raw))
    if for_update:
        stmt = stmt.with_for_update()
    row = await db.scalar(stmt)
    if row is None:
        raise NotFound("quarantined mail")
    return row


def _require_open(row: EmailQuarantine) -> None:
    if row.resolution is not None:
        raise Conflict(f"this mail was {row.resolution} already", {"resolution": row.resolution})


@dataclass
class Release:
    quarantine: EmailQuarantine
    result: ingest.IngestResult


async def release(
    db: AsyncSession, settings: Settings, principal: Principal, quarantine_id: int, note: str = ""
) -> Release:
    """File the mail again with the check that stopped it waived. 409 when it still cannot be filed
    (for another reason): nothing changes then."""
    row = await get_quarantine(db, quarantine_id, with_raw=True, for_update=True)
    _require_open(row)
    if row.mailbox_id is None:
        raise Conflict("the mailbox of this mail is gone; it cannot be filed")
    mailbox = await get_mailbox(db, row.mailbox_id)
    result = await ingest.ingest_raw_message(db, settings, mailbox, row.raw, source="release", ignore={row.reason})
    if result.outcome == "quarantined":
        detail = await db.scalar(select(EmailQuarantine.detail).where(EmailQuarantine.id == result.quarantine_id))
        raise Conflict(
            f"the mail still cannot be filed: {result.reason}", {"reason": result.reason, "detail": detail or ""}
        )
    now = utcnow()
    row.resolution = QuarantineResolution.released
    row.released_at = now
    row.released_by_id = principal.user_id
    row.resolution_note = note
    row.email_message_id = result.email_message_id
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "email.quarantine.release",
        object_type="email_quarantine",
        object_id=row.id,
        details={
            "reason": row.reason,
            "note": note,
            "outcome": result.outcome,
            "email_message_id": result.email_message_id,
            "work_order_id": result.work_order_id,
        },
    )
    return Release(row, result)


async def discard(db: AsyncSession, principal: Principal, quarantine_id: int, note: str) -> EmailQuarantine:
    """Decide not to file the mail (spam, junk, a loop); the reason is required; the raw source stays."""
    if not note.strip():
        raise Invalid("say why the mail is discarded", {"field": "note"})
    row = await get_quarantine(db, quarantine_id, for_update=True)
    _require_open(row)
    row.resolution = QuarantineResolution.discarded
    row.released_at = utcnow()
    row.released_by_id = principal.user_id
    row.resolution_note = note
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "email.quarantine.discard",
        object_type="email_quarantine",
        object_id=row.id,
        details={"reason": row.reason, "note": note},
    )
    return row
