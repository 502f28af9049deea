"""The functions other domains call: a customer's timeline (in a fixed number of queries), the agent's
current contacts, the last contact; all with the same visibility rules as the API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from interaction_fixtures import customer_with_phone, new_mobile, reason, work_order
from sqlalchemy import event

from conftest import principal_of
from kefu.interactions import service
from kefu.interactions.service import NewInteraction


@contextmanager
def counting_queries(app) -> Iterator[list[str]]:  # noqa: ANN001
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        statements.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def _contacts(app, principal, customer_id: int, count: int, **extra) -> list[int]:  # noqa: ANN001
    base = datetime.now(UTC) - timedelta(hours=2)
    ids = []
    async with app.state.session_factory() as db, db.begin():
        for n in range(count):
            view, _ = await service.create_interaction(
                db,
                principal,
                NewInteraction(
                    channel=("phone", "chat", "email")[n % 3],
                    customer_id=customer_id,
                    arrived_at=base + timedelta(minutes=n),
                    **extra,
                ),
            )
            ids.append(view.interaction.id)
    return ids


async def test_timeline_has_names_and_a_fixed_number_of_queries(app, make) -> None:  # noqa: ANN001
    agent = await make.user("agent")
    principal = principal_of(agent)
    small, large = await customer_with_phone(app, new_mobile()), await customer_with_phone(app, new_mobile())
    reason_id = await reason(app)
    await _contacts(app, principal, small, 2, agent_id=agent.id)
    large_ids = await _contacts(app, principal, large, 25, agent_id=agent.id)
    async with app.state.session_factory() as db, db.begin():
        for interaction_id in large_ids:
            await service.update_wrap_up(db, principal, interaction_id, {"contact_reason_id": reason_id})

    counts = []
    for customer_id in (small, large):
        async with app.state.session_factory() as db:
            with counting_queries(app) as statements:
                timeline = await service.timeline_for_customer(db, principal, customer_id, limit=50)
            counts.append(len([s for s in statements if s.lstrip().upper().startswith("SELECT")]))
    assert counts[0] == counts[1] == 1
    assert [v.interaction.id for v in timeline] == list(reversed(large_ids))
    assert {v.agent_name for v in timeline} == {agent.display_name}
    assert {v.reason_name for v in timeline} == {"原因"}
    assert {v.customer_name for v in timeline} == {"张三"}

    async with app.state.session_factory() as db:
        page = await service.timeline_for_customer(db, principal, large, limit=10)
        cursor = service.Cursor(page[-1].interaction.arrived_at, page[-1].interaction.id)
        rest = await service.timeline_for_customer(db, principal, large, limit=100, before=cursor)
        older = await service.timeline_for_customer(db, principal, large, before=page[0].interaction.arrived_at)
    assert [v.interaction.id for v in page + rest] == list(reversed(large_ids))
    assert [v.interaction.id for v in older] == list(reversed(large_ids))[1:]


async def test_timeline_and_last_contact_hide_restricted_work_orders(app, make) -> None:  # noqa: ANN001
    team = await make.team()
    member, outsider = await make.user("agent", team_ids=(team,)), await make.user("agent")
    member_principal = replace(principal_of(member), team_ids=frozenset({team}))
    customer_id = await customer_with_phone(app, new_mobile())
    restricted = await work_order(app, restricted=True, team_id=team)
    [older] = await _contacts(app, member_principal, customer_id, 1)
    async with app.state.session_factory() as db, db.begin():
        view, _ = await service.create_interaction(
            db, member_principal, NewInteraction(channel="phone", customer_id=customer_id, work_order_id=restricted)
        )
        secret = view.interaction.id
    async with app.state.session_factory() as db:
        assert (await service.last_contact(db, member_principal, customer_id)).interaction.id == secret
        assert (await service.last_contact(db, principal_of(outsider), customer_id)).interaction.id == older
        seen = await service.timeline_for_customer(db, principal_of(outsider), customer_id, 50)
        assert [v.interaction.id for v in seen] == [older]
        nobody = await customer_with_phone(app, new_mobile())
        assert await service.last_contact(db, member_principal, nobody) is None


async def test_current_for_agent(app, make) -> None:  # noqa: ANN001
    agent = await make.user("agent")
    principal = principal_of(agent)
    arrived = datetime.now(UTC) - timedelta(minutes=30)
    at = lambda s: arrived + timedelta(seconds=s)  # noqa: E731
    async with app.state.session_factory() as db, db.begin():
        made = []
        for _ in range(5):
            view, _ = await service.create_interaction(
                db, principal, NewInteraction(channel="phone", arrived_at=arrived)
            )
            made.append(view.interaction.id)
        not_yet, offered, talking, wrapping, done = made
        await service.record_event(db, principal, offered, "offered", at=at(1), agent_id=agent.id)
        await service.record_event(db, principal, talking, "answered", at=at(1), agent_id=agent.id)
        await service.record_event(db, principal, wrapping, "answered", at=at(1), agent_id=agent.id)
        await service.record_event(db, principal, wrapping, "ended", at=at(2))
        await service.record_event(db, principal, done, "answered", at=at(1), agent_id=agent.id)
        await service.record_event(db, principal, done, "ended", at=at(2))
        await service.record_event(db, principal, done, "wrap_up_ended", at=at(3))
    async with app.state.session_factory() as db:
        current = await service.current_for_agent(db, agent.id)
    assert [v.interaction.id for v in current] == [offered, talking, wrapping]
    assert [v.interaction.state for v in current] == ["offered", "answered", "wrap_up"]
    assert not_yet not in {v.interaction.id for v in current}
