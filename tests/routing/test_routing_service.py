"""The database-backed router: offers, acceptance, capacity, bullseye, sticky, the rest rule, leases,
maximum wait and overflow, on SQLite and PostgreSQL. Each test builds its own queues and agents, and
moves its own clock (routing takes ``now``), so nothing waits on real time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from tests.routing.routing_support import (
    accept,
    clock,
    contact,
    end,
    entry,
    make_agent,
    make_queue,
    offered_to,
    reject,
    set_presence,
    state_of,
    sweep,
)

from kefu.interactions.models import Interaction
from kefu.routing import service as routing
from kefu.routing.models import AgentState, AgentStateChange, Offer, RoutingEntry


async def test_contact_is_offered_accepted_ended_and_the_next_one_follows(app, make) -> None:
    t = clock()
    queue = await make_queue(app, after_contact_seconds=30)
    agent = await make_agent(app, make, queues=(queue.id,))
    await set_presence(app, agent, "available", t.now)
    first = await contact(app, queue, t.advance(1))
    assert await offered_to(app, first) == agent.id
    second = await contact(app, queue, t.advance(1))
    assert await offered_to(app, second) is None  # one call at a time
    await accept(app, agent, first, t.advance(3))
    async with app.state.session_factory() as db:
        row = await db.get(Interaction, first)
        assert row.agent_id == agent.id and row.answered_at == t.now and row.state == "answered"
        assert row.queued_at is not None and row.offered_at is not None
    assert (await state_of(app, agent)).presence == "on_contact"
    await end(app, first, t.advance(60))
    state = await state_of(app, agent)
    assert state.presence == "after_contact" and state.load_voice == 0
    # After-contact work keeps the next call away until its limit passes; then the sweep routes it.
    assert await offered_to(app, second) is None
    await sweep(app, t.advance(31))
    assert (await state_of(app, agent)).presence == "available"
    assert await offered_to(app, second) == agent.id
    async with app.state.session_factory() as db:
        changes = (
            await db.scalars(
                select(AgentStateChange.presence)
                .where(AgentStateChange.user_id == agent.id)
                .order_by(AgentStateChange.id)
            )
        ).all()
    assert changes == ["available", "on_contact", "after_contact", "available"]


async def test_the_most_proficient_agent_wins_then_bullseye_widens(app, make) -> None:
    t = clock()
    skill = await make.skill()
    queue = await make_queue(
        app,
        skills={skill: 4},
        bullseye=[{"after_seconds": 30, "proficiency_drop": 2}, {"after_seconds": 60, "any_member": True}],
    )
    expert = await make_agent(app, make, queues=(queue.id,), skills={skill: 5})
    good = await make_agent(app, make, queues=(queue.id,), skills={skill: 4})
    novice = await make_agent(app, make, queues=(queue.id,), skills={skill: 2})
    newcomer = await make_agent(app, make, queues=(queue.id,))
    for agent in (novice, newcomer, good, expert):
        await set_presence(app, agent, "available", t.now)
    first = await contact(app, queue, t.advance(1))
    assert await offered_to(app, first) == expert.id
    await accept(app, expert, first, t.advance(1))
    second = await contact(app, queue, t.advance(1))
    assert await offered_to(app, second) == good.id
    await accept(app, good, second, t.advance(1))
    third = await contact(app, queue, t.advance(1))
    assert await offered_to(app, third) is None  # only level-2 and untrained agents are free
    await sweep(app, t.advance(29))
    assert await offered_to(app, third) is None
    await sweep(app, t.advance(1))  # 30 s waited: proficiency 2 now qualifies
    assert await offered_to(app, third) == novice.id
    await accept(app, novice, third, t.advance(1))
    fourth = await contact(app, queue, t.advance(1))
    await sweep(app, t.advance(59))
    assert await offered_to(app, fourth) is None
    await sweep(app, t.advance(1))  # 60 s: any member of the queue
    assert await offered_to(app, fourth) == newcomer.id
    async with app.state.session_factory() as db:
        levels = dict(
            (
                await db.execute(
                    select(Offer.agent_id, Offer.level).where(Offer.interaction_id.in_([first, third, fourth]))
                )
            ).all()
        )
    assert levels == {expert.id: 0, novice.id: 1, newcomer.id: 2}


async def test_a_free_agent_takes_the_highest_priority_then_the_longest_waiting(app, make) -> None:
    t = clock()
    queue = await make_queue(app)
    vip_queue = await make_queue(app, priority=5)
    agent = await make_agent(app, make, queues=(queue.id, vip_queue.id))
    old = await contact(app, queue, t.advance(1))
    newer = await contact(app, queue, t.advance(1))
    urgent = await contact(app, queue, t.advance(1), priority=3)
    vip = await contact(app, vip_queue, t.advance(1))
    order = []
    await set_presence(app, agent, "available", t.advance(1))
    for _ in range(4):
        offered = [i for i in (old, newer, urgent, vip) if await offered_to(app, i) == agent.id]
        assert len(offered) == 1
        order.append(offered[0])
        offered = offered[0]
        await accept(app, agent, offered, t.advance(1))
        await end(app, offered, t.advance(10))
    assert order == [vip, urgent, old, newer]


async def test_capacity_three_chats_and_a_call_blocks_chats(app, make) -> None:
    t = clock()
    chats = await make_queue(app, channel="chat")
    calls = await make_queue(app, channel="phone")
    agent = await make_agent(app, make, queues=(chats.id, calls.id))
    await set_presence(app, agent, "available", t.now)
    ids = [await contact(app, chats, t.advance(1)) for _ in range(4)]
    assert [await offered_to(app, i) for i in ids] == [agent.id, agent.id, agent.id, None]
    for i in ids[:3]:
        await accept(app, agent, i, t.advance(1))
    state = await state_of(app, agent)
    assert state.load_chat == 3
    # A call while chatting is allowed by default (others_block_voice off) ...
    call = await contact(app, calls, t.advance(1))
    assert await offered_to(app, call) == agent.id
    await accept(app, agent, call, t.advance(1))
    # ... and during the call no chat is offered, even when one frees up.
    await end(app, ids[0], t.advance(5))
    assert await offered_to(app, ids[3]) is None
    await end(app, call, t.advance(5))
    assert await offered_to(app, ids[3]) == agent.id


async def test_reject_goes_to_the_next_best_and_timeouts_make_the_agent_not_ready(app, make) -> None:
    t = clock()
    skill = await make.skill()
    queue = await make_queue(app, skills={skill: 1})
    first_choice = await make_agent(app, make, queues=(queue.id,), skills={skill: 5})
    second_choice = await make_agent(app, make, queues=(queue.id,), skills={skill: 3})
    await set_presence(app, first_choice, "available", t.now)
    await set_presence(app, second_choice, "available", t.now)
    call = await contact(app, queue, t.advance(1))
    assert await offered_to(app, call) == first_choice.id
    await reject(app, first_choice, call, t.advance(2))
    assert await offered_to(app, call) == second_choice.id
    # Rings out: back to routing, never to the one who declined; the second one is not retried either.
    await sweep(app, t.advance(21))
    assert await offered_to(app, call) is None
    found = await entry(app, call)
    assert found.state == "waiting" and set(found.excluded_agents) == {first_choice.id, second_choice.id}
    assert (await state_of(app, second_choice)).missed_offers == 1
    # A second missed offer in a row: not ready.
    other = await contact(app, queue, t.advance(1))
    assert await offered_to(app, other) in (first_choice.id, second_choice.id)
    if await offered_to(app, other) == first_choice.id:
        await reject(app, first_choice, other, t.advance(1))
    assert await offered_to(app, other) == second_choice.id
    await sweep(app, t.advance(21))
    state = await state_of(app, second_choice)
    assert state.presence == "break" and state.reason == "missed_offers" and state.load_voice == 0
    async with app.state.session_factory() as db:
        outcomes = sorted(
            (await db.scalars(select(Offer.outcome).where(Offer.interaction_id.in_([call, other])))).all()
        )
    assert outcomes.count("timeout") == 2 and None not in outcomes


async def test_sticky_waits_for_the_last_agent_then_lets_go(app, make) -> None:
    t = clock()
    queue = await make_queue(app, sticky_seconds=60)
    mine = await make_agent(app, make, queues=(queue.id,))
    other = await make_agent(app, make, queues=(queue.id,))
    customer_id = await _customer(app)
    await set_presence(app, mine, "available", t.now)
    first = await contact(app, queue, t.advance(1), customer_id=customer_id)
    assert await offered_to(app, first) == mine.id
    await accept(app, mine, first, t.advance(1))
    await end(app, first, t.advance(30))
    # The customer's last agent is on another call; the customer comes back.
    await set_presence(app, other, "available", t.advance(1))
    busy = await contact(app, queue, t.advance(1))
    assert await offered_to(app, busy) == mine.id
    await accept(app, mine, busy, t.advance(1))
    again = await contact(app, queue, t.advance(1), customer_id=customer_id)
    assert await offered_to(app, again) is None  # waits for their own agent, not the idle one
    await sweep(app, t.advance(61))
    assert await offered_to(app, again) == other.id
    async with app.state.session_factory() as db:
        sticky_flags = (await db.scalars(select(Offer.sticky).where(Offer.interaction_id == first))).all()
    assert sticky_flags == [False]


async def test_sticky_agent_gets_the_returning_customer_first(app, make) -> None:
    t = clock()
    queue = await make_queue(app, sticky_seconds=120)
    mine = await make_agent(app, make, queues=(queue.id,))
    other = await make_agent(app, make, queues=(queue.id,))
    customer_id = await _customer(app)
    await set_presence(app, mine, "available", t.now)
    first = await contact(app, queue, t.advance(1), customer_id=customer_id)
    await accept(app, mine, first, t.advance(1))
    # While the customer's agent is busy, the returning customer waits; the agent frees up and gets them.
    await set_presence(app, other, "available", t.advance(1))
    again = await contact(app, queue, t.advance(1), customer_id=customer_id)
    assert await offered_to(app, again) is None
    await end(app, first, t.advance(10))
    assert await offered_to(app, again) == mine.id
    async with app.state.session_factory() as db:
        assert (await db.scalar(select(Offer.sticky).where(Offer.interaction_id == again))) is True


async def test_rest_rule_after_two_hours_on_line(app, make) -> None:
    t = clock()
    queue = await make_queue(app)
    agent = await make_agent(app, make, queues=(queue.id,))
    await set_presence(app, agent, "available", t.now)
    call = await contact(app, queue, t.advance(60))
    await accept(app, agent, call, t.advance(1))
    await end(app, call, t.advance(7200))  # a two-hour call
    waiting = await contact(app, queue, t.advance(1))
    assert await offered_to(app, waiting) is None  # on line for 2 h: a break first
    await set_presence(app, agent, "break", t.advance(1), reason="rest")
    await set_presence(app, agent, "available", t.advance(600))  # 10 min: not enough
    assert await offered_to(app, waiting) is None
    await set_presence(app, agent, "break", t.advance(1), reason="rest")
    await set_presence(app, agent, "available", t.advance(900))
    assert await offered_to(app, waiting) == agent.id


async def test_an_offer_left_by_a_dead_process_expires_and_comes_back(app, make) -> None:
    """A process that offered a contact and died never answers for it: the lease expires and any other
    process's sweep routes the contact again (here: the same app, later)."""
    t = clock()
    queue = await make_queue(app, offer_timeout_seconds=15)
    gone = await make_agent(app, make, queues=(queue.id,))
    await set_presence(app, gone, "available", t.now)
    call = await contact(app, queue, t.advance(1))
    assert await offered_to(app, call) == gone.id
    backup = await make_agent(app, make, queues=(queue.id,))
    await set_presence(app, backup, "available", t.advance(1))
    assert await offered_to(app, call) == gone.id  # the lease holds until it expires
    result = await sweep(app, t.advance(15))
    assert result.expired_offers == 1
    assert await offered_to(app, call) == backup.id
    assert (await state_of(app, gone)).load_voice == 0


async def test_maximum_wait_opens_a_work_order_and_overflow_moves_on(app, make) -> None:
    t = clock()
    spill = await make_queue(app)
    queue = await make_queue(app, overflow_queue_id=spill.id, overflow_after_seconds=40)
    closed_at_max = await make_queue(app, max_wait_seconds=120, max_wait_action="work_order")
    helper = await make_agent(app, make, queues=(spill.id,))
    await set_presence(app, helper, "available", t.now)
    call = await contact(app, queue, t.advance(1))
    lost = await contact(app, closed_at_max, t.advance(1))
    await sweep(app, t.advance(38))
    assert await offered_to(app, call) is None
    await sweep(app, t.advance(1))
    found = await entry(app, call)
    assert found.queue_id == spill.id and await offered_to(app, call) == helper.id
    await sweep(app, t.advance(120))
    found = await entry(app, lost)
    assert found.state == "ended" and found.outcome == "max_wait:work_order"
    async with app.state.session_factory() as db:
        assert (await db.get(Interaction, lost)).work_order_id is not None


async def test_position_and_expected_wait(app, make) -> None:
    t = clock()
    queue = await make_queue(app, expected_handle_seconds=300)
    agents = [await make_agent(app, make, queues=(queue.id,)) for _ in range(2)]
    for agent in agents:
        await set_presence(app, agent, "available", t.now)
        busy = await contact(app, queue, t.advance(1))
        await accept(app, agent, busy, t.advance(1))
    waiting = [await contact(app, queue, t.advance(1)) for _ in range(3)]
    async with app.state.session_factory() as db:
        positions = [await routing.position_of(db, i, now=t.now) for i in waiting]
    assert [p.position for p in positions] == [1, 2, 3]
    assert [p.expected_wait_seconds for p in positions] == [150, 300, 450]


async def test_moving_a_contact_and_an_agent_between_queues(app, make) -> None:
    t = clock()
    a = await make_queue(app)
    b = await make_queue(app)
    agent = await make_agent(app, make, queues=(a.id,))
    await set_presence(app, agent, "available", t.now)
    call = await contact(app, b, t.advance(1))
    assert await offered_to(app, call) is None
    async with app.state.session_factory() as db, db.begin():
        await routing.move_contact(db, _supervisor(), call, a.id, now=t.advance(1))
    assert await offered_to(app, call) == agent.id
    other = await contact(app, b, t.advance(1))
    await reject(app, agent, call, t.advance(1))
    async with app.state.session_factory() as db, db.begin():
        served = await routing.set_memberships(db, _supervisor(), agent.id, add=[b.id], remove=[a.id], now=t.advance(1))
    assert served == [b.id]
    assert await offered_to(app, other) == agent.id
    found = await entry(app, call)
    assert found.waiting_since < found.queue_entered_at  # the wait clock kept running across the move


async def test_abandoned_while_ringing_frees_the_agent(app, make) -> None:
    t = clock()
    queue = await make_queue(app)
    agent = await make_agent(app, make, queues=(queue.id,))
    await set_presence(app, agent, "available", t.now)
    call = await contact(app, queue, t.advance(1))
    nxt = await contact(app, queue, t.advance(1))
    assert await offered_to(app, call) == agent.id
    async with app.state.session_factory() as db, db.begin():
        from tests.routing.routing_support import channel_principal

        from kefu.interactions import service as interactions

        await interactions.record_event(db, await channel_principal(app), call, "abandoned", at=t.advance(2))
    found = await entry(app, call)
    assert found.state == "ended" and found.outcome == "abandoned"
    assert await offered_to(app, nxt) == agent.id
    async with app.state.session_factory() as db:
        assert (
            await db.scalar(select(func.count()).select_from(RoutingEntry).where(RoutingEntry.interaction_id == call))
            == 1
        )


async def _customer(app) -> int:
    from tests.routing.routing_support import SYSTEM, code

    from kefu.customers import service as customers

    async with app.state.session_factory() as db, db.begin():
        customer, _ = await customers.resolve_or_create(db, SYSTEM, "email", f"{code('c')}@example.test")
        return customer.id


def _supervisor():
    from kefu.core.policy import Principal

    return Principal(user_id=None, username="sup", roles=frozenset({"supervisor"}), via="session")


_ = timedelta


async def test_among_equals_the_longest_idle_agent_gets_the_contact(app, make) -> None:
    t = clock()
    queue = await make_queue(app)
    first = await make_agent(app, make, queues=(queue.id,))
    second = await make_agent(app, make, queues=(queue.id,))
    await set_presence(app, first, "available", t.now)
    await set_presence(app, second, "available", t.advance(1))
    a = await contact(app, queue, t.advance(1))
    assert await offered_to(app, a) == first.id  # idle the longest
    await accept(app, first, a, t.advance(1))
    b = await contact(app, queue, t.advance(1))
    assert await offered_to(app, b) == second.id
    await accept(app, second, b, t.advance(1))
    await end(app, b, t.advance(10))  # second is idle from now ...
    await end(app, a, t.advance(10))  # ... first only from now
    c = await contact(app, queue, t.advance(1))
    assert await offered_to(app, c) == second.id


async def test_a_claim_on_an_agent_who_just_left_changes_nothing(app, make) -> None:
    """The agent went on a break between the candidate query and the claim: nobody is offered the contact
    (PostgreSQL never takes the entry; SQLite takes it, fails the agent's compare-and-set and gives it
    back), and no offer exists."""
    t = clock()
    queue = await make_queue(app)
    agent = await make_agent(app, make, queues=(queue.id,))
    call = await contact(app, queue, t.advance(1))  # nobody available: waits
    await set_presence(app, agent, "break", t.advance(1), reason="meal")
    async with app.state.session_factory() as db, db.begin():
        found = await db.get(RoutingEntry, call)
        info = (await routing.load_queues(db, [queue.id]))[queue.id]
        made, still_waiting = await routing._claim(
            db, found, info, [routing.Choice(agent.id, 0, False)], t.now, routing.config()
        )
        assert made is None and still_waiting
    found = await entry(app, call)
    assert found.state == "waiting" and found.offer_agent_id is None and found.offers_made == 0
    async with app.state.session_factory() as db:
        assert await db.scalar(select(func.count()).select_from(Offer).where(Offer.interaction_id == call)) == 0
    assert (await state_of(app, agent)).load_voice == 0


async def test_an_agent_freed_passes_over_a_contact_another_decision_holds(app, make) -> None:
    """PostgreSQL: the best waiting contact is held by another transaction (another process deciding
    about it) when the agent becomes available: the same claim offers the next one, and the held
    contact is untouched."""
    if app.state.engine.dialect.name != "postgresql":
        pytest.skip("row locks between transactions: PostgreSQL (SQLite has one writer at a time)")
    t = clock()
    queue = await make_queue(app)
    agent = await make_agent(app, make, queues=(queue.id,))
    held = await contact(app, queue, t.advance(1))  # waited longest: ranked first
    other = await contact(app, queue, t.advance(1))
    async with app.state.session_factory() as holder, holder.begin():
        await holder.execute(select(RoutingEntry).where(RoutingEntry.interaction_id == held).with_for_update())
        await set_presence(app, agent, "available", t.advance(1))
    assert await offered_to(app, other) == agent.id
    assert (await entry(app, held)).state == "waiting"
    async with app.state.session_factory() as db:
        offers = (await db.scalars(select(Offer).where(Offer.agent_id == agent.id))).all()
    assert [o.interaction_id for o in offers] == [other]


async def test_a_claim_passes_over_ranked_agents_who_cannot_take_the_contact(app, make) -> None:
    """The claim gets the ranked agents, best first: one who left meanwhile (and, on PostgreSQL, one whom
    another transaction holds right now) is passed over in the same claim, and the offer records the level
    and stickiness of the agent who got it."""
    t = clock()
    queue = await make_queue(app)
    gone, held, free = [await make_agent(app, make, queues=(queue.id,)) for _ in range(3)]
    for agent in (gone, held, free):
        await set_presence(app, agent, "available", t.advance(1))
    call = await contact(app, queue, t.advance(1), route=False)
    await set_presence(app, gone, "break", t.advance(1), reason="meal")  # after the ranking, before the claim
    postgres = app.state.engine.dialect.name == "postgresql"
    async with app.state.session_factory() as other, other.begin():
        if postgres:  # another decision holds this agent's row while ours runs
            await other.execute(select(AgentState).where(AgentState.user_id == held.id).with_for_update())
        async with app.state.session_factory() as db, db.begin():
            found = await db.get(RoutingEntry, call)
            info = (await routing.load_queues(db, [queue.id]))[queue.id]
            choices = [routing.Choice(gone.id, 3, False), routing.Choice(held.id, 2, False)]
            choices.append(routing.Choice(free.id, 1, True))
            if not postgres:
                choices.remove(choices[1])
            made, still_waiting = await routing._claim(db, found, info, choices, t.now, routing.config())
    assert made is not None and still_waiting
    assert (made.agent_id, made.level, made.sticky) == (free.id, 1, True)
    assert await offered_to(app, call) == free.id
    async with app.state.session_factory() as db:
        offer = await db.scalar(select(Offer).where(Offer.interaction_id == call, Offer.outcome.is_(None)))
        assert (offer.agent_id, offer.level, offer.sticky) == (free.id, 1, True)
    assert (await state_of(app, free)).load_voice == 1
    assert (await state_of(app, held)).load_voice == 0 and (await state_of(app, gone)).load_voice == 0


async def test_a_contact_routed_as_it_arrives_is_queued_and_offered_in_one_decision(app, make) -> None:
    """enqueue of a new contact with agents free (on PostgreSQL one statement: entry, pick, reservation,
    offer, stamps): the best agent not held by another transaction gets it, everything an offer leaves
    is consistent (the entry, the agent's load, the offer row, the interaction's stamps), the agent can
    accept it, and enqueueing the same contact again changes nothing and reserves nobody."""
    t = clock()
    skill = await make.skill()
    queue = await make_queue(app, skills={skill: 2})
    best, second, third = [
        await make_agent(app, make, queues=(queue.id,), skills={skill: level}) for level in (5, 4, 3)
    ]
    for agent in (best, second, third):
        await set_presence(app, agent, "available", t.advance(1))
    postgres = app.state.engine.dialect.name == "postgresql"
    async with app.state.session_factory() as other, other.begin():
        if postgres:  # another decision holds the best agent's row while this one runs
            await other.execute(select(AgentState).where(AgentState.user_id == best.id).with_for_update())
        else:  # SQLite has one writer at a time: the best agent is simply away
            await set_presence(app, best, "break", t.advance(1), reason="meal")
        arrived = t.advance(1)
        call = await contact(app, queue, arrived)
    found = await entry(app, call)
    assert (found.state, found.offer_agent_id, found.offers_made, found.review_at) == ("offered", second.id, 1, None)
    async with app.state.session_factory() as db:
        offers = (await db.scalars(select(Offer).where(Offer.interaction_id == call))).all()
        interaction = await db.get(Interaction, call)
    assert [(o.agent_id, o.level, o.sticky, o.outcome) for o in offers] == [(second.id, 0, False, None)]
    assert interaction.state == "offered" and interaction.queued_at == arrived == interaction.offered_at
    assert [(await state_of(app, a)).load_voice for a in (best, second, third)] == [0, 1, 0]

    async with app.state.session_factory() as db, db.begin():
        again = await routing.enqueue(db, call, queue.id, channel="phone", customer_id=None, now=t.advance(1))
    assert not again.created and again.offer is None and again.entry.state == "offered"
    assert [(await state_of(app, a)).load_voice for a in (best, second, third)] == [0, 1, 0]
    async with app.state.session_factory() as db:
        assert await db.scalar(select(func.count()).select_from(Offer).where(Offer.interaction_id == call)) == 1

    await accept(app, second, call, t.advance(1))
    assert (await entry(app, call)).state == "assigned"


async def test_a_contact_nobody_can_take_waits_with_its_review_moment(app, make) -> None:
    """No agent free when the contact arrives: it waits, unoffered, its interaction stamped queued only,
    and the sweep is due to take a second look shortly after (routing.SECOND_LOOK)."""
    t = clock()
    queue = await make_queue(app)
    agent = await make_agent(app, make, queues=(queue.id,))
    await set_presence(app, agent, "break", t.advance(1), reason="meal")
    arrived = t.advance(1)
    call = await contact(app, queue, arrived)
    found = await entry(app, call)
    assert (found.state, found.offer_agent_id, found.offers_made) == ("waiting", None, 0)
    assert found.review_at == arrived + routing.SECOND_LOOK
    async with app.state.session_factory() as db:
        interaction = await db.get(Interaction, call)
        assert await db.scalar(select(func.count()).select_from(Offer).where(Offer.interaction_id == call)) == 0
    assert interaction.state == "queued" and interaction.queued_at == arrived and interaction.offered_at is None
    assert (await state_of(app, agent)).load_voice == 0


async def test_an_agent_who_declined_the_heads_of_the_queue_gets_the_next_contact(app, make) -> None:
    """The decision reads only the first few contacts of each queue; when the agent declined all of them
    (more than that many), it looks deeper and offers the first one the agent has not declined."""
    t = clock()
    queue = await make_queue(app)
    agent = await make_agent(app, make, queues=(queue.id,))
    await set_presence(app, agent, "break", t.advance(1), reason="meal")
    calls = [await contact(app, queue, t.advance(1)) for _ in range(routing.CONTACTS_PER_QUEUE + 2)]
    declined = calls[: routing.CONTACTS_PER_QUEUE + 1]
    async with app.state.session_factory() as db, db.begin():
        await db.execute(
            update(RoutingEntry).where(RoutingEntry.interaction_id.in_(declined)).values(excluded_agents=[agent.id])
        )
    await set_presence(app, agent, "available", t.advance(1))
    assert await offered_to(app, calls[-1]) == agent.id
    assert [await offered_to(app, call) for call in declined] == [None] * len(declined)
