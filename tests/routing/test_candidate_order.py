"""The router reads only the first few candidates for a contact, ordered in SQL; that order must be the
policy's. Forty agents with random skills, loads and idle times: the SQL's first picks are exactly the
policy's ranking over all of them, at each bullseye level."""

from __future__ import annotations

import random
from datetime import timedelta

from sqlalchemy import update
from tests.routing.routing_support import clock, contact, make_agent, make_queue, set_presence

from kefu.routing import policy
from kefu.routing import service as routing
from kefu.routing.models import AgentState, RoutingEntry


async def test_sql_candidate_order_is_the_policy_order(app, make) -> None:
    rng = random.Random(5)
    t = clock()
    skills = [await make.skill() for _ in range(3)]
    queue = await make_queue(
        app,
        channel="chat",
        skills={skills[0]: 4, skills[1]: 3},
        bullseye=[{"after_seconds": 30, "proficiency_drop": 2}, {"after_seconds": 90, "any_member": True}],
    )
    # A few skill profiles, so that many agents tie on level and proficiency and the later keys (fewest
    # skills, least occupied, longest idle, id) decide.
    a, b, c = skills
    profiles = [{a: 4, b: 3}, {a: 4, b: 3, c: 2}, {a: 5, b: 2}, {a: 2, b: 2}, {b: 5}, {a: 3, b: 4, c: 1}]
    agents = []
    for _ in range(40):
        agents.append(await make_agent(app, make, queues=(queue.id,), skills=rng.choice(profiles)))
    for agent in agents:
        await set_presence(app, agent, "available", t.now)
    # Loads and idle times all over the place (set directly: this test is about ordering only).
    async with app.state.session_factory() as db, db.begin():
        for agent in agents:
            await db.execute(
                update(AgentState)
                .where(AgentState.user_id == agent.id)
                .values(
                    load_chat=rng.randint(0, 2),
                    idle_since=t.now - timedelta(seconds=rng.choice((10, 20, 30, 40))),
                )
            )
    # Park the contact: nobody takes it while we look (the claim is not under test here).
    waiting = await contact(app, queue, t.advance(1))
    async with app.state.session_factory() as db, db.begin():
        await db.execute(
            update(RoutingEntry)
            .where(RoutingEntry.interaction_id == waiting)
            .values(state="waiting", offer_agent_id=None, offer_expires_at=None)
        )
    for waited in (1, 31, 91):
        now = t.now + timedelta(seconds=waited)
        async with app.state.session_factory() as db:
            entry = await db.get(RoutingEntry, waiting)
            info = (await routing.load_queues(db, [queue.id]))[queue.id]
            picked = await routing._candidate_agents(db, entry, info, now, routing.config())
            everyone = []
            for agent in agents:
                _row, view = await routing._agent_with_facts(db, agent.id)
                everyone.append(view)
            ranked = policy.rank_agents(
                routing.contact_view(entry), info.rule, everyone, routing.config().rest, now.timestamp()
            )
        assert ranked, waited
        expected = [a.id for a in ranked[: routing.AGENTS_PER_DECISION]]
        assert [a.id for a in picked] == expected, waited


async def test_the_skill_count_the_ranking_reads_follows_every_change_of_skills(app, make) -> None:
    """agent_states.skill_count (kept by database triggers) is right when the routing row is created,
    after the skills are replaced through the service, and after rows are written to agent_skills directly."""
    from sqlalchemy import delete, insert, select

    from kefu.core.audit import Actor
    from kefu.identity import service as identity
    from kefu.identity.models import AgentSkill

    t = clock()
    skills = [await make.skill() for _ in range(4)]
    agent = await make_agent(app, make, skills={skills[0]: 3, skills[1]: 2})

    async def counted() -> int:
        async with app.state.session_factory() as db:
            return await db.scalar(select(AgentState.skill_count).where(AgentState.user_id == agent.id))

    await set_presence(app, agent, "available", t.now)  # creates the routing row
    assert await counted() == 2
    async with app.state.session_factory() as db, db.begin():
        loaded = await identity.get_user(db, agent.id)
        await identity.set_agent_skills(
            db, Actor.system("test"), loaded, skills={s: 1 for s in skills[:3]}, languages=()
        )
    assert await counted() == 3
    async with app.state.session_factory() as db, db.begin():
        await db.execute(insert(AgentSkill), [{"user_id": agent.id, "skill_id": skills[3], "proficiency": 5}])
    assert await counted() == 4
    async with app.state.session_factory() as db, db.begin():
        await db.execute(delete(AgentSkill).where(AgentSkill.user_id == agent.id))
    assert await counted() == 0
