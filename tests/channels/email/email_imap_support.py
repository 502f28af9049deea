"""A private dovecot IMAP server for the email channel's tests, and helpers to fill its mailboxes.

``Dovecot.start()`` writes a configuration under a fresh temporary directory (maildir storage,
passwd-file users with plain test passwords, no TLS, ``listen = 127.0.0.1`` on a free port), runs
Debian's ``dovecot -F`` in the foreground as a child process and waits until it greets; ``stop()``
ends exactly that process and removes the directory. No system service or system config is used.
Tests skip (with the reason) when the dovecot binary is absent: ``scripts/dovecot.sh`` installs it.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TEST_IMAP_PASSWORD = "imap-test-password"
POOL_SIZE = 200


def dovecot_binary() -> str | None:
    found = shutil.which("dovecot")
    if found:
        return found
    for candidate in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


@dataclass
class Dovecot:
    binary: str
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kefu-dovecot-")))
    port: int = field(default_factory=free_port)
    users: set[str] = field(default_factory=set)
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"

    # --- configuration ---------------------------------------------------------------------------
    def _accounts(self) -> tuple[str, str, pwd.struct_passwd]:
        """(login user, internal user, owner of the mail files)."""
        if os.geteuid() == 0:
            # As root dovecot drops privileges: Debian's package creates these two users.
            login, internal = _user("dovenull"), _user("dovecot")
            if login is None or internal is None:
                pytest.skip("dovecot runs as root but the users dovenull/dovecot are missing (install dovecot-imapd)")
            return login.pw_name, internal.pw_name, internal
        me = pwd.getpwuid(os.geteuid())
        return me.pw_name, me.pw_name, me

    def _write_config(self) -> Path:
        login, internal, owner = self._accounts()
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # The mail-owning user must reach its files through the temporary directory.
        os.chmod(self.root, 0o711)  # noqa: S103 - traversal only, for dovecot's unprivileged users
        if os.geteuid() == 0:
            os.chown(self.root / "mail", owner.pw_uid, owner.pw_gid)
        # Users exist from the start: dovecot re-reads a changed passwd file at most once a second.
        self._pool = [f"box{n:03d}@kefu.test" for n in range(POOL_SIZE)]
        (self.root / "passwd").write_text("".join(f"{user}:{{PLAIN}}{TEST_IMAP_PASSWORD}\n" for user in self._pool))
        config = self.root / "dovecot.conf"
        config.write_text(
            f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
instance_name = kefu-test-{self.port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
# No growing auth penalty for the tests' deliberate failed logins.
login_trusted_networks = 127.0.0.0/8
log_path = {self.root}/dovecot.log
default_login_user = {login}
default_internal_user = {internal}
first_valid_uid = {owner.pw_uid}
last_valid_uid = 0
first_valid_gid = {owner.pw_gid}
mail_location = maildir:{self.root}/mail/%u
mail_uid = {owner.pw_uid}
mail_gid = {owner.pw_gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/passwd
}}
userdb {{
  driver = static
  args = uid={owner.pw_uid} gid={owner.pw_gid} home={self.root}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""
        )
        return config

    def new_user(self) -> str:
        """A mail user nobody has used yet (password ``TEST_IMAP_PASSWORD``)."""
        user = self._pool.pop(0)
        self.users.add(user)
        return user

    # --- life cycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> Dovecot:
        config = self._write_config()
        self.process = subprocess.Popen(
            [self.binary, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = (self.process.stderr.read() if self.process.stderr else b"").decode(errors="replace")
                log = self.log_tail()
                self.stop()
                raise RuntimeError(f"dovecot exited at start: {error[-2000:]} {log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(64).startswith(b"* OK"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not greet within {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "dovecot.log").read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    # --- mail ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def imap(self, username: str, password: str = TEST_IMAP_PASSWORD) -> Iterator[imaplib.IMAP4]:
        conn = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            conn.login(username, password)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(self, username: str, raw: bytes, folder: str = "INBOX", flags: str = "") -> None:
        """Delivers one mail by IMAP APPEND, as a mail server would have put it there."""
        with self.imap(username) as conn:
            if folder != "INBOX":
                conn.create(folder)
            status, data = conn.append(folder, flags or None, None, raw)
            assert status == "OK", data

    def flags(self, username: str, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags of every message in ``folder``."""
        with self.imap(username) as conn:
            conn.select(folder, readonly=True)
            status, data = conn.uid("FETCH", "1:*", "(FLAGS)")
            assert status == "OK", data
            result: dict[int, set[str]] = {}
            for line in data:
                if not line:
                    continue
                text = line.decode() if isinstance(line, bytes) else line[0].decode()
                parts = imaplib.ParseFlags(text.encode())
                uid = int(text.split("UID ", 1)[1].split()[0].rstrip(")"))
                result[uid] = {flag.decode() for flag in parts}
            return result

    def count(self, username: str, folder: str = "INBOX") -> int:
        with self.imap(username) as conn:
            status, data = conn.select(folder, readonly=True)
            assert status == "OK", data
            return int(data[0])

    def reset_uidvalidity(self, username: str, folder: str = "INBOX") -> None:
        """Makes the server announce a new UIDVALIDITY for ``folder`` (as after a mailbox was
        rebuilt or restored): dovecot's ``doveadm mailbox update`` sets it directly."""
        doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
        config = self.root / "dovecot.conf"
        with self.imap(username) as conn:
            status, data = conn.status(folder, "(UIDVALIDITY)")
            assert status == "OK", data
            current = int(data[0].decode().split("UIDVALIDITY ")[1].rstrip(")"))
        subprocess.run(
            [
                doveadm,
                "-c",
                str(config),
                "mailbox",
                "update",
                "-u",
                username,
                "--uid-validity",
                str(current + 1),
                folder,
            ],
            check=True,
            capture_output=True,
        )


def start_dovecot() -> Dovecot:
    binary = dovecot_binary()
    if binary is None:
        pytest.skip("dovecot is not installed (run scripts/dovecot.sh or 'apt-get install dovecot-imapd')")
    return Dovecot(binary).start()


# =====================================================================================================
# A real SMTP server (aiosmtpd) standing in for the customer's mail server, capturing what kefu sends
# =====================================================================================================
@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self):  # noqa: ANN201 - email.message.EmailMessage
        from email import policy
        from email.parser import BytesParser

        return BytesParser(policy=policy.default).parsebytes(self.raw)


class CaptureHandler:
    """Accepts every mail (250) and keeps it, unless told to answer something else first."""

    def __init__(self) -> None:
        self.received: list[Captured] = []
        self.replies: list[str] = []  # answered (and popped) before accepting: "451 ...", "550 ..."
        self.always: str | None = None  # answered to every mail while set

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        if self.always:
            return self.always
        if self.replies:
            return self.replies.pop(0)
        content = envelope.original_content or envelope.content
        self.received.append(Captured(envelope.mail_from, list(envelope.rcpt_tos), bytes(content)))
        return "250 2.0.0 OK"


@contextlib.contextmanager
def smtp_capture() -> Iterator[tuple[CaptureHandler, int]]:
    from aiosmtpd.controller import Controller

    handler = CaptureHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


# =====================================================================================================
# Data
# =====================================================================================================
async def make_mailbox(app, **fields):  # noqa: ANN001, ANN003, ANN201 - returns a Mailbox
    import uuid

    from kefu.channels.email.models import Mailbox

    code = fields.pop("code", None) or f"mb{uuid.uuid4().hex[:10]}"
    async with app.state.session_factory() as db, db.begin():
        mailbox = Mailbox(
            code=code,
            address=fields.pop("address", None) or f"{code}@kefu.test",
            display_name=fields.pop("display_name", "客服中心"),
            **fields,
        )
        db.add(mailbox)
        await db.flush()
        return mailbox


async def last_job_id(app) -> int:  # noqa: ANN001
    from sqlalchemy import func, select

    from kefu.core.jobs import Job

    async with app.state.session_factory() as db:
        return await db.scalar(select(func.coalesce(func.max(Job.id), 0)))


async def run_jobs(app, settings, kind: str = "email.send", *, after_id: int = 0) -> int:  # noqa: ANN001
    """Runs every due job of ``kind`` with an id above ``after_id`` now, as a worker would (claim, then
    run); returns how many ran. Other tests' jobs (other kinds, older ids) are left alone."""
    from datetime import timedelta

    from sqlalchemy import select

    from kefu.core.jobs import Job, JobStatus, run_job
    from kefu.db.base import utcnow

    total = 0
    while True:
        now = utcnow()
        async with app.state.session_factory() as db, db.begin():
            jobs = list(
                (
                    await db.scalars(
                        select(Job).where(
                            Job.kind == kind, Job.id > after_id, Job.status == JobStatus.queued, Job.run_at <= now
                        )
                    )
                ).all()
            )
            for job in jobs:
                job.status = JobStatus.running
                job.attempts += 1
                job.locked_by = "email-test"
                job.locked_until = now + timedelta(seconds=300)
        if not jobs:
            return total
        for job in jobs:
            await run_job(app.state.session_factory, job, settings)
        total += len(jobs)


async def make_due(app, job_id: int) -> None:  # noqa: ANN001
    """Skip a job's backoff wait (tests do not sleep)."""
    from sqlalchemy import update

    from kefu.core.jobs import Job
    from kefu.db.base import utcnow

    async with app.state.session_factory() as db, db.begin():
        await db.execute(update(Job).where(Job.id == job_id).values(run_at=utcnow()))


async def case_with_mail(app, mailbox, *, sender: str | None = None, subject: str = "发票问题 invoice", references=()):  # noqa: ANN001, ANN201, E501
    """A customer's case opened by a mail (through the one intake path) with that mail stored inbound."""
    import hashlib
    import uuid

    from kefu.channels import intake
    from kefu.channels.email.models import EmailMessage, MailDirection

    sender = sender or f"zhang.san.{uuid.uuid4().hex[:8]}@example.cn"  # a new customer: a new case
    message_id = f"{uuid.uuid4().hex}@mail.example.cn"
    raw = (
        f"From: <{sender}>\r\nTo: {mailbox.address}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\r\n你好\r\n"
    ).encode()
    async with app.state.session_factory() as db, db.begin():
        result = await intake.receive_contact(
            db,
            intake.InboundContact(
                channel="email",
                external_id=f"{mailbox.code}:{message_id}",
                identity_kind="email",
                identity_value=sender,
                display_name="张三",
                subject=subject,
            ),
        )
        stored = EmailMessage(
            mailbox_id=mailbox.id,
            direction=MailDirection.inbound,
            message_id=message_id,
            references=list(references),
            in_reply_to=references[-1] if references else None,
            work_order_id=result.work_order_id,
            interaction_id=result.interaction.id,
            from_address=sender,
            from_name="张三",
            to_addresses=[mailbox.address],
            subject=subject,
            text_body="你好",
            source="test",
            raw=raw,
            raw_size=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest(),
        )
        db.add(stored)
        await db.flush()
        return stored


async def add_inbound(
    app, mailbox, work_order_id: int, *, sender: str, subject: str, parent=None, headers: str = "", **fields
):  # noqa: ANN001, ANN003, ANN201, E501
    """Another stored inbound mail on a case (a customer's follow-up)."""
    import hashlib
    import uuid

    from kefu.channels.email.models import EmailMessage, MailDirection

    message_id = f"{uuid.uuid4().hex}@mail.example.cn"
    references = [*(parent.references if parent else []), parent.message_id] if parent else []
    raw = (
        f"From: <{sender}>\r\nTo: {mailbox.address}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n"
        f"{headers}\r\nbody\r\n"
    ).encode()
    async with app.state.session_factory() as db, db.begin():
        stored = EmailMessage(
            mailbox_id=mailbox.id,
            direction=MailDirection.inbound,
            message_id=message_id,
            references=references,
            in_reply_to=parent.message_id if parent else None,
            thread_root_id=(parent.thread_root_id or parent.id) if parent else None,
            work_order_id=work_order_id,
            from_address=sender,
            to_addresses=[mailbox.address],
            subject=subject,
            text_body="body",
            source="test",
            raw=raw,
            raw_size=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest(),
            **fields,
        )
        db.add(stored)
        await db.flush()
        return stored


# =====================================================================================================
# Filing: the inbound colleague's ingest, or a small stand-in while theirs is not written yet
# =====================================================================================================
async def stand_in_ingest(db, settings, mailbox, raw: bytes, *, source: str):  # noqa: ANN001, ANN201
    """Files like ingest does in outline: dedupe by Message-ID, quarantine what has no sender."""
    import hashlib
    from email import message_from_bytes, policy
    from email.utils import parseaddr

    from sqlalchemy import select

    from kefu.channels import intake
    from kefu.channels.email.ingest import IngestResult
    from kefu.channels.email.models import EmailMessage, EmailQuarantine, MailDirection

    sha = hashlib.sha256(raw).hexdigest()
    try:
        msg = message_from_bytes(raw, policy=policy.compat32)
        sender = parseaddr(str(msg.get("From") or ""))[1].lower()
        message_id = str(msg.get("Message-ID") or "").strip().strip("<>") or f"sha256:{sha}"
        subject = str(msg.get("Subject") or "")[:300]
    except Exception:  # noqa: BLE001
        sender, message_id, subject = "", f"sha256:{sha}", ""
    if "@" not in sender:
        row = EmailQuarantine(
            mailbox_id=mailbox.id, reason="no_sender", source=source, raw=raw, raw_size=len(raw), raw_sha256=sha
        )
        db.add(row)
        await db.flush()
        return IngestResult("quarantined", quarantine_id=row.id, reason="no_sender")
    existing = await db.scalar(
        select(EmailMessage.id).where(
            EmailMessage.mailbox_id == mailbox.id,
            EmailMessage.message_id == message_id,
            EmailMessage.direction == MailDirection.inbound,
        )
    )
    if existing is not None:
        return IngestResult("duplicate", email_message_id=existing)
    result = await intake.receive_contact(
        db,
        intake.InboundContact(
            channel="email",
            external_id=f"{mailbox.code}:{message_id}",
            identity_kind="email",
            identity_value=sender,
            subject=subject,
        ),
    )
    row = EmailMessage(
        mailbox_id=mailbox.id,
        direction=MailDirection.inbound,
        message_id=message_id,
        work_order_id=result.work_order_id,
        from_address=sender,
        subject=subject,
        source=source,
        raw=raw,
        raw_size=len(raw),
        raw_sha256=sha,
    )
    db.add(row)
    await db.flush()
    return IngestResult("new_case", email_message_id=row.id, work_order_id=result.work_order_id)


async def ingest_for_tests(app, settings):  # noqa: ANN001, ANN201
    """The real ``ingest_raw_message`` once it is written; the stand-in until then."""
    from kefu.channels.email import ingest

    probe = await make_mailbox(app)
    async with app.state.session_factory() as db:
        await db.begin()
        try:
            await ingest.ingest_raw_message(db, settings, probe, b"From: a@b.example\r\n\r\nx\r\n", source="test")
        except NotImplementedError:
            return stand_in_ingest
        finally:
            await db.rollback()
    return None  # the poller's default: the real one
