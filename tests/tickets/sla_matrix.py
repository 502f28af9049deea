"""Access-matrix examples of the SLA, calendar and escalation routes (see tests/core/test_access_matrix.py)."""

from __future__ import annotations

import uuid
from typing import Any

from kefu.core.audit import Actor
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity import service as identity
from kefu.tickets import escalation, sla
from kefu.tickets.models import BusinessCalendar, SlaPolicy, WorkOrder

API = "/api/v1"
WEEKLY = {str(d): [["09:00", "18:00"]] for d in range(5)}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _work_order(app, team_id: int) -> int:  # noqa: ANN001
    now = utcnow()
    async with app.state.session_factory() as db, db.begin():
        work_order = WorkOrder(title="matrix", team_id=team_id, created_at=now, updated_at=now)
        db.add(work_order)
        await sla.start_clocks(db, work_order, now)
        await db.flush()
        return work_order.id


async def prepare(app, world: dict[str, Any]) -> dict[str, int]:  # noqa: ANN001
    """Two teams every matrix user belongs to (the sending side and the back office), a calendar,
    a policy of the back office and a work order."""
    member_ids = [user.id for user in world["users"].values()]
    async with app.state.session_factory() as db, db.begin():
        teams = []
        for prefix in ("sla-front", "sla-back"):
            team = await identity.create_team(db, Actor.system("test"), name=_name(prefix))
            await identity.update_team(db, Actor.system("test"), team, member_ids=member_ids)
            teams.append(team.id)
        calendar = BusinessCalendar(name=_name("sla-cal"), time_zone="Asia/Shanghai", weekly_hours=WEEKLY)
        db.add(calendar)
        await db.flush()
        policy = SlaPolicy(name=_name("sla-pol"), team_id=teams[1], calendar_id=calendar.id, resolution_seconds=3600)
        db.add(policy)
        await db.flush()
        ids = {"sla_front": teams[0], "sla_back": teams[1], "calendar_id": calendar.id, "policy_id": policy.id}
    ids["sla_work_order_id"] = await _work_order(app, ids["sla_front"])
    return ids


async def _open_escalation(app, world: dict[str, Any], role: str) -> dict[str, int]:  # noqa: ANN001
    ids = world["ids"]
    work_order_id = await _work_order(app, ids["sla_front"])
    sender = world["users"]["supervisor"]
    principal = Principal(user_id=sender.id, username=sender.username, roles=sender.role_names, via="session")
    async with app.state.session_factory() as db, db.begin():
        made = await escalation.escalate(db, principal, work_order_id, ids["sla_back"], 2, True, "matrix", utcnow())
    return {"escalation_id": made.id}


async def _fresh_work_order(app, world: dict[str, Any], role: str) -> dict[str, int]:  # noqa: ANN001
    return {"escalate_work_order_id": await _work_order(app, world["ids"]["sla_front"])}


EXAMPLES = {
    ("GET", f"{API}/business-calendars"): lambda c: {},
    ("POST", f"{API}/business-calendars"): lambda c: {"json": {"name": _name("cal"), "weekly_hours": WEEKLY}},
    ("PATCH", f"{API}/business-calendars/{{calendar_id}}"): lambda c: {
        "path": {"calendar_id": c.ids["calendar_id"]},
        "json": {"time_zone": "Asia/Shanghai"},
    },
    ("PUT", f"{API}/business-calendars/{{calendar_id}}/days"): lambda c: {
        "path": {"calendar_id": c.ids["calendar_id"]},
        "json": {"year": 2026, "days": [{"day": "2026-10-01", "kind": "holiday", "name": "国庆节"}]},
    },
    ("GET", f"{API}/sla-policies"): lambda c: {},
    ("POST", f"{API}/sla-policies"): lambda c: {
        "json": {"name": _name("pol"), "team_id": c.ids["sla_back"], "resolution_seconds": 7200, "active": False}
    },
    ("PATCH", f"{API}/sla-policies/{{policy_id}}"): lambda c: {
        "path": {"policy_id": c.ids["policy_id"]},
        "json": {"warn_before_seconds": 600},
    },
    ("GET", f"{API}/work-orders/{{work_order_id}}/sla"): lambda c: {
        "path": {"work_order_id": c.ids["sla_work_order_id"]}
    },
    ("POST", f"{API}/work-orders/{{work_order_id}}/escalations"): lambda c: {
        "path": {"work_order_id": c.ids["escalate_work_order_id"]},
        "json": {"to_team_id": c.ids["sla_back"], "deadline_days": 3},
    },
    ("POST", f"{API}/escalations/{{escalation_id}}/return"): lambda c: {
        "path": {"escalation_id": c.ids["escalation_id"]},
        "json": {"note": "已处理"},
    },
    ("POST", f"{API}/escalations/{{escalation_id}}/cancel"): lambda c: {
        "path": {"escalation_id": c.ids["escalation_id"]},
        "json": {"note": ""},
    },
    ("GET", f"{API}/escalations"): lambda c: {"params": {"team_id": c.ids["sla_back"], "overdue": "false"}},
    ("GET", f"{API}/escalations/report"): lambda c: {
        "params": {"team_id": c.ids["sla_back"], "start": "2026-01-01T00:00:00+08:00", "end": "2027-01-01T08:00:00Z"}
    },
}

PER_CELL = {
    ("POST", f"{API}/work-orders/{{work_order_id}}/escalations"): _fresh_work_order,
    ("POST", f"{API}/escalations/{{escalation_id}}/return"): _open_escalation,
    ("POST", f"{API}/escalations/{{escalation_id}}/cancel"): _open_escalation,
}
