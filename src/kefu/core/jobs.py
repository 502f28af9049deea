"""Durable jobs (the outbox): written in the caller's transaction, run by a worker, retried with backoff.

A job enqueued together with a change commits or rolls back with it, so "send the mail" can never
be lost after the change is saved, nor sent for a change that was rolled back. Claims are leases:
a worker that dies leaves its jobs to be claimed again when the lease runs out. On PostgreSQL any
number of processes claim with ``FOR UPDATE SKIP LOCKED``; SQLite has one writer at a time, and the
claiming UPDATE re-checks that each job is still due, so two claimers never take the same job.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Index, Integer, String, Text, UniqueConstraint, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from kefu.db.base import Base, IdMixin, JsonDoc, UTCDateTime, utcnow
from kefu.settings import Settings

log = logging.getLogger(__name__)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    dead = "dead"  # gave up after max_attempts; kept for an operator to inspect and retry


class Job(IdMixin, Base):
    __tablename__ = "jobs"

    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued, nullable=False)
    # Same key twice -> one job: a retried request or a re-processed event enqueues once.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8, nullable=False)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    locked_by: Mapped[str | None] = mapped_column(String(128))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        Index("ix_jobs_claim", "status", "run_at"),
    )


JobHandler = Callable[[AsyncSession, Job, Settings], Awaitable[None]]
_handlers: dict[str, JobHandler] = {}


def job_handler(kind: str) -> Callable[[JobHandler], JobHandler]:
    """Register the function that runs jobs of ``kind``. It runs inside the job's transaction."""

    def register(func: JobHandler) -> JobHandler:
        _handlers[kind] = func
        return func

    return register


# kind -> interval in seconds, for jobs that run on a schedule (SLA sweeps, pruning).
_periodic: dict[str, int] = {}


def periodic(kind: str, *, every_seconds: int) -> Callable[[JobHandler], JobHandler]:
    """Register a handler that runs every ``every_seconds``. Each worker enqueues the job of the
    current period under a key naming the period, so any number of processes run it once."""

    def register(func: JobHandler) -> JobHandler:
        _periodic[kind] = every_seconds
        return job_handler(kind)(func)

    return register


async def enqueue_periodic(session: AsyncSession, now: datetime | None = None) -> None:
    now = now or utcnow()
    for kind, every in _periodic.items():
        period = int(now.timestamp()) // every
        await enqueue(session, kind, {"period": period}, idempotency_key=f"periodic:{kind}:{period}", max_attempts=1)


def backoff_seconds(attempts: int) -> int:
    """10 s, 20 s, 40 s ... capped at one hour."""
    return int(min(3600, 10 * 2 ** max(0, attempts - 1)))


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    run_at: datetime | None = None,
    max_attempts: int = 8,
) -> Job:
    """Add a job in the caller's transaction. With a key already used, returns the existing job."""
    values = {
        "kind": kind,
        "payload": payload or {},
        "idempotency_key": idempotency_key,
        "run_at": run_at or utcnow(),
        "max_attempts": max_attempts,
    }
    if idempotency_key is None:
        job = Job(**values)
        session.add(job)
        await session.flush()
        return job
    existing = await session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
    if existing is not None:
        return existing
    # ON CONFLICT rather than a savepoint: another transaction may insert the same key between our
    # check and insert, and a SAVEPOINT on SQLite (pysqlite's deferred BEGIN) can commit the caller's
    # transaction early.
    insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    await session.execute(insert(Job).values(**values).on_conflict_do_nothing(index_elements=[Job.idempotency_key]))
    job = await session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
    assert job is not None
    return job


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def claim_jobs(session: AsyncSession, *, worker: str, limit: int = 10, lease_seconds: int = 300) -> list[Job]:
    """Claim due jobs (queued, or running with an expired lease) in the caller's transaction."""
    now = utcnow()
    # A job whose worker dies on every attempt (say, it crashes the process) would otherwise be
    # reclaimed forever: once its last attempt's lease runs out it is dead, like any failed job.
    await session.execute(
        update(Job)
        .where(Job.status == JobStatus.running, Job.locked_until < now, Job.attempts >= Job.max_attempts)
        .values(
            status=JobStatus.dead,
            finished_at=now,
            locked_until=None,
            last_error="the lease of the last attempt expired: its worker stopped or crashed while running it",
        )
        .execution_options(synchronize_session=False)
    )
    due = or_(
        and_(Job.status == JobStatus.queued, Job.run_at <= now),
        and_(Job.status == JobStatus.running, Job.locked_until < now),
    )
    pick = select(Job.id).where(due).order_by(Job.run_at, Job.id).limit(limit)
    if session.bind.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    ids = list((await session.scalars(pick)).all())
    if not ids:
        return []
    lease = now + timedelta(seconds=lease_seconds)
    await session.execute(
        update(Job)
        .where(Job.id.in_(ids), due)
        .values(status=JobStatus.running, locked_by=worker, locked_until=lease, attempts=Job.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    claimed = await session.scalars(
        select(Job).where(Job.id.in_(ids), Job.locked_by == worker).execution_options(populate_existing=True)
    )
    return list(claimed.all())


async def run_job(factory: async_sessionmaker[AsyncSession], job: Job, settings: Settings) -> None:
    """Run one claimed job in its own transaction; record success, retry or death in another."""
    handler = _handlers.get(job.kind)
    error: str | None = None
    if handler is None:
        error = f"no handler registered for job kind {job.kind!r}"
    else:
        try:
            async with factory() as session, session.begin():
                attached = await session.get(Job, job.id)
                assert attached is not None
                await handler(session, attached, settings)
                attached.status = JobStatus.done
                attached.finished_at = utcnow()
                attached.locked_until = None
                attached.last_error = None
            return
        except Exception:  # noqa: BLE001 - any failure of a handler is a retry, never a crash
            error = traceback.format_exc(limit=5)
            log.warning("job failed", extra={"job_id": job.id, "kind": job.kind, "attempt": job.attempts})
    async with factory() as session, session.begin():
        attached = await session.get(Job, job.id)
        assert attached is not None
        attached.last_error = error[-4000:]
        attached.locked_until = None
        if attached.attempts >= attached.max_attempts:
            attached.status = JobStatus.dead
            attached.finished_at = utcnow()
        else:
            attached.status = JobStatus.queued
            attached.run_at = utcnow() + timedelta(seconds=backoff_seconds(attached.attempts))


async def run_due_jobs(
    factory: async_sessionmaker[AsyncSession], settings: Settings, *, worker: str, limit: int = 10
) -> int:
    """Claim and run one batch; returns how many jobs were run."""
    async with factory() as session, session.begin():
        jobs = await claim_jobs(session, worker=worker, limit=limit)
    for job in jobs:
        await run_job(factory, job, settings)
    return len(jobs)


class Worker:
    """The background loop inside each app process (or ``kefu worker``)."""

    def __init__(
        self, factory: async_sessionmaker[AsyncSession], settings: Settings, *, poll_seconds: float = 1.0
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.poll_seconds = poll_seconds
        self.name = worker_name()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        next_schedule = 0.0
        while True:
            try:
                if _periodic and time.monotonic() >= next_schedule:
                    async with self.factory() as session, session.begin():
                        await enqueue_periodic(session)
                    next_schedule = time.monotonic() + min(_periodic.values()) / 2
                ran = await run_due_jobs(self.factory, self.settings, worker=self.name)
            except Exception:  # noqa: BLE001 - database away: keep polling, recover when it returns
                log.exception("job worker poll failed")
                ran = 0
            if ran:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kefu-job-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
