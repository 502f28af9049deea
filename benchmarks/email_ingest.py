"""Inbound mails filed per second: ``ingest_raw_message`` directly and through the SMTP receiver.

    .venv/bin/python benchmarks/email_ingest.py [--mails 2000] [--smtp-mails 500] [--backends sqlite,postgresql]

Per backend: a fresh, migrated database with an email routing queue and a mailbox. The mails are
shaped like the test corpus (tests/channels/email/corpus: Outlook GB2312 alternative, Foxmail GBK with
a PDF attachment, Gmail UTF-8 quoted-printable, Big5, an HTML-only mail, mailing-list mail) with fresh
Message-IDs and senders; about a third are replies (In-Reply-To) to an earlier mail of the same sender,
and a few are bad (no sender) and go to quarantine. Phases:
- ingest: ``ingest_raw_message`` one mail per transaction, sequentially (parse, dedupe, thread, intake:
  customer, interaction, case, routing; comment; attachments; commit);
- smtp: the same kinds of mail sent with smtplib over loopback to a real ``SmtpReceiver`` (one
  connection, one mail per SMTP transaction; 250 only after the commit).
Prints one JSON document. PostgreSQL is skipped when it is not reachable. Client and server share the
machine (and for SMTP, the process): the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import smtplib
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import fresh_database  # noqa: E402

from kefu.channels.email.ingest import ingest_raw_message  # noqa: E402
from kefu.channels.email.models import Mailbox  # noqa: E402
from kefu.channels.email.smtp_receiver import SmtpReceiver  # noqa: E402
from kefu.core.policy import Principal  # noqa: E402
from kefu.db.engine import make_engine, make_session_factory  # noqa: E402
from kefu.db.migrate import upgrade  # noqa: E402
from kefu.settings import Settings  # noqa: E402

BOX = "bench@kefu.test"
SYSTEM = Principal(user_id=None, username="bench", roles=frozenset({"admin"}), via="system")
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n" * 20


def _b64(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))


def _ew(text: str, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def make_mail(n: int, sender: str, reply_to: str | None) -> tuple[str, bytes]:
    """One corpus-shaped mail; returns (Message-ID, raw)."""
    mid = f"bench-{n}-{uuid.uuid4().hex[:8]}@example.cn"
    head = f"From: {_ew('客户' + str(n), 'gbk')} <{sender}>\r\nTo: {BOX}\r\nMessage-ID: <{mid}>\r\n"
    head += "Date: Mon, 1 Dec 2025 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
    if reply_to:
        head += f"In-Reply-To: <{reply_to}>\r\nReferences: <{reply_to}>\r\n"
    kind = n % 6
    if kind == 0:  # Outlook, GB2312, alternative
        body = f"您好，订单 {n} 还没有发货，请帮忙查询。\r\n".encode("gb2312")
        raw = (
            head + f"Subject: {_ew('订单未发货 ' + str(n), 'gb2312')}\r\n"
            'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n--b1\r\n'
            "Content-Type: text/plain; charset=gb2312\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + _b64(body)
            + "\r\n--b1\r\nContent-Type: text/html; charset=gb2312\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + _b64(b"<p>" + body + b"</p>")
            + "\r\n--b1--\r\n"
        )
    elif kind == 1:  # Foxmail, GBK, PDF attachment with a Chinese name
        raw = (
            head + f'Subject: {_ew("发票申请", "gbk")}\r\nContent-Type: multipart/mixed; boundary="b2"\r\n\r\n'
            "--b2\r\nContent-Type: text/plain; charset=GBK\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + _b64("请开具发票，谢谢。".encode("gbk"))
            + f'\r\n--b2\r\nContent-Type: application/pdf; name="{_ew("发票.pdf", "gbk")}"\r\n'
            "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment\r\n\r\n"
            + _b64(PDF)
            + "\r\n--b2--\r\n"
        )
    elif kind == 2:  # Gmail, UTF-8 quoted-printable
        raw = (
            head + "Subject: Refund request =?UTF-8?B?6YCA5qy+?=\r\n"
            "Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            "I'd like a refund. =E6=B0=B4=E5=A3=B6=E5=9D=8F=E4=BA=86\r\n"
        )
    elif kind == 3:  # Big5
        raw = (
            head + f"Subject: {_ew('請問退貨流程', 'big5')}\r\nContent-Type: text/plain; charset=big5\r\n\r\n"
        ).encode("ascii") + "請問退貨流程是什麼？\r\n".encode("big5")
        return mid, raw
    elif kind == 4:  # HTML only
        raw = (
            head + "Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            '<html><body><p onclick="x()">网页版 <b>邮件</b></p><img src="https://t.example/p.gif"></body></html>\r\n'
        )
    elif n % 12 == 5:  # no sender: quarantine
        raw = f"To: {BOX}\r\nMessage-ID: <{mid}>\r\nSubject: no sender {n}\r\n\r\nwho am I\r\n"
    else:  # mailing list
        raw = (
            head
            + "Subject: [list] 讨论\r\nList-Id: <dev.lists.example>\r\n"
            + "Content-Type: text/plain; charset=utf-8\r\n\r\n大家好\r\n"
        )
    return mid, raw.encode("utf-8")


def corpus(count: int, offset: int) -> list[bytes]:
    mails: list[bytes] = []
    last_of: dict[str, str] = {}
    for n in range(offset, offset + count):
        sender = f"c{n % max(1, count // 3)}-{offset}@bench.example.cn"
        reply_to = last_of.get(sender) if n % 3 == 0 else None
        mid, raw = make_mail(n, sender, reply_to)
        last_of[sender] = mid
        mails.append(raw)
    return mails


async def _setup(url: str, data_dir: Path) -> tuple[Settings, object, int]:
    await asyncio.to_thread(upgrade, url)
    settings = Settings(
        database_url=url, data_dir=data_dir, secret_key="bench", email_auto_ack=True, run_worker=False, log_json=False
    )
    engine = make_engine(url)
    factory = make_session_factory(engine)
    from kefu.routing import queues

    async with factory() as db, db.begin():
        await queues.create_queue(db, SYSTEM, {"code": "email", "name": "邮件", "channel": "email"})
        mailbox = Mailbox(code="bench", address=BOX, display_name="Bench", queue="email")
        db.add(mailbox)
        await db.flush()
        mailbox_id = mailbox.id
    return settings, (engine, factory), mailbox_id


async def _ingest_phase(settings: Settings, factory, mailbox_id: int, mails: list[bytes]) -> dict:  # noqa: ANN001
    outcomes: dict[str, int] = {}
    began = time.perf_counter()
    for raw in mails:
        async with factory() as db, db.begin():
            mailbox = await db.get(Mailbox, mailbox_id)
            result = await ingest_raw_message(db, settings, mailbox, raw, source="test")
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
    elapsed = time.perf_counter() - began
    return {
        "mails": len(mails),
        "seconds": round(elapsed, 2),
        "mails_per_second": round(len(mails) / elapsed, 1),
        "outcomes": outcomes,
    }


def _send_all(port: int, mails: list[bytes]) -> int:
    refused = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("bench.example")
        for raw in mails:
            try:
                client.sendmail("sender@bench.example.cn", [BOX], raw)
            except smtplib.SMTPException:
                refused += 1
    return refused


async def _smtp_phase(settings: Settings, factory, mails: list[bytes]) -> dict:  # noqa: ANN001
    async with SmtpReceiver(settings, factory, host="127.0.0.1", port=0) as receiver:
        began = time.perf_counter()
        refused = await asyncio.to_thread(_send_all, receiver.port, mails)
        elapsed = time.perf_counter() - began
        filed = receiver.delivered
    return {
        "mails": len(mails),
        "refused": refused,
        "filed": filed,
        "seconds": round(elapsed, 2),
        "mails_per_second": round(len(mails) / elapsed, 1),
    }


async def run_backend(backend: str, count: int, smtp_count: int) -> dict:
    async with fresh_database(backend) as (url, data_dir):
        settings, (engine, factory), mailbox_id = await _setup(url, data_dir)
        try:
            await _ingest_phase(settings, factory, mailbox_id, corpus(20, 10_000_000))  # warm-up
            ingest = await _ingest_phase(settings, factory, mailbox_id, corpus(count, 0))
            smtp = await _smtp_phase(settings, factory, corpus(smtp_count, 20_000_000))
        finally:
            await engine.dispose()
    return {"ingest_raw_message": ingest, "smtp": smtp}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--smtp-mails", type=int, default=500)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    results: dict[str, object] = {
        "benchmark": "email_ingest",
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    for backend in args.backends.split(","):
        try:
            results[backend] = await run_backend(backend, args.mails, args.smtp_mails)
        except OSError as exc:  # PostgreSQL not reachable
            results[backend] = {"skipped": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(results, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
