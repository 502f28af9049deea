"""Access-matrix examples of the work-order routes (see tests/core/test_access_matrix.py)."""

from __future__ import annotations

from typing import Any

from conftest import unique
from kefu.core.policy import Principal
from kefu.tickets import attachments, macros, service
from kefu.tickets.schemas import WorkOrderCreate

WO = "/api/v1/work-orders/{work_order_id}"


def _principal(user: Any) -> Principal:
    return Principal(user_id=user.id, username=user.username, roles=user.role_names, team_ids=user.team_ids)


async def _work_order(app: Any, user: Any, **fields: Any) -> int:
    async with app.state.session_factory() as db, db.begin():
        made = await service.create_work_order(db, _principal(user), WorkOrderCreate(title=unique("矩阵"), **fields))
        return made.id


def _staff(world: dict[str, Any], role: str) -> Any:
    """The cell's own user when it is staff (so it owns what the cell uses up), else the agent."""
    return (
        world["users"][role]
        if role in ("agent", "supervisor", "admin", "knowledge_manager")
        else world["users"]["agent"]
    )


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, int]:
    admin = world["users"]["admin"]
    work_order_id = await _work_order(app, admin)
    suggestion_id = await _work_order(app, admin, type="suggestion")
    async with app.state.session_factory() as db, db.begin():
        principal = _principal(admin)
        attachment = await attachments.add(
            db, principal, work_order_id, filename="矩阵.txt", data=b"matrix", max_bytes=1024
        )
        macro = await macros.create_macro(
            db,
            principal,
            name=unique("m"),
            body="{{customer.name}} {{agent.name}}",
            scope="shared",
            team_id=None,
            actions={},
        )
        definition = await service.create_field(
            db, principal, key=unique("f").lower(), label="矩阵", kind="text", choices=[], required=False
        )
    return {
        "wo_id": work_order_id,
        "wo_suggestion_id": suggestion_id,
        "wo_attachment_id": attachment.id,
        "wo_macro_id": macro.id,
        "wo_field_id": definition.id,
        "wo_assignee_id": world["users"]["agent"].id,
        "wo_km_id": world["users"]["knowledge_manager"].id,
    }


async def _tagged(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    return {"wo_tagged_id": await _work_order(app, world["users"]["admin"], tags=["matrix-tag"])}


async def _linked(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    admin = world["users"]["admin"]
    one, two = await _work_order(app, admin), await _work_order(app, admin)
    async with app.state.session_factory() as db, db.begin():
        await service.link(db, _principal(admin), one, two)
    return {"wo_link_a": one, "wo_link_b": two}


async def _pair(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    admin = world["users"]["admin"]
    return {"wo_merge_from": await _work_order(app, admin), "wo_merge_into": await _work_order(app, admin)}


async def _own_attachment(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    user = _staff(world, role)
    work_order_id = await _work_order(app, world["users"]["admin"])
    async with app.state.session_factory() as db, db.begin():
        attachment = await attachments.add(
            db, _principal(user), work_order_id, filename="x.txt", data=b"x", max_bytes=1024
        )
    return {"wo_del_wo_id": work_order_id, "wo_del_attachment_id": attachment.id}


async def _own_forward(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    admin = world["users"]["admin"]
    work_order_id = await _work_order(app, admin, type="suggestion")
    async with app.state.session_factory() as db, db.begin():
        forward = await service.forward_suggestion(db, _principal(admin), work_order_id, _staff(world, role).id, "?")
    return {"wo_forward_id": forward.id}


async def _own_macro(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    async with app.state.session_factory() as db, db.begin():
        macro = await macros.create_macro(
            db, _principal(_staff(world, role)), name=unique("m"), body="b", scope="personal", team_id=None, actions={}
        )
    return {"wo_own_macro_id": macro.id}


async def _own_view(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    async with app.state.session_factory() as db, db.begin():
        view = await service.create_saved_view(db, _principal(_staff(world, role)), unique("v"), {"view": "mine"})
    return {"wo_view_id": view.id}


def _wo(c: Any, **extra: Any) -> dict[str, Any]:
    return {"path": {"work_order_id": c.ids["wo_id"]}, **extra}


EXAMPLES = {
    ("GET", "/api/v1/work-orders"): lambda c: {"params": {"view": "all-visible", "q": "矩阵"}},
    ("POST", "/api/v1/work-orders"): lambda c: {"json": {"title": "矩阵新工单", "tags": ["m"]}},
    ("GET", "/api/v1/work-orders/search"): lambda c: {"params": {"q": "矩阵"}},
    ("GET", "/api/v1/work-orders/export"): lambda c: {"params": {"status": "new"}},
    ("GET", WO): lambda c: _wo(c),
    ("PATCH", WO): lambda c: _wo(c, json={"priority": "high"}),
    ("POST", WO + "/status"): lambda c: _wo(c, json={"status": "open"}),
    ("POST", WO + "/assign"): lambda c: _wo(c, json={"assignee_id": c.ids["wo_assignee_id"]}),
    ("GET", WO + "/comments"): lambda c: _wo(c),
    ("POST", WO + "/comments"): lambda c: _wo(c, json={"body": "矩阵备注"}),
    ("GET", WO + "/history"): lambda c: _wo(c),
    ("POST", WO + "/tags"): lambda c: _wo(c, json={"tags": ["矩阵"]}),
    ("DELETE", WO + "/tags/{tag}"): lambda c: {"path": {"work_order_id": c.ids["wo_tagged_id"], "tag": "matrix-tag"}},
    ("POST", WO + "/links"): lambda c: _wo(c, json={"other_id": c.ids["wo_suggestion_id"]}),
    ("DELETE", WO + "/links/{other_id}"): lambda c: {
        "path": {"work_order_id": c.ids["wo_link_a"], "other_id": c.ids["wo_link_b"]}
    },
    ("POST", WO + "/merge"): lambda c: {
        "path": {"work_order_id": c.ids["wo_merge_from"]},
        "json": {"into_id": c.ids["wo_merge_into"]},
    },
    ("GET", WO + "/attachments"): lambda c: _wo(c),
    ("POST", WO + "/attachments"): lambda c: _wo(c, files={"file": ("m.txt", b"matrix", "text/plain")}),
    ("GET", WO + "/attachments/{attachment_id}"): lambda c: {
        "path": {"work_order_id": c.ids["wo_id"], "attachment_id": c.ids["wo_attachment_id"]}
    },
    ("DELETE", WO + "/attachments/{attachment_id}"): lambda c: {
        "path": {"work_order_id": c.ids["wo_del_wo_id"], "attachment_id": c.ids["wo_del_attachment_id"]}
    },
    ("POST", WO + "/forward"): lambda c: {
        "path": {"work_order_id": c.ids["wo_suggestion_id"]},
        "json": {"to_user_id": c.ids["wo_km_id"], "question": "?"},
    },
    ("GET", "/api/v1/suggestions"): lambda c: {},
    ("POST", "/api/v1/suggestions/{forward_id}/answer"): lambda c: {
        "path": {"forward_id": c.ids["wo_forward_id"]},
        "json": {"answer": "答复"},
    },
    ("GET", "/api/v1/macros"): lambda c: {},
    ("POST", "/api/v1/macros"): lambda c: {"json": {"name": "矩阵", "body": "您好"}},
    ("PATCH", "/api/v1/macros/{macro_id}"): lambda c: {
        "path": {"macro_id": c.ids["wo_own_macro_id"]},
        "json": {"body": "新"},
    },
    ("DELETE", "/api/v1/macros/{macro_id}"): lambda c: {"path": {"macro_id": c.ids["wo_own_macro_id"]}},
    ("POST", "/api/v1/macros/{macro_id}/render"): lambda c: {
        "path": {"macro_id": c.ids["wo_macro_id"]},
        "json": {"work_order_id": c.ids["wo_id"]},
    },
    ("POST", WO + "/apply-macro"): lambda c: _wo(c, json={"macro_id": c.ids["wo_macro_id"]}),
    ("GET", "/api/v1/work-order-fields"): lambda c: {},
    ("POST", "/api/v1/work-order-fields"): lambda c: {"json": {"key": unique("k").lower(), "label": "矩阵"}},
    ("PATCH", "/api/v1/work-order-fields/{field_id}"): lambda c: {
        "path": {"field_id": c.ids["wo_field_id"]},
        "json": {"label": "新标签"},
    },
    ("GET", "/api/v1/saved-views"): lambda c: {},
    ("POST", "/api/v1/saved-views"): lambda c: {"json": {"name": unique("v"), "filters": {"view": "team"}}},
    ("DELETE", "/api/v1/saved-views/{view_id}"): lambda c: {"path": {"view_id": c.ids["wo_view_id"]}},
}

PER_CELL = {
    ("DELETE", WO + "/tags/{tag}"): _tagged,
    ("DELETE", WO + "/links/{other_id}"): _linked,
    ("POST", WO + "/merge"): _pair,
    ("DELETE", WO + "/attachments/{attachment_id}"): _own_attachment,
    ("POST", "/api/v1/suggestions/{forward_id}/answer"): _own_forward,
    ("PATCH", "/api/v1/macros/{macro_id}"): _own_macro,
    ("DELETE", "/api/v1/macros/{macro_id}"): _own_macro,
    ("DELETE", "/api/v1/saved-views/{view_id}"): _own_view,
}
