"""Background part of the phone channel: the gap sweep.

A call's events past a gap in its ``seq`` wait for the missing ones; this loop applies them once they
have waited ``cti_gap_seconds`` (a lost event delays a call, never stops it). Runs in every process
with the job worker; calls another process is sweeping are skipped (SKIP LOCKED on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kefu.channels.cti import service
from kefu.core.events import bind_bus

log = logging.getLogger(__name__)
_TASK = "cti_gap_sweep"


async def sweep_once(app: Any) -> int:
    async with app.state.session_factory() as db, db.begin():
        bind_bus(db, app.state.event_bus)
        return await service.sweep_gaps(db, app.state.settings)


async def _loop(app: Any) -> None:
    interval = max(1.0, app.state.settings.cti_gap_seconds / 2)
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(app)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("cti gap sweep failed")


async def start(app: Any) -> None:
    if not app.state.settings.run_worker:
        return
    setattr(app.state, _TASK, asyncio.create_task(_loop(app)))


async def stop(app: Any) -> None:
    task = getattr(app.state, _TASK, None)
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    setattr(app.state, _TASK, None)
