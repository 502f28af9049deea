"""IMAP polling against a real dovecot (a private instance on loopback, started by the test set-up):
a batch of real-world-shaped mails incl. Chinese charsets and malformed ones all end on a case or in
quarantine, none lost, the poller survives; re-polls fetch nothing twice; a UIDVALIDITY change is
handled; a mail whose filing fails is retried while the others go on; connection failures back off
and never log the password; only one poller per mailbox at a time."""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from email_imap_support import (
    TEST_IMAP_PASSWORD,
    Dovecot,
    free_port,
    ingest_for_tests,
    make_mailbox,
    start_dovecot,
)
from sqlalchemy import func, select

from kefu.channels.email import runtime
from kefu.channels.email.imap import ImapPoller
from kefu.channels.email.models import EmailMessage, EmailQuarantine, Mailbox, MailDirection
from kefu.channels.email.outbound_models import ImapLease, OutboundMail

CORPUS = Path(__file__).with_name("corpus")


@pytest.fixture(scope="module")
def dovecot():
    server = start_dovecot()
    yield server
    server.stop()


@pytest.fixture
async def ingest(app, settings):  # noqa: ANN001, ANN201
    return await ingest_for_tests(app, settings)


async def imap_mailbox(app, dovecot: Dovecot, **fields) -> Mailbox:  # noqa: ANN001, ANN003
    user = dovecot.new_user()
    return await make_mailbox(
        app,
        address=user,
        imap_host=dovecot.host,
        imap_port=dovecot.port,
        imap_tls=False,
        imap_username=user,
        imap_password=TEST_IMAP_PASSWORD,
        poll_seconds=60,
        **fields,
    )


def _mid() -> str:
    return f"<{uuid.uuid4().hex}@mail.example.cn>"


def _b64(text: str, charset: str) -> str:
    return base64.b64encode(text.encode(charset)).decode()


def batch(to: str) -> list[bytes]:
    """Mails as customers' clients and servers write them, plus broken ones."""
    mails = [
        f"From: Zhang San <zhang.san@example.cn>\r\nTo: {to}\r\nSubject: plain ascii\r\nMessage-ID: {_mid()}\r\n"
        "Date: Sun, 29 Nov 2026 10:00:00 +0800\r\n\r\nHello, my order has not arrived.\r\n",
        # UTF-8, base64, encoded-word subject
        f"From: =?UTF-8?B?{_b64('李四', 'utf-8')}?= <li.si@example.cn>\r\nTo: {to}\r\n"
        f"Subject: =?UTF-8?B?{_b64('订单没有收到', 'utf-8')}?=\r\nMessage-ID: {_mid()}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{_b64('你好，我的订单一直没有收到。', 'utf-8')}\r\n",
        # GBK, quoted-printable-free 8bit, GB2312 encoded-word
        (
            f"From: =?GB2312?B?{_b64('王五', 'gb2312')}?= <wang.wu@example.cn>\r\nTo: {to}\r\n"
            f"Subject: =?GB2312?B?{_b64('发票开错了', 'gb2312')}?=\r\nMessage-ID: {_mid()}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=GBK\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + "发票抬头写错了，请重新开具。\r\n".encode("gbk"),
        # GB18030
        (
            f"From: zhao.liu@example.cn\r\nTo: {to}\r\nSubject: =?GB18030?B?{_b64('退款进度', 'gb18030')}?=\r\n"
            f"Message-ID: {_mid()}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=gb18030\r\n\r\n"
        ).encode()
        + "请问退款什么时候到账？𠀀\r\n".encode("gb18030"),
        # Big5
        (
            f"From: chen.qi@example.tw\r\nTo: {to}\r\nSubject: =?Big5?B?{_b64('帳單問題', 'big5')}?=\r\n"
            f"Message-ID: {_mid()}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=big5\r\n\r\n"
        ).encode()
        + "您好，這個月的帳單金額不對。\r\n".encode("big5"),
        # multipart/alternative with HTML (Outlook shape)
        f"From: sun.ba@example.cn\r\nTo: {to}\r\nSubject: html\r\nMessage-ID: {_mid()}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n--alt\r\n'
        "Content-Type: text/plain; charset=utf-8\r\n\r\nplain part\r\n--alt\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n"
        "<p onclick=x()>html <script>alert(1)</script>part</p>\r\n--alt--\r\n",
        # attachment with an RFC 2231 Chinese filename
        f"From: zhou.jiu@example.cn\r\nTo: {to}\r\nSubject: attachment\r\nMessage-ID: {_mid()}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
        "see attached\r\n--mix\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename*=UTF-8''%E5%8F%91%E7%A5%A8.pdf\r\n\r\n"
        f"{base64.b64encode(b'%PDF-1.4 test').decode()}\r\n--mix--\r\n",
        # a forwarded mail (message/rfc822)
        f"From: wu.shi@example.cn\r\nTo: {to}\r\nSubject: Fwd: complaint\r\nMessage-ID: {_mid()}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="fw"\r\n\r\n--fw\r\nContent-Type: text/plain\r\n\r\nFYI\r\n--fw\r\n'
        "Content-Type: message/rfc822\r\n\r\nFrom: other@example.cn\r\nSubject: original\r\n\r\n"
        "original body\r\n--fw--\r\n",
        # a vacation auto-reply
        f"From: zheng.shiyi@example.cn\r\nTo: {to}\r\nSubject: =?UTF-8?B?{_b64('自动回复: 休假中', 'utf-8')}?=\r\n"
        f"Message-ID: {_mid()}\r\nAuto-Submitted: auto-replied\r\n\r\nI am away.\r\n",
        # a mailing-list mail
        f"From: news@lists.example.cn\r\nTo: {to}\r\nSubject: weekly news\r\nMessage-ID: {_mid()}\r\n"
        "List-Id: <news.lists.example.cn>\r\nPrecedence: list\r\n\r\nnews\r\n",
        # a bounce of something we never sent
        f"From: MAILER-DAEMON@mx.example.cn\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {_mid()}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn"\r\n\r\n--dsn\r\n'
        "Content-Type: text/plain\r\n\r\nfailed\r\n--dsn\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.cn\r\n\r\nFinal-Recipient: rfc822; gone@example.org\r\nAction: failed\r\n"
        "Status: 5.1.1\r\n--dsn\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <never-ours@example.org>\r\n"
        "--dsn--\r\n",
        # malformed: no From at all
        f"To: {to}\r\nSubject: who am I\r\nMessage-ID: {_mid()}\r\n\r\nno sender\r\n",
        # malformed: binary junk
        bytes(range(256)) * 4,
        # malformed: a multipart without its boundary, bad base64
        f"From: broken@example.cn\r\nTo: {to}\r\nSubject: broken\r\nMessage-ID: {_mid()}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="nowhere"\r\n\r\nthis never starts\r\n',
        f"From: badb64@example.cn\r\nTo: {to}\r\nSubject: bad base64\r\nMessage-ID: {_mid()}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n%%%not base64%%%\r\n",
        # undeclared charset (GBK bytes, no charset parameter), no Message-ID
        (f"From: nocharset@example.cn\r\nTo: {to}\r\nSubject: undeclared\r\n\r\n").encode()
        + "没有声明字符集的邮件\r\n".encode("gbk"),
    ]
    return [m if isinstance(m, bytes) else m.encode() for m in mails]


def corpus_mails() -> list[bytes]:
    """The inbound colleague's corpus (real-world shapes), when it is there."""
    if not CORPUS.is_dir():
        return []
    return [path.read_bytes() for path in sorted(CORPUS.glob("*.eml"))]


async def _counts(app, mailbox_id: int) -> tuple[int, int]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        stored = await db.scalar(
            select(func.count())
            .select_from(EmailMessage)
            .where(EmailMessage.mailbox_id == mailbox_id, EmailMessage.direction == MailDirection.inbound)
        )
        quarantined = await db.scalar(
            select(func.count()).select_from(EmailQuarantine).where(EmailQuarantine.mailbox_id == mailbox_id)
        )
    return stored, quarantined


async def _cursor(app, mailbox_id: int) -> tuple[int | None, int]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        box = await db.get(Mailbox, mailbox_id)
        return box.imap_uidvalidity, box.imap_last_uid


async def test_a_batch_of_mails_is_filed_none_lost_and_fetched_once(app, settings, dovecot, ingest) -> None:  # noqa: ANN001
    mailbox = await imap_mailbox(app, dovecot)
    mails = batch(mailbox.address) + corpus_mails()
    duplicate = mails[0]
    for raw in [*mails, duplicate]:  # the same mail delivered twice
        dovecot.append(mailbox.imap_username, raw)
    poller = ImapPoller(app.state.session_factory, settings, ingest=ingest)

    result = await poller.poll_mailbox(mailbox.id)
    assert result.polled and result.error is None and result.failed_uids == []
    assert result.fetched == len(mails) + 1
    assert sum(result.outcomes.values()) == len(mails) + 1
    assert result.outcomes["duplicate"] >= 1
    assert result.outcomes["quarantined"] >= 3  # no sender, junk, ...
    # None lost: every distinct mail is stored on a case or quarantined.
    stored, quarantined = await _counts(app, mailbox.id)
    assert stored + quarantined == sum(n for outcome, n in result.outcomes.items() if outcome != "duplicate")
    async with app.state.session_factory() as db:
        unfiled = await db.scalar(
            select(func.count())
            .select_from(EmailMessage)
            .where(
                EmailMessage.mailbox_id == mailbox.id,
                EmailMessage.work_order_id.is_(None),
                EmailMessage.is_bounce.is_(False),
            )
        )
    assert unfiled == 0  # stored ones are on a work order
    # Customers were acknowledged automatically, but never the automatic senders.
    async with app.state.session_factory() as db:
        acknowledged = {
            address
            for recipients in (
                await db.scalars(
                    select(OutboundMail.recipients).where(
                        OutboundMail.mailbox_id == mailbox.id, OutboundMail.kind == "auto_reply"
                    )
                )
            ).all()
            for address in recipients
        }
    assert {"zhang.san@example.cn", "li.si@example.cn", "wang.wu@example.cn"} <= acknowledged
    assert not acknowledged & {"news@lists.example.cn", "zheng.shiyi@example.cn", "mailer-daemon@mx.example.cn"}
    # Marked read only after filing; the cursor is at the last UID.
    flags = dovecot.flags(mailbox.imap_username)
    assert len(flags) == len(mails) + 1 and all("\\Seen" in f for f in flags.values())
    _validity, last_uid = await _cursor(app, mailbox.id)
    assert last_uid == max(flags)

    again = await poller.poll_mailbox(mailbox.id)
    assert again.polled and again.fetched == 0
    assert await _counts(app, mailbox.id) == (stored, quarantined)

    # A new mail later: only it is fetched.
    dovecot.append(mailbox.imap_username, batch(mailbox.address)[1])
    later = await poller.poll_mailbox(mailbox.id)
    assert later.fetched == 1


async def test_a_changed_uidvalidity_reads_again_without_filing_twice(app, settings, dovecot, ingest) -> None:  # noqa: ANN001
    mailbox = await imap_mailbox(app, dovecot)
    mails = batch(mailbox.address)[:5]
    for raw in mails:
        dovecot.append(mailbox.imap_username, raw)
    poller = ImapPoller(app.state.session_factory, settings, ingest=ingest)
    first = await poller.poll_mailbox(mailbox.id)
    assert first.fetched == 5
    validity, _ = await _cursor(app, mailbox.id)
    before = await _counts(app, mailbox.id)

    dovecot.reset_uidvalidity(mailbox.imap_username)
    second = await poller.poll_mailbox(mailbox.id)
    assert second.uidvalidity_reset is True
    assert second.fetched == 5 and second.outcomes == Counter({"duplicate": 5})
    assert await _counts(app, mailbox.id) == before
    new_validity, last_uid = await _cursor(app, mailbox.id)
    assert new_validity != validity and last_uid == 5


async def test_a_mail_whose_filing_fails_is_retried_and_the_others_go_on(app, settings, dovecot, ingest) -> None:  # noqa: ANN001
    from kefu.channels.email import ingest as ingest_module

    real = ingest or ingest_module.ingest_raw_message
    mailbox = await imap_mailbox(app, dovecot)
    mails = batch(mailbox.address)[:4]
    for raw in mails:
        dovecot.append(mailbox.imap_username, raw)
    failing = {mails[1]}

    async def flaky(db, settings_, box, raw, *, source):  # noqa: ANN001
        if raw.replace(b"\r\n", b"\n") in {m.replace(b"\r\n", b"\n") for m in failing}:
            raise ConnectionError("database went away")
        return await real(db, settings_, box, raw, source=source)

    poller = ImapPoller(app.state.session_factory, settings, ingest=flaky)
    result = await poller.poll_mailbox(mailbox.id)
    assert result.error is None and result.failed_uids == [2]
    assert sum(result.outcomes.values()) == 3
    _, last_uid = await _cursor(app, mailbox.id)
    assert last_uid == 1  # not past the mail that was not filed
    flags = dovecot.flags(mailbox.imap_username)
    assert "\\Seen" not in flags[2] and "\\Seen" in flags[3]

    failing.clear()
    retry = await poller.poll_mailbox(mailbox.id)
    assert retry.failed_uids == [] and retry.fetched == 3
    assert retry.outcomes["duplicate"] == 2  # 3 and 4 again: dedupe by Message-ID keeps them once
    _, last_uid = await _cursor(app, mailbox.id)
    assert last_uid == 4
    stored, quarantined = await _counts(app, mailbox.id)
    assert stored + quarantined == 4


async def test_processed_mails_can_be_moved_to_a_folder(app, settings, dovecot, ingest) -> None:  # noqa: ANN001
    mailbox = await imap_mailbox(app, dovecot)
    for raw in batch(mailbox.address)[:3]:
        dovecot.append(mailbox.imap_username, raw)
    moving = settings.model_copy(update={"email_imap_processed_folder": "Processed/kefu"})
    result = await ImapPoller(app.state.session_factory, moving, ingest=ingest).poll_mailbox(mailbox.id)
    assert result.fetched == 3
    assert dovecot.count(mailbox.imap_username) == 0
    assert dovecot.count(mailbox.imap_username, "Processed/kefu") == 3


async def test_one_poller_per_mailbox_at_a_time(app, settings, dovecot, ingest) -> None:  # noqa: ANN001
    mailbox = await imap_mailbox(app, dovecot)
    for raw in batch(mailbox.address)[:2]:
        dovecot.append(mailbox.imap_username, raw)
    first = ImapPoller(app.state.session_factory, settings, ingest=ingest, name="process-a")
    second = ImapPoller(app.state.session_factory, settings, ingest=ingest, name="process-b")
    async with app.state.session_factory() as db, db.begin():
        assert await first._acquire(db, mailbox.id) is True
    assert (await second.poll_mailbox(mailbox.id)).polled is False  # process-a holds the lease
    await first._release(mailbox.id, None)
    results = await asyncio.gather(first.poll_mailbox(mailbox.id), second.poll_mailbox(mailbox.id))
    assert sum(r.fetched for r in results) == 2  # each mail fetched by one of them only


async def test_the_runtime_polls_in_the_background(app, settings, dovecot, ingest, monkeypatch) -> None:  # noqa: ANN001
    from kefu.channels.email import imap

    if ingest is not None:
        monkeypatch.setattr(imap.ingest_module, "ingest_raw_message", ingest)
    mailbox = await imap_mailbox(app, dovecot)
    async with app.state.session_factory() as db, db.begin():
        (await db.get(Mailbox, mailbox.id)).poll_seconds = 1
    dovecot.append(mailbox.imap_username, batch(mailbox.address)[0])
    smtp_port = free_port()
    fake_app = SimpleNamespace(
        state=SimpleNamespace(
            settings=settings.model_copy(
                update={
                    "run_worker": True,
                    "email_smtp_port": smtp_port,
                    "email_smtp_host": "127.0.0.1",
                    # Other tests' mailboxes may name hosts that are not there: do not wait long on them.
                    "email_imap_timeout_seconds": 2,
                }
            ),
            session_factory=app.state.session_factory,
        )
    )
    await runtime.start(fake_app)
    try:
        poller = fake_app.state.email_imap_poller
        assert poller is not None and fake_app.state.email_smtp_receiver is not None
        poller.tick_seconds = 0.05
        for _ in range(200):
            if (await _cursor(app, mailbox.id))[1] == 1:
                break
            await asyncio.sleep(0.05)
        assert (await _cursor(app, mailbox.id))[1] == 1
        # The SMTP receiver the runtime started files mail sent to the mailbox's address.
        raw = batch(mailbox.address)[1]

        def deliver() -> None:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                client.sendmail("li.si@example.cn", [mailbox.address], raw)

        await asyncio.to_thread(deliver)
        assert (await _counts(app, mailbox.id))[0] == 2
    finally:
        await runtime.stop(fake_app)
    assert fake_app.state.email_imap_poller is None and fake_app.state.email_smtp_receiver is None


# Last in the module: dovecot slows down logins from an address after a failed one.
async def test_connection_failures_back_off_and_never_log_the_password(app, settings, dovecot, caplog) -> None:  # noqa: ANN001
    secret = "s3cret-imap-password-不要记录"
    wrong = await imap_mailbox(app, dovecot)
    async with app.state.session_factory() as db, db.begin():
        (await db.get(Mailbox, wrong.id)).imap_password = secret
    now = [1000.0]
    poller = ImapPoller(app.state.session_factory, settings, clock=lambda: now[0])
    caplog.set_level(logging.INFO)
    result = await poller.poll_mailbox(wrong.id)
    assert result.polled and result.error and "AUTHENTICATIONFAILED" in result.error.upper()
    assert secret not in caplog.text and secret not in result.error
    async with app.state.session_factory() as db:
        lease = await db.get(ImapLease, wrong.id)
        assert lease.last_error == result.error and secret not in lease.last_error

    refused = await make_mailbox(app, imap_host="127.0.0.1", imap_port=1, imap_tls=False, imap_username="x")
    closed = await poller.poll_mailbox(refused.id)
    assert closed.polled and "ConnectionRefused" in (closed.error or "")

    # The schedule: poll_seconds (60) doubles on each failure, up to the maximum; success resets it.
    delays = []
    for _ in range(6):
        await poller._poll_scheduled(refused.id, 60)
        delays.append(poller._next_due[refused.id] - now[0])
    assert delays == [120.0, 240.0, 480.0, 900.0, 900.0, 900.0]
    assert poller._backoff(refused.id, 60, failed=False) == 60.0  # a good poll ends the backoff
    assert poller._backoff(refused.id, 60, failed=True) == 120.0
