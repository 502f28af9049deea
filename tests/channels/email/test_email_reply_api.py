"""``POST /api/v1/email/work-orders/{id}/reply``: an agent's reply on a mail case goes out once, threaded,
and is the case's public comment; bad input and hidden cases change nothing."""

from __future__ import annotations

from email_imap_support import case_with_mail, make_mailbox, run_jobs, smtp_capture
from sqlalchemy import func, select

from conftest import login
from kefu.channels.email.outbound_models import OutboundMail
from kefu.tickets.models import WorkOrder, WorkOrderComment


async def _counts(app, work_order_id: int) -> tuple[int, int]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        comments = await db.scalar(
            select(func.count()).select_from(WorkOrderComment).where(WorkOrderComment.work_order_id == work_order_id)
        )
        mails = await db.scalar(
            select(func.count()).select_from(OutboundMail).where(OutboundMail.work_order_id == work_order_id)
        )
    return comments, mails


async def test_an_agents_reply_goes_out_once_threaded_and_is_the_public_comment(app, client, make, settings) -> None:  # noqa: ANN001
    mailbox = await make_mailbox(app)
    case = await case_with_mail(app, mailbox, subject="发票问题")
    work_order_id = case.work_order_id
    agent = await make.user("agent")
    await login(client, agent)
    before = await _counts(app, work_order_id)

    refused = await client.post(f"/api/v1/email/work-orders/{work_order_id}/reply", json={"body": ""})
    assert refused.status_code == 422
    assert await _counts(app, work_order_id) == before

    sent = await client.post(f"/api/v1/email/work-orders/{work_order_id}/reply", json={"body": "您好，发票已重开。"})
    assert sent.status_code == 201, sent.text
    assert await _counts(app, work_order_id) == (before[0] + 1, before[1] + 1)

    with smtp_capture() as (handler, port):
        mail_settings = settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": port})
        await run_jobs(app, mail_settings)
        await run_jobs(app, mail_settings)  # a second run finds nothing left to send
    ours = [c.message for c in handler.received if sent.json()["message_id"] in (c.message["Message-ID"] or "")]
    assert len(ours) == 1
    assert "发票问题" in str(ours[0]["Subject"])
    assert case.message_id in ours[0]["In-Reply-To"]


async def test_a_hidden_case_answers_404(app, client, make) -> None:  # noqa: ANN001
    mailbox = await make_mailbox(app)
    case = await case_with_mail(app, mailbox)
    work_order_id = case.work_order_id
    team = await make.team()
    async with app.state.session_factory() as db, db.begin():
        order = await db.get(WorkOrder, work_order_id)
        order.restricted, order.team_id = True, team
    await login(client, await make.user("agent"))
    response = await client.post(f"/api/v1/email/work-orders/{work_order_id}/reply", json={"body": "hi"})
    assert response.status_code == 404
    assert await _counts(app, work_order_id) == (0, 0)
