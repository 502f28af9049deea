"""IMAP polling of configured mailboxes: every new mail filed once, none lost, none crashing the poller.

Each active mailbox with an IMAP host is polled every ``poll_seconds`` (imaplib in a thread). The
cursor is UID based: the folder's UIDVALIDITY and the highest UID below which every mail is filed,
kept on the mailbox. A changed UIDVALIDITY (the server rebuilt the folder) starts again from the
first UID; dedupe by Message-ID in ingest keeps mails seen before from being filed twice.

Each new mail is fetched with ``BODY.PEEK[]`` (so fetching alone does not mark it read) and filed by
``ingest.ingest_raw_message`` in its own transaction, which also moves the cursor; only after that
commit is the mail flagged ``\\Seen`` (and moved to ``email_imap_processed_folder`` when set). A
malformed mail is quarantined by ingest like any other outcome. When filing raises (the database is
away, say), the mail is left for the next poll and the cursor stays before it, while the mails after
it are still filed (dedupe makes their second fetch harmless): one bad mail never stops the others.
A connection or login failure is logged without the password and the mailbox backs off (doubling
``poll_seconds`` up to ``email_imap_max_backoff_seconds``).

Across processes only one poller polls a mailbox at a time: the holder of the mailbox's unexpired
``ImapLease`` row (taken with one upsert, renewed with every mail filed, released at the end). On
SQLite, one writer at a time makes the same upsert safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import os
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kefu.channels.email import ingest as ingest_module
from kefu.channels.email.models import Mailbox
from kefu.channels.email.outbound_models import ImapLease
from kefu.db.base import dialect_insert, utcnow
from kefu.settings import Settings

log = logging.getLogger(__name__)

IngestFunc = Callable[..., Awaitable[Any]]
_UID_RE = re.compile(rb"UID (\d+)")


class LeaseLost(RuntimeError):
    """Another process took over the mailbox (our lease ran out): stop polling it."""


@dataclass(frozen=True)
class ImapParams:
    host: str
    port: int
    tls: bool
    username: str
    password: str = field(repr=False)
    folder: str

    def scrub(self, text: str) -> str:
        """Error text as it may be logged: never the password."""
        return text.replace(self.password, "***") if self.password else text


@dataclass
class PollResult:
    mailbox_id: int
    polled: bool = False  # False: not due / leased elsewhere / not configured
    fetched: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failed_uids: list[int] = field(default_factory=list)  # filing raised: tried again next poll
    uidvalidity_reset: bool = False
    error: str | None = None  # a connection / server error (the mailbox backs off)
    last_uid: int = 0


def _quote(folder: str) -> str:
    if folder and re.fullmatch(r"[A-Za-z0-9_./&+-]+", folder):
        return folder
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapConnection:
    """The blocking IMAP conversation of one poll (run in a thread)."""

    def __init__(self, params: ImapParams, timeout: float) -> None:
        self.params = params
        self.timeout = timeout
        self.conn: imaplib.IMAP4 | None = None

    def open(self) -> int:
        """Connect, log in, select the folder read-write; returns its UIDVALIDITY."""
        p = self.params
        if p.tls and p.port != 143:
            self.conn = imaplib.IMAP4_SSL(
                p.host, p.port, timeout=self.timeout, ssl_context=ssl.create_default_context()
            )
        else:
            self.conn = imaplib.IMAP4(p.host, p.port, timeout=self.timeout)
            if p.tls:
                self.conn.starttls(ssl.create_default_context())
        if (p.username + p.password).isascii():
            self.conn.login(p.username, p.password)
        else:  # LOGIN is ASCII only; SASL PLAIN carries UTF-8 (RFC 4616)
            credentials = b"\0" + p.username.encode() + b"\0" + p.password.encode()
            self.conn.authenticate("PLAIN", lambda _challenge: credentials)
        status, data = self.conn.select(_quote(p.folder))
        if status != "OK":
            raise imaplib.IMAP4.error(f"cannot select folder {p.folder!r}: {data!r}")
        _, values = self.conn.response("UIDVALIDITY")
        if not values or values[0] is None:
            raise imaplib.IMAP4.error("the server did not announce UIDVALIDITY")
        return int(values[0])

    def uids_after(self, last_uid: int) -> list[int]:
        assert self.conn is not None
        status, data = self.conn.uid("SEARCH", None, f"UID {last_uid + 1}:*")
        if status != "OK":
            raise imaplib.IMAP4.error(f"UID SEARCH failed: {data!r}")
        # "n:*" always matches the last message, even when its UID is below n.
        return sorted({uid for uid in (int(x) for x in b" ".join(d for d in data if d).split()) if uid > last_uid})

    def fetch(self, uid: int) -> bytes | None:
        """The whole message, without setting \\Seen; None when it was expunged meanwhile."""
        assert self.conn is not None
        status, data = self.conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
        if status != "OK":
            raise imaplib.IMAP4.error(f"UID FETCH {uid} failed: {data!r}")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                match = _UID_RE.search(item[0])
                if match is None or int(match.group(1)) == uid:
                    return bytes(item[1])
        return None

    def ensure_folder(self, folder: str) -> None:
        assert self.conn is not None
        status, _ = self.conn.create(_quote(folder))  # NO when it exists already: fine
        del status

    def done(self, uid: int, move_to: str) -> None:
        """Flag a filed mail \\Seen; with ``move_to``, move it there too."""
        assert self.conn is not None
        status, data = self.conn.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Seen)")
        if status != "OK":
            raise imaplib.IMAP4.error(f"UID STORE {uid} failed: {data!r}")
        if not move_to:
            return
        capabilities = {c.upper() for c in self.conn.capabilities}
        if "MOVE" in capabilities:
            status, data = self.conn.uid("MOVE", str(uid), _quote(move_to))
            if status != "OK":
                raise imaplib.IMAP4.error(f"UID MOVE {uid} failed: {data!r}")
            return
        status, data = self.conn.uid("COPY", str(uid), _quote(move_to))
        if status != "OK":
            raise imaplib.IMAP4.error(f"UID COPY {uid} failed: {data!r}")
        self.conn.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
        if "UIDPLUS" in capabilities:
            self.conn.uid("EXPUNGE", str(uid))
        else:
            self.conn.expunge()

    def close(self) -> None:
        if self.conn is None:
            return
        with contextlib.suppress(Exception):
            self.conn.logout()
        self.conn = None


class ImapPoller:
    """Polls every active mailbox with IMAP settings (see the module docstring)."""

    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        ingest: IngestFunc | None = None,
        name: str | None = None,
        tick_seconds: float = 1.0,
        max_concurrent: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.factory = factory
        self.settings = settings
        self._ingest = ingest
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.tick_seconds = tick_seconds
        self.clock = clock
        self._semaphore = asyncio.Semaphore(max(1, max_concurrent))
        self._next_due: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def ingest(self, db: AsyncSession, mailbox: Mailbox, raw: bytes) -> Any:
        func = self._ingest or ingest_module.ingest_raw_message  # looked up late: tests may swap it
        return await func(db, self.settings, mailbox, raw, source="imap")

    # --- the lease ---------------------------------------------------------------------------------
    async def _acquire(self, db: AsyncSession, mailbox_id: int) -> bool:
        now = utcnow()
        until = now + timedelta(seconds=max(30, self.settings.email_imap_lease_seconds))
        stmt = (
            dialect_insert(db)(ImapLease)
            .values(mailbox_id=mailbox_id, holder=self.name, locked_until=until)
            .on_conflict_do_update(
                index_elements=[ImapLease.mailbox_id],
                set_={"holder": self.name, "locked_until": until},
                where=or_(ImapLease.locked_until < now, ImapLease.holder == self.name),
            )
            .returning(ImapLease.mailbox_id)
        )
        return (await db.execute(stmt)).scalar_one_or_none() is not None

    async def _renew(self, db: AsyncSession, mailbox_id: int) -> None:
        until = utcnow() + timedelta(seconds=max(30, self.settings.email_imap_lease_seconds))
        result = await db.execute(
            update(ImapLease)
            .where(ImapLease.mailbox_id == mailbox_id, ImapLease.holder == self.name)
            .values(locked_until=until)
        )
        if result.rowcount == 0:
            raise LeaseLost(f"mailbox {mailbox_id} is polled by another process now")

    async def _release(self, mailbox_id: int, error: str | None) -> None:
        now = utcnow()
        async with self.factory() as db, db.begin():
            await db.execute(
                update(ImapLease)
                .where(ImapLease.mailbox_id == mailbox_id, ImapLease.holder == self.name)
                .values(locked_until=now, last_poll_at=now, last_error=error)
            )

    # --- one poll ----------------------------------------------------------------------------------
    async def poll_mailbox(self, mailbox_id: int) -> PollResult:
        """Poll one mailbox now (if no other process is polling it)."""
        result = PollResult(mailbox_id)
        async with self.factory() as db, db.begin():
            mailbox = await db.get(Mailbox, mailbox_id)
            if mailbox is None or not mailbox.active or not mailbox.imap_host:
                return result
            params = ImapParams(
                host=mailbox.imap_host,
                port=mailbox.imap_port,
                tls=mailbox.imap_tls,
                username=mailbox.imap_username,
                password=mailbox.imap_password,
                folder=mailbox.imap_folder or "INBOX",
            )
            known_validity, last_uid = mailbox.imap_uidvalidity, mailbox.imap_last_uid or 0
            code = mailbox.code
            if not await self._acquire(db, mailbox_id):
                return result
        result.polled = True
        result.last_uid = last_uid
        conn = ImapConnection(params, timeout=self.settings.email_imap_timeout_seconds)
        try:
            await self._poll(conn, params, mailbox_id, known_validity, last_uid, result)
        except LeaseLost as error:
            result.error = str(error)
            log.warning("IMAP lease lost", extra={"mailbox": code})
        except Exception as error:  # noqa: BLE001 - connection, server or set-up trouble: back off, never crash
            result.error = params.scrub(f"{type(error).__name__}: {error}")[:500]
            log.warning(
                "IMAP poll failed",
                extra={
                    "mailbox": code,
                    "host": params.host,
                    "port": params.port,
                    "username": params.username,
                    "error": result.error,
                },
            )
        finally:
            await asyncio.to_thread(conn.close)
            with contextlib.suppress(Exception):  # the database may be away: the lease just runs out
                await self._release(mailbox_id, result.error)
        if result.fetched or result.failed_uids:
            log.info(
                "IMAP poll",
                extra={
                    "mailbox": code,
                    "fetched": result.fetched,
                    "outcomes": dict(result.outcomes),
                    "failed": len(result.failed_uids),
                },
            )
        return result

    async def _poll(
        self,
        conn: ImapConnection,
        params: ImapParams,
        mailbox_id: int,
        known_validity: int | None,
        last_uid: int,
        result: PollResult,
    ) -> None:
        validity = await asyncio.to_thread(conn.open)
        if validity != known_validity:
            if known_validity is not None:
                log.warning(
                    "IMAP UIDVALIDITY changed: reading the folder again from the start (dedupe keeps mails once)",
                    extra={"mailbox_id": mailbox_id, "old": known_validity, "new": validity},
                )
                result.uidvalidity_reset = True
            last_uid = 0
            async with self.factory() as db, db.begin():
                await db.execute(
                    update(Mailbox).where(Mailbox.id == mailbox_id).values(imap_uidvalidity=validity, imap_last_uid=0)
                )
        result.last_uid = last_uid
        move_to = self.settings.email_imap_processed_folder.strip()
        if move_to and move_to != params.folder:
            await asyncio.to_thread(conn.ensure_folder, move_to)
        else:
            move_to = ""
        uids = (await asyncio.to_thread(conn.uids_after, last_uid))[: max(1, self.settings.email_imap_batch_size)]
        contiguous = True  # every UID up to here is filed: the cursor may move
        for uid in uids:
            raw = await asyncio.to_thread(conn.fetch, uid)
            if raw is None:  # expunged by someone else between SEARCH and FETCH
                if contiguous:
                    await self._advance(mailbox_id, validity, uid)
                    result.last_uid = uid
                continue
            result.fetched += 1
            try:
                async with self.factory() as db, db.begin():
                    mailbox = await db.get(Mailbox, mailbox_id)
                    assert mailbox is not None
                    outcome = await self.ingest(db, mailbox, raw)
                    if contiguous:
                        await self._advance_in(db, mailbox_id, validity, uid)
                    await self._renew(db, mailbox_id)
            except LeaseLost:
                raise
            except Exception as error:  # noqa: BLE001 - infrastructure: retried next poll, the others go on
                contiguous = False
                result.failed_uids.append(uid)
                log.warning(
                    "IMAP mail not filed; tried again next poll",
                    extra={"mailbox_id": mailbox_id, "uid": uid, "error": f"{type(error).__name__}: {error}"[:500]},
                )
                continue
            result.outcomes[str(getattr(outcome, "outcome", "filed"))] += 1
            if contiguous:
                result.last_uid = uid
            await asyncio.to_thread(conn.done, uid, move_to)

    async def _advance_in(self, db: AsyncSession, mailbox_id: int, validity: int, uid: int) -> None:
        await db.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id, Mailbox.imap_uidvalidity == validity, Mailbox.imap_last_uid < uid)
            .values(imap_last_uid=uid)
        )

    async def _advance(self, mailbox_id: int, validity: int, uid: int) -> None:
        async with self.factory() as db, db.begin():
            await self._advance_in(db, mailbox_id, validity, uid)

    # --- the schedule ------------------------------------------------------------------------------
    def _backoff(self, mailbox_id: int, poll_seconds: int, failed: bool) -> float:
        if not failed:
            self._failures.pop(mailbox_id, None)
            return float(poll_seconds)
        failures = self._failures.get(mailbox_id, 0) + 1
        self._failures[mailbox_id] = failures
        return float(min(self.settings.email_imap_max_backoff_seconds, poll_seconds * 2 ** min(failures, 20)))

    async def _poll_scheduled(self, mailbox_id: int, poll_seconds: int) -> PollResult:
        async with self._semaphore:
            result = await self.poll_mailbox(mailbox_id)
        delay = self._backoff(mailbox_id, max(1, poll_seconds), failed=result.error is not None)
        self._next_due[mailbox_id] = self.clock() + delay
        return result

    async def poll_due(self) -> list[PollResult]:
        """Poll every mailbox whose time has come (concurrently, a few at a time)."""
        async with self.factory() as db:
            rows = (
                await db.execute(
                    select(Mailbox.id, Mailbox.poll_seconds).where(Mailbox.active.is_(True), Mailbox.imap_host != "")
                )
            ).all()
        now = self.clock()
        due = [(mailbox_id, seconds) for mailbox_id, seconds in rows if self._next_due.get(mailbox_id, 0.0) <= now]
        if not due:
            return []
        return list(await asyncio.gather(*(self._poll_scheduled(m, s) for m, s in due)))

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_due()
            except Exception:  # noqa: BLE001 - database away: keep trying, recover when it returns
                log.exception("IMAP poll loop failed")
            await asyncio.sleep(self.tick_seconds)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kefu-imap-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
