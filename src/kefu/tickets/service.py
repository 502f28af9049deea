"""Work orders: the rules, and the only place that writes them.

Shared core used by the rest of the tickets domain (SLA, escalation, macros, pages):
``visibility_clause`` (the one row-level rule for every list, search, export and by-id read),
``get_work_order``, ``record_event`` (the append-only history) and ``change_status`` (the state
machine, which also drives the SLA clocks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.customers.owners import register_mover
from kefu.db.base import utcnow
from kefu.tickets.models import (
    Escalation,
    WorkOrder,
    WorkOrderEvent,
    WorkOrderStatus,
)

S = WorkOrderStatus
# Which status may follow which. "escalated" is entered and left through tickets/escalation.py.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.new: frozenset({S.open, S.pending, S.escalated, S.resolved, S.closed}),
    S.open: frozenset({S.pending, S.escalated, S.resolved, S.closed}),
    S.pending: frozenset({S.open, S.escalated, S.resolved, S.closed}),
    S.escalated: frozenset({S.open, S.pending, S.resolved}),
    S.resolved: frozenset({S.closed, S.reopened}),
    S.closed: frozenset({S.reopened}),
    S.reopened: frozenset({S.open, S.pending, S.escalated, S.resolved, S.closed}),
}


def sees_all(principal: Principal) -> bool:
    return principal.has_role("supervisor", "admin")


def visibility_clause(principal: Principal) -> ColumnElement[bool]:
    """Which work orders ``principal`` may see. Restricted ones only by their team, their assignee, a
    back-office team they were escalated to, supervisors and admins."""
    if sees_all(principal):
        return true()
    teams = sorted(principal.team_ids)
    back_office = select(Escalation.work_order_id).where(Escalation.to_team_id.in_(teams))
    return or_(
        WorkOrder.restricted.is_(False),
        WorkOrder.team_id.in_(teams),
        WorkOrder.assignee_id == principal.user_id,
        WorkOrder.id.in_(back_office),
    )


async def get_work_order(
    db: AsyncSession, principal: Principal, work_order_id: int, *, for_update: bool = False
) -> WorkOrder:
    """The work order if ``principal`` may see it; else NotFound (a hidden id is never confirmed)."""
    stmt = select(WorkOrder).where(WorkOrder.id == work_order_id, visibility_clause(principal))
    if for_update:
        stmt = stmt.with_for_update()
    found = await db.scalar(stmt)
    if found is None:
        raise NotFound("work order")
    return found


async def record_event(
    db: AsyncSession, work_order: WorkOrder, actor_id: int | None, kind: str, now: datetime | None = None, **data: Any
) -> WorkOrderEvent:
    """Append to the work order's history (and mark it as having activity now)."""
    now = now or utcnow()
    entry = WorkOrderEvent(work_order_id=work_order.id, actor_id=actor_id, kind=kind, data=data, created_at=now)
    db.add(entry)
    work_order.updated_at = now
    return entry


def notify(db: AsyncSession, work_order: WorkOrder, kind: str, **data: Any) -> None:
    """Tell the assignee (and the team's members through their desks) that the work order changed."""
    users = tuple(u for u in (work_order.assignee_id,) if u is not None)
    publish_on_commit(
        db,
        Event(
            f"work_order.{kind}",
            {"work_order_id": work_order.id, "number": work_order.number, "status": work_order.status, **data},
            user_ids=users,
        ),
    )


@dataclass
class StatusChange:
    old: str
    new: str
    at: datetime
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


async def change_status(
    db: AsyncSession,
    principal: Principal,
    work_order: WorkOrder,
    new_status: str,
    *,
    reason: str = "",
    now: datetime | None = None,
    allow_escalated: bool = False,
) -> StatusChange:
    """Move ``work_order`` to ``new_status`` if the state machine allows it; keeps the SLA clocks,
    resolution/close times and the history right. ``allow_escalated`` is for tickets/escalation.py,
    the one place that sends work orders to and back from a back-office team."""
    now = now or utcnow()
    old = work_order.status
    if new_status not in TRANSITIONS:
        raise Invalid(f"unknown status {new_status!r}")
    if new_status == old:
        return StatusChange(old, new_status, now, reason)
    if new_status not in TRANSITIONS[old]:
        raise Invalid(f"a work order cannot go from {old} to {new_status}", {"from": old, "to": new_status})
    if S.escalated in (old, new_status) and not allow_escalated:
        raise Invalid("escalate and return work orders through the escalation actions")
    if work_order.merged_into_id is not None:
        raise Invalid("this work order was merged into another; work on that one")
    work_order.status = new_status
    if new_status == S.resolved:
        work_order.resolved_at = now
    elif new_status == S.closed:
        work_order.closed_at = now
        work_order.resolved_at = work_order.resolved_at or now
    elif new_status == S.reopened:
        work_order.resolved_at = None
        work_order.closed_at = None
    from kefu.tickets import sla  # the SLA module reads this module; import late to avoid a cycle

    await sla.on_status_change(db, work_order, old, new_status, now)
    await record_event(db, work_order, principal.user_id, "status", now, old=old, new=new_status, reason=reason)
    notify(db, work_order, "status", old=old)
    return StatusChange(old, new_status, now, reason)


async def _move_work_orders(
    db: AsyncSession, from_customer_id: int, to_customer_id: int, only_ids: list[int] | None
) -> list[int]:
    stmt = select(WorkOrder.id).where(WorkOrder.customer_id == from_customer_id)
    if only_ids is not None:
        stmt = stmt.where(WorkOrder.id.in_(only_ids))
    ids = list((await db.scalars(stmt)).all())
    if ids:
        await db.execute(update(WorkOrder).where(WorkOrder.id.in_(ids)).values(customer_id=to_customer_id))
    return ids


register_mover("work_orders", _move_work_orders)
