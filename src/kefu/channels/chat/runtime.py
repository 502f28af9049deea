"""The chat sweep, started with the app: every ``chat_sweep_seconds`` one process (a PostgreSQL advisory
lock picks it; SQLite serves one process) sends chats whose agent's connection is gone longer than the
grace period back to the head of their queue, and brings every open chat in line with its contact
(answered, ended, queue closed or unstaffed, maximum wait). The sockets do the same for their own chat
as events arrive; the sweep is what makes it happen when nobody is connected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from kefu.channels.chat import service
from kefu.core.errors import ApiError
from kefu.core.events import bind_bus
from kefu.db.base import utcnow
from kefu.db.claims import one_process

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    requeued: int = 0
    synced: int = 0
    skipped: bool = False


async def _each(factory: Any, bus: Any, ids: list[int], work: Any) -> int:
    done = 0
    for item in ids:
        try:
            async with factory() as db:
                if bus is not None:
                    bind_bus(db, bus)
                async with db.begin():
                    if await work(db, item):
                        done += 1
        except ApiError as exc:  # a lost race or a refused step costs this item only; the next round retries
            log.info("chat sweep item refused", extra={"conversation_id": item, "error": exc.code})
    return done


async def sweep_once(factory: Any, settings: Any, *, bus: Any = None, now: datetime | None = None) -> SweepResult:
    result = SweepResult()
    async with one_process(factory, "kefu.chat.sweep") as claimed:
        if not claimed:
            result.skipped = True
            return result
        moment = now or utcnow()
        async with factory() as db:
            stale = await service.stale_conversations(db, settings, moment)
        result.requeued = await _each(
            factory, bus, stale, lambda db, i: service.requeue_stale(db, settings, i, now=moment)
        )
        async with factory() as db:
            due = await service.needing_sync(db)

        async def changed(db: Any, conv_id: int) -> bool:
            before = await db.scalar(text("SELECT status FROM chat_conversations WHERE id = :i"), {"i": conv_id})
            conv = await service.sync(db, settings, conv_id, now=moment)
            return conv is not None and conv.status != before

        result.synced = await _each(factory, bus, due, changed)
    return result


class ChatSweeper:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        settings = self.app.state.settings
        while True:
            try:
                await sweep_once(self.app.state.session_factory, settings, bus=self.app.state.event_bus)
            except Exception:  # noqa: BLE001 - database away: keep sweeping, recover when it returns
                log.exception("chat sweep failed")
            await asyncio.sleep(max(0.5, float(settings.chat_sweep_seconds)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kefu-chat-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def start(app: Any) -> None:
    if not app.state.settings.run_worker:
        app.state.chat_sweeper = None
        return
    sweeper = ChatSweeper(app)
    sweeper.start()
    app.state.chat_sweeper = sweeper


async def stop(app: Any) -> None:
    sweeper = getattr(app.state, "chat_sweeper", None)
    if sweeper is not None:
        await sweeper.stop()
    hub = getattr(app.state, "chat_hub", None)
    if hub is not None:
        await hub.stop()
