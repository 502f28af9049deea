"""Demo data of the email channel: the ``support@kefu.local`` mailbox on the demo ``email`` queue,
with one customer mail in it and one mail waiting in quarantine.

Called from ``kefu.demo.load_demo`` after the routing demo (which makes the ``email`` queue):
``await email_demo.seed_demo(db)``. Idempotent: does nothing when the mailbox exists.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.email.models import Mailbox
from kefu.settings import Settings, get_settings

DEMO_ADDRESS = "support@kefu.local"
DEMO_MAILS = (
    (
        b"From: =?utf-8?B?6ZmI5YWI55Sf?= <chen@example.com>\r\nTo: support@kefu.local\r\n"
        b"Subject: =?utf-8?B?5Y+R56Wo6L+Y5rKh5pS25Yiw?=\r\nMessage-ID: <demo-mail-1@example.com>\r\n"
        b"Date: Mon, 1 Dec 2025 09:00:00 +0800\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "您好，上周申请的发票还没有收到，麻烦查一下。\r\n陈先生\r\n".encode()
    ),
    (
        b"From: support@kefu.local\r\nTo: support@kefu.local\r\nSubject: Re: Re: Re: loop\r\n"
        b"Message-ID: <demo-loop-1@kefu.local>\r\n\r\nThis mail came back to us.\r\n"
    ),
)


async def seed_demo(db: AsyncSession, settings: Settings | None = None, *, queue: str = "email") -> Mailbox:
    """The demo mailbox (and its two demo mails), in the caller's transaction."""
    from kefu.channels.email.ingest import ingest_raw_message
    from kefu.routing.models import RoutingQueue

    existing = await db.scalar(select(Mailbox).where(Mailbox.address == DEMO_ADDRESS))
    if existing is not None:
        return existing
    has_queue = await db.scalar(select(RoutingQueue.id).where(RoutingQueue.code == queue)) is not None
    mailbox = Mailbox(
        code="support", address=DEMO_ADDRESS, display_name="客服中心 Support", queue=queue if has_queue else None
    )
    db.add(mailbox)
    await db.flush()
    for raw in DEMO_MAILS:
        await ingest_raw_message(db, settings or get_settings(), mailbox, raw, source="test")
    return mailbox
