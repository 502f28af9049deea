"""Access-matrix examples for the desk and customer 360 pages (see tests/core/test_access_matrix.py)."""

from __future__ import annotations

import uuid
from typing import Any

from kefu.core.policy import Principal
from kefu.customers import service as customers
from kefu.interactions import service as interactions
from kefu.tickets import service as tickets
from kefu.tickets.schemas import WorkOrderCreate

SYSTEM = Principal(user_id=None, username="matrix", roles=frozenset({"admin"}), via="session")
D = "/desk/interactions/{interaction_id}"


async def _contact(app: Any, world: dict[str, Any], *, work_order_id: int | None = None) -> int:
    async with app.state.session_factory() as db, db.begin():
        view, _ = await interactions.create_interaction(
            db,
            SYSTEM,
            interactions.NewInteraction(
                channel="phone",
                customer_id=world["ids"].get("desk_customer_id"),
                agent_id=world["users"]["agent"].id,
                work_order_id=work_order_id,
            ),
        )
        return view.interaction.id


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, int]:
    async with app.state.session_factory() as db, db.begin():
        customer = await customers.create_customer(db, SYSTEM, display_name="矩阵客户")
        work_order = await tickets.create_work_order(
            db, SYSTEM, WorkOrderCreate(title="矩阵工单", customer_id=customer.id)
        )
        reason = await interactions.create_reason(db, SYSTEM, code=f"d{uuid.uuid4().hex[:12]}", name="矩阵原因")
    world["ids"]["desk_customer_id"] = customer.id
    return {
        "desk_customer_id": customer.id,
        "desk_work_order_id": work_order.id,
        "desk_reason_id": reason.reason.id,
        "desk_interaction_id": await _contact(app, world, work_order_id=work_order.id),
    }


async def _fresh_contact(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    # Wrapping up uses the contact up: each cell gets its own.
    return {"desk_interaction_id": await _contact(app, world)}


EXAMPLES = {
    ("GET", "/desk"): lambda c: {},
    ("GET", "/desk/pop/{interaction_id}"): lambda c: {"path": {"interaction_id": c.ids["desk_interaction_id"]}},
    ("GET", "/desk/kb"): lambda c: {"params": {"q": "矩阵"}},
    ("POST", D + "/reply"): lambda c: {
        "path": {"interaction_id": c.ids["desk_interaction_id"]},
        "data": {"body": "您好"},
    },
    ("POST", D + "/wrap-up"): lambda c: {
        "path": {"interaction_id": c.ids["desk_interaction_id"]},
        "data": {"contact_reason_id": c.ids["desk_reason_id"], "disposition": "resolved"},
    },
    ("POST", D + "/articles"): lambda c: {
        "path": {"interaction_id": c.ids["desk_interaction_id"]},
        "data": {"article_id": c.article_id},
    },
    ("GET", "/customers/{customer_id}"): lambda c: {"path": {"customer_id": c.ids["desk_customer_id"]}},
    ("POST", "/customers/{customer_id}/notes"): lambda c: {
        "path": {"customer_id": c.ids["desk_customer_id"]},
        "data": {"body": "矩阵备注"},
    },
}

PER_CELL = {
    ("POST", D + "/wrap-up"): _fresh_contact,
}
