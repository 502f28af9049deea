"""Access-matrix examples of the customers API (see tests/core/test_access_matrix.py)."""

from __future__ import annotations

import itertools
from typing import Any

from conftest import principal_of, unique
from kefu.customers import service

API = "/api/v1"
_numbers = itertools.count(1)


def _mobile() -> int:
    # 135 + 8 digits: unique per run and per call, so matrix cells never collide with other tests.
    return 13500000000 + (abs(hash(unique())) % 10**7) * 10 + next(_numbers) % 10


async def _admin_principal(world: dict[str, Any]) -> Any:
    return principal_of(world["users"]["admin"])


async def prepare(app, world: dict[str, Any]) -> dict[str, int]:  # noqa: ANN001
    principal = await _admin_principal(world)
    phone = _mobile()
    async with app.state.session_factory() as db, db.begin():
        organisation = await service.create_organisation(db, principal, name=unique("矩阵机构"))
        customer = await service.create_customer(
            db,
            principal,
            display_name=unique("矩阵客户"),
            organisation_id=organisation.id,
            identities=[service.NewIdentity("phone", str(phone))],
        )
    return {"customer_id": customer.id, "customer_phone": phone, "organisation_id": organisation.id}


async def _pair(app, world: dict[str, Any], role: str) -> dict[str, int]:  # noqa: ANN001
    principal = await _admin_principal(world)
    async with app.state.session_factory() as db, db.begin():
        survivor = await service.create_customer(db, principal, display_name=unique(f"留{role}"))
        merged = await service.create_customer(db, principal, display_name=unique(f"并{role}"))
    return {"survivor_id": survivor.id, "merged_id": merged.id}


async def _merge(app, world: dict[str, Any], role: str) -> dict[str, int]:  # noqa: ANN001
    pair = await _pair(app, world, role)
    async with app.state.session_factory() as db, db.begin():
        merge = await service.merge_customers(db, await _admin_principal(world), pair["survivor_id"], pair["merged_id"])
    return {"merge_id": merge.id}


async def _identity(app, world: dict[str, Any], role: str) -> dict[str, int]:  # noqa: ANN001
    principal = await _admin_principal(world)
    async with app.state.session_factory() as db, db.begin():
        customer = await service.create_customer(
            db, principal, display_name=unique("身份"), identities=[service.NewIdentity("chat", unique("visitor"))]
        )
    return {"identity_customer_id": customer.id, "identity_id": customer.identities[0].id}


def _customer(c: Any) -> dict[str, Any]:
    return {"customer_id": c.ids["customer_id"]}


def _csv(c: Any) -> dict[str, Any]:
    body = f"external_id,display_name\n{unique('matrix')},矩阵导入\n".encode()
    return {"files": {"file": ("customers.csv", body, "text/csv")}}


EXAMPLES = {
    ("GET", API + "/customers"): lambda c: {"params": {"q": "矩阵"}},
    ("POST", API + "/customers"): lambda c: {"json": {"display_name": unique("新客户")}},
    ("GET", API + "/customers/lookup"): lambda c: {"params": {"kind": "phone", "value": str(c.ids["customer_phone"])}},
    ("POST", API + "/customers/merge"): lambda c: {
        "json": {"survivor_id": c.ids["survivor_id"], "merged_id": c.ids["merged_id"]}
    },
    ("POST", API + "/customers/import"): _csv,
    ("GET", API + "/customers/export"): lambda c: {},
    ("GET", API + "/customers/{customer_id}"): lambda c: {"path": _customer(c)},
    ("PATCH", API + "/customers/{customer_id}"): lambda c: {"path": _customer(c), "json": {"language": "zh-CN"}},
    ("POST", API + "/customers/{customer_id}/identities"): lambda c: {
        "path": _customer(c),
        "json": {"kind": "chat", "value": unique("visitor")},
    },
    ("DELETE", API + "/customers/{customer_id}/identities/{identity_id}"): lambda c: {
        "path": {"customer_id": c.ids["identity_customer_id"], "identity_id": c.ids["identity_id"]}
    },
    ("GET", API + "/customers/{customer_id}/notes"): lambda c: {"path": _customer(c)},
    ("POST", API + "/customers/{customer_id}/notes"): lambda c: {"path": _customer(c), "json": {"body": "矩阵备注"}},
    ("GET", API + "/customer-merges"): lambda c: {"params": {"customer_id": c.ids["customer_id"]}},
    ("POST", API + "/customer-merges/{merge_id}/undo"): lambda c: {"path": {"merge_id": c.ids["merge_id"]}},
    ("GET", API + "/organisations"): lambda c: {"params": {"q": "矩阵"}},
    ("POST", API + "/organisations"): lambda c: {"json": {"name": unique("新机构")}},
    ("PATCH", API + "/organisations/{organisation_id}"): lambda c: {
        "path": {"organisation_id": c.ids["organisation_id"]},
        "json": {"attributes": {"k": "v"}},
    },
}

PER_CELL = {
    ("POST", API + "/customers/merge"): _pair,
    ("POST", API + "/customer-merges/{merge_id}/undo"): _merge,
    ("DELETE", API + "/customers/{customer_id}/identities/{identity_id}"): _identity,
}
