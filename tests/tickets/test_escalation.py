"""Back-office escalation (后送): deadlines on the back office's calendar, one open escalation at a time,
return and cancel rights, the N-day close rate, and the escalation routes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from conftest import login, unique
from kefu.core.errors import ApiError, Conflict
from kefu.core.policy import Principal
from kefu.tickets import escalation, sla
from kefu.tickets.models import BusinessCalendar, Escalation, SlaPolicy, WorkOrder, WorkOrderEvent

SH = ZoneInfo("Asia/Shanghai")
WEEKDAYS_9_18 = {str(d): [["09:00", "18:00"]] for d in range(5)}


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SH)


def as_principal(user, *team_ids: int) -> Principal:  # noqa: ANN001
    return Principal(
        user_id=user.id, username=user.username, roles=user.role_names, team_ids=frozenset(team_ids), via="session"
    )


async def new_work_order(app, now: datetime, team_id: int, **values) -> int:  # noqa: ANN001, ANN003
    async with app.state.session_factory() as db, db.begin():
        work_order = WorkOrder(title="后送测试", team_id=team_id, created_at=now, updated_at=now, **values)
        db.add(work_order)
        await sla.start_clocks(db, work_order, now)
        await db.flush()
        return work_order.id


async def back_office_calendar(app, team_id: int) -> int:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        calendar = BusinessCalendar(name=unique("bo"), time_zone="Asia/Shanghai", weekly_hours=WEEKDAYS_9_18)
        db.add(calendar)
        await db.flush()
        db.add(SlaPolicy(name=unique("bo"), team_id=team_id, calendar_id=calendar.id, resolution_seconds=86_400))
        return calendar.id


@pytest.fixture
async def desk(app, make) -> dict:  # noqa: ANN001
    front, back = await make.team(), await make.team()
    await back_office_calendar(app, back)
    sender = await make.user("agent", team_ids=(front,))
    worker = await make.user("agent", team_ids=(back,))
    outsider = await make.user("agent")
    return {
        "front": front,
        "back": back,
        "sender": as_principal(sender, front),
        "worker": as_principal(worker, back),
        "outsider": as_principal(outsider),
        "users": {"sender": sender, "worker": worker, "outsider": outsider},
    }


async def call(app, func, *args):  # noqa: ANN001, ANN002, ANN201
    async with app.state.session_factory() as db, db.begin():
        return await func(db, *args)


async def history(app, work_order_id: int) -> list[tuple[str, dict]]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        rows = await db.scalars(
            select(WorkOrderEvent).where(WorkOrderEvent.work_order_id == work_order_id).order_by(WorkOrderEvent.id)
        )
        return [(e.kind, e.data) for e in rows]


async def test_escalate_and_return(app, desk) -> None:  # noqa: ANN001
    sent_at = sh(2026, 6, 5, 10, 0)  # a Friday
    wo_id = await new_work_order(app, sent_at - timedelta(hours=1), desk["front"])
    made = await call(app, escalation.escalate, desk["sender"], wo_id, desk["back"], 3, True, "请核实账单", sent_at)
    # Three business days on the back office's calendar: Monday, Tuesday, Wednesday, closing 18:00.
    assert made.due_at == sh(2026, 6, 10, 18, 0)
    assert made.state == "open" and made.from_team_id == desk["front"]
    async with app.state.session_factory() as db:
        assert (await db.get(WorkOrder, wo_id)).status == "escalated"

    with pytest.raises(Conflict):
        await call(app, escalation.escalate, desk["sender"], wo_id, desk["back"], 2, True, "", sent_at)
    # Neither the sender nor an outsider returns it; the outsider cannot even tell it exists... unless
    # the work order is visible to them (it is not restricted here), then it is a plain refusal.
    with pytest.raises(ApiError) as refused:
        await call(app, escalation.return_escalation, desk["sender"], made.id, "done", sent_at)
    assert refused.value.status == 403

    returned_at = sh(2026, 6, 9, 11, 0)
    back = await call(app, escalation.return_escalation, desk["worker"], made.id, "已退款", returned_at)
    assert back.state == "returned" and back.returned_at == returned_at and back.return_note == "已退款"
    async with app.state.session_factory() as db:
        assert (await db.get(WorkOrder, wo_id)).status == "open"
    kinds = [kind for kind, _ in await history(app, wo_id)]
    assert kinds == ["status", "escalated", "status", "escalation_returned"]
    returned_event = (await history(app, wo_id))[-1][1]
    assert returned_event["note"] == "已退款" and returned_event["late"] is False
    with pytest.raises(Conflict):
        await call(app, escalation.return_escalation, desk["worker"], made.id, "again", returned_at)
    # Free to escalate again once returned; calendar days this time (local midnight after two days).
    again = await call(app, escalation.escalate, desk["sender"], wo_id, desk["back"], 2, False, "", returned_at)
    assert again.due_at == sh(2026, 6, 12, 0, 0)


async def test_restricted_work_orders_and_cancel(app, desk) -> None:  # noqa: ANN001
    now = sh(2026, 6, 8, 10, 0)
    wo_id = await new_work_order(app, now, desk["front"], restricted=True)
    made = await call(app, escalation.escalate, desk["sender"], wo_id, desk["back"], 1, True, "", now)
    with pytest.raises(ApiError) as hidden:
        await call(app, escalation.cancel_escalation, desk["outsider"], made.id, "", now)
    assert hidden.value.status == 404
    # The back office sees the restricted work order but returns, never cancels.
    with pytest.raises(ApiError) as refused:
        await call(app, escalation.cancel_escalation, desk["worker"], made.id, "", now)
    assert refused.value.status == 403
    cancelled = await call(app, escalation.cancel_escalation, desk["sender"], made.id, "客户已自行解决", now)
    assert cancelled.state == "cancelled"
    async with app.state.session_factory() as db:
        assert (await db.get(WorkOrder, wo_id)).status == "open"
    assert (await history(app, wo_id))[-1][0] == "escalation_cancelled"


async def test_escalation_refusals(app, desk, make) -> None:  # noqa: ANN001
    now = sh(2026, 6, 8, 10, 0)
    wo_id = await new_work_order(app, now, desk["front"])
    for team_id, days in ((desk["front"], 3), (10**12, 3), (desk["back"], 0), (desk["back"], 400)):
        with pytest.raises(ApiError) as refused:
            await call(app, escalation.escalate, desk["sender"], wo_id, team_id, days, True, "", now)
        assert refused.value.status == 422
    resolved = await new_work_order(app, now, desk["front"], status="closed")
    with pytest.raises(ApiError):
        await call(app, escalation.escalate, desk["sender"], resolved, desk["back"], 1, True, "", now)


async def test_deadline_calendar_falls_back_to_the_first_calendar(app, desk, make) -> None:  # noqa: ANN001
    no_policy_team = await make.team()
    wo_id = await new_work_order(app, sh(2026, 6, 8, 10, 0), desk["front"])
    async with app.state.session_factory() as db:
        wo = await db.get(WorkOrder, wo_id)
        first = await db.scalar(select(BusinessCalendar.id).order_by(BusinessCalendar.id).limit(1))
        assert (await escalation.deadline_calendar(db, wo, no_policy_team)).id == first


async def test_close_rate(app, desk, make) -> None:  # noqa: ANN001
    team = await make.team()
    await back_office_calendar(app, team)
    worker = as_principal((await make.user("agent", team_ids=(team,))), team)
    day = sh(2026, 8, 3, 10, 0)  # Monday
    ids = [await new_work_order(app, day, desk["front"]) for _ in range(6)]
    made = [await call(app, escalation.escalate, desk["sender"], i, team, 1, True, "", day) for i in ids[:5]]
    # Due Tuesday 18:00 for all sent Monday.
    assert {m.due_at for m in made} == {sh(2026, 8, 4, 18, 0)}
    await call(app, escalation.return_escalation, worker, made[0].id, "ok", sh(2026, 8, 4, 17, 0))
    await call(app, escalation.return_escalation, worker, made[1].id, "late", sh(2026, 8, 5, 9, 0))
    await call(app, escalation.cancel_escalation, desk["sender"], made[2].id, "", sh(2026, 8, 3, 11, 0))
    # made[3], made[4] stay open; one more sent later and not yet due at report time.
    later = await call(app, escalation.escalate, desk["sender"], ids[5], team, 5, True, "", sh(2026, 8, 6, 10, 0))
    now = sh(2026, 8, 7, 10, 0)
    assert later.due_at > now
    report = await call(app, escalation.close_rate, team, sh(2026, 8, 1, 0, 0), sh(2026, 9, 1, 0, 0), now)
    assert (report.total, report.returned_in_time, report.returned_late) == (5, 1, 1)
    assert (report.open_overdue, report.open_not_due) == (2, 1)
    assert report.rate == pytest.approx(1 / 4)
    empty = await call(app, escalation.close_rate, team, sh(2026, 1, 1, 0, 0), sh(2026, 2, 1, 0, 0), now)
    assert empty.total == 0 and empty.rate is None


async def test_escalation_routes(app, client, desk, make) -> None:  # noqa: ANN001
    users = desk["users"]
    await login(client, users["sender"])
    wo_id = await new_work_order(app, datetime.now(UTC), desk["front"], restricted=True)
    sent = await client.post(
        f"/api/v1/work-orders/{wo_id}/escalations",
        json={"to_team_id": desk["back"], "deadline_days": 3, "note": "请处理"},
    )
    assert sent.status_code == 201, sent.text
    esc = sent.json()
    assert esc["state"] == "open" and esc["overdue"] is False and esc["work_order_number"].startswith("WO")
    twice = await client.post(
        f"/api/v1/work-orders/{wo_id}/escalations", json={"to_team_id": desk["back"], "deadline_days": 3}
    )
    assert twice.status_code == 409
    bad = await client.post(
        f"/api/v1/work-orders/{wo_id}/escalations", json={"to_team_id": desk["back"], "deadline_days": 0}
    )
    assert bad.status_code == 422
    listed = await client.get("/api/v1/escalations", params={"team_id": desk["back"], "state": "open"})
    assert [e["id"] for e in listed.json()["items"]] == [esc["id"]]

    await login(client, users["outsider"])
    assert esc["id"] not in [e["id"] for e in (await client.get("/api/v1/escalations")).json()["items"]]
    assert (await client.post(f"/api/v1/escalations/{esc['id']}/return", json={"note": "x"})).status_code == 404

    await login(client, users["worker"])
    mine = await client.get("/api/v1/escalations", params={"team_id": desk["back"], "overdue": "false"})
    assert esc["id"] in [e["id"] for e in mine.json()["items"]]
    overdue = await client.get("/api/v1/escalations", params={"overdue": "true"})
    assert esc["id"] not in [e["id"] for e in overdue.json()["items"]]
    assert (await client.post(f"/api/v1/escalations/{esc['id']}/return", json={"note": ""})).status_code == 422
    returned = await client.post(f"/api/v1/escalations/{esc['id']}/return", json={"note": "已处理"})
    assert returned.status_code == 200 and returned.json()["state"] == "returned"
    assert (await client.post(f"/api/v1/escalations/{esc['id']}/cancel")).status_code in (403, 409)

    await login(client, await make.user("supervisor"))
    now = datetime.now(UTC)
    report = await client.get(
        "/api/v1/escalations/report",
        params={
            "team_id": desk["back"],
            "start": (now - timedelta(days=1)).isoformat(),
            "end": (now + timedelta(days=1)).isoformat(),
        },
    )
    assert report.status_code == 200, report.text
    assert report.json()["total"] == 1 and report.json()["returned_in_time"] == 1
    assert report.json()["close_rate"] == 1.0
    naive = await client.get(
        "/api/v1/escalations/report", params={"team_id": desk["back"], "start": "2026-01-01", "end": "2026-02-01"}
    )
    assert naive.status_code == 422
    backwards = await client.get(
        "/api/v1/escalations/report",
        params={"team_id": desk["back"], "start": now.isoformat(), "end": (now - timedelta(days=1)).isoformat()},
    )
    assert backwards.status_code == 422
    async with app.state.session_factory() as db:
        assert await db.scalar(select(Escalation.state).where(Escalation.id == esc["id"])) == "returned"
