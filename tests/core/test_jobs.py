"""The durable job table (outbox): idempotent enqueue inside the caller's transaction, claims as leases,
retries with exponential backoff, dead jobs, lease expiry, the worker loop, and — on PostgreSQL —
concurrent claimers that never claim the same job (``FOR UPDATE SKIP LOCKED``).

These tests run against a database of their own (same backend, same migrations) because a claim takes
*every* due job: sharing the session database would let them claim other tests' jobs and vice versa.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conftest import is_postgres
from kefu.core.jobs import (
    Job,
    JobStatus,
    Worker,
    backoff_seconds,
    claim_jobs,
    enqueue,
    job_handler,
    run_due_jobs,
    run_job,
)
from kefu.db.base import utcnow
from kefu.db.engine import make_engine, make_session_factory
from kefu.db.migrate import upgrade
from kefu.settings import Settings

WAIT = 10.0
postgres_only = pytest.mark.skipif(not is_postgres(), reason="needs the PostgreSQL backend")

# --- test-only handlers --------------------------------------------------------------------------
ran: list[dict] = []


@job_handler("test.jobs.ok")
async def _ok(db: AsyncSession, job: Job, _settings: Settings) -> None:
    ran.append(job.payload)
    # Handlers run inside the job's transaction: this follow-up commits together with "done".
    await enqueue(db, "test.jobs.followup", {"after": job.id}, idempotency_key=f"followup-{job.id}")


@job_handler("test.jobs.fail")
async def _fail(db: AsyncSession, job: Job, _settings: Settings) -> None:
    # ... and this one is rolled back together with the failure.
    await enqueue(db, "test.jobs.followup", {"after": job.id}, idempotency_key=f"followup-{job.id}")
    raise ValueError(f"boom on attempt {job.attempts}")


# --- an isolated database --------------------------------------------------------------------------
async def _pg_execute(url: str, sql: str) -> None:
    import asyncpg

    from kefu.core.events import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def jobs_database_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not is_postgres():
        url = f"sqlite+aiosqlite:///{Path(tmp_path_factory.mktemp('jobs')) / 'jobs.db'}"
        upgrade(url)
        yield url
        return
    name = f"kefu_jobs_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_execute(database_url, f'CREATE DATABASE "{name}"'))
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(_pg_execute(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
async def factory(jobs_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(jobs_database_url)
    yield make_session_factory(engine)
    await engine.dispose()


@pytest.fixture(autouse=True)
async def empty_job_table(factory) -> None:  # noqa: ANN001
    async with factory() as db, db.begin():
        await db.execute(delete(Job))
    ran.clear()


async def load(factory, job_id: int) -> Job:  # noqa: ANN001
    async with factory() as db:
        job = await db.get(Job, job_id)
        assert job is not None
        return job


async def count(factory, *where) -> int:  # noqa: ANN001, ANN002
    async with factory() as db:
        return await db.scalar(select(func.count()).select_from(Job).where(*where))


async def make_due(factory, job_id: int) -> None:  # noqa: ANN001
    """Stands in for waiting out the backoff (up to an hour): moves run_at to now."""
    async with factory() as db, db.begin():
        await db.execute(update(Job).where(Job.id == job_id).values(run_at=utcnow()))


# --- enqueue -------------------------------------------------------------------------------------
async def test_same_idempotency_key_gives_one_job(factory) -> None:  # noqa: ANN001
    async with factory() as db, db.begin():
        first = await enqueue(db, "test.jobs.ok", {"n": 1}, idempotency_key="order-1-confirmation")
    async with factory() as db, db.begin():
        again = await enqueue(db, "test.jobs.ok", {"n": 2}, idempotency_key="order-1-confirmation")
        same_tx = await enqueue(db, "test.jobs.ok", {"n": 3}, idempotency_key="order-1-confirmation")
    assert first.id == again.id == same_tx.id
    assert again.payload == {"n": 1}  # the first one wins; nothing is overwritten
    async with factory() as db, db.begin():
        other = await enqueue(db, "test.jobs.ok", {}, idempotency_key="order-2-confirmation")
        unkeyed = [await enqueue(db, "test.jobs.ok") for _ in range(2)]
    assert len({first.id, other.id, *(j.id for j in unkeyed)}) == 4
    assert await count(factory) == 4


async def test_concurrent_enqueues_of_one_key_give_one_job(factory) -> None:  # noqa: ANN001
    async def one(n: int) -> int:
        async with factory() as db, db.begin():
            return (await enqueue(db, "test.jobs.ok", {"n": n}, idempotency_key="race")).id

    ids = await asyncio.gather(*(one(n) for n in range(5)))
    assert len(set(ids)) == 1
    assert await count(factory, Job.idempotency_key == "race") == 1


async def test_rollback_drops_the_job(factory) -> None:  # noqa: ANN001
    # The job is the first write of the transaction (on SQLite a savepoint here used to commit it early).
    with pytest.raises(RuntimeError):
        async with factory() as db, db.begin():
            await enqueue(db, "test.jobs.ok", {"n": 1}, idempotency_key="rolled-back")
            await enqueue(db, "test.jobs.ok", {"n": 2})
            raise RuntimeError("the change failed, so its mail must not go out")
    assert await count(factory) == 0
    # The key is free again afterwards.
    async with factory() as db, db.begin():
        job = await enqueue(db, "test.jobs.ok", {"n": 3}, idempotency_key="rolled-back")
    assert (await load(factory, job.id)).payload == {"n": 3}


# --- claim and run -------------------------------------------------------------------------------
async def test_claim_and_run_success(factory, settings) -> None:  # noqa: ANN001
    async with factory() as db, db.begin():
        job = await enqueue(db, "test.jobs.ok", {"ticket_id": 7})
        later = await enqueue(db, "test.jobs.ok", {"ticket_id": 8}, run_at=utcnow() + timedelta(hours=1))
    async with factory() as db, db.begin():
        claimed = await claim_jobs(db, worker="w1", lease_seconds=300)
    assert [j.id for j in claimed] == [job.id]  # the future one is not due
    assert claimed[0].status == JobStatus.running and claimed[0].locked_by == "w1"
    assert claimed[0].attempts == 1 and claimed[0].locked_until > utcnow()
    async with factory() as db, db.begin():
        assert await claim_jobs(db, worker="w2") == []  # leased to w1

    await run_job(factory, claimed[0], settings)
    done = await load(factory, job.id)
    assert done.status == JobStatus.done
    assert done.finished_at is not None and done.locked_until is None and done.last_error is None
    assert ran == [{"ticket_id": 7}]
    # The handler's own write committed with it.
    assert await count(factory, Job.kind == "test.jobs.followup") == 1
    assert (await load(factory, later.id)).status == JobStatus.queued

    # run_due_jobs = claim + run; it now runs the follow-up (no handler: a retry, see below) only.
    assert await run_due_jobs(factory, settings, worker="w1") == 1
    assert await run_due_jobs(factory, settings, worker="w1") == 0


async def test_failure_retries_with_exponential_backoff_then_dies(factory, settings) -> None:  # noqa: ANN001
    assert [backoff_seconds(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_seconds(30) == 3600  # capped at an hour
    async with factory() as db, db.begin():
        job = await enqueue(db, "test.jobs.fail", {"n": 1}, max_attempts=3)

    previous_run_at = None
    for attempt in (1, 2):
        before = utcnow()
        assert await run_due_jobs(factory, settings, worker="w") == 1
        after = utcnow()
        retried = await load(factory, job.id)
        assert retried.status == JobStatus.queued
        assert retried.attempts == attempt
        assert f"boom on attempt {attempt}" in retried.last_error
        assert retried.locked_until is None and retried.finished_at is None
        # Scheduled, not run again at once: 10 s after the first failure, 20 s after the second.
        delay = timedelta(seconds=backoff_seconds(attempt))
        assert before + delay <= retried.run_at <= after + delay
        if previous_run_at is not None:
            assert retried.run_at > previous_run_at
        previous_run_at = retried.run_at
        assert await run_due_jobs(factory, settings, worker="w") == 0  # not due yet
        await make_due(factory, job.id)

    assert await run_due_jobs(factory, settings, worker="w") == 1
    dead = await load(factory, job.id)
    assert dead.status == JobStatus.dead
    assert dead.attempts == 3 and dead.finished_at is not None
    assert "ValueError: boom on attempt 3" in dead.last_error
    # Dead jobs stay for an operator; no worker picks them up again.
    await make_due(factory, job.id)
    assert await run_due_jobs(factory, settings, worker="w") == 0
    # Every failed attempt rolled back the handler's writes.
    assert await count(factory, Job.kind == "test.jobs.followup") == 0


async def test_unknown_kind_is_retried_then_dead(factory, settings) -> None:  # noqa: ANN001
    async with factory() as db, db.begin():
        job = await enqueue(db, "test.jobs.nobody-handles-this", {}, max_attempts=2)
    assert await run_due_jobs(factory, settings, worker="w") == 1
    retried = await load(factory, job.id)
    assert retried.status == JobStatus.queued and retried.attempts == 1
    assert "no handler registered for job kind 'test.jobs.nobody-handles-this'" in retried.last_error
    assert retried.run_at > utcnow()
    await make_due(factory, job.id)
    assert await run_due_jobs(factory, settings, worker="w") == 1
    dead = await load(factory, job.id)
    assert dead.status == JobStatus.dead and dead.attempts == 2


async def test_expired_lease_is_claimed_again(factory, settings) -> None:  # noqa: ANN001
    async with factory() as db, db.begin():
        job = await enqueue(db, "test.jobs.ok", {"n": 1})
    async with factory() as db, db.begin():
        [claimed] = await claim_jobs(db, worker="worker-that-dies", lease_seconds=300)
    # The worker "dies" here: it never runs the job, never reports back.
    async with factory() as db, db.begin():
        assert await claim_jobs(db, worker="w2") == []  # the lease still holds
    async with factory() as db, db.begin():  # stands in for the 300 s passing
        await db.execute(update(Job).where(Job.id == job.id).values(locked_until=utcnow() - timedelta(seconds=1)))
    async with factory() as db, db.begin():
        [reclaimed] = await claim_jobs(db, worker="w2", lease_seconds=300)
    assert reclaimed.id == claimed.id
    assert reclaimed.locked_by == "w2" and reclaimed.attempts == 2
    await run_job(factory, reclaimed, settings)
    assert (await load(factory, job.id)).status == JobStatus.done
    assert ran == [{"n": 1}]


async def test_a_job_whose_worker_dies_on_every_attempt_ends_dead(factory) -> None:  # noqa: ANN001
    async with factory() as db, db.begin():
        job = await enqueue(db, "test.jobs.ok", {"n": 2}, max_attempts=2)
    for attempt in (1, 2):
        async with factory() as db, db.begin():
            [claimed] = await claim_jobs(db, worker=f"crasher-{attempt}", lease_seconds=300)
            assert claimed.id == job.id and claimed.attempts == attempt
        async with factory() as db, db.begin():  # the worker crashed; its lease runs out
            await db.execute(update(Job).where(Job.id == job.id).values(locked_until=utcnow() - timedelta(seconds=1)))
    async with factory() as db, db.begin():
        assert await claim_jobs(db, worker="w3") == []
    dead = await load(factory, job.id)
    assert dead.status == JobStatus.dead and "lease" in dead.last_error


async def test_worker_loop_runs_due_jobs(factory, settings) -> None:  # noqa: ANN001
    worker = Worker(factory, settings, poll_seconds=0.05)
    worker.start()
    try:
        async with factory() as db, db.begin():
            job = await enqueue(db, "test.jobs.ok", {"from": "worker"})
        worker.wake()
        deadline = time.monotonic() + WAIT
        while (await load(factory, job.id)).status != JobStatus.done:
            assert time.monotonic() < deadline, "the worker did not run the job"
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
    assert {"from": "worker"} in ran
    assert (await load(factory, job.id)).locked_by == worker.name


# --- concurrent claimers -------------------------------------------------------------------------
async def test_concurrent_claimers_never_share_a_job(factory) -> None:  # noqa: ANN001
    """Four claimers, each on its own connection, race for 200 jobs: every job claimed exactly once.
    (SQLite serialises the claims; PostgreSQL runs them at once with SKIP LOCKED.)"""
    async with factory() as db, db.begin():
        expected = {(await enqueue(db, "test.jobs.ok", {"n": n})).id for n in range(200)}

    async def claimer(name: str) -> list[int]:
        mine: list[int] = []
        while True:
            async with factory() as db, db.begin():
                batch = await claim_jobs(db, worker=name, limit=7)
                await asyncio.sleep(0.005)  # hold the row locks a moment so the claims overlap
            mine.extend(j.id for j in batch)
            if not batch and await count(factory, Job.status == JobStatus.queued) == 0:
                return mine

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
    everything = [job_id for ids in results for job_id in ids]
    assert len(everything) == len(set(everything)), "a job was claimed twice"
    assert set(everything) == expected
    # The table agrees with what each claimer was told.
    async with factory() as db:
        owners = dict((await db.execute(select(Job.id, Job.locked_by))).all())
    for i, ids in enumerate(results):
        assert all(owners[job_id] == f"w{i}" for job_id in ids)


@postgres_only
async def test_skip_locked_claims_around_an_open_claim(factory) -> None:  # noqa: ANN001
    """While one claim's transaction is still open, another claimer is not blocked by its row locks:
    it skips them and takes the next jobs (without SKIP LOCKED this would wait for ever here)."""
    async with factory() as db, db.begin():
        for n in range(10):
            await enqueue(db, "test.jobs.ok", {"n": n})
    async with factory() as first, first.begin():
        a = await claim_jobs(first, worker="a", limit=5)
        async with factory() as second, second.begin():
            b = await asyncio.wait_for(claim_jobs(second, worker="b", limit=5), timeout=WAIT)
            backend_pids = {
                await first.scalar(text("SELECT pg_backend_pid()")),
                await second.scalar(text("SELECT pg_backend_pid()")),
            }
    assert len(backend_pids) == 2  # really two connections
    assert len(a) == len(b) == 5
    assert not {j.id for j in a} & {j.id for j in b}
