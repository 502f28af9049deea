"""Each membership stores where the agent stands in the queue by skill (rank_level, proficiency_order),
which orders a contact's candidates. Every change of skills, memberships or a queue's requirement keeps
it equal to the policy's own figures; the migration fills it the same way; and a wrong stored rank can
only reorder eligible agents, never make an ineligible one eligible."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sqlalchemy import select, update
from tests.routing.routing_support import clock, contact, make_agent, make_queue, set_presence

from kefu.core.audit import Actor
from kefu.core.policy import Principal
from kefu.identity import service as identity
from kefu.routing import queues
from kefu.routing import service as routing
from kefu.routing.models import QueueMember, RoutingEntry

SUPERVISOR = Principal(user_id=None, username="sup", roles=frozenset({"supervisor"}), via="session")


async def _ranks(app, queue_id: int) -> dict[int, tuple[int | None, int]]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        rows = await db.execute(
            select(QueueMember.user_id, QueueMember.rank_level, QueueMember.proficiency_order).where(
                QueueMember.queue_id == queue_id
            )
        )
        return {user_id: (level, order) for user_id, level, order in rows}


async def _expected(app, queue_id: int) -> dict[int, tuple[int | None, int]]:  # noqa: ANN001
    """The policy's figures from the queue's rule and each member's skills as stored now."""
    async with app.state.session_factory() as db:
        rule = (await routing._read_queues(db, [queue_id]))[queue_id].rule
        expected = {}
        for user_id in (await db.scalars(select(QueueMember.user_id).where(QueueMember.queue_id == queue_id))).all():
            user = await identity.get_user(db, user_id)
            expected[user_id] = rule.member_rank({s.skill_id: s.proficiency for s in user.skills})
        return expected


async def test_ranks_follow_skills_memberships_and_the_queue_requirement(app, make) -> None:  # noqa: ANN001
    a, b = await make.skill(), await make.skill()
    queue = await make_queue(
        app,
        skills={a: 4},
        bullseye=[{"after_seconds": 30, "proficiency_drop": 2}, {"after_seconds": 60, "any_member": True}],
    )
    expert = await make_agent(app, make, queues=(queue.id,), skills={a: 5, b: 1})
    novice = await make_agent(app, make, queues=(queue.id,), skills={a: 2})
    outsider = await make_agent(app, make, queues=(queue.id,), skills={b: 5})
    assert await _ranks(app, queue.id) == {expert.id: (0, -5), novice.id: (1, -2), outsider.id: (2, 0)}

    # The agent's skills change (the API, the admin pages and imports all go through set_agent_skills).
    async with app.state.session_factory() as db, db.begin():
        user = await identity.get_user(db, novice.id)
        await identity.set_agent_skills(db, Actor.system("test"), user, skills={a: 4})
    assert (await _ranks(app, queue.id))[novice.id] == (0, -4)

    # The queue's requirement and its bullseye change.
    async with app.state.session_factory() as db, db.begin():
        await queues.update_queue(
            db,
            SUPERVISOR,
            queue.id,
            {"skills": [{"skill_id": a, "min_proficiency": 5}, {"skill_id": b, "min_proficiency": 1}]},
        )
    assert await _ranks(app, queue.id) == await _expected(app, queue.id)
    assert (await _ranks(app, queue.id))[expert.id] == (0, -6)
    async with app.state.session_factory() as db, db.begin():
        await queues.update_queue(db, SUPERVISOR, queue.id, {"bullseye": []})
    ranks = await _ranks(app, queue.id)
    assert ranks == await _expected(app, queue.id) and ranks[outsider.id] == (None, -5)

    # Members added by a supervisor, either way round.
    other = await make_queue(app, skills={b: 3})
    async with app.state.session_factory() as db, db.begin():
        await queues.add_members(db, SUPERVISOR, other.id, [outsider.id])
        await routing.set_memberships(db, SUPERVISOR, expert.id, add=[other.id])
    assert await _ranks(app, other.id) == {outsider.id: (0, -5), expert.id: (None, -1)}
    assert await _ranks(app, queue.id) == await _expected(app, queue.id)


async def test_the_migration_fills_the_ranks_as_the_service_keeps_them(app, make) -> None:  # noqa: ANN001
    a = await make.skill()
    queue = await make_queue(app, skills={a: 3}, bullseye=[{"after_seconds": 20, "proficiency_drop": 1}])
    for level in (1, 2, 3, 5):
        await make_agent(app, make, queues=(queue.id,), skills={a: level})
    kept = await _ranks(app, queue.id)
    assert sorted(kept.values(), key=str) == [(0, -3), (0, -5), (1, -2), (None, -1)]
    async with app.state.session_factory() as db, db.begin():
        await db.execute(update(QueueMember).values(rank_level=None, proficiency_order=0))
    path = Path(routing.__file__).parents[1] / "db" / "migrations" / "versions" / "0015_routing_member_ranks.py"
    spec = importlib.util.spec_from_file_location("migration_0015", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    async with app.state.session_factory() as db, db.begin():
        conn = await db.connection()
        await conn.run_sync(migration._fill)
    assert await _ranks(app, queue.id) == kept


async def test_a_wrong_stored_rank_never_makes_an_agent_eligible(app, make) -> None:  # noqa: ANN001
    a = await make.skill()
    t = clock()
    queue = await make_queue(app, skills={a: 4})
    unskilled = await make_agent(app, make, queues=(queue.id,), skills={})
    skilled = await make_agent(app, make, queues=(queue.id,), skills={a: 4})
    # The unskilled agent's stored rank says "the best of the queue" (as if a write had skipped the
    # refresh): eligibility is still decided on their skills.
    async with app.state.session_factory() as db, db.begin():
        await db.execute(
            update(QueueMember)
            .where(QueueMember.queue_id == queue.id, QueueMember.user_id == unskilled.id)
            .values(rank_level=0, proficiency_order=-99)
        )
    await set_presence(app, unskilled, "available", t.now)
    await set_presence(app, skilled, "available", t.now)
    waiting = await contact(app, queue, t.advance(1))
    async with app.state.session_factory() as db:
        entry = await db.get(RoutingEntry, waiting)
        assert entry is not None and entry.offer_agent_id == skilled.id
