"""The corpus: every mail in ``corpus/`` (see ``corpus/manifest.json``) is delivered over SMTP, with
``smtplib`` on loopback, to a real aiosmtpd-based ``SmtpReceiver`` filing into the test database, in
manifest order (replies after the mails they answer). Each mail's stored result is checked against
the manifest: outcome, quarantine reason, subject, sender, decoded text, attachments, thread. The last
test counts: every accepted mail is on a work order or in quarantine, none lost.

Manifest fields: ``outcome`` (new_case | threaded | bounce | duplicate | quarantined), ``reason``,
``subject``, ``from``, ``from_name``, ``text`` (snippets of the decoded text), ``attachments`` (names),
``same_case_as`` (a file whose work order this mail must be on), ``thread_by``, ``auto_kind``,
``html_contains`` / ``html_excludes``, ``comment_excludes`` (quoted history not repeated in the
comment), ``note_contains`` (internal note of a bounce/auto-reply), ``status`` (the case afterwards),
``bounce_of``, ``to``/``cc``, ``smtp_code`` (refused at SMTP level), ``envelope_from``, and ``before``
steps (an outbound mail of ours to bounce/reply to; a case resolved before the reply)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import smtplib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.channels.email.email_support import SYSTEM, email_queue, file_mail, make_mailbox

from kefu.channels.email import parse
from kefu.channels.email.ingest import reply_token, synthetic_message_id
from kefu.channels.email.models import EmailMessage, EmailQuarantine, MailDirection
from kefu.channels.email.smtp_receiver import SmtpReceiver
from kefu.interactions.models import Interaction
from kefu.tickets import service as tickets
from kefu.tickets.models import WorkOrder, WorkOrderAttachment, WorkOrderComment

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))
BOX = "support@corpus.kefu.test"
TOKEN = re.compile(rb"\{\{TOKEN:([^}]+)\}\}")


def test_the_corpus_is_large_and_varied() -> None:
    assert len(MANIFEST) >= 50
    outcomes = {entry["outcome"] for entry in MANIFEST}
    assert outcomes == {"new_case", "threaded", "bounce", "duplicate", "quarantined"}
    assert len({entry["file"] for entry in MANIFEST}) == len(MANIFEST)
    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(entry["file"] for entry in MANIFEST)


@pytest.fixture(scope="module")
async def corpus(app, settings):  # noqa: ANN001, ANN201
    queue = await email_queue(app)
    box = await make_mailbox(app, queue=queue, address=BOX)
    small = settings.model_copy(update={"email_max_message_bytes": 256 * 1024, "email_max_attachment_bytes": 64 * 1024})
    receiver = SmtpReceiver(small, app.state.session_factory, host="127.0.0.1", port=0, event_bus=app.state.event_bus)
    await receiver.start()
    state: dict[str, Any] = {"box": box, "settings": small, "receiver": receiver, "rows": {}, "accepted": []}
    yield state
    await receiver.stop()


def _send(port: int, envelope_from: str, raw: bytes) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("corpus.test")
        try:
            client.sendmail(envelope_from, [BOX], raw)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code
        except smtplib.SMTPSenderRefused as exc:
            return exc.smtp_code
    return 250


def _as_received(raw: bytes) -> bytes:
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"  # smtplib ends the data with CRLF


async def _prepare(app, state: dict[str, Any], entry: dict[str, Any]) -> None:  # noqa: ANN001
    rows = state["rows"]
    for step in entry.get("before", []):
        async with app.state.session_factory() as db, db.begin():
            if "outbound" in step:  # a mail we sent on that case (what the transport stores)
                raw = f"Message-ID: <{step['outbound']}>\r\nFrom: {BOX}\r\n\r\nreply\r\n".encode()
                db.add(
                    EmailMessage(
                        mailbox_id=state["box"].id,
                        direction=MailDirection.outbound,
                        message_id=step["outbound"],
                        work_order_id=rows[step["case_of"]]["work_order_id"],
                        from_address=BOX,
                        to_addresses=step["to"],
                        subject="Re: your mail",
                        source="outbound",
                        raw=raw,
                        raw_size=len(raw),
                        raw_sha256=hashlib.sha256(raw).hexdigest(),
                    )
                )
            if "resolve" in step:
                await tickets.set_status(db, SYSTEM, rows[step["resolve"]]["work_order_id"], "resolved")


def _render(raw: bytes, state: dict[str, Any]) -> bytes:
    def token(match: re.Match[bytes]) -> bytes:
        work_order_id = state["rows"][match.group(1).decode()]["work_order_id"]
        return reply_token(state["settings"], work_order_id).encode()

    return TOKEN.sub(token, raw)


@pytest.mark.parametrize("entry", MANIFEST, ids=[entry["file"] for entry in MANIFEST])
async def test_corpus_mail_over_smtp(app, corpus, entry) -> None:  # noqa: ANN001
    for needed in [entry.get("same_case_as")] + [s.get("case_of") or s.get("resolve") for s in entry.get("before", [])]:
        if needed and needed not in corpus["rows"]:
            pytest.skip(f"needs {needed} filed first (run the whole corpus)")
    await _prepare(app, corpus, entry)
    raw = _render((CORPUS / entry["file"]).read_bytes(), corpus)
    envelope_from = entry.get("envelope_from", entry.get("from", "sender@example.test"))
    code = await asyncio.to_thread(_send, corpus["receiver"].port, envelope_from, raw)
    received = _as_received(raw)
    sha = hashlib.sha256(received).hexdigest()
    box = corpus["box"]

    if entry.get("smtp_code"):
        # Refused at SMTP level (the sender keeps it); the same mail fetched over IMAP is quarantined.
        assert code == entry["smtp_code"]
        result = await file_mail(app, corpus["settings"], box, received, source="imap")
        assert (result.outcome, result.reason) == ("quarantined", entry["reason"])
        return
    assert code == 250
    corpus["accepted"].append(entry["file"])

    async with app.state.session_factory() as db:
        quarantined = await db.scalar(
            select(EmailQuarantine).where(EmailQuarantine.mailbox_id == box.id, EmailQuarantine.raw_sha256 == sha)
        )
        if entry["outcome"] == "quarantined":
            assert quarantined is not None, "not in quarantine"
            assert quarantined.reason == entry["reason"], quarantined.detail
            raw_kept = await db.scalar(select(EmailQuarantine.raw).where(EmailQuarantine.id == quarantined.id))
            assert raw_kept == received
            return
        assert quarantined is None, f"quarantined: {quarantined.reason} {quarantined.detail}"

        if entry["outcome"] == "duplicate":
            message_id = parse.summary_of(parse.read_message(received)).message_id
            rows = (
                await db.scalars(
                    select(EmailMessage).where(EmailMessage.mailbox_id == box.id, EmailMessage.message_id == message_id)
                )
            ).all()
            assert len(rows) == 1 and rows[0].raw_sha256 != sha
            assert rows[0].id == corpus["rows"][entry["same_case_as"]]["id"]
            return

        row = await db.scalar(
            select(EmailMessage).where(EmailMessage.mailbox_id == box.id, EmailMessage.raw_sha256 == sha)
        )
        assert row is not None, "mail neither filed nor quarantined"
        corpus["rows"][entry["file"]] = {"id": row.id, "work_order_id": row.work_order_id}
        if parse.summary_of(parse.read_message(received)).message_id is None:
            assert row.message_id == synthetic_message_id(received)
        assert row.work_order_id is not None
        work_order = await db.get(WorkOrder, row.work_order_id)
        assert work_order is not None
        if "subject" in entry:
            assert row.subject == entry["subject"]
        if "from" in entry:
            assert row.from_address == entry["from"]
        if "from_name" in entry:
            assert row.from_name == entry["from_name"]
        for snippet in entry.get("text", []):
            assert snippet in row.text_body, row.text_body[:500]
        if entry.get("outcome") == "new_case" and not entry.get("text"):
            assert row.text_body.strip() == ""
        for snippet in entry.get("html_contains", []):
            assert snippet in row.html_body
        for snippet in entry.get("html_excludes", []):
            assert snippet.lower() not in row.html_body.lower()
        if "to" in entry:
            assert row.to_addresses == entry["to"]
        if "cc" in entry:
            assert row.cc_addresses == entry["cc"]
        if "attachments" in entry:
            assert [a["filename"] for a in row.attachments] == entry["attachments"]
            for item in row.attachments:
                stored = await db.get(WorkOrderAttachment, item["attachment_id"])
                assert stored is not None and stored.work_order_id == row.work_order_id
                assert stored.filename == item["filename"]
        if "same_case_as" in entry:
            assert row.work_order_id == corpus["rows"][entry["same_case_as"]]["work_order_id"]
        if entry.get("case_created"):
            assert work_order.description.strip() == row.text_body.strip()
        assert row.auto_kind == entry.get("auto_kind", "bounce" if entry["outcome"] == "bounce" else "none")
        if entry.get("status"):
            assert work_order.status == entry["status"]
        comments = (
            await db.scalars(
                select(WorkOrderComment)
                .where(WorkOrderComment.work_order_id == row.work_order_id)
                .order_by(WorkOrderComment.id.desc())
            )
        ).all()
        if entry["outcome"] in ("bounce",) or entry.get("auto_kind") == "auto_reply":
            assert row.interaction_id is None
            note = comments[0]
            assert note.internal and note.author_id is None
            for snippet in entry.get("note_contains", []):
                assert snippet in note.body
            # Never answered automatically.
            answered = await db.scalar(
                select(func.count())
                .select_from(EmailMessage)
                .where(EmailMessage.direction == MailDirection.outbound, EmailMessage.in_reply_to == row.message_id)
            )
            assert answered == 0
        else:
            interaction = await db.get(Interaction, row.interaction_id)
            assert interaction is not None and interaction.channel == "email"
            assert interaction.work_order_id == row.work_order_id
            assert interaction.external_id == f"{box.code}:{row.message_id}"
            if "thread_by" in entry:
                assert interaction.attributes.get("thread_by") == entry["thread_by"]
        if entry["outcome"] == "bounce":
            assert row.is_bounce
            original = await db.get(EmailMessage, row.bounce_of_id)
            assert original is not None and original.message_id == entry["bounce_of"]
        if entry["outcome"] == "threaded" and entry.get("auto_kind") is None:
            public = [c for c in comments if not c.internal and c.author_id is None]
            assert public, "the reply is not on the case"
            for snippet in entry.get("text", []):
                assert snippet in public[0].body
            for snippet in entry.get("comment_excludes", []):
                assert snippet not in public[0].body


async def test_corpus_none_lost(app, corpus) -> None:  # noqa: ANN001
    """Every mail the receiver accepted is a filed mail on a work order or a quarantine row."""
    accepted = [e for e in MANIFEST if e["file"] in corpus["accepted"]]
    if len(accepted) != len([e for e in MANIFEST if not e.get("smtp_code")]):
        pytest.skip("run the whole corpus")
    box = corpus["box"]
    async with app.state.session_factory() as db:
        filed = (
            await db.scalars(
                select(EmailMessage).where(
                    EmailMessage.mailbox_id == box.id, EmailMessage.direction == MailDirection.inbound
                )
            )
        ).all()
        quarantined = await db.scalar(
            select(func.count()).select_from(EmailQuarantine).where(EmailQuarantine.mailbox_id == box.id)
        )
    duplicates = sum(1 for e in accepted if e["outcome"] == "duplicate")
    refused_then_quarantined = sum(1 for e in MANIFEST if e.get("smtp_code"))
    assert len(filed) + quarantined == len(accepted) - duplicates + refused_then_quarantined
    assert all(row.work_order_id is not None for row in filed)
    assert corpus["receiver"].delivered == len(accepted)
