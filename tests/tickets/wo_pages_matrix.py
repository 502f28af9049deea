"""Access-matrix examples of the work-order pages (see tests/core/test_access_matrix.py)."""

from __future__ import annotations

from typing import Any

from conftest import principal_of, unique
from kefu.core.audit import Actor
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity import service as identity
from kefu.tickets import escalation, macros, service
from kefu.tickets.schemas import WorkOrderCreate


def _principal(world: dict[str, Any], role: str = "admin") -> Principal:
    return principal_of(world["users"][role])


async def _work_order(app: Any, world: dict[str, Any], **fields: Any) -> int:
    body = WorkOrderCreate(**{"title": unique("矩阵工单"), "team_id": world["ids"].get("wop_front"), **fields})
    async with app.state.session_factory() as db, db.begin():
        return (await service.create_work_order(db, _principal(world), body)).id


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, int]:
    """A front team and a back-office team every matrix user belongs to, work orders (one a suggestion),
    a shared macro."""
    member_ids = [user.id for user in world["users"].values()]
    teams = []
    async with app.state.session_factory() as db, db.begin():
        for prefix in ("wop-front", "wop-back"):
            team = await identity.create_team(db, Actor.system("test"), name=unique(prefix))
            await identity.update_team(db, Actor.system("test"), team, member_ids=member_ids)
            teams.append(team.id)
    world["ids"]["wop_front"], world["ids"]["wop_back"] = teams
    ids = {"wop_front": teams[0], "wop_back": teams[1]}
    ids["wop_id"] = await _work_order(app, world)
    ids["wop_other_id"] = await _work_order(app, world)
    ids["wop_suggestion_id"] = await _work_order(app, world, type="suggestion")
    async with app.state.session_factory() as db, db.begin():
        macro = await macros.create_macro(
            db,
            _principal(world),
            name=unique("矩阵宏"),
            body="您好 {{agent.name}}",
            scope="shared",
            team_id=None,
            actions={},
        )
    ids["wop_macro_id"] = macro.id
    ids["wop_km_id"] = world["users"]["knowledge_manager"].id
    return ids


async def _fresh(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    return {"wop_fresh_id": await _work_order(app, world), "wop_fresh_other_id": await _work_order(app, world)}


async def _open_escalation(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    work_order_id = await _work_order(app, world)
    async with app.state.session_factory() as db, db.begin():
        made = await escalation.escalate(
            db, _principal(world, "supervisor"), work_order_id, world["ids"]["wop_back"], 2, True, "矩阵", utcnow()
        )
    return {"wop_escalation_id": made.id, "wop_escalated_id": work_order_id}


async def _saved_view(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    owner = world["users"].get(role, world["users"]["agent"])
    async with app.state.session_factory() as db, db.begin():
        view = await service.create_saved_view(db, principal_of(owner), unique("视图"), {"view": "mine"})
    return {"wop_view_id": view.id}


async def _forward(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    """A suggestion forwarded to the caller (to a knowledge manager for roles that cannot receive one)."""
    to = world["users"][role] if role in ("agent", "knowledge_manager", "supervisor", "admin") else None
    to_id = (to or world["users"]["knowledge_manager"]).id
    async with app.state.session_factory() as db, db.begin():
        forward = await service.forward_suggestion(
            db, _principal(world), world["ids"]["wop_suggestion_id"], to_id, "矩阵问题"
        )
    return {"wop_forward_id": forward.id}


def _wo(c: Any) -> dict[str, int]:
    return {"work_order_id": c.ids["wop_id"]}


EXAMPLES = {
    ("GET", "/work-orders"): lambda c: {"params": {"view": "all-visible", "priority": "normal", "q": "矩阵"}},
    ("POST", "/work-orders/views"): lambda c: {"data": {"name": unique("视图"), "view": "team", "priority": "high"}},
    ("POST", "/work-orders/views/{view_id}/delete"): lambda c: {"path": {"view_id": c.ids["wop_view_id"]}},
    ("GET", "/work-orders/new"): lambda c: {"params": {"customer_q": "138"}},
    ("POST", "/work-orders"): lambda c: {
        "data": {"title": unique("页面新建"), "type": "inquiry", "priority": "normal"}
    },
    ("GET", "/work-orders/{work_order_id}"): lambda c: {"path": _wo(c)},
    ("POST", "/work-orders/{work_order_id}/comments"): lambda c: {
        "path": _wo(c),
        "data": {"body": "矩阵备注", "visibility": "internal"},
    },
    ("POST", "/work-orders/{work_order_id}/status"): lambda c: {"path": _wo(c), "data": {"status": "open"}},
    ("POST", "/work-orders/{work_order_id}/assign"): lambda c: {
        "path": _wo(c),
        "data": {"team_id": c.ids["wop_front"], "assignee_id": ""},
    },
    ("POST", "/work-orders/{work_order_id}/fields"): lambda c: {"path": _wo(c), "data": {"priority": "high"}},
    ("POST", "/work-orders/{work_order_id}/tags"): lambda c: {"path": _wo(c), "data": {"tags": "矩阵"}},
    ("POST", "/work-orders/{work_order_id}/attachments"): lambda c: {
        "path": _wo(c),
        "files": {"file": ("矩阵.txt", b"matrix", "text/plain")},
    },
    ("POST", "/work-orders/{work_order_id}/escalate"): lambda c: {
        "path": {"work_order_id": c.ids["wop_fresh_id"]},
        "data": {"to_team_id": c.ids["wop_back"], "deadline_days": "3", "business_days": "1", "note": "矩阵"},
    },
    ("POST", "/escalations/{escalation_id}/return"): lambda c: {
        "path": {"escalation_id": c.ids["wop_escalation_id"]},
        "data": {"answer": "已核实", "work_order_id": c.ids["wop_escalated_id"]},
    },
    ("POST", "/work-orders/{work_order_id}/macro"): lambda c: {
        "path": _wo(c),
        "data": {"macro_id": c.ids["wop_macro_id"]},
    },
    ("POST", "/work-orders/{work_order_id}/links"): lambda c: {
        "path": _wo(c),
        "data": {"other_id": c.ids["wop_other_id"]},
    },
    ("POST", "/work-orders/{work_order_id}/merge"): lambda c: {
        "path": {"work_order_id": c.ids["wop_fresh_id"]},
        "data": {"duplicate_id": c.ids["wop_fresh_other_id"]},
    },
    ("POST", "/work-orders/{work_order_id}/forward"): lambda c: {
        "path": {"work_order_id": c.ids["wop_suggestion_id"]},
        "data": {"to_user_id": c.ids["wop_km_id"], "question": "矩阵"},
    },
    ("GET", "/escalations"): lambda c: {},
    ("GET", "/suggestions"): lambda c: {"params": {"answered": "1"}},
    ("POST", "/suggestions/{forward_id}/answer"): lambda c: {
        "path": {"forward_id": c.ids["wop_forward_id"]},
        "data": {"answer": "矩阵答复"},
    },
}

PER_CELL = {
    ("POST", "/work-orders/views/{view_id}/delete"): _saved_view,
    ("POST", "/work-orders/{work_order_id}/escalate"): _fresh,
    ("POST", "/escalations/{escalation_id}/return"): _open_escalation,
    ("POST", "/work-orders/{work_order_id}/merge"): _fresh,
    ("POST", "/suggestions/{forward_id}/answer"): _forward,
}
