"""The SMTP receiver over real SMTP (smtplib on loopback): recipients, size, several mailboxes,
temporary failures, off by default."""

from __future__ import annotations

import asyncio
import smtplib
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from tests.channels.email.email_support import make_mailbox

from kefu.channels.email import smtp_receiver
from kefu.channels.email.models import EmailMessage, Mailbox
from kefu.channels.email.smtp_receiver import SmtpReceiver


def raw_mail(to: str, body: str = "你好") -> bytes:
    return (
        f"From: Li <li-{uuid.uuid4().hex[:8]}@example.com>\r\nTo: {to}\r\nSubject: smtp\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@smtp.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


@pytest.fixture
async def receiver(app, settings):  # noqa: ANN001, ANN201
    quiet = settings.model_copy(update={"email_auto_ack": False, "email_max_message_bytes": 20_000})
    async with SmtpReceiver(quiet, app.state.session_factory, host="127.0.0.1", port=0) as running:
        yield running


def _client(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("test.example")
    return client


async def test_only_active_mailboxes_are_recipients(app, receiver) -> None:  # noqa: ANN001
    box = await make_mailbox(app)
    off = await make_mailbox(app, active=False)

    def talk() -> list[int]:
        with _client(receiver.port) as client:
            client.mail("sender@example.com")
            codes = [
                client.rcpt(box.address.upper())[0],
                client.rcpt("nobody@kefu.test")[0],
                client.rcpt(off.address)[0],
            ]
            client.rset()
        return codes

    assert await asyncio.to_thread(talk) == [250, 550, 550]


async def test_size_limit_is_answered_at_smtp_level(app, receiver) -> None:  # noqa: ANN001
    box = await make_mailbox(app)

    def talk() -> tuple[int, int, int]:
        with _client(receiver.port) as client:
            assert client.has_extn("size") and client.esmtp_features["size"] == "20000"
            declared = client.mail("s@example.com", ["SIZE=50000"])[0]  # refused before any data
            client.rset()
            client.mail("s@example.com")  # no SIZE declared: refused when the data runs over
            client.rcpt(box.address)
            during = client.data(raw_mail(box.address, "x" * 30_000))[0]
            try:
                client.sendmail("s@example.com", [box.address], raw_mail(box.address, "x" * 30_000))
            except smtplib.SMTPSenderRefused as exc:  # smtplib declares SIZE itself
                return declared, during, exc.smtp_code
        return declared, during, 250

    assert await asyncio.to_thread(talk) == (552, 552, 552)
    async with app.state.session_factory() as db:
        assert await db.scalar(select(EmailMessage.id).where(EmailMessage.mailbox_id == box.id)) is None


async def test_one_mail_to_two_mailboxes_is_filed_in_each(app, receiver) -> None:  # noqa: ANN001
    first, second = await make_mailbox(app), await make_mailbox(app)
    raw = raw_mail(f"{first.address}, {second.address}")
    await asyncio.to_thread(
        lambda: _client(receiver.port).sendmail("s@example.com", [first.address, second.address, first.address], raw)
    )
    async with app.state.session_factory() as db:
        columns = (EmailMessage.mailbox_id, EmailMessage.raw, EmailMessage.source, EmailMessage.work_order_id)
        rows = (await db.execute(select(*columns).where(EmailMessage.mailbox_id.in_([first.id, second.id])))).all()
    assert sorted(r.mailbox_id for r in rows) == sorted([first.id, second.id])
    assert all(r.raw == raw and r.source == "smtp" and r.work_order_id for r in rows)


async def test_a_database_failure_answers_451_and_the_retry_is_filed_once(app, receiver, monkeypatch) -> None:  # noqa: ANN001
    box = await make_mailbox(app)
    raw = raw_mail(box.address)

    async def down(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OperationalError("INSERT", {}, Exception("database is away"))

    def send() -> int:
        try:
            with _client(receiver.port) as client:
                client.sendmail("s@example.com", [box.address], raw)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code
        return 250

    monkeypatch.setattr(smtp_receiver, "ingest_raw_message", down)
    assert await asyncio.to_thread(send) == 451
    monkeypatch.undo()
    assert await asyncio.to_thread(send) == 250
    assert await asyncio.to_thread(send) == 250  # delivered again: a duplicate, accepted, stored once
    async with app.state.session_factory() as db:
        rows = (await db.scalars(select(EmailMessage).where(EmailMessage.mailbox_id == box.id))).all()
    assert len(rows) == 1


async def test_the_receiver_is_off_by_default(app, settings) -> None:  # noqa: ANN001
    assert settings.email_smtp_port == 0
    receiver = SmtpReceiver(settings, app.state.session_factory)
    assert await receiver.start() is False and not receiver.running
    await receiver.stop()


async def test_mailbox_deactivated_after_rcpt_still_gets_the_mail(app, receiver) -> None:  # noqa: ANN001
    box = await make_mailbox(app)
    raw = raw_mail(box.address)

    def talk() -> int:
        with _client(receiver.port) as client:
            client.mail("s@example.com")
            client.rcpt(box.address)
            asyncio.run_coroutine_threadsafe(deactivate(), loop).result(timeout=10)
            return client.data(raw)[0]

    async def deactivate() -> None:
        async with app.state.session_factory() as db, db.begin():
            await db.execute(Mailbox.__table__.update().where(Mailbox.id == box.id).values(active=False))

    loop = asyncio.get_running_loop()
    assert await asyncio.to_thread(talk) == 250
    async with app.state.session_factory() as db:
        assert await db.scalar(select(EmailMessage.id).where(EmailMessage.mailbox_id == box.id)) is not None
