"""The chat's rules against the real database: sequence numbers under concurrency, idempotent client ids,
resume after N, no agent -> work order, the transcript mail once per request (real SMTP server), and an
agent who disappears -> the chat goes back to the head of its queue."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from tests.channels.chat.chat_support import (
    accept,
    agent_for,
    chat_queue,
    chat_settings,
    conversation,
    entry,
    messages,
    set_presence,
    start_chat,
    sync,
)
from tests.core.test_mail import SmtpServer, mail_settings

from conftest import free_port
from kefu.channels.chat import runtime, service
from kefu.channels.chat.models import ChatConversation, ConversationStatus
from kefu.core.errors import ApiError, Invalid
from kefu.core.events import bind_bus
from kefu.core.jobs import Job, run_due_jobs
from kefu.db.base import utcnow
from kefu.interactions.models import Interaction
from kefu.routing import service as routing
from kefu.routing.models import AgentState
from kefu.tickets.models import WorkOrderComment


async def _write(app, work):  # noqa: ANN001, ANN202 - the API's retry-once transaction, for tests
    from sqlalchemy.exc import IntegrityError

    for attempt in (1, 2):
        try:
            async with app.state.session_factory() as db:
                bind_bus(db, app.state.event_bus)
                async with db.begin():
                    return await work(db)
        except IntegrityError:
            if attempt == 2:
                raise
    return None


async def _say(app, settings, conv_id: int, text: str, client_id: str | None = None):  # noqa: ANN001, ANN202
    async def work(db):  # noqa: ANN001, ANN202
        conv = await db.get(ChatConversation, conv_id)
        return await service.visitor_message(db, settings, conv, text, client_id)

    message, created = await _write(app, work)
    return message.seq, created


async def test_sequence_numbers_stay_gapless_and_unique_under_concurrent_writers(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    await agent_for(app, make, queue, presence="break")  # staffed, nobody routable: the chat waits
    cfg = chat_settings(settings, queue)
    conv, _ = await start_chat(app, cfg)
    before = (await conversation(app, conv.id)).last_seq
    results = await asyncio.gather(*(_say(app, cfg, conv.id, f"消息 {i}") for i in range(30)))
    seqs = sorted(seq for seq, _ in results)
    assert seqs == list(range(before + 1, before + 31))
    stored = [m.seq for m in await messages(app, conv.id)]
    assert stored == list(range(1, before + 31))
    assert (await conversation(app, conv.id)).last_seq == before + 30


async def test_a_resent_client_message_is_stored_once_also_when_the_copies_race(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    await agent_for(app, make, queue, presence="break")
    cfg = chat_settings(settings, queue)
    conv, _ = await start_chat(app, cfg)
    first = await _say(app, cfg, conv.id, "你好", "c-1")
    again = await _say(app, cfg, conv.id, "你好", "c-1")
    assert first[1] is True and again == (first[0], False)
    raced = await asyncio.gather(*(_say(app, cfg, conv.id, "同一条", "c-2") for _ in range(6)))
    assert len({seq for seq, _ in raced}) == 1
    assert sum(created for _, created in raced) == 1
    bodies = [m.body for m in await messages(app, conv.id)]
    assert bodies.count("你好") == 1 and bodies.count("同一条") == 1
    # Numbers stay gapless: the losers' rolled-back numbers were never seen.
    assert [m.seq for m in await messages(app, conv.id)] == list(range(1, len(bodies) + 1))


async def test_messages_after_n_are_exactly_the_rest_in_order(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    await agent_for(app, make, queue, presence="break")
    cfg = chat_settings(settings, queue)
    conv, _ = await start_chat(app, cfg)
    for i in range(5):
        await _say(app, cfg, conv.id, f"m{i}")
    async with app.state.session_factory() as db:
        everything = await service.messages_after(db, conv.id, 0)
        n = everything[3][0].seq
        rest = await service.messages_after(db, conv.id, n)
    assert [m.seq for m, _ in rest] == [m.seq for m, _ in everything if m.seq > n]


async def test_bad_input_is_refused_with_the_field_and_changes_nothing(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    await agent_for(app, make, queue, presence="break")
    cfg = chat_settings(settings, queue, chat_message_max_chars=50)
    conv, _ = await start_chat(app, cfg)
    last = (await conversation(app, conv.id)).last_seq
    with pytest.raises(Invalid) as too_long:
        await _say(app, cfg, conv.id, "长" * 51)
    assert too_long.value.details["field"] == "text"
    with pytest.raises(Invalid):
        await _say(app, cfg, conv.id, "   \n ")
    assert (await conversation(app, conv.id)).last_seq == last
    # The pre-chat form: the configured required fields, and a real phone number.
    with pytest.raises(Invalid) as missing:
        await start_chat(app, cfg, phone=None, email=None)
    assert missing.value.details["field"] == "contact"
    with pytest.raises(Invalid) as phone:
        await start_chat(app, cfg, phone="not a phone")
    assert phone.value.details["field"] == "phone"
    # Bidi overrides (which make a link read as another) are removed; the text is kept as plain text.
    seq, _ = await _say(app, cfg, conv.id, "见 <b>http://exa\u202emple.com</b>")
    stored = [m for m in await messages(app, conv.id) if m.seq == seq][0]
    assert stored.body == "见 <b>http://example.com</b>"


async def test_no_staffed_agent_turns_the_chat_into_its_work_order_and_says_so(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    await agent_for(app, make, queue, presence=None)  # a member who never signed in
    cfg = chat_settings(settings, queue)
    conv, _ = await start_chat(app, cfg, email="visitor@example.test")
    conv = await conversation(app, conv.id)
    assert conv.status == ConversationStatus.closed and conv.closed_reason == "work_order"
    texts = [m for m in await messages(app, conv.id)]
    assert texts[-1].code == "work_order_email"
    assert texts[-1].body == service.translate("zh_CN", "work_order_email")  # in the visitor's language
    found = await entry(app, conv.interaction_id)
    assert found is not None and found.state == "ended" and found.outcome == "no_agent:work_order"
    async with app.state.session_factory() as db:
        interaction = await db.get(Interaction, conv.interaction_id)
        assert interaction is not None and interaction.work_order_id is not None
        notes = (
            await db.scalars(
                select(WorkOrderComment).where(WorkOrderComment.work_order_id == interaction.work_order_id)
            )
        ).all()
    assert any("我的快递三天没动了" in n.body and n.internal for n in notes)
    # Closed for live chat: nothing more is taken.
    with pytest.raises(ApiError) as closed:
        await _say(app, cfg, conv.id, "还在吗")
    assert closed.value.status == 409


async def test_waiting_past_the_maximum_becomes_a_work_order(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    await agent_for(app, make, queue, presence="break")
    cfg = chat_settings(settings, queue, chat_max_wait_seconds=300)
    conv, _ = await start_chat(app, cfg)
    assert (await sync(app, cfg, conv.id, utcnow() + timedelta(seconds=100))).status == "waiting"
    done = await sync(app, cfg, conv.id, utcnow() + timedelta(seconds=301))
    assert done.status == "closed" and done.closed_reason == "work_order"
    assert (await messages(app, conv.id))[-1].code == "work_order_phone"


async def test_routing_max_wait_action_closes_the_chat_through_the_sweep(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app, max_wait_seconds=30, max_wait_action="work_order")
    await agent_for(app, make, queue, presence="break")
    cfg = chat_settings(settings, queue, chat_max_wait_seconds=0)
    conv, _ = await start_chat(app, cfg)
    async with app.state.session_factory() as db, db.begin():
        await routing.sweep(db, now=utcnow() + timedelta(seconds=31))
    result = await runtime.sweep_once(app.state.session_factory, cfg, bus=app.state.event_bus)
    assert result.synced >= 1
    assert (await conversation(app, conv.id)).closed_reason == "work_order"


async def test_accepting_the_offer_makes_the_chat_the_agents(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    agent = await agent_for(app, make, queue)
    cfg = chat_settings(settings, queue)
    conv, _ = await start_chat(app, cfg)
    assert (await entry(app, conv.interaction_id)).offer_agent_id == agent.id  # type: ignore[union-attr]
    active = await accept(app, cfg, agent, conv.id)
    assert active.status == "active" and active.agent_id == agent.id
    assert (await messages(app, conv.id))[-1].code == "agent_joined"


async def test_transcript_is_mailed_once_per_request(app, make, settings, db_factory) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    await agent_for(app, make, queue, presence="break")
    cfg = chat_settings(settings, queue)
    conv, _ = await start_chat(app, cfg, email="transcript@example.test")
    await _say(app, cfg, conv.id, "请把记录发给我")

    async def ask(request_id: str):  # noqa: ANN202
        async def work(db):  # noqa: ANN001, ANN202
            c = await db.get(ChatConversation, conv.id)
            return await service.request_transcript(db, c, email=None, request_id=request_id)

        return await _write(app, work)

    first, created = await ask("r1")
    again, created_again = await ask("r1")
    assert created and not created_again and again.id == first.id
    smtp = SmtpServer(free_port()).start()
    try:
        for _ in range(20):
            await run_due_jobs(db_factory, mail_settings(settings, smtp.port), worker="chat-test")
            async with db_factory() as db:
                job = await db.get(Job, first.id)
            if job is not None and job.status == "done":
                break
            async with db_factory() as db, db.begin():  # another server's worker may have taken it: due again
                await db.execute(update(Job).where(Job.id == first.id, Job.status == "queued").values(run_at=utcnow()))
            await asyncio.sleep(0.05)
        mails = smtp.mailbox.to("transcript@example.test")
    finally:
        smtp.stop()
    assert len(mails) == 1
    body = mails[0].get_content()
    assert "请把记录发给我" in body and "我的快递三天没动了" in body
    with pytest.raises(Invalid):
        conv_no_mail, _ = await start_chat(app, cfg)
        async with db_factory() as db, db.begin():
            c = await db.get(ChatConversation, conv_no_mail.id)
            await service.request_transcript(db, c, email=None, request_id="r1")


async def test_agent_gone_past_the_grace_period_sends_the_chat_to_the_head_of_its_queue(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    first_agent = await agent_for(app, make, queue)
    async with app.state.session_factory() as db, db.begin():
        await db.execute(update(AgentState).where(AgentState.user_id == first_agent.id).values(cap_chat=1))
    cfg = chat_settings(settings, queue, chat_agent_grace_seconds=60)
    conv, _ = await start_chat(app, cfg)
    conv = await accept(app, cfg, first_agent, conv.id)
    original = await entry(app, conv.interaction_id)
    assert original is not None
    # A second chat arrives later with a higher priority; the agent is full, so it waits.
    other, _ = await start_chat(app, cfg, phone="13900139000")
    async with app.state.session_factory() as db, db.begin():
        await routing.set_priority(db, principal_admin(), other.interaction_id, 5)
    # Still within the grace period: nothing happens.
    result = await runtime.sweep_once(app.state.session_factory, cfg, bus=app.state.event_bus)
    assert result.requeued == 0
    # The agent's connection is gone for 61 s.
    async with app.state.session_factory() as db, db.begin():
        await db.execute(
            update(ChatConversation)
            .where(ChatConversation.id == conv.id)
            .values(agent_seen_at=utcnow() - timedelta(seconds=61))
        )
    result = await runtime.sweep_once(app.state.session_factory, cfg, bus=app.state.event_bus)
    assert result.requeued == 1
    moved = await conversation(app, conv.id)
    assert moved.status == "waiting" and moved.agent_id is None and moved.segment == 2
    assert moved.interaction_id != conv.interaction_id
    assert (await messages(app, conv.id))[-1].code == "requeued"
    fresh = await entry(app, moved.interaction_id)
    waiting_other = await entry(app, other.interaction_id)
    assert fresh is not None and waiting_other is not None
    assert fresh.waiting_since == original.waiting_since  # the original wait clock
    assert first_agent.id in fresh.excluded_agents
    assert fresh.priority_order < waiting_other.priority_order  # ahead of the higher-priority newcomer
    async with app.state.session_factory() as db:
        old = await db.get(Interaction, conv.interaction_id)
        assert old is not None and old.ended_at is not None  # the first agent's segment ended (wrap-up)
        place = await routing.position_of(db, moved.interaction_id)
    assert place.position == 1
    # The next agent signs in: the requeued chat is offered first, accepted, the chat is theirs.
    second_agent = await agent_for(app, make, queue)
    assert (await entry(app, moved.interaction_id)).offer_agent_id == second_agent.id  # type: ignore[union-attr]
    again = await accept(app, cfg, second_agent, conv.id)
    assert again.status == "active" and again.agent_id == second_agent.id


def principal_admin():  # noqa: ANN201
    from kefu.core.policy import Principal

    return Principal(user_id=None, username="chat-test", roles=frozenset({"admin"}), via="session")


async def test_a_chat_ended_on_the_desk_closes_for_the_visitor(app, make, settings) -> None:  # noqa: ANN001
    from tests.channels.chat.chat_support import principal

    queue = await chat_queue(app)
    agent = await agent_for(app, make, queue)
    cfg = chat_settings(settings, queue)
    conv, _ = await start_chat(app, cfg)
    await accept(app, cfg, agent, conv.id)
    async with app.state.session_factory() as db:
        bind_bus(db, app.state.event_bus)
        async with db.begin():
            ended = await service.end_by_agent(db, cfg, principal(agent), conv.id)
    assert ended.status == "closed" and ended.closed_reason == "ended"
    async with app.state.session_factory() as db:
        interaction = await db.get(Interaction, conv.interaction_id)
        assert interaction is not None and interaction.ended_at is not None
    _ = set_presence  # (imported for other tests)
