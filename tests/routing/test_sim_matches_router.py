"""The simulator and the database router decide alike.

The simulator (``kefu sim``) keeps agents and contacts in memory and asks ``routing.policy``; the
router loads them from the database and asks the same functions. Here one small, fully deterministic
day (fixed arrival times, fixed handle times, skills, priorities and bullseye steps, offers accepted at
once) runs through both, and every offer must be the same: same contact, same agent, same second.
If the router's queries dropped a candidate the policy would have chosen, or the simulator modelled a
rule differently, the two traces part.
"""

from __future__ import annotations

import random
from datetime import timedelta

from sqlalchemy import select
from tests.routing.routing_support import accept, clock, contact, end, make_agent, make_queue, set_presence, sweep

from kefu.routing import policy, sim
from kefu.routing.models import EntryState, Offer, RoutingEntry

HANDLE = {1: 50, 2: 40}


def _scenario(arrivals: list[tuple[int, int]], skill_a: int, skill_b: int) -> sim.Scenario:
    queues = (
        sim.QueueSpec(
            rule=policy.QueueRule(
                id=1,
                skills=(policy.SkillNeed(skill_a, 4),),
                bullseye=(policy.BullseyeStep(20, proficiency_drop=2), policy.BullseyeStep(45, any_member=True)),
            ),
            name="q1",
            arrivals_at=tuple((float(t), None) for t, q in arrivals if q == 1),
            handle_seconds=HANDLE[1],
            handle_distribution="fixed",
        ),
        sim.QueueSpec(
            rule=policy.QueueRule(
                id=2, skills=(policy.SkillNeed(skill_b, 3),), priority=1, bullseye=(policy.BullseyeStep(30),)
            ),
            name="q2",
            arrivals_at=tuple((float(t), None) for t, q in arrivals if q == 2),
            handle_seconds=HANDLE[2],
            handle_distribution="fixed",
        ),
    )
    agents = tuple(
        sim.AgentSpec(id=i + 1, skills=skills, languages=frozenset(), queues=frozenset(queues_of))
        for i, (skills, queues_of) in enumerate(AGENTS(skill_a, skill_b))
    )
    last = max(t for t, _ in arrivals)
    return sim.Scenario(queues=queues, agents=agents, duration_seconds=last + 1, seed=7)


def AGENTS(a: int, b: int) -> list[tuple[dict[int, int], set[int]]]:  # noqa: N802 - a table, read as one
    return [
        ({a: 5, b: 1}, {1, 2}),
        ({a: 3, b: 4}, {1, 2}),
        ({a: 1, b: 2}, {1, 2}),
        ({b: 5}, {2}),
        # Twins: only who has been idle longer decides between them.
        ({a: 4, b: 3}, {1, 2}),
        ({a: 4, b: 3}, {1, 2}),
    ]


async def test_the_simulator_and_the_router_make_the_same_offers(app, make) -> None:
    rng = random.Random(20261129)
    # A rush (contacts wait, bullseye steps matter), then a quiet spell (agents wait, idle time matters).
    times = sorted(rng.sample(range(1, 200), 32) + rng.sample(range(200, 1000), 30))
    arrivals = [(t, rng.choice((1, 1, 2))) for t in times]
    skill_a, skill_b = await make.skill(), await make.skill()

    trace: list[tuple[float, int, int]] = []
    sim.simulate(_scenario(arrivals, skill_a, skill_b), trace=trace)
    expected = [(int(at), contact_id, agent_id) for at, contact_id, agent_id in trace]

    t = clock()
    base = t.now
    q1 = await make_queue(
        app,
        skills={skill_a: 4},
        bullseye=[{"after_seconds": 20, "proficiency_drop": 2}, {"after_seconds": 45, "any_member": True}],
    )
    q2 = await make_queue(app, skills={skill_b: 3}, priority=1, bullseye=[{"after_seconds": 30, "proficiency_drop": 1}])
    queue_of = {1: q1, 2: q2}
    agents = []
    for skills, member_of in AGENTS(skill_a, skill_b):
        agents.append(
            await make_agent(app, make, queues=tuple(queue_of[q].id for q in sorted(member_of)), skills=skills)
        )
    for agent in agents:
        await set_presence(app, agent, "available", base)
    agent_index = {agent.id: i + 1 for i, agent in enumerate(agents)}
    by_user = {agent.id: agent for agent in agents}

    contact_index: dict[int, int] = {}
    queue_by_interaction: dict[int, int] = {}
    ends: dict[int, list[int]] = {}
    answered: set[int] = set()

    async def take_offers(second: int) -> None:
        """Offers are accepted the moment they are made (the simulator's ring time is 0)."""
        async with app.state.session_factory() as db:
            ringing = (
                await db.scalars(
                    select(RoutingEntry)
                    .where(
                        RoutingEntry.state == EntryState.offered,
                        RoutingEntry.interaction_id.in_(list(contact_index)),
                    )
                    .order_by(RoutingEntry.interaction_id)
                )
            ).all()
        for entry in ringing:
            await accept(app, by_user[entry.offer_agent_id], entry.interaction_id, t.now)
            answered.add(entry.interaction_id)
            ends.setdefault(second + HANDLE[queue_by_interaction[entry.interaction_id]], []).append(
                entry.interaction_id
            )

    arrivals_at = dict(arrivals)
    last = max(arrivals_at) + 600
    for second in range(last):
        t.now = base + timedelta(seconds=second)
        for interaction_id in ends.pop(second, []):
            await end(app, interaction_id, t.now)
            await take_offers(second)
        if second > 0 and len(answered) < len(contact_index):  # only a waiting contact has reviews due
            await sweep(app, t.now)
            await take_offers(second)
        if second in arrivals_at:
            q = arrivals_at[second]
            interaction_id = await contact(app, queue_of[q], t.now)
            contact_index[interaction_id] = len(contact_index) + 1
            queue_by_interaction[interaction_id] = q
            await take_offers(second)
        if not ends and second > max(arrivals_at):
            break

    async with app.state.session_factory() as db:
        offers = (
            await db.execute(
                select(Offer.offered_at, Offer.interaction_id, Offer.agent_id)
                .where(Offer.interaction_id.in_(list(contact_index)))
                .order_by(Offer.id)
            )
        ).all()
    actual = [(round((at - base).total_seconds()), contact_index[iid], agent_index[agent]) for at, iid, agent in offers]
    assert len(expected) == len(arrivals)
    # The day is busy enough to exercise the rules: contacts wait, and some are taken only after a
    # bullseye step let a less proficient agent (3) take a queue-1 contact.
    waited = [at - arrivals[contact_id - 1][0] for at, contact_id, _ in expected]
    assert sum(1 for w in waited if w > 0) >= 10
    assert any(agent == 3 and arrivals[contact_id - 1][1] == 1 for _, contact_id, agent in expected)
    # In the quiet spell free twins are chosen by idle time.
    assert actual == expected
