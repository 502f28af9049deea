"""Starts and stops every channel's background parts (receivers, pollers, sweeps) with the app."""

from __future__ import annotations

import logging
from typing import Any

from kefu.channels.chat import runtime as chat_runtime
from kefu.channels.cti import runtime as cti_runtime
from kefu.channels.email import runtime as email_runtime
from kefu.channels.webhooks import runtime as webhooks_runtime

log = logging.getLogger(__name__)
RUNTIMES = (email_runtime, chat_runtime, cti_runtime, webhooks_runtime)


async def start(app: Any) -> None:
    for runtime in RUNTIMES:
        await runtime.start(app)


async def stop(app: Any) -> None:
    # Reverse order; one channel failing to stop must not keep the others running.
    for runtime in reversed(RUNTIMES):
        try:
            await runtime.stop(app)
        except Exception:  # noqa: BLE001
            log.exception("channel runtime failed to stop", extra={"runtime": runtime.__name__})
