"""The routing sweep loop inside each app process: expired offers, after-contact work past its limit and
waiting contacts whose review moment came are handled about once a second.

Every process runs one; that is safe (each item is claimed with a compare-and-set, and on PostgreSQL the
rows are split with SKIP LOCKED) and it is what makes a dead process harmless: its leases expire and any
survivor's sweep routes those contacts again. A job per sweep would add a row to the job table every
second, so this is a loop of its own rather than a periodic job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kefu.routing import service

log = logging.getLogger(__name__)


class RoutingSweeper:
    def __init__(self, factory: async_sessionmaker[AsyncSession], *, every_seconds: float = 1.0) -> None:
        self.factory = factory
        self.every_seconds = every_seconds
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> service.SweepResult:
        return await service.sweep_in_steps(self.factory)

    async def _loop(self) -> None:
        while True:
            try:
                result = await self.sweep_once()
                busy = result.items >= service.SWEEP_BATCH
            except Exception:  # noqa: BLE001 - database away or a lost race: try again next round
                log.exception("routing sweep failed")
                busy = False
            if not busy:
                await asyncio.sleep(self.every_seconds)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kefu-routing-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
