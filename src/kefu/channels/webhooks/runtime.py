"""Background parts of the webhook channels started with the app: none of their own.

Outbound deliveries are durable jobs (``webhooks.deliver``) run by the app's job worker
(``kefu.core.jobs.Worker``), so any number of processes share them safely; importing ``service``
(done by ``api``) registers the job handler and the commit hook that turns events into deliveries.
"""

from __future__ import annotations

from typing import Any

from kefu.channels.webhooks import service  # noqa: F401 - registers the job handler and the event bridge


async def start(app: Any) -> None:
    return None


async def stop(app: Any) -> None:
    return None
