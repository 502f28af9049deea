"""Idempotency-Key on API writes: a retried request never creates a second object (kefu.core.idempotency)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from sqlalchemy import func, select, update

from conftest import is_postgres, unique
from kefu.core.idempotency import IdempotencyRecord, prune
from kefu.core.jobs import Job, enqueue_periodic
from kefu.db.base import utcnow
from kefu.identity.models import Skill


async def _skills_named(app, name: str) -> int:  # noqa: ANN001
    async with app.state.session_factory() as db:
        return await db.scalar(select(func.count()).select_from(Skill).where(Skill.name == name)) or 0


async def _token_client(app, make) -> httpx.AsyncClient:  # noqa: ANN001
    admin = await make.user("admin")
    token = await make.token(admin)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50002))
    return httpx.AsyncClient(transport=transport, base_url="http://t", headers={"Authorization": f"Bearer {token}"})


async def test_a_retry_replays_the_first_answer_and_creates_nothing(app, make) -> None:  # noqa: ANN001
    async with await _token_client(app, make) as client:
        name, key = unique("skill"), unique("key")
        first = await client.post("/api/v1/skills", json={"name": name}, headers={"Idempotency-Key": key})
        assert first.status_code == 201, first.text
        again = await client.post("/api/v1/skills", json={"name": name}, headers={"Idempotency-Key": key})
        assert again.status_code == 201
        assert again.content == first.content
        assert again.headers["Idempotent-Replayed"] == "true"
        assert await _skills_named(app, name) == 1


async def test_the_same_key_for_another_request_is_refused(app, make) -> None:  # noqa: ANN001
    async with await _token_client(app, make) as client:
        key = unique("key")
        first = await client.post("/api/v1/skills", json={"name": unique("s")}, headers={"Idempotency-Key": key})
        assert first.status_code == 201
        other_name = unique("s")
        other = await client.post("/api/v1/skills", json={"name": other_name}, headers={"Idempotency-Key": key})
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        assert await _skills_named(app, other_name) == 0


async def test_keys_belong_to_their_user(app, make) -> None:  # noqa: ANN001
    key = unique("key")
    async with await _token_client(app, make) as one, await _token_client(app, make) as two:
        a, b = unique("s"), unique("s")
        assert (await one.post("/api/v1/skills", json={"name": a}, headers={"Idempotency-Key": key})).status_code == 201
        assert (await two.post("/api/v1/skills", json={"name": b}, headers={"Idempotency-Key": key})).status_code == 201
        assert await _skills_named(app, a) == 1 and await _skills_named(app, b) == 1


async def test_a_refused_request_leaves_no_key_so_the_corrected_retry_works(app, make) -> None:  # noqa: ANN001
    async with await _token_client(app, make) as client:
        key = unique("key")
        bad = await client.post("/api/v1/skills", json={"name": ""}, headers={"Idempotency-Key": key})
        assert bad.status_code == 422
        async with app.state.session_factory() as db:
            assert await db.scalar(select(IdempotencyRecord).where(IdempotencyRecord.key == key)) is None
        # A request refused after its body was read (a unique clash inside the service) leaves none either.
        name = unique("s")
        assert (await client.post("/api/v1/skills", json={"name": name})).status_code == 201
        clash = await client.post("/api/v1/skills", json={"name": name}, headers={"Idempotency-Key": key})
        assert clash.status_code == 409
        fixed = await client.post("/api/v1/skills", json={"name": unique("s")}, headers={"Idempotency-Key": key})
        assert fixed.status_code == 201


async def test_malformed_keys_are_refused(app, make) -> None:  # noqa: ANN001
    async with await _token_client(app, make) as client:
        for key in ("x" * 256, "tab\there"):
            name = unique("s")
            refused = await client.post("/api/v1/skills", json={"name": name}, headers={"Idempotency-Key": key})
            assert refused.status_code == 400, key
            assert refused.json()["error"]["code"] == "bad_idempotency_key"
            assert await _skills_named(app, name) == 0


async def test_a_request_still_running_answers_409(app, make) -> None:  # noqa: ANN001
    async with await _token_client(app, make) as client:
        key, name = unique("key"), unique("s")
        assert (
            await client.post("/api/v1/skills", json={"name": name}, headers={"Idempotency-Key": key})
        ).status_code == 201
        async with app.state.session_factory() as db, db.begin():
            # As if the answer had not been stored yet (request in flight, or its process died).
            await db.execute(update(IdempotencyRecord).where(IdempotencyRecord.key == key).values(status_code=None))
        again = await client.post("/api/v1/skills", json={"name": name}, headers={"Idempotency-Key": key})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "idempotency_key_in_progress"


async def test_concurrent_requests_with_one_key_create_one_object(app, make) -> None:  # noqa: ANN001
    async with await _token_client(app, make) as client:
        key, name = unique("key"), unique("s")

        async def send() -> httpx.Response:
            return await client.post("/api/v1/skills", json={"name": name}, headers={"Idempotency-Key": key})

        answers = await asyncio.gather(*(send() for _ in range(6)))
        codes = sorted(a.status_code for a in answers)
        assert all(code in (201, 409) for code in codes), codes
        assert 201 in codes
        assert await _skills_named(app, name) == 1
        # Whoever got 409 retries and gets the stored answer.
        retry = await send()
        assert retry.status_code == 201 and retry.json()["name"] == name
    if is_postgres():
        assert codes.count(201) >= 1


async def test_old_keys_are_pruned_by_a_periodic_job(app, make) -> None:  # noqa: ANN001
    async with await _token_client(app, make) as client:
        key = unique("key")
        assert (
            await client.post("/api/v1/skills", json={"name": unique("s")}, headers={"Idempotency-Key": key})
        ).status_code == 201
    async with app.state.session_factory() as db, db.begin():
        await db.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == key)
            .values(created_at=utcnow() - timedelta(days=3))
        )
    async with app.state.session_factory() as db, db.begin():
        await prune(db, Job(kind="idempotency.prune", payload={}), app.state.settings)
    async with app.state.session_factory() as db:
        assert await db.scalar(select(IdempotencyRecord).where(IdempotencyRecord.key == key)) is None
        now = utcnow()
    for _ in range(2):  # two workers in the same period enqueue one job
        async with app.state.session_factory() as db, db.begin():
            await enqueue_periodic(db, now)
    async with app.state.session_factory() as db:
        period = int(now.timestamp()) // 3600
        jobs = await db.scalar(
            select(func.count()).select_from(Job).where(Job.idempotency_key == f"periodic:idempotency.prune:{period}")
        )
        assert jobs == 1
