"""Password-reset mail end to end: API request -> outbox job -> real SMTP server (aiosmtpd on loopback)
-> link -> single-use token; and a mail that cannot be sent is retried, not lost.

The test app runs no background worker (``run_worker=False``); the tests run the due jobs themselves
with a copy of the settings that points at the test SMTP server.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select, update

from conftest import TEST_PASSWORD, free_port
from kefu.core.jobs import Job, JobStatus, run_due_jobs
from kefu.core.mail import send_password_reset
from kefu.db.base import utcnow
from kefu.settings import Settings

WAIT = 10.0
NEW_PASSWORD = "a-brand-new-passphrase-42"


class Mailbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelope_recipients: list[list[str]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, _server, _session, envelope) -> str:  # noqa: ANN001, N802 - aiosmtpd's hook name
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        with self._lock:
            self.messages.append(message)  # type: ignore[arg-type]
            self.envelope_recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if m["To"] == address]


class SmtpServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.mailbox = Mailbox()
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=port)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port()).start()
    yield server
    server.stop()


def mail_settings(settings: Settings, port: int, **extra: object) -> Settings:
    return settings.model_copy(
        update={"smtp_host": "127.0.0.1", "smtp_port": port, "mail_from": "客服 <kefu@example.test>", **extra}
    )


async def reset_jobs_for(db_factory, address: str) -> list[Job]:  # noqa: ANN001
    async with db_factory() as db:
        jobs = (await db.scalars(select(Job).where(Job.kind == "mail.password_reset").order_by(Job.id))).all()
    return [job for job in jobs if job.payload.get("to") == address]


async def run_jobs_until(db_factory, settings: Settings, job_id: int, status: JobStatus) -> Job:  # noqa: ANN001
    """Runs due jobs until job ``job_id`` reaches ``status``.

    A kefu server process started by another test in this session runs its own worker on the same
    database and may claim our job first (and fail it: it has no SMTP server); we then make it due
    again and retry, so the test depends on nobody else's timing.
    """
    deadline = time.monotonic() + WAIT
    while True:
        await run_due_jobs(db_factory, settings, worker="t")
        async with db_factory() as db:
            job = await db.get(Job, job_id)
        assert job is not None
        if job.status == status:
            return job
        assert job.status != JobStatus.dead, job.last_error
        assert time.monotonic() < deadline, f"job {job_id} is {job.status}: {job.last_error}"
        if job.status == JobStatus.queued:
            await make_due(db_factory, job_id)
        else:
            await asyncio.sleep(0.05)


async def attempt_once(db_factory, settings: Settings, job_id: int) -> Job:  # noqa: ANN001
    """Makes job ``job_id`` due and runs due jobs until it has been attempted once more and is back in
    the queue (other due jobs may be ahead of it: a claim takes at most 10)."""
    async with db_factory() as db:
        attempts = (await db.get(Job, job_id)).attempts
    await make_due(db_factory, job_id)
    deadline = time.monotonic() + WAIT
    while True:
        await run_due_jobs(db_factory, settings, worker="t")
        async with db_factory() as db:
            job = await db.get(Job, job_id)
        if job.attempts > attempts and job.status != JobStatus.running:
            return job
        assert time.monotonic() < deadline, f"job {job_id} was not attempted: {job.status}"
        await asyncio.sleep(0.05)


async def make_due(db_factory, job_id: int) -> None:  # noqa: ANN001
    """Stands in for waiting out the retry backoff."""
    async with db_factory() as db, db.begin():
        await db.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued).values(run_at=utcnow()))


def reset_token(message: EmailMessage) -> str:
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = re.search(r"http://testserver/password-reset/confirm\?token=([A-Za-z0-9_\-]+)", body)
    assert match, body
    return match.group(1)


async def test_password_reset_mail_and_single_use_token(client, make, db_factory, settings, smtp) -> None:  # noqa: ANN001
    user = await make.user("agent")
    response = await client.post("/api/v1/auth/password-reset", json={"login": user.username})
    assert response.status_code == 202
    [job] = await reset_jobs_for(db_factory, user.email)
    assert job.status == JobStatus.queued
    assert smtp.mailbox.to(user.email) == []  # nothing is sent inside the request

    await run_jobs_until(db_factory, mail_settings(settings, smtp.port), job.id, JobStatus.done)
    [message] = smtp.mailbox.to(user.email)
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["From"].addresses[0].addr_spec == "kefu@example.test"
    assert "password reset" in message["Subject"]
    assert message["Message-ID"].endswith("@example.test>")
    assert [user.email] in smtp.mailbox.envelope_recipients
    token = reset_token(message)

    confirm = {"token": token, "new_password": NEW_PASSWORD}
    assert (await client.post("/api/v1/auth/password-reset/confirm", json=confirm)).status_code == 200
    again = await client.post("/api/v1/auth/password-reset/confirm", json=confirm)
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "invalid_token"
    old = await client.post("/api/v1/auth/login", json={"login": user.username, "password": TEST_PASSWORD})
    assert old.status_code == 401
    new = await client.post("/api/v1/auth/login", json={"login": user.username, "password": NEW_PASSWORD})
    assert new.status_code == 200


async def test_smtp_down_the_mail_is_retried_not_lost(client, make, db_factory, settings) -> None:  # noqa: ANN001
    user = await make.user("agent")
    assert (await client.post("/api/v1/auth/password-reset", json={"login": user.email})).status_code == 202
    [job] = await reset_jobs_for(db_factory, user.email)

    # No mail server configured yet: the job waits in the outbox.
    waiting = await attempt_once(db_factory, settings.model_copy(update={"smtp_host": ""}), job.id)
    assert waiting.status == JobStatus.queued and "KEFU_SMTP_HOST is not set" in waiting.last_error
    assert waiting.run_at > utcnow()  # backing off

    # Configured, but the server is down (nothing listens on the port): still retried.
    port = free_port()
    retried = await attempt_once(db_factory, mail_settings(settings, port), job.id)
    assert retried.status == JobStatus.queued and retried.last_error
    assert retried.attempts >= 2

    # The server comes up on that port: the same job now delivers the mail, once.
    server = SmtpServer(port).start()
    try:
        done = await run_jobs_until(db_factory, mail_settings(settings, port), job.id, JobStatus.done)
        assert done.attempts >= 3 and done.last_error is None
        [message] = server.mailbox.to(user.email)
        assert message["Auto-Submitted"] == "auto-generated"
        token = reset_token(message)
    finally:
        server.stop()
    confirm = {"token": token, "new_password": NEW_PASSWORD}
    assert (await client.post("/api/v1/auth/password-reset/confirm", json=confirm)).status_code == 200


async def test_a_resent_mail_keeps_its_message_id(make, db_factory, settings, client, smtp) -> None:  # noqa: ANN001
    """A retry after a crash between "sent" and "marked done" sends the mail again: with the same
    Message-ID, so mail servers and clients treat the two as one message."""
    user = await make.user("agent")
    assert (await client.post("/api/v1/auth/password-reset", json={"login": user.username})).status_code == 202
    [job] = await reset_jobs_for(db_factory, user.email)
    configured = mail_settings(settings, smtp.port)
    async with db_factory() as db:
        await send_password_reset(db, job, configured)
        await send_password_reset(db, await db.get(Job, job.id), configured)  # the "retry", reloaded
    first, second = smtp.mailbox.to(user.email)
    assert first["Message-ID"] == second["Message-ID"]
    await run_jobs_until(db_factory, configured, job.id, JobStatus.done)  # leave no due job behind


async def test_same_answer_and_no_mail_for_unknown_or_mailless_logins(  # noqa: ANN001
    client, make, db_factory, settings, smtp
) -> None:
    known = await make.user("agent")
    no_email = await make.user("agent", email=False)
    async with db_factory() as db:
        before = await db.scalar(select(func.count()).select_from(Job).where(Job.kind == "mail.password_reset"))

    answers = []
    for login in ("nobody-by-this-name", "nobody@example.test", no_email.username, known.username):
        response = await client.post("/api/v1/auth/password-reset", json={"login": login})
        answers.append((response.status_code, response.json()))
    assert len(set(map(repr, answers))) == 1  # the form cannot tell who has an account
    assert answers[0][0] == 202

    async with db_factory() as db:
        after = await db.scalar(select(func.count()).select_from(Job).where(Job.kind == "mail.password_reset"))
    assert after == before + 1  # only the known user with an address got a job
    [job] = await reset_jobs_for(db_factory, known.email)
    await run_jobs_until(db_factory, mail_settings(settings, smtp.port), job.id, JobStatus.done)
    assert len(smtp.mailbox.to(known.email)) == 1
