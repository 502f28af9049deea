"""SLA clocks in business time with frozen time: matching, pauses, breaches, reopen, re-classification,
the sweep, and the calendar/policy API."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from conftest import login, principal_of, unique
from kefu.tickets import service, sla
from kefu.tickets.models import BusinessCalendar, SlaEvent, SlaPolicy, WorkOrder

SH = ZoneInfo("Asia/Shanghai")
HOUR = 3600
WEEKDAYS_9_18 = {str(d): [["09:00", "18:00"]] for d in range(5)}


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SH)


async def make_calendar(app, weekly=WEEKDAYS_9_18, zone: str = "Asia/Shanghai") -> int:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        row = BusinessCalendar(name=unique("cal"), time_zone=zone, weekly_hours=weekly)
        db.add(row)
        await db.flush()
        return row.id


async def make_policy(app, team_id: int, **values) -> int:  # noqa: ANN001, ANN003
    values.setdefault("name", unique("sla"))
    async with app.state.session_factory() as db, db.begin():
        row = SlaPolicy(team_id=team_id, **values)
        db.add(row)
        await db.flush()
        return row.id


async def new_work_order(app, now: datetime, team_id: int | None, **values) -> int:  # noqa: ANN001, ANN003
    async with app.state.session_factory() as db, db.begin():
        work_order = WorkOrder(title="SLA test", team_id=team_id, created_at=now, updated_at=now, **values)
        db.add(work_order)
        await sla.start_clocks(db, work_order, now)
        await db.flush()
        return work_order.id


async def load(app, work_order_id: int) -> WorkOrder:  # noqa: ANN001
    async with app.state.session_factory() as db:
        found = await db.get(WorkOrder, work_order_id)
        assert found is not None
        return found


async def set_status(app, principal, work_order_id: int, status: str, now: datetime) -> None:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        work_order = await db.get(WorkOrder, work_order_id)
        await service.change_status(db, principal, work_order, status, now=now)


async def events_of(app, work_order_id: int) -> list[tuple[str, str, datetime]]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        rows = await db.scalars(select(SlaEvent).where(SlaEvent.work_order_id == work_order_id).order_by(SlaEvent.id))
        return [(e.target, e.kind, e.due_at) for e in rows]


async def run_sweep(app, now: datetime) -> None:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        await sla.sweep(db, now)


async def test_most_specific_policy_wins(app, make) -> None:  # noqa: ANN001
    team = await make.team()
    other_team = await make.team()
    team_only = await make_policy(app, team, resolution_seconds=HOUR)
    by_type = await make_policy(app, team, work_order_type="complaint", resolution_seconds=HOUR)
    by_priority = await make_policy(app, team, priority="urgent", resolution_seconds=HOUR)
    exact = await make_policy(app, team, work_order_type="fault", priority="high", resolution_seconds=HOUR)
    await make_policy(app, team, work_order_type="fault", priority="high", resolution_seconds=HOUR, active=False)
    async with app.state.session_factory() as db:

        async def match(t: int | None, kind: str, priority: str) -> int | None:
            found = await sla.match_policy(db, team_id=t, work_order_type=kind, priority=priority)
            return found.id if found is not None else None

        assert await match(team, "inquiry", "normal") == team_only
        assert await match(team, "complaint", "normal") == by_type
        assert await match(team, "fault", "high") == exact
        # complaint + urgent: two policies with two fields each; the lowest id wins.
        assert await match(team, "complaint", "urgent") == min(by_type, by_priority)
        assert await match(other_team, "fault", "high") not in {team_only, by_type, by_priority, exact}


async def test_due_times_in_business_time(app, make) -> None:  # noqa: ANN001
    team = await make.team()
    calendar = await make_calendar(app)
    await make_policy(app, team, calendar_id=calendar, first_response_seconds=2 * HOUR, resolution_seconds=16 * HOUR)
    # Friday 17:00: one hour left on Friday, then Monday.
    wo = await load(app, await new_work_order(app, sh(2026, 6, 5, 17, 0), team))
    assert wo.first_response_due_at == sh(2026, 6, 8, 10, 0)
    assert wo.resolution_due_at == sh(2026, 6, 9, 15, 0)


async def test_pending_pauses_and_moves_due_times(app, make) -> None:  # noqa: ANN001
    principal = principal_of(await make.user("supervisor"))
    team = await make.team()
    calendar = await make_calendar(app)
    await make_policy(app, team, calendar_id=calendar, first_response_seconds=4 * HOUR, resolution_seconds=9 * HOUR)
    wo_id = await new_work_order(app, sh(2026, 6, 8, 10, 0), team)  # Monday
    wo = await load(app, wo_id)
    assert wo.resolution_due_at == sh(2026, 6, 9, 10, 0)
    assert wo.first_response_due_at == sh(2026, 6, 8, 14, 0)
    async with app.state.session_factory() as db, db.begin():
        await sla.on_first_response(db, await db.get(WorkOrder, wo_id), sh(2026, 6, 8, 11, 0))
    await set_status(app, principal, wo_id, "pending", sh(2026, 6, 8, 14, 0))
    assert (await load(app, wo_id)).sla_paused_at == sh(2026, 6, 8, 14, 0)
    # Past the old due time while paused: no breach.
    await run_sweep(app, sh(2026, 6, 9, 11, 0))
    assert await events_of(app, wo_id) == []
    # Back on Wednesday 10:00: 5 business hours were left at the pause.
    await set_status(app, principal, wo_id, "open", sh(2026, 6, 10, 10, 0))
    wo = await load(app, wo_id)
    assert wo.sla_paused_at is None
    assert wo.resolution_due_at == sh(2026, 6, 10, 15, 0)
    assert wo.first_response_due_at == sh(2026, 6, 8, 14, 0)  # stopped clocks do not move
    await set_status(app, principal, wo_id, "resolved", sh(2026, 6, 10, 14, 0))
    assert await events_of(app, wo_id) == []


async def test_warning_and_breach_once_each(app, make) -> None:  # noqa: ANN001
    principal = principal_of(await make.user("supervisor"))
    assignee = await make.user("agent")
    team = await make.team()
    calendar = await make_calendar(app)
    await make_policy(
        app,
        team,
        calendar_id=calendar,
        first_response_seconds=2 * HOUR,
        resolution_seconds=4 * HOUR,
        warn_before_seconds=HOUR,
    )
    wo_id = await new_work_order(app, sh(2026, 6, 8, 9, 0), team, assignee_id=assignee.id)
    fr_due, res_due = sh(2026, 6, 8, 11, 0), sh(2026, 6, 8, 13, 0)
    await run_sweep(app, sh(2026, 6, 8, 9, 59))
    assert await events_of(app, wo_id) == []
    await run_sweep(app, sh(2026, 6, 8, 10, 0))
    await run_sweep(app, sh(2026, 6, 8, 10, 30))
    assert await events_of(app, wo_id) == [("first_response", "warning", fr_due)]
    await run_sweep(app, sh(2026, 6, 8, 12, 30))
    await run_sweep(app, sh(2026, 6, 8, 12, 31))
    assert await events_of(app, wo_id) == [
        ("first_response", "warning", fr_due),
        ("first_response", "breach", fr_due),
        ("resolution", "warning", res_due),
    ]
    await run_sweep(app, sh(2026, 6, 8, 13, 0))
    # Resolving late records the breach the sweep already recorded: still once.
    await set_status(app, principal, wo_id, "resolved", sh(2026, 6, 8, 15, 0))
    events = await events_of(app, wo_id)
    assert events.count(("resolution", "breach", res_due)) == 1
    assert len(events) == 4


async def test_late_resolution_and_first_response_recorded_without_sweep(app, make) -> None:  # noqa: ANN001
    principal = principal_of(await make.user("supervisor"))
    team = await make.team()
    await make_policy(app, team, first_response_seconds=HOUR, resolution_seconds=2 * HOUR)  # 24x7
    start = sh(2026, 6, 8, 9, 0)
    wo_id = await new_work_order(app, start, team)
    async with app.state.session_factory() as db, db.begin():
        wo = await db.get(WorkOrder, wo_id)
        await sla.on_first_response(db, wo, start + timedelta(minutes=90))
        await sla.on_first_response(db, wo, start + timedelta(minutes=100))  # only the first counts
    assert (await load(app, wo_id)).first_responded_at == start + timedelta(minutes=90)
    await set_status(app, principal, wo_id, "resolved", start + timedelta(hours=3))
    assert await events_of(app, wo_id) == [
        ("first_response", "breach", start + timedelta(hours=1)),
        ("resolution", "breach", start + timedelta(hours=2)),
    ]


async def test_sweep_skips_paused_and_stopped_and_never_warns_late(app, make) -> None:  # noqa: ANN001
    principal = principal_of(await make.user("supervisor"))
    team = await make.team()
    await make_policy(app, team, resolution_seconds=2 * HOUR, warn_before_seconds=HOUR)
    start = sh(2026, 7, 1, 9, 0)
    paused = await new_work_order(app, start, team)
    stopped = await new_work_order(app, start, team)
    seen_late = await new_work_order(app, start, team)
    await set_status(app, principal, paused, "pending", start + timedelta(minutes=30))
    await set_status(app, principal, stopped, "resolved", start + timedelta(minutes=30))
    await run_sweep(app, start + timedelta(hours=5))
    assert await events_of(app, paused) == []
    assert await events_of(app, stopped) == []
    assert await events_of(app, seen_late) == [("resolution", "breach", start + timedelta(hours=2))]


async def test_reopen_starts_a_fresh_resolution_clock(app, make) -> None:  # noqa: ANN001
    principal = principal_of(await make.user("supervisor"))
    team = await make.team()
    calendar = await make_calendar(app)
    await make_policy(app, team, calendar_id=calendar, resolution_seconds=9 * HOUR)
    wo_id = await new_work_order(app, sh(2026, 6, 8, 9, 0), team)
    await set_status(app, principal, wo_id, "resolved", sh(2026, 6, 8, 12, 0))
    await set_status(app, principal, wo_id, "reopened", sh(2026, 6, 12, 15, 0))  # Friday 15:00
    wo = await load(app, wo_id)
    assert wo.resolution_due_at == sh(2026, 6, 15, 15, 0)
    assert wo.resolved_at is None
    assert await events_of(app, wo_id) == []


async def test_classification_change_keeps_elapsed_business_time(app, make) -> None:  # noqa: ANN001
    team = await make.team()
    quiet_team = await make.team()
    calendar = await make_calendar(app)
    await make_policy(app, team, calendar_id=calendar, resolution_seconds=9 * HOUR, first_response_seconds=4 * HOUR)
    await make_policy(
        app, team, priority="urgent", calendar_id=calendar, resolution_seconds=4 * HOUR, first_response_seconds=HOUR
    )
    wo_id = await new_work_order(app, sh(2026, 6, 8, 9, 0), team)

    async def reclassify(now: datetime, **values) -> WorkOrder:  # noqa: ANN003
        async with app.state.session_factory() as db, db.begin():
            wo = await db.get(WorkOrder, wo_id)
            for key, value in values.items():
                setattr(wo, key, value)
            await sla.on_classification_change(db, wo, now)
        return await load(app, wo_id)

    # Two business hours used at 11:00: urgent leaves 2 h of 4 (and the first response is overdue).
    wo = await reclassify(sh(2026, 6, 8, 11, 0), priority="urgent")
    assert wo.resolution_due_at == sh(2026, 6, 8, 13, 0)
    assert wo.first_response_due_at == sh(2026, 6, 8, 10, 0)
    # Back to normal at 12:00: 3 h used of 9.
    wo = await reclassify(sh(2026, 6, 8, 12, 0), priority="normal")
    assert wo.resolution_due_at == sh(2026, 6, 8, 18, 0)
    assert wo.first_response_due_at == sh(2026, 6, 8, 13, 0)
    # A team without a policy: no clocks.
    wo = await reclassify(sh(2026, 6, 8, 13, 0), team_id=quiet_team)
    assert wo.sla_policy_id is None and wo.resolution_due_at is None and wo.first_response_due_at is None
    # Back in a team with a policy: the clock counts from creation (no pause recorded).
    wo = await reclassify(sh(2026, 6, 8, 14, 0), team_id=team)
    assert wo.resolution_due_at == sh(2026, 6, 8, 18, 0)


async def test_sweep_job_is_registered() -> None:
    from kefu.core.jobs import _handlers, _periodic

    assert _periodic["sla.sweep"] == 60
    assert _handlers["sla.sweep"] is sla.sweep_job


# --- the API --------------------------------------------------------------------------------------
async def test_calendar_and_policy_api(app, client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("admin"))
    name = unique("日历")
    created = await client.post(
        "/api/v1/business-calendars",
        json={"name": name, "time_zone": "Asia/Shanghai", "weekly_hours": {"0": [["09:00", "18:00"]]}},
    )
    assert created.status_code == 201, created.text
    calendar = created.json()
    assert calendar["weekly_hours"]["0"] == [["09:00", "18:00"]] and calendar["weekly_hours"]["6"] == []
    cid = calendar["id"]
    for bad in (
        {"name": unique("c"), "weekly_hours": {"0": [["09:00", "12:00"], ["11:00", "13:00"]]}},
        {"name": unique("c"), "weekly_hours": {"0": [["18:00", "09:00"]]}},
        {"name": unique("c"), "weekly_hours": {"8": [["09:00", "18:00"]]}},
        {"name": unique("c"), "weekly_hours": {"0": []}},
        {"name": unique("c"), "time_zone": "Mars/Base", "weekly_hours": {"0": [["09:00", "18:00"]]}},
    ):
        refused = await client.post("/api/v1/business-calendars", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
    taken = await client.post("/api/v1/business-calendars", json={"name": name, "weekly_hours": {"1": []}})
    assert taken.status_code == 422  # no working hours at all
    taken = await client.post(
        "/api/v1/business-calendars", json={"name": name, "weekly_hours": {"1": [["09:00", "10:00"]]}}
    )
    assert taken.status_code == 409

    patched = await client.patch(
        f"/api/v1/business-calendars/{cid}",
        json={"weekly_hours": {str(d): [["09:00", "12:00"], ["13:30", "18:00"]] for d in range(5)}},
    )
    assert patched.status_code == 200 and patched.json()["weekly_hours"]["4"][1] == ["13:30", "18:00"]
    assert (await client.patch("/api/v1/business-calendars/999999999", json={"name": "x"})).status_code == 404

    days = {
        "year": 2026,
        "days": [
            {"day": "2026-10-01", "kind": "holiday", "name": "国庆节"},
            {"day": "2026-10-10", "kind": "workday", "name": "调休", "hours": [["10:00", "16:00"]]},
            {"day": "2026-09-27", "kind": "workday", "name": "调休"},
        ],
    }
    put = await client.put(f"/api/v1/business-calendars/{cid}/days", json=days)
    assert put.status_code == 200, put.text
    assert [d["day"] for d in put.json()["days"]] == ["2026-09-27", "2026-10-01", "2026-10-10"]
    replaced = await client.put(
        f"/api/v1/business-calendars/{cid}/days", json={"year": 2026, "days": [days["days"][0]]}
    )
    assert [d["day"] for d in replaced.json()["days"]] == ["2026-10-01"]
    for bad_days in (
        {"year": 2027, "days": [days["days"][0]]},
        {"year": 2026, "days": [days["days"][0], days["days"][0]]},
        {"year": 2026, "days": [{"day": "2026-10-02", "kind": "holiday", "hours": [["09:00", "10:00"]]}]},
        {"year": 2026, "days": [{"day": "2026-10-02", "kind": "vacation"}]},
        {"year": 2026, "days": [{"day": "2026-02-30", "kind": "holiday"}]},
    ):
        assert (await client.put(f"/api/v1/business-calendars/{cid}/days", json=bad_days)).status_code == 422
    listed = await client.get("/api/v1/business-calendars")
    assert any(c["id"] == cid and len(c["days"]) == 1 for c in listed.json())

    team = await make.team()
    policy = await client.post(
        "/api/v1/sla-policies",
        json={
            "name": unique("p"),
            "team_id": team,
            "priority": "urgent",
            "calendar_id": cid,
            "first_response_seconds": 3600,
            "resolution_seconds": 8 * 3600,
        },
    )
    assert policy.status_code == 201, policy.text
    pid = policy.json()["id"]
    assert (await client.post("/api/v1/sla-policies", json={"name": unique("p")})).status_code == 422
    unknown_team = {"name": unique("p"), "resolution_seconds": 60, "team_id": 10**12}
    assert (await client.post("/api/v1/sla-policies", json=unknown_team)).status_code == 422
    cleared = await client.patch(f"/api/v1/sla-policies/{pid}", json={"priority": None, "active": False})
    assert cleared.status_code == 200 and cleared.json()["priority"] is None and cleared.json()["active"] is False
    no_target = {"first_response_seconds": None, "resolution_seconds": None}
    assert (await client.patch(f"/api/v1/sla-policies/{pid}", json=no_target)).status_code == 422
    assert any(p["id"] == pid for p in (await client.get("/api/v1/sla-policies")).json())


async def test_work_order_sla_view(app, client, make) -> None:  # noqa: ANN001
    agent = await make.user("agent")
    await login(client, agent)
    team = await make.team()
    calendar = await make_calendar(app)
    pid = await make_policy(app, team, calendar_id=calendar, first_response_seconds=HOUR, resolution_seconds=2 * HOUR)
    now = datetime.now(SH)
    wo_id = await new_work_order(app, now - timedelta(days=30), team)
    async with app.state.session_factory() as db, db.begin():
        db.add(SlaEvent(work_order_id=wo_id, target="resolution", kind="breach", due_at=now - timedelta(days=29)))
    got = await client.get(f"/api/v1/work-orders/{wo_id}/sla")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["policy_id"] == pid and body["calendar_id"] == calendar and body["paused"] is False
    clocks = {c["target"]: c for c in body["clocks"]}
    assert clocks["resolution"]["remaining_seconds"] < 0 and clocks["resolution"]["breached"] is True
    assert [e["kind"] for e in body["events"]] == ["breach"]
    assert (await client.get("/api/v1/work-orders/999999999/sla")).status_code == 404

    restricted = await new_work_order(app, now, team, restricted=True)
    assert (await client.get(f"/api/v1/work-orders/{restricted}/sla")).status_code == 404
