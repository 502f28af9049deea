"""Outbound email through a real SMTP server (aiosmtpd): threading headers and reply token, retries
after a temporary failure sending exactly once, a crash between accept and commit re-sending the same
Message-ID, permanent refusals, and the once-per-sender-per-thread-per-day automatic acknowledgement."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from email_imap_support import (
    add_inbound,
    case_with_mail,
    last_job_id,
    make_due,
    make_mailbox,
    run_jobs,
    smtp_capture,
)
from sqlalchemy import func, select

from kefu.channels.email import ingest, outbound
from kefu.channels.email.models import EmailMessage, MailDirection
from kefu.channels.email.outbound_models import AutoReplyRecord, OutboundMail, OutboundState
from kefu.core.errors import Invalid, NotFound
from kefu.core.jobs import Job, JobStatus
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.tickets import service as tickets
from kefu.tickets.models import WorkOrder, WorkOrderComment

AGENT = Principal(user_id=None, username="agent", roles=frozenset({"admin"}), via="session")


MARK = [0]


@pytest.fixture(autouse=True)
async def _only_this_tests_jobs(app) -> None:  # noqa: ANN001
    MARK[0] = await last_job_id(app)


@pytest.fixture
def smtp():
    with smtp_capture() as (handler, port):
        yield handler, port


@pytest.fixture
def mail_settings(settings, smtp):  # noqa: ANN001, ANN201
    _handler, port = smtp
    return settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": port})


async def _agent(make) -> Principal:  # noqa: ANN001
    user = await make.user("agent")
    return Principal(user_id=user.id, username=user.username, roles=user.role_names, via="session")


async def _reply(app, settings, principal, work_order_id, body="您好，发票已重新开具。", **kw) -> OutboundMail:  # noqa: ANN001, ANN003
    async with app.state.session_factory() as db, db.begin():
        return await outbound.send_reply(db, settings, principal, work_order_id, body, **kw)


async def _outbound(app, outbound_id: int) -> OutboundMail:  # noqa: ANN001
    async with app.state.session_factory() as db:
        found = await db.get(OutboundMail, outbound_id)
        assert found is not None
        return found


async def test_a_reply_threads_in_the_customers_mail_client(app, make, smtp, mail_settings) -> None:  # noqa: ANN001
    handler, _ = smtp
    mailbox = await make_mailbox(app, display_name="客服中心")
    first = await case_with_mail(app, mailbox, subject="发票问题 invoice", references=("root@mail.example.cn",))
    follow_up = await add_inbound(
        app,
        mailbox,
        first.work_order_id,
        sender=first.from_address,
        subject=f"回复：Re: 发票问题 invoice {ingest.reply_token(mail_settings, first.work_order_id)}",
        parent=first,
    )
    agent = await _agent(make)
    sent = await _reply(app, mail_settings, agent, first.work_order_id)
    assert sent.state == OutboundState.queued

    assert await run_jobs(app, mail_settings, after_id=MARK[0]) == 1
    assert len(handler.received) == 1
    captured = handler.received[0]
    msg = captured.message
    assert captured.mail_from == mailbox.address
    assert captured.rcpt_tos == [first.from_address]
    assert msg["From"].addresses[0].addr_spec == mailbox.address
    assert msg["From"].addresses[0].display_name == "客服中心"
    assert msg["To"] == first.from_address
    # In-Reply-To: the customer's latest mail; References: the whole chain, oldest first.
    assert msg["In-Reply-To"] == f"<{follow_up.message_id}>"
    assert msg["References"].split() == [
        "<root@mail.example.cn>",
        f"<{first.message_id}>",
        f"<{follow_up.message_id}>",
    ]
    # One "Re:", the original subject, one token that names the case.
    token = ingest.reply_token(mail_settings, first.work_order_id)
    assert msg["Subject"] == f"Re: 发票问题 invoice {token}"
    assert ingest.parse_reply_token(mail_settings, msg["Subject"]) == first.work_order_id
    assert msg["Auto-Submitted"] is None  # a person wrote it
    assert msg.get_content().strip() == "您好，发票已重新开具。"

    done = await _outbound(app, sent.id)
    assert done.state == OutboundState.sent and done.attempts == 1 and done.sent_at is not None
    assert msg["Message-ID"] == f"<{done.message_id}>"
    async with app.state.session_factory() as db:
        stored = await db.get(EmailMessage, done.email_message_id)
        # Stored as the case's outbound mail, so the customer's answer to it threads to the case.
        assert stored.direction == MailDirection.outbound
        assert stored.work_order_id == first.work_order_id
        assert stored.message_id == done.message_id
        assert stored.in_reply_to == follow_up.message_id
        assert stored.thread_root_id == first.id
        assert stored.sent_at is not None
        raw = (await db.scalars(select(EmailMessage.raw).where(EmailMessage.id == stored.id))).one()
        assert raw == captured.raw  # byte for byte what was stored before the first attempt


async def test_the_references_chain_is_trimmed_to_the_first_and_the_latest(app, make, smtp, mail_settings) -> None:  # noqa: ANN001
    handler, _ = smtp
    mailbox = await make_mailbox(app)
    chain = tuple(f"m{i}@mail.example.cn" for i in range(40))
    first = await case_with_mail(app, mailbox, references=chain)
    settings = mail_settings.model_copy(update={"email_references_max": 5})
    await _reply(app, settings, await _agent(make), first.work_order_id)
    await run_jobs(app, settings, after_id=MARK[0])
    references = handler.received[0].message["References"].split()
    assert references == ["<m0@mail.example.cn>", "<m37@mail.example.cn>", "<m38@mail.example.cn>",
                          "<m39@mail.example.cn>", f"<{first.message_id}>"]  # fmt: skip


async def test_a_temporary_failure_is_retried_and_the_mail_sent_exactly_once(app, make, smtp, mail_settings) -> None:  # noqa: ANN001
    handler, _ = smtp
    handler.replies = ["451 4.3.0 greylisted, try again later"]
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    sent = await _reply(app, mail_settings, await _agent(make), first.work_order_id)

    assert await run_jobs(app, mail_settings, after_id=MARK[0]) == 1
    assert handler.received == []
    row = await _outbound(app, sent.id)
    assert row.state == OutboundState.queued and row.attempts == 1 and "451" in (row.last_error or "")
    async with app.state.session_factory() as db:
        job = await db.get(Job, sent.job_id)
        assert job.status == JobStatus.queued and job.run_at > utcnow()  # backing off
    assert await run_jobs(app, mail_settings, after_id=MARK[0]) == 0  # not before its time

    await make_due(app, sent.job_id)
    assert await run_jobs(app, mail_settings, after_id=MARK[0]) == 1
    assert len(handler.received) == 1
    row = await _outbound(app, sent.id)
    assert row.state == OutboundState.sent and row.attempts == 2 and row.last_error is None

    # The job run again (a duplicate claim, an operator's retry): the idempotency record says sent.
    async with app.state.session_factory() as db, db.begin():
        job = await db.get(Job, sent.job_id)
        job.status, job.run_at = JobStatus.queued, utcnow()
    assert await run_jobs(app, mail_settings, after_id=MARK[0]) == 1
    assert len(handler.received) == 1
    assert (await _outbound(app, sent.id)).attempts == 2


async def test_a_crash_between_accept_and_commit_resends_the_same_message_id(
    app, make, smtp, mail_settings, monkeypatch
) -> None:  # noqa: ANN001
    handler, _ = smtp
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    sent = await _reply(app, mail_settings, await _agent(make), first.work_order_id)

    crashes = []

    async def crash(row: OutboundMail) -> None:
        if not crashes:
            crashes.append(row.id)
            raise RuntimeError("process killed after the server said 250")

    monkeypatch.setattr(outbound, "_after_accept", crash)
    await run_jobs(app, mail_settings, after_id=MARK[0])
    assert len(handler.received) == 1
    row = await _outbound(app, sent.id)
    assert row.state == OutboundState.sending  # the commit of "sent" never happened

    await make_due(app, sent.job_id)
    await run_jobs(app, mail_settings, after_id=MARK[0])
    assert len(handler.received) == 2
    first_id, second_id = (c.message["Message-ID"] for c in handler.received)
    assert first_id == second_id == f"<{row.message_id}>"  # receivers dedupe by it
    assert handler.received[0].raw == handler.received[1].raw  # the very same mail
    assert (await _outbound(app, sent.id)).state == OutboundState.sent


async def test_a_permanent_refusal_fails_at_once_without_retrying(app, make, smtp, mail_settings) -> None:  # noqa: ANN001
    handler, _ = smtp
    handler.always = "550 5.1.1 no such user"
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    sent = await _reply(app, mail_settings, await _agent(make), first.work_order_id)
    await run_jobs(app, mail_settings, after_id=MARK[0])
    row = await _outbound(app, sent.id)
    assert row.state == OutboundState.failed and "550" in (row.last_error or "")
    async with app.state.session_factory() as db:
        assert (await db.get(Job, sent.job_id)).status == JobStatus.done


async def test_without_a_server_the_mail_waits_and_fails_after_its_last_attempt(app, make, settings) -> None:  # noqa: ANN001
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    limited = settings.model_copy(update={"smtp_host": "", "email_send_max_attempts": 2})
    sent = await _reply(app, limited, await _agent(make), first.work_order_id)
    await run_jobs(app, limited, after_id=MARK[0])
    assert (await _outbound(app, sent.id)).state == OutboundState.queued
    await make_due(app, sent.job_id)
    await run_jobs(app, limited, after_id=MARK[0])
    row = await _outbound(app, sent.id)
    assert row.state == OutboundState.failed and "KEFU_SMTP_HOST" in row.last_error
    async with app.state.session_factory() as db:
        assert (await db.get(Job, sent.job_id)).status == JobStatus.dead


async def test_reply_checks_what_it_is_given(app, make, mail_settings) -> None:  # noqa: ANN001
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    agent = await _agent(make)
    with pytest.raises(Invalid) as empty:
        await _reply(app, mail_settings, agent, first.work_order_id, body="  \n ")
    assert empty.value.details["field"] == "body"
    with pytest.raises(Invalid) as bad:
        await _reply(app, mail_settings, agent, first.work_order_id, to=["not an address"])
    assert bad.value.details["field"] == "to"
    with pytest.raises(Invalid) as header_injection:
        await _reply(app, mail_settings, agent, first.work_order_id, to=["a@example.cn\r\nBcc: x@evil.test"])
    assert header_injection.value.details["field"] == "to"
    with pytest.raises(Invalid) as only_us:  # never mail ourselves (a loop)
        await _reply(app, mail_settings, agent, first.work_order_id, to=[mailbox.address])
    assert only_us.value.details["field"] == "to"
    with pytest.raises(NotFound):
        await _reply(app, mail_settings, agent, 10**12)
    retired = await make_mailbox(app, active=False)
    with pytest.raises(Invalid) as inactive:
        await _reply(app, mail_settings, agent, first.work_order_id, mailbox=retired.id)
    assert inactive.value.details["field"] == "mailbox_id"
    async with app.state.session_factory() as db, db.begin():
        (await db.get(WorkOrder, first.work_order_id)).restricted = True
    with pytest.raises(NotFound):  # a case the agent may not see is not there for them
        await _reply(app, mail_settings, agent, first.work_order_id)


async def test_explicit_recipients_copies_and_attachments(app, make, smtp, mail_settings) -> None:  # noqa: ANN001
    handler, _ = smtp
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    attachment = outbound.OutboundAttachment("发票.pdf", "application/pdf", b"%PDF-1.4 test")
    await _reply(
        app,
        mail_settings,
        await _agent(make),
        first.work_order_id,
        to=["Li Si <LI.SI@Example.CN>"],
        cc=["wang.wu@example.cn", mailbox.address],
        attachments=[attachment],
    )
    await run_jobs(app, mail_settings, after_id=MARK[0])
    captured = handler.received[0]
    assert sorted(captured.rcpt_tos) == ["li.si@example.cn", "wang.wu@example.cn"]
    msg = captured.message
    assert msg["Cc"] == "wang.wu@example.cn"
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["发票.pdf"]
    assert parts[0].get_content() == b"%PDF-1.4 test"


async def test_a_public_comment_on_an_email_case_goes_out_once(app, make, smtp, mail_settings) -> None:  # noqa: ANN001
    handler, _ = smtp
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    agent = await _agent(make)
    outbound.configure(mail_settings)
    # add_comment calls the hook (tickets.on_public_reply): the reply is queued as a mail, once.
    async with app.state.session_factory() as db, db.begin():
        comment = await tickets.add_comment(db, agent, first.work_order_id, "已处理。", internal=False)
        queued = await db.scalar(select(OutboundMail).where(OutboundMail.comment_id == comment.id))
        again = await outbound.on_public_comment(db, agent, first.work_order_id, comment)
        note = await tickets.add_comment(db, agent, first.work_order_id, "内部备注", internal=True)
        assert await outbound.on_public_comment(db, agent, first.work_order_id, note) is None
        # The system's and customers' own comments are not mailed back to the customer.
        by_system = await tickets.add_comment(db, AGENT, first.work_order_id, "系统", internal=False)
        assert await outbound.on_public_comment(db, AGENT, first.work_order_id, by_system) is None
    assert queued is not None and queued.comment_id == comment.id and again is None
    # A case nobody mailed about gets no mail.
    other = await make_mailbox(app)
    async with app.state.session_factory() as db, db.begin():
        order = WorkOrder(title="电话工单")
        db.add(order)
        await db.flush()
        phone_comment = await tickets.add_comment(db, agent, order.id, "回电", internal=False)
        assert await outbound.on_public_comment(db, agent, order.id, phone_comment) is None
    del other
    # The API route's way: the reply and its public comment in one go, one mail.
    async with app.state.session_factory() as db, db.begin():
        routed = await outbound.send_reply(
            db, mail_settings, agent, first.work_order_id, "再次回复", record_comment=True
        )
        comment_count = await db.scalar(
            select(func.count())
            .select_from(WorkOrderComment)
            .where(WorkOrderComment.work_order_id == first.work_order_id)
        )
    assert routed.comment_id is not None and comment_count == 4
    await run_jobs(app, mail_settings, after_id=MARK[0])
    assert [c.message.get_content().strip() for c in handler.received] == ["已处理。", "再次回复"]


# --- the automatic acknowledgement ---------------------------------------------------------------------
async def _ack(app, settings, mailbox, message, now=None) -> bool:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        return await outbound.auto_acknowledge(db, settings, mailbox, message, now=now)


async def test_auto_ack_once_per_sender_thread_and_day(app, smtp, mail_settings) -> None:  # noqa: ANN001
    handler, _ = smtp
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox, subject="退款 refund")
    second = await add_inbound(
        app, mailbox, first.work_order_id, sender=first.from_address, subject="退款", parent=first
    )
    assert await _ack(app, mail_settings, mailbox, first) is True
    assert await _ack(app, mail_settings, mailbox, second) is False  # same sender, thread and day
    assert await _ack(app, mail_settings, mailbox, second, now=utcnow() + timedelta(days=1)) is True  # next day
    other_case = await case_with_mail(app, mailbox, sender="li.si@example.cn")
    assert await _ack(app, mail_settings, mailbox, other_case) is True  # another sender / thread

    await run_jobs(app, mail_settings, after_id=MARK[0])
    assert len(handler.received) == 3
    ack = handler.received[0].message
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Loop"] == mailbox.address
    assert ack["In-Reply-To"] == f"<{first.message_id}>"
    assert ingest.parse_reply_token(mail_settings, ack["Subject"]) == first.work_order_id
    assert ack["Subject"].startswith("Re: 退款 refund")
    assert f"WO{first.work_order_id:08d}" in ack.get_content()
    async with app.state.session_factory() as db:
        stored = await db.get(
            EmailMessage,
            (
                await db.scalars(
                    select(OutboundMail.email_message_id).where(OutboundMail.work_order_id == first.work_order_id)
                )
            ).first(),
        )  # noqa: E501
        assert stored.is_auto is True


async def test_auto_ack_holds_under_concurrency(app, mail_settings) -> None:  # noqa: ANN001
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    others = [
        await add_inbound(app, mailbox, first.work_order_id, sender=first.from_address, subject="again", parent=first)
        for _ in range(4)
    ]
    results = await asyncio.gather(*(_ack(app, mail_settings, mailbox, m) for m in [first, *others]))
    assert sorted(results) == [False, False, False, False, True]
    async with app.state.session_factory() as db:
        assert (
            await db.scalar(
                select(func.count()).select_from(AutoReplyRecord).where(AutoReplyRecord.mailbox_id == mailbox.id)
            )
            == 1
        )
        assert (
            await db.scalar(select(func.count()).select_from(OutboundMail).where(OutboundMail.mailbox_id == mailbox.id))
            == 1
        )


@pytest.mark.parametrize(
    ("sender", "headers", "fields"),
    [
        ("li.si@example.cn", "Auto-Submitted: auto-replied\r\n", {}),
        ("li.si@example.cn", "Precedence: bulk\r\n", {}),
        ("li.si@example.cn", "List-Id: <users.example.cn>\r\n", {}),
        ("li.si@example.cn", "X-Auto-Response-Suppress: All\r\n", {}),
        ("li.si@example.cn", "Return-Path: <>\r\n", {}),
        ("li.si@example.cn", "", {"is_auto": True, "auto_kind": "auto_reply"}),
        ("li.si@example.cn", "", {"is_bounce": True, "auto_kind": "bounce"}),
        ("MAILER-DAEMON@example.cn", "", {}),
        ("no-reply@shop.example.cn", "", {}),
        ("users-request@lists.example.cn", "", {}),
    ],
)
async def test_no_auto_ack_to_automatic_senders(app, mail_settings, sender, headers, fields) -> None:  # noqa: ANN001
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    mail = await add_inbound(
        app, mailbox, first.work_order_id, sender=sender.lower(), subject="x", headers=headers, **fields
    )
    assert await _ack(app, mail_settings, mailbox, mail) is False


async def test_no_auto_ack_to_our_own_addresses_or_when_turned_off(app, mail_settings) -> None:  # noqa: ANN001
    mailbox = await make_mailbox(app)
    sibling = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    from_us = await add_inbound(app, mailbox, first.work_order_id, sender=sibling.address, subject="x")
    assert await _ack(app, mail_settings, mailbox, from_us) is False
    off = mail_settings.model_copy(update={"email_auto_ack": False})
    assert await _ack(app, off, mailbox, first) is False
    assert await _ack(app, mail_settings, mailbox, first) is True


async def test_a_notice_is_marked_auto_generated_and_threads_to_the_case(app, smtp, mail_settings) -> None:  # noqa: ANN001
    handler, _ = smtp
    mailbox = await make_mailbox(app)
    first = await case_with_mail(app, mailbox)
    async with app.state.session_factory() as db, db.begin():
        notice = await outbound.send_notice(
            db,
            mail_settings,
            to=[first.from_address],
            subject="聊天记录 chat transcript",
            body="客户：你好\n客服：您好",
            work_order_id=first.work_order_id,
        )
    assert notice.kind == "notice"
    await run_jobs(app, mail_settings, after_id=MARK[0])
    msg = handler.received[0].message
    assert msg["Auto-Submitted"] == "auto-generated" and msg["X-Loop"] == mailbox.address
    assert msg["In-Reply-To"] == f"<{first.message_id}>"
    assert ingest.parse_reply_token(mail_settings, msg["Subject"]) == first.work_order_id
    assert msg["Subject"].startswith("聊天记录 chat transcript")
