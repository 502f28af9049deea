"""Helpers of the email channel's tests: a routing queue and a mailbox of one's own, filing a mail."""

from __future__ import annotations

import uuid
from typing import Any

from kefu.channels.email.ingest import IngestResult, ingest_raw_message
from kefu.channels.email.models import Mailbox
from kefu.core.policy import Principal
from kefu.routing import queues

SYSTEM = Principal(user_id=None, username="email-tests", roles=frozenset({"admin"}), via="system")


def code(prefix: str = "m") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def email_queue(app: Any) -> str:
    queue_code = code("q")
    async with app.state.session_factory() as db, db.begin():
        await queues.create_queue(db, SYSTEM, {"code": queue_code, "name": f"邮件 {queue_code}", "channel": "email"})
    return queue_code


async def make_mailbox(app: Any, *, queue: str | None = None, address: str | None = None, **kw: Any) -> Mailbox:
    box_code = code("mb")
    async with app.state.session_factory() as db, db.begin():
        mailbox = Mailbox(
            code=box_code,
            address=address or f"{box_code}@kefu.test",
            display_name=f"Support {box_code}",
            queue=queue,
            **kw,
        )
        db.add(mailbox)
        await db.flush()
    return mailbox


async def file_mail(app: Any, settings: Any, mailbox: Mailbox, raw: bytes, source: str = "test") -> IngestResult:
    async with app.state.session_factory() as db, db.begin():
        box = await db.get(Mailbox, mailbox.id)
        assert box is not None
        return await ingest_raw_message(db, settings, box, raw, source=source)
