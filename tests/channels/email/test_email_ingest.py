"""Filing single mails through ``ingest_raw_message``: threading, duplicates (also concurrent), the
acknowledgement contract, quarantine (deduped, kept whole), failures that quarantine ("error") and
failures that raise (the database), release and discard."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from tests.channels.email.email_support import SYSTEM, email_queue, file_mail, make_mailbox

from kefu.channels.email import ingest, service
from kefu.channels.email.models import EmailMessage, EmailQuarantine, Mailbox
from kefu.core.audit import AuditEntry
from kefu.core.errors import Conflict, Invalid
from kefu.interactions.models import Interaction
from kefu.tickets.models import WorkOrder, WorkOrderComment


def mail(mid: str, sender: str, subject: str, body: str, **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (
        f"From: Zhang San <{sender}>\r\nTo: support@kefu.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{mid}>\r\nDate: Mon, 1 Dec 2025 10:00:00 +0800\r\n{extra}"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def uid(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def no_ack(settings):  # noqa: ANN001, ANN201
    return settings.model_copy(update={"email_auto_ack": False})


async def test_new_mail_opens_a_case_and_a_reply_threads(app, no_ack) -> None:  # noqa: ANN001
    box = await make_mailbox(app, queue=await email_queue(app))
    sender = f"{uid('zs')}@example.com"
    first_id, reply_id = f"{uid()}@x.test", f"{uid()}@x.test"
    first = await file_mail(app, no_ack, box, mail(first_id, sender, "订单问题", "你好，订单没到"))
    assert first.outcome == "new_case" and first.case_created and first.work_order_id
    reply = await file_mail(
        app, no_ack, box, mail(reply_id, sender, "Re: 订单问题", "补充一下\n\n> 你好", In_Reply_To=f"<{first_id}>")
    )
    assert reply.outcome == "threaded" and reply.work_order_id == first.work_order_id
    again = await file_mail(app, no_ack, box, mail(reply_id, sender, "Re: 订单问题", "补充一下"))
    assert again.outcome == "duplicate" and again.email_message_id == reply.email_message_id
    async with app.state.session_factory() as db:
        row = await db.get(EmailMessage, reply.email_message_id)
        assert row.thread_root_id == first.email_message_id
        case = await db.get(WorkOrder, first.work_order_id)
        assert case.description == "你好，订单没到" and case.title == "订单问题"
        comments = (await db.scalars(select(WorkOrderComment).where(WorkOrderComment.work_order_id == case.id))).all()
        assert [(c.body, c.internal, c.author_id) for c in comments] == [("补充一下", False, None)]
        interactions = (await db.scalars(select(Interaction).where(Interaction.work_order_id == case.id))).all()
        assert len(interactions) == 2 and {i.identity_value for i in interactions} == {sender}


async def test_the_same_mail_delivered_concurrently_is_stored_once(app, no_ack) -> None:  # noqa: ANN001
    box = await make_mailbox(app, queue=await email_queue(app))
    raw = mail(f"{uid()}@x.test", f"{uid('c')}@example.com", "并发", "同一封邮件投递了六次")

    async def deliver() -> str:
        for _ in range(20):
            try:
                return (await file_mail(app, no_ack, box, raw)).outcome
            except OperationalError:  # SQLite: "database is locked" -> the transport retries
                await asyncio.sleep(0.05)
        raise AssertionError("never filed")

    outcomes = await asyncio.gather(*(deliver() for _ in range(6)))
    assert sorted(outcomes) == ["duplicate"] * 5 + ["new_case"]
    async with app.state.session_factory() as db:
        stored = await db.scalar(
            select(func.count()).select_from(EmailMessage).where(EmailMessage.mailbox_id == box.id)
        )
        contacts = await db.scalar(
            select(func.count()).select_from(Interaction).where(Interaction.external_id.like(f"{box.code}:%"))
        )
    assert (stored, contacts) == (1, 1)


async def test_a_bad_mail_delivered_twice_is_one_quarantine_row_with_its_raw_source(app, no_ack) -> None:  # noqa: ANN001
    box = await make_mailbox(app)
    raw = b"To: x@y.cn\r\nSubject: no sender\r\nMessage-ID: <" + uid().encode() + b"@x>\r\n\r\nbody\r\n"
    first = await file_mail(app, no_ack, box, raw)
    second = await file_mail(app, no_ack, box, raw)
    assert (first.outcome, first.reason) == ("quarantined", "no_sender")
    assert second.quarantine_id == first.quarantine_id
    async with app.state.session_factory() as db:
        row = await service.get_quarantine(db, first.quarantine_id, with_raw=True)
        assert row.raw == raw and row.subject == "no sender" and row.raw_size == len(raw)


async def test_acknowledgement_only_for_mails_from_people(app, settings, monkeypatch) -> None:  # noqa: ANN001
    from kefu.channels.email import outbound

    calls: list[str] = []

    async def record(db, settings, mailbox, email_message) -> bool:  # noqa: ANN001
        calls.append(email_message.message_id)
        return True

    monkeypatch.setattr(outbound, "auto_acknowledge", record)
    box = await make_mailbox(app)
    human, listed, auto = (f"{uid()}@x.test" for _ in range(3))
    await file_mail(app, settings, box, mail(human, f"{uid('h')}@example.com", "人写的", "hi"))
    await file_mail(app, settings, box, mail(listed, f"{uid('l')}@example.com", "list", "hi", List_Id="<l.x>"))
    reply = mail(
        auto, f"{uid('a')}@example.com", "自动回复", "休假", Auto_Submitted="auto-replied", In_Reply_To=f"<{human}>"
    )
    assert (await file_mail(app, settings, box, reply)).outcome == "threaded"
    assert calls == [human]


async def test_a_filing_failure_quarantines_with_nothing_half_written_and_release_files_it(app, no_ack) -> None:  # noqa: ANN001
    queue = await email_queue(app)
    box = await make_mailbox(app, queue=f"{queue}-missing")  # a mailbox pointing at a queue that is gone
    sender = f"{uid('e')}@example.com"
    raw = mail(f"{uid()}@x.test", sender, "队列不存在", "内容")
    result = await file_mail(app, no_ack, box, raw)
    assert (result.outcome, result.reason) == ("quarantined", "error")
    async with app.state.session_factory() as db:
        row = await service.get_quarantine(db, result.quarantine_id)
        assert "queue" in row.detail
        assert await db.scalar(select(EmailMessage.id).where(EmailMessage.mailbox_id == box.id)) is None
        assert await db.scalar(select(Interaction.id).where(Interaction.identity_value == sender)) is None
    async with app.state.session_factory() as db, db.begin():
        with pytest.raises(Conflict):  # still failing: nothing changes
            await service.release(db, no_ack, SYSTEM, result.quarantine_id)
    async with app.state.session_factory() as db, db.begin():
        await db.execute(Mailbox.__table__.update().where(Mailbox.id == box.id).values(queue=queue))
    async with app.state.session_factory() as db, db.begin():
        done = await service.release(db, no_ack, SYSTEM, result.quarantine_id, "queue fixed")
    assert done.result.outcome == "new_case" and done.quarantine.resolution == "released"
    async with app.state.session_factory() as db, db.begin():
        with pytest.raises(Conflict):
            await service.release(db, no_ack, SYSTEM, result.quarantine_id)
        with pytest.raises(Conflict):
            await service.discard(db, SYSTEM, result.quarantine_id, "late")
        actions = (
            await db.scalars(select(AuditEntry.action).where(AuditEntry.object_id == str(result.quarantine_id)))
        ).all()
    assert "email.quarantine.release" in actions


async def test_a_database_failure_raises_so_the_transport_retries(app, no_ack, monkeypatch) -> None:  # noqa: ANN001
    from kefu.channels import intake

    box = await make_mailbox(app)
    raw = mail(f"{uid()}@x.test", f"{uid('d')}@example.com", "db down", "x")

    async def down(db, contact):  # noqa: ANN001, ANN202
        raise OperationalError("INSERT", {}, Exception("connection lost"))

    monkeypatch.setattr(intake, "receive_contact", down)
    with pytest.raises(OperationalError):
        await file_mail(app, no_ack, box, raw)
    monkeypatch.undo()
    assert (await file_mail(app, no_ack, box, raw)).outcome == "new_case"  # the retry files it once


async def test_release_waives_the_check_and_discard_needs_a_reason(app, no_ack) -> None:  # noqa: ANN001
    box = await make_mailbox(app)
    sender = f"{uid('r')}@example.com"
    small = no_ack.model_copy(update={"email_max_message_bytes": 300})
    big = await file_mail(app, small, box, mail(f"{uid()}@x.test", sender, "大邮件", "很长" * 200))
    loop = await file_mail(app, no_ack, box, mail(f"{uid()}@x.test", box.address, "loop", "x"))
    assert (big.reason, loop.reason) == ("too_large", "loop")
    async with app.state.session_factory() as db, db.begin():
        done = await service.release(db, small, SYSTEM, big.quarantine_id)
        assert done.result.outcome == "new_case"
        with pytest.raises(Invalid):
            await service.discard(db, SYSTEM, loop.quarantine_id, "  ")
        discarded = await service.discard(db, SYSTEM, loop.quarantine_id, "our own mail came back")
        assert discarded.resolution == "discarded"
    async with app.state.session_factory() as db:
        rows, _ = await service.list_quarantine(db, status="all", mailbox_id=box.id)
        assert {r.resolution for r in rows} == {"released", "discarded"}
        assert (await service.list_quarantine(db, status="open", mailbox_id=box.id))[0] == []
        raw = await db.scalar(select(EmailQuarantine.raw).where(EmailQuarantine.id == loop.quarantine_id))
        assert raw  # discarding keeps the raw source


async def test_reply_token_threads_and_reopens_a_closed_case(app, no_ack) -> None:  # noqa: ANN001
    from kefu.tickets import service as tickets

    box = await make_mailbox(app)
    sender = f"{uid('t')}@example.com"
    first = await file_mail(app, no_ack, box, mail(f"{uid()}@x.test", sender, "第一封", "x"))
    async with app.state.session_factory() as db, db.begin():
        await tickets.set_status(db, SYSTEM, first.work_order_id, "closed")
    token = ingest.reply_token(no_ack, first.work_order_id)
    again = await file_mail(app, no_ack, box, mail(f"{uid()}@x.test", sender, f"Re: 第一封 {token}", "又出问题了"))
    assert (again.outcome, again.work_order_id) == ("threaded", first.work_order_id)
    async with app.state.session_factory() as db:
        assert (await db.get(WorkOrder, first.work_order_id)).status == "reopened"
