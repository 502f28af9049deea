"""Mailbox and quarantine API and pages: the password is write-only, the raw source is shown escaped,
release and discard are audited; the demo mailbox."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from tests.channels.email.email_support import email_queue, file_mail, make_mailbox

from conftest import login
from kefu.channels.email import demo
from kefu.channels.email.models import EmailMessage, Mailbox
from kefu.core.audit import AuditEntry


def _code() -> str:
    return f"pg{uuid.uuid4().hex[:10]}"


async def test_mailbox_api_keeps_the_password_write_only(app, client, make) -> None:  # noqa: ANN001
    admin = await make.user("admin")
    await login(client, admin)
    queue = await email_queue(app)
    code = _code()
    made = await client.post(
        "/api/v1/email/mailboxes",
        json={
            "code": code,
            "address": f"{code.upper()}@Kefu.Test",
            "display_name": "售后",
            "queue": queue,
            "imap_host": "imap.kefu.test",
            "imap_username": "u",
            "imap_password": "hunter2-secret",
        },
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["address"] == f"{code}@kefu.test" and body["imap_password_set"] is True
    assert "hunter2-secret" not in made.text and "imap_password" not in body
    mailbox_id = body["id"]
    read = await client.get(f"/api/v1/email/mailboxes/{mailbox_id}")
    assert "hunter2-secret" not in read.text
    listed = await client.get("/api/v1/email/mailboxes")
    assert any(m["id"] == mailbox_id for m in listed.json()) and "hunter2-secret" not in listed.text

    kept = await client.patch(
        f"/api/v1/email/mailboxes/{mailbox_id}", json={"display_name": "售后二", "poll_seconds": 30}
    )
    assert kept.json()["imap_password_set"] is True
    moved = await client.patch(f"/api/v1/email/mailboxes/{mailbox_id}", json={"imap_folder": "Support"})
    assert moved.json()["imap_last_uid"] == 0 and moved.json()["imap_uidvalidity"] is None
    cleared = await client.patch(f"/api/v1/email/mailboxes/{mailbox_id}", json={"imap_password": ""})
    assert cleared.json()["imap_password_set"] is False

    bad_queue = await client.post(
        "/api/v1/email/mailboxes", json={"code": _code(), "address": f"{_code()}@kefu.test", "queue": "no-such-queue"}
    )
    assert bad_queue.status_code == 422 and bad_queue.json()["error"]["details"]["field"] == "queue"
    taken = await client.post("/api/v1/email/mailboxes", json={"code": _code(), "address": f"{code}@kefu.test"})
    assert taken.status_code == 409
    extra = await client.post("/api/v1/email/mailboxes", json={"code": _code(), "address": "a@b.cn", "x": 1})
    assert extra.status_code == 422

    async with app.state.session_factory() as db:
        entries = (await db.scalars(select(AuditEntry).where(AuditEntry.object_type == "email_mailbox"))).all()
    audited = " ".join(str(e.details) for e in entries if e.object_id == str(mailbox_id))
    assert "hunter2-secret" not in audited and "'imap_password': 'set'" in audited


async def test_quarantine_api_read_raw_release_discard(app, client, make, settings) -> None:  # noqa: ANN001
    supervisor = await make.user("supervisor")
    await login(client, supervisor)
    box = await make_mailbox(app)
    hostile = (
        f"From: {box.address}\r\nTo: {box.address}\r\nSubject: <script>alert(1)</script>\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@x>\r\n\r\n<script>alert(2)</script>\r\n"
    ).encode()
    loop = await file_mail(app, settings, box, hostile)
    assert loop.reason == "loop"
    listed = await client.get("/api/v1/email/quarantine", params={"mailbox_id": box.id})
    assert [q["id"] for q in listed.json()["items"]] == [loop.quarantine_id]
    detail = (await client.get(f"/api/v1/email/quarantine/{loop.quarantine_id}")).json()
    assert detail["reason"] == "loop" and "<script>alert(2)</script>" in detail["raw_text"]
    raw = await client.get(f"/api/v1/email/quarantine/{loop.quarantine_id}/raw")
    assert raw.content == hostile and raw.headers["content-type"] == "application/octet-stream"
    assert raw.headers["content-disposition"].startswith("attachment")

    page = await client.get(f"/email/quarantine/{loop.quarantine_id}")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page.text and "<script>alert(2)" not in page.text

    no_reason = await client.post(f"/api/v1/email/quarantine/{loop.quarantine_id}/discard", json={"note": ""})
    assert no_reason.status_code == 422
    released = await client.post(f"/api/v1/email/quarantine/{loop.quarantine_id}/release", json={"note": "我们测试"})
    assert released.status_code == 200, released.text
    assert released.json()["outcome"] == "new_case" and released.json()["quarantine"]["resolution"] == "released"
    again = await client.post(f"/api/v1/email/quarantine/{loop.quarantine_id}/release", json={})
    assert again.status_code == 409
    async with app.state.session_factory() as db:
        filed = await db.get(EmailMessage, released.json()["email_message_id"])
        assert filed.subject == "<script>alert(1)</script>" and filed.source == "release"
        audit = await db.scalar(select(AuditEntry).where(AuditEntry.action == "email.quarantine.release"))
        assert audit is not None


async def test_pages_mailboxes_and_quarantine(app, client, make, settings) -> None:  # noqa: ANN001
    admin = await make.user("admin")
    csrf = await login(client, admin)
    code = _code()
    created = await client.post(
        "/email/mailboxes",
        data={"csrf_token": csrf, "code": code, "address": f"{code}@kefu.test", "queue": "", "active": ["0", "1"],
              "imap_tls": "0", "imap_password": "page-secret", "imap_port": "143", "poll_seconds": "60"},
    )  # fmt: skip
    assert created.status_code == 303, created.text
    location = created.headers["location"]
    page = await client.get(location)
    assert page.status_code == 200 and f"{code}@kefu.test" in page.text and "page-secret" not in page.text
    async with app.state.session_factory() as db:
        box = await db.scalar(select(Mailbox).where(Mailbox.code == code))
        assert box.imap_password == "page-secret" and box.imap_tls is False and box.active is True
    kept = await client.post(
        location.split("?")[0], data={"csrf_token": csrf, "display_name": "页面", "imap_password": ""}
    )
    assert kept.status_code == 303
    async with app.state.session_factory() as db:
        box = await db.scalar(select(Mailbox).where(Mailbox.code == code))
        assert box.imap_password == "page-secret" and box.display_name == "页面" and box.active is True
    invalid = await client.post("/email/mailboxes", data={"csrf_token": csrf, "code": "BAD CODE", "address": "x"})
    assert invalid.status_code == 422
    listing = await client.get("/email/mailboxes")
    assert listing.status_code == 200 and code in listing.text

    raw = (
        b"To: nobody@x.cn\r\nSubject: page quarantine\r\nMessage-ID: <"
        + uuid.uuid4().hex.encode()
        + b"@x>\r\n\r\nx\r\n"
    )
    result = await file_mail(app, settings, box, raw)
    queue_page = await client.get("/email/quarantine")
    assert queue_page.status_code == 200 and "page quarantine" in queue_page.text
    discard = await client.post(
        f"/email/quarantine/{result.quarantine_id}/discard", data={"csrf_token": csrf, "note": "垃圾邮件"}
    )
    assert discard.status_code == 303
    shown = await client.get(f"/email/quarantine/{result.quarantine_id}")
    assert "垃圾邮件" in shown.text and 'id="quarantine-release"' not in shown.text


async def test_agents_cannot_see_the_quarantine(client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("agent"))
    assert (await client.get("/api/v1/email/quarantine")).status_code == 403
    assert (await client.get("/email/mailboxes")).status_code == 403


async def test_demo_mailbox(app, settings) -> None:  # noqa: ANN001
    quiet = settings.model_copy(update={"email_auto_ack": False})
    async with app.state.session_factory() as db, db.begin():
        mailbox = await demo.seed_demo(db, quiet)
        again = await demo.seed_demo(db, quiet)
    assert mailbox.id == again.id and mailbox.address == "support@kefu.local"
    async with app.state.session_factory() as db:
        filed = (await db.scalars(select(EmailMessage).where(EmailMessage.mailbox_id == mailbox.id))).all()
    assert len(filed) == 1 and filed[0].work_order_id is not None
