"""Shared set-up for the interaction tests: customers with phone numbers, work orders, reasons."""

from __future__ import annotations

import uuid
from typing import Any

from kefu.core.policy import Principal
from kefu.customers import service as customers
from kefu.interactions import service
from kefu.tickets.models import WorkOrder

SYSTEM = Principal(user_id=None, username="test", roles=frozenset({"admin"}), via="session")


def new_mobile() -> str:
    """A fresh, valid Chinese mobile number in E.164."""
    return f"+86138{uuid.uuid4().int % 10**8:08d}"


async def customer_with_phone(app: Any, phone: str, name: str = "张三") -> int:
    async with app.state.session_factory() as db, db.begin():
        customer, _ = await customers.resolve_or_create(db, SYSTEM, "phone", phone, display_name=name)
        return customer.id


async def work_order(app: Any, *, restricted: bool = False, team_id: int | None = None) -> int:
    async with app.state.session_factory() as db, db.begin():
        order = WorkOrder(title="测试工单", restricted=restricted, team_id=team_id)
        db.add(order)
        await db.flush()
        return order.id


async def reason(app: Any, code: str | None = None, parent_id: int | None = None, active: bool = True) -> int:
    async with app.state.session_factory() as db, db.begin():
        node = await service.create_reason(
            db, SYSTEM, code=code or f"r{uuid.uuid4().hex[:10]}", name="原因", parent_id=parent_id, active=active
        )
        return node.reason.id


def external_id() -> str:
    return f"call-{uuid.uuid4().hex}"
