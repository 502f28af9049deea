"""Access-matrix examples of the customer pages (see tests/core/test_access_matrix.py)."""

from __future__ import annotations

from typing import Any

from conftest import principal_of, unique
from kefu.customers import service


def _admin(world: dict[str, Any]) -> Any:
    return principal_of(world["users"]["admin"])


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, int]:
    async with app.state.session_factory() as db, db.begin():
        customer = await service.create_customer(db, _admin(world), display_name=unique("页面客户"))
    return {"cp_customer_id": customer.id}


async def _pair(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    async with app.state.session_factory() as db, db.begin():
        survivor = await service.create_customer(db, _admin(world), display_name=unique(f"留{role}"))
        duplicate = await service.create_customer(db, _admin(world), display_name=unique(f"并{role}"))
    return {"cp_survivor_id": survivor.id, "cp_duplicate_id": duplicate.id}


async def _merge(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    pair = await _pair(app, world, role)
    async with app.state.session_factory() as db, db.begin():
        merge = await service.merge_customers(db, _admin(world), pair["cp_survivor_id"], pair["cp_duplicate_id"])
    return {"cp_merge_id": merge.id, **pair}


EXAMPLES = {
    ("GET", "/customers"): lambda c: {"params": {"q": "138 1234 5678"}},
    ("GET", "/customers/new"): lambda c: {},
    ("POST", "/customers"): lambda c: {"data": {"display_name": unique("页面新客户"), "preferred_channel": "email"}},
    ("GET", "/customers/{customer_id}/edit"): lambda c: {"path": {"customer_id": c.ids["cp_customer_id"]}},
    ("POST", "/customers/{customer_id}/edit"): lambda c: {
        "path": {"customer_id": c.ids["cp_customer_id"]},
        "data": {"op": "save", "display_name": "页面客户（改）"},
    },
    ("GET", "/customers/{customer_id}/merge"): lambda c: {
        "path": {"customer_id": c.ids["cp_customer_id"]},
        "params": {"q": "页面客户"},
    },
    ("POST", "/customers/{customer_id}/merge"): lambda c: {
        "path": {"customer_id": c.ids["cp_survivor_id"]},
        "data": {"duplicate_id": c.ids["cp_duplicate_id"], "confirm": "1"},
    },
    ("POST", "/customer-merges/{merge_id}/undo"): lambda c: {
        "path": {"merge_id": c.ids["cp_merge_id"]},
        "data": {"customer_id": c.ids["cp_survivor_id"]},
    },
}

PER_CELL = {
    ("POST", "/customers/{customer_id}/merge"): _pair,
    ("POST", "/customer-merges/{merge_id}/undo"): _merge,
}
