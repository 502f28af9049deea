"""Background parts of the email channel, started and stopped with the app: the built-in SMTP
receiver (when ``email_smtp_port`` is set) and the IMAP poller (in processes that run the worker,
``run_worker``). Importing this module also registers the outbound mail job handler."""

from __future__ import annotations

import logging
from typing import Any

from kefu.channels.email import outbound
from kefu.channels.email.imap import ImapPoller
from kefu.channels.email.smtp_receiver import SmtpReceiver

log = logging.getLogger(__name__)


async def start(app: Any) -> None:
    settings = app.state.settings
    factory = app.state.session_factory
    outbound.configure(settings)
    app.state.email_smtp_receiver = None
    app.state.email_imap_poller = None
    if settings.email_smtp_port:
        receiver = SmtpReceiver(settings, factory)
        try:
            await receiver.start()
        except OSError as error:
            # Another process of this host serves the port already (several app processes): not fatal.
            log.error(
                "SMTP receiver could not listen",
                extra={"host": settings.email_smtp_host, "port": settings.email_smtp_port, "error": str(error)},
            )
        else:
            app.state.email_smtp_receiver = receiver
    if settings.run_worker:
        poller = ImapPoller(factory, settings)
        poller.start()
        app.state.email_imap_poller = poller


async def stop(app: Any) -> None:
    poller = getattr(app.state, "email_imap_poller", None)
    receiver = getattr(app.state, "email_smtp_receiver", None)
    app.state.email_imap_poller = app.state.email_smtp_receiver = None
    try:
        if poller is not None:
            await poller.stop()
    finally:
        if receiver is not None:
            await receiver.stop()
