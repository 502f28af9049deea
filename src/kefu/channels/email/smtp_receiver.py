"""The built-in SMTP receiver (aiosmtpd) for inbound mail.

- ``RCPT TO`` is accepted only for the address of an active mailbox (others: 550), at most
  ``MAX_RECIPIENTS`` per mail (452 above).
- Size: ``SIZE`` is announced and a mail over ``email_max_message_bytes`` is refused with 552 (in
  ``MAIL FROM ... SIZE=`` or while the data arrives), so the sender keeps it and reports it.
- ``DATA``: the mail is filed by ``ingest_raw_message`` once per recipient mailbox, each in its own
  transaction; 250 is answered only after every commit, so an accepted mail is never lost. A database
  failure answers 451 (the sender retries; the retry is deduped by Message-ID). A bad mail is not an
  error here: ingest quarantines it and the receiver answers 250.
Off by default (``email_smtp_port`` 0); ``runtime.py`` starts it with the app.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kefu.channels.email.ingest import ingest_raw_message
from kefu.channels.email.models import Mailbox
from kefu.core.events import bind_bus
from kefu.settings import Settings

log = logging.getLogger(__name__)
MAX_RECIPIENTS = 100


class _Protocol(SMTP):
    # RFC 5321 allows 1000 octets per line; real mail (and junk) breaks that. A longer line is read,
    # not refused: ingest decides what the mail is, and quarantines it when it is bad.
    line_length_limit = 1024 * 1024


class _Handler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            mailbox_id = await self.receiver.mailbox_id_for(address)
        except Exception:  # noqa: BLE001 - the database is away: the sender tries again later
            log.exception("SMTP recipient lookup failed")
            return "451 4.3.0 Temporary failure, try again later"
        if mailbox_id is None:
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content or b""
        if isinstance(raw, str):  # pragma: no cover - decode_data is off
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            await self.receiver.deliver(raw, envelope.rcpt_tos)
        except Exception:  # noqa: BLE001 - nothing committed for this recipient: the sender retries
            log.exception("SMTP delivery could not be filed")
            return "451 4.3.0 Temporary failure, try again later"
        return "250 2.0.0 OK: filed"


class SmtpReceiver:
    """``await SmtpReceiver(settings, session_factory).start()``; ``stop()`` at shutdown.

    ``port``: ``None`` means ``settings.email_smtp_port`` (0 there: the receiver stays off and
    ``start`` returns False); an explicit 0 binds a free port (tests), read back from ``.port``."""

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        host: str | None = None,
        port: int | None = None,
        event_bus: Any = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        # The app's event bus (``app.state.event_bus``): the desks hear of new mail cases at once.
        self.event_bus = event_bus
        self.host = host if host is not None else settings.email_smtp_host
        self._explicit_port = port is not None
        self.port = port if port is not None else settings.email_smtp_port
        self._server: asyncio.AbstractServer | None = None
        self.delivered = 0  # mails filed (per recipient mailbox), for tests and the benchmark

    @property
    def enabled(self) -> bool:
        return self._explicit_port or self.port != 0

    @property
    def running(self) -> bool:
        return self._server is not None

    def _protocol(self) -> SMTP:
        return _Protocol(
            _Handler(self),
            data_size_limit=self.settings.email_max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.settings.email_smtp_hostname or None,
            ident="kefu",
            timeout=300,
        )

    async def start(self) -> bool:
        if not self.enabled or self._server is not None:
            return self._server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host=self.host, port=self.port)
        sockets = self._server.sockets or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("SMTP receiver listening", extra={"host": self.host, "port": self.port})
        return True

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> SmtpReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def mailbox_id_for(self, address: str, *, active_only: bool = True) -> int | None:
        address = (address or "").strip().strip("<>").lower()
        if not address:
            return None
        stmt = select(Mailbox.id).where(func.lower(Mailbox.address) == address)
        if active_only:
            stmt = stmt.where(Mailbox.active.is_(True))
        async with self.session_factory() as db:
            return await db.scalar(stmt)

    async def deliver(self, raw: bytes, recipients: list[str]) -> None:
        """File ``raw`` for every recipient mailbox, each in its own transaction (commit before 250)."""
        seen: set[int] = set()
        for address in recipients:
            # Accepted at RCPT: filed even if the mailbox was deactivated since (never lose a mail).
            mailbox_id = await self.mailbox_id_for(address, active_only=False)
            if mailbox_id is None:
                raise LookupError("the recipient mailbox disappeared")
            if mailbox_id in seen:
                continue
            seen.add(mailbox_id)
            async with self.session_factory() as db:
                if self.event_bus is not None:
                    bind_bus(db, self.event_bus)
                async with db.begin():
                    mailbox = await db.get(Mailbox, mailbox_id)
                    assert mailbox is not None
                    await ingest_raw_message(db, self.settings, mailbox, raw, source="smtp")
            self.delivered += 1
