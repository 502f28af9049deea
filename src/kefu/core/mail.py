"""Outbound system mail through SMTP, always sent by a job so a failure is retried, never lost.

Each mail job carries a Message-ID derived from its job id, and the job is marked done in the
same transaction that follows the send, so a retry after a crash re-sends the same Message-ID:
mail servers and clients treat the duplicate as one message.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import parseaddr

from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.jobs import Job, job_handler
from kefu.settings import Settings


class MailNotConfigured(RuntimeError):
    pass


def build_message(settings: Settings, *, to: str, subject: str, body: str, message_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    # Our automatic mails say so, so auto-responders do not answer them (RFC 3834).
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body)
    return msg


def _send_blocking(settings: Settings, msg: EmailMessage) -> None:
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
        if settings.smtp_starttls:
            smtp.starttls()
        if settings.smtp_username:
            smtp.login(settings.smtp_username, settings.smtp_password)
        smtp.send_message(msg)


async def send_mail(settings: Settings, msg: EmailMessage) -> None:
    if not settings.smtp_host:
        raise MailNotConfigured("KEFU_SMTP_HOST is not set; the mail stays queued and is retried")
    await asyncio.to_thread(_send_blocking, settings, msg)


def job_message_id(job: Job, settings: Settings) -> str:
    """The same for every attempt of one job (``make_msgid`` is random, so it would differ)."""
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "kefu.local"
    return f"<{job.created_at:%Y%m%d%H%M%S%f}.job{job.id}@{domain}>"


@job_handler("mail.password_reset")
async def send_password_reset(_db: AsyncSession, job: Job, settings: Settings) -> None:
    body = (
        "您好，\n\n有人请求重置您的 kefu 密码。如果是您本人，请在 60 分钟内打开以下链接：\n"
        f"{job.payload['link']}\n\n如果不是您本人，请忽略此邮件。\n\n"
        "Hello,\n\nSomeone asked to reset your kefu password. If it was you, open the link above "
        "within 60 minutes. If not, ignore this mail.\n"
    )
    msg = build_message(
        settings,
        to=job.payload["to"],
        subject="kefu 密码重置 / password reset",
        body=body,
        message_id=job.payload.get("message_id") or job_message_id(job, settings),
    )
    await send_mail(settings, msg)
