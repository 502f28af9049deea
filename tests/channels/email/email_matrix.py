"""Access-matrix examples for the email channel's routes (see tests/core/test_access_matrix.py)."""

from __future__ import annotations

import uuid
from typing import Any

from kefu.channels.email.ingest import ingest_raw_message
from kefu.channels.email.models import Mailbox

A = "/api/v1/email"


def _code() -> str:
    return f"mx{uuid.uuid4().hex[:10]}"


async def _quarantined(app: Any, mailbox_id: int) -> int:
    """A fresh quarantined mail (a loop: sent from the mailbox's own address)."""
    async with app.state.session_factory() as db, db.begin():
        mailbox = await db.get(Mailbox, mailbox_id)
        raw = (
            f"From: {mailbox.address}\r\nTo: {mailbox.address}\r\nSubject: loop\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@matrix.test>\r\n\r\nbody\r\n"
        ).encode()
        result = await ingest_raw_message(db, app.state.settings, mailbox, raw, source="test")
    assert result.quarantine_id is not None
    return result.quarantine_id


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, int]:
    async with app.state.session_factory() as db, db.begin():
        code = _code()
        mailbox = Mailbox(code=code, address=f"{code}@matrix.kefu.test", display_name="矩阵邮箱")
        db.add(mailbox)
        await db.flush()
        mailbox_id = mailbox.id
    return {
        "email_mailbox_id": mailbox_id,
        "email_quarantine_id": await _quarantined(app, mailbox_id),
        "email_case_id": await _case_by_mail(app, mailbox_id),
    }


async def _case_by_mail(app: Any, mailbox_id: int) -> int:
    """A case a customer opened by mail (an agent's reply goes back by mail)."""
    async with app.state.session_factory() as db, db.begin():
        mailbox = await db.get(Mailbox, mailbox_id)
        raw = (
            f"From: =?utf-8?b?5byg5LiJ?= <zhang.{uuid.uuid4().hex[:8]}@example.cn>\r\nTo: {mailbox.address}\r\n"
            f"Subject: matrix case\r\nMessage-ID: <{uuid.uuid4().hex}@matrix.test>\r\n\r\nhello\r\n"
        ).encode()
        result = await ingest_raw_message(db, app.state.settings, mailbox, raw, source="test")
    assert result.work_order_id is not None
    return result.work_order_id


async def _fresh_quarantine(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    return {"email_quarantine_id": await _quarantined(app, world["ids"]["email_mailbox_id"])}


def _new_mailbox(c: Any) -> dict[str, Any]:
    code = _code()
    return {"json": {"code": code, "address": f"{code}@matrix.kefu.test", "display_name": "新邮箱"}}


def _new_mailbox_form(c: Any) -> dict[str, Any]:
    code = _code()
    return {"data": {"code": code, "address": f"{code}@matrix.kefu.test", "active": "1", "imap_tls": "1"}}


EXAMPLES = {
    ("GET", A + "/mailboxes"): lambda c: {},
    ("POST", A + "/mailboxes"): _new_mailbox,
    ("GET", A + "/mailboxes/{mailbox_id}"): lambda c: {"path": {"mailbox_id": c.ids["email_mailbox_id"]}},
    ("PATCH", A + "/mailboxes/{mailbox_id}"): lambda c: {
        "path": {"mailbox_id": c.ids["email_mailbox_id"]},
        "json": {"display_name": "矩阵邮箱改", "imap_password": "s3cret"},
    },
    ("GET", A + "/quarantine"): lambda c: {"params": {"status": "all"}},
    ("GET", A + "/quarantine/{quarantine_id}"): lambda c: {"path": {"quarantine_id": c.ids["email_quarantine_id"]}},
    ("GET", A + "/quarantine/{quarantine_id}/raw"): lambda c: {"path": {"quarantine_id": c.ids["email_quarantine_id"]}},
    ("POST", A + "/quarantine/{quarantine_id}/release"): lambda c: {
        "path": {"quarantine_id": c.ids["email_quarantine_id"]},
        "json": {"note": "矩阵放行"},
    },
    ("POST", A + "/quarantine/{quarantine_id}/discard"): lambda c: {
        "path": {"quarantine_id": c.ids["email_quarantine_id"]},
        "json": {"note": "矩阵丢弃"},
    },
    ("POST", A + "/work-orders/{work_order_id}/reply"): lambda c: {
        "path": {"work_order_id": c.ids["email_case_id"]},
        "json": {"body": "您好，问题已处理。"},
    },
    ("GET", "/email/mailboxes"): lambda c: {},
    ("GET", "/email/mailboxes/new"): lambda c: {},
    ("POST", "/email/mailboxes"): _new_mailbox_form,
    ("GET", "/email/mailboxes/{mailbox_id}"): lambda c: {"path": {"mailbox_id": c.ids["email_mailbox_id"]}},
    ("POST", "/email/mailboxes/{mailbox_id}"): lambda c: {
        "path": {"mailbox_id": c.ids["email_mailbox_id"]},
        "data": {"display_name": "矩阵邮箱页", "active": "1"},
    },
    ("GET", "/email/quarantine"): lambda c: {},
    ("GET", "/email/quarantine/{quarantine_id}"): lambda c: {"path": {"quarantine_id": c.ids["email_quarantine_id"]}},
    ("POST", "/email/quarantine/{quarantine_id}/release"): lambda c: {
        "path": {"quarantine_id": c.ids["email_quarantine_id"]},
        "data": {"note": "page release"},
    },
    ("POST", "/email/quarantine/{quarantine_id}/discard"): lambda c: {
        "path": {"quarantine_id": c.ids["email_quarantine_id"]},
        "data": {"note": "page discard"},
    },
}

PER_CELL = {
    route: _fresh_quarantine
    for route in (
        ("POST", A + "/quarantine/{quarantine_id}/release"),
        ("POST", A + "/quarantine/{quarantine_id}/discard"),
        ("POST", "/email/quarantine/{quarantine_id}/release"),
        ("POST", "/email/quarantine/{quarantine_id}/discard"),
    )
}
