"""Back-office escalation (后送): a work order sent to a back-office team with an N-day deadline; that
team works it and returns it with its answer (or the sender cancels). One open escalation per work
order at a time; the work order is "escalated" while it is out.

Deadline: the end of the working hours of the N-th following business day ("3个工作日内") on the
calendar of the back-office team - the calendar of the SLA policy the work order would get in that
team (its type and priority, the target team), else the first calendar (lowest id), else 24x7. With
``business_days`` false, the end (local midnight) of the N-th following calendar day in that zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError, Conflict, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.identity import service as identity
from kefu.tickets import service
from kefu.tickets.calendar import Calendar, add_business_days, add_calendar_days, load_calendar
from kefu.tickets.models import BusinessCalendar, Escalation, EscalationState, WorkOrder, WorkOrderStatus
from kefu.tickets.sla import match_policy

MAX_DEADLINE_DAYS = 365
MAX_NOTE_CHARS = 4000


async def deadline_calendar(db: AsyncSession, work_order: WorkOrder, to_team_id: int) -> Calendar | None:
    policy = await match_policy(db, team_id=to_team_id, work_order_type=work_order.type, priority=work_order.priority)
    calendar_id = policy.calendar_id if policy is not None else None
    if calendar_id is None:
        calendar_id = await db.scalar(select(BusinessCalendar.id).order_by(BusinessCalendar.id).limit(1))
    return await load_calendar(db, calendar_id)


async def team_member_ids(db: AsyncSession, team_id: int) -> tuple[int, ...]:
    team = await identity.get_team(db, team_id)
    return tuple(sorted(m.user_id for m in team.members))


def _forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


async def escalate(
    db: AsyncSession,
    principal: Principal,
    work_order_id: int,
    to_team_id: int,
    deadline_days: int,
    business_days: bool,
    note: str,
    now: datetime,
) -> Escalation:
    if not 1 <= deadline_days <= MAX_DEADLINE_DAYS:
        raise Invalid(f"the deadline is 1 to {MAX_DEADLINE_DAYS} days")
    work_order = await service.get_work_order(db, principal, work_order_id, for_update=True)
    try:
        team = await identity.get_team(db, to_team_id)
    except NotFound:
        raise Invalid(f"team {to_team_id} does not exist") from None
    if not team.is_active:
        raise Invalid("that team is inactive")
    if to_team_id == work_order.team_id:
        raise Invalid("escalate to another team than the work order's own")
    already = await db.scalar(
        select(Escalation.id).where(Escalation.work_order_id == work_order.id, Escalation.state == EscalationState.open)
    )
    if already is not None:
        raise Conflict("this work order is already escalated", {"escalation_id": already})
    calendar = await deadline_calendar(db, work_order, to_team_id)
    due_at = (add_business_days if business_days else add_calendar_days)(calendar, now, deadline_days)
    await service.change_status(
        db, principal, work_order, WorkOrderStatus.escalated, reason=note, now=now, allow_escalated=True
    )
    escalation = Escalation(
        work_order_id=work_order.id,
        from_team_id=work_order.team_id,
        to_team_id=to_team_id,
        deadline_days=deadline_days,
        business_days=business_days,
        due_at=due_at,
        state=EscalationState.open,
        note=note,
        sent_by_id=principal.user_id,
        sent_at=now,
    )
    db.add(escalation)
    await db.flush()
    await service.record_event(
        db,
        work_order,
        principal.user_id,
        "escalated",
        now,
        escalation_id=escalation.id,
        to_team_id=to_team_id,
        deadline_days=deadline_days,
        business_days=business_days,
        due_at=due_at.isoformat(),
        note=note,
    )
    members = tuple(m.user_id for m in team.members)
    publish_on_commit(
        db,
        Event(
            "escalation.received",
            {
                "escalation_id": escalation.id,
                "work_order_id": work_order.id,
                "number": work_order.number,
                "to_team_id": to_team_id,
                "due_at": due_at.isoformat(),
            },
            user_ids=members,
        ),
    )
    return escalation


async def _open_escalation_for_update(db: AsyncSession, escalation_id: int) -> tuple[Escalation, WorkOrder]:
    escalation = await db.scalar(select(Escalation).where(Escalation.id == escalation_id).with_for_update())
    if escalation is None:
        raise NotFound("escalation")
    work_order = await db.scalar(select(WorkOrder).where(WorkOrder.id == escalation.work_order_id).with_for_update())
    assert work_order is not None  # the foreign key cascades
    return escalation, work_order


async def _can_see(db: AsyncSession, principal: Principal, work_order_id: int) -> bool:
    found = await db.scalar(
        select(WorkOrder.id).where(WorkOrder.id == work_order_id, service.visibility_clause(principal))
    )
    return found is not None


async def _refuse(db: AsyncSession, principal: Principal, escalation: Escalation, message: str) -> ApiError:
    # A caller who may not even see the work order learns nothing about the escalation.
    if await _can_see(db, principal, escalation.work_order_id) or escalation.to_team_id in principal.team_ids:
        return _forbidden(message)
    return NotFound("escalation")


def _require_open(escalation: Escalation) -> None:
    if escalation.state != EscalationState.open:
        raise Conflict(f"this escalation is {escalation.state}", {"state": escalation.state})


async def _back_to_open(
    db: AsyncSession, principal: Principal, work_order: WorkOrder, reason: str, now: datetime
) -> None:
    if work_order.status == WorkOrderStatus.escalated:
        await service.change_status(
            db, principal, work_order, WorkOrderStatus.open, reason=reason, now=now, allow_escalated=True
        )


def _tell_sender(db: AsyncSession, work_order: WorkOrder, escalation: Escalation, kind: str) -> None:
    users = tuple(sorted({u for u in (work_order.assignee_id, escalation.sent_by_id) if u is not None}))
    publish_on_commit(
        db,
        Event(
            f"escalation.{kind}",
            {"escalation_id": escalation.id, "work_order_id": work_order.id, "number": work_order.number},
            user_ids=users,
        ),
    )


async def return_escalation(
    db: AsyncSession, principal: Principal, escalation_id: int, note: str, now: datetime
) -> Escalation:
    """The back-office team (a member, or a supervisor/admin) sends the work order back with its answer."""
    escalation, work_order = await _open_escalation_for_update(db, escalation_id)
    if not (service.sees_all(principal) or escalation.to_team_id in principal.team_ids):
        raise await _refuse(db, principal, escalation, "only the back-office team returns this escalation")
    _require_open(escalation)
    escalation.state = EscalationState.returned
    escalation.returned_by_id = principal.user_id
    escalation.returned_at = now
    escalation.return_note = note
    await _back_to_open(db, principal, work_order, note, now)
    await service.record_event(
        db,
        work_order,
        principal.user_id,
        "escalation_returned",
        now,
        escalation_id=escalation.id,
        to_team_id=escalation.to_team_id,
        late=now > escalation.due_at,
        note=note,
    )
    _tell_sender(db, work_order, escalation, "returned")
    return escalation


async def cancel_escalation(
    db: AsyncSession, principal: Principal, escalation_id: int, note: str, now: datetime
) -> Escalation:
    """The sending side takes the work order back: the sender, the work order's team or assignee, the
    team it was sent from, supervisors and admins."""
    escalation, work_order = await _open_escalation_for_update(db, escalation_id)
    sender_side = (
        service.sees_all(principal)
        or escalation.sent_by_id == principal.user_id
        or work_order.assignee_id == principal.user_id
        or bool({work_order.team_id, escalation.from_team_id} & principal.team_ids)
    )
    if not sender_side or not await _can_see(db, principal, work_order.id):
        raise await _refuse(db, principal, escalation, "only the sending side cancels this escalation")
    _require_open(escalation)
    escalation.state = EscalationState.cancelled
    await _back_to_open(db, principal, work_order, note, now)
    await service.record_event(
        db, work_order, principal.user_id, "escalation_cancelled", now, escalation_id=escalation.id, note=note
    )
    publish_on_commit(
        db,
        Event(
            "escalation.cancelled",
            {"escalation_id": escalation.id, "work_order_id": work_order.id, "number": work_order.number},
            user_ids=await team_member_ids(db, escalation.to_team_id),
        ),
    )
    return escalation


# --- lists and the close rate ---------------------------------------------------------------------
def escalation_visibility(principal: Principal) -> ColumnElement[bool]:
    """Escalations of work orders ``principal`` may see, and those sent to their teams."""
    if service.sees_all(principal):
        return true()
    return or_(service.visibility_clause(principal), Escalation.to_team_id.in_(sorted(principal.team_ids)))


async def list_escalations(
    db: AsyncSession,
    principal: Principal,
    now: datetime,
    *,
    team_id: int | None = None,
    state: str | None = None,
    overdue: bool | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[tuple[Escalation, WorkOrder]]:
    """Newest first. ``overdue``: open and past due (True), or not (False)."""
    stmt = (
        select(Escalation, WorkOrder)
        .join(WorkOrder, WorkOrder.id == Escalation.work_order_id)
        .where(escalation_visibility(principal))
        .order_by(Escalation.id.desc())
        .limit(limit)
    )
    if team_id is not None:
        stmt = stmt.where(Escalation.to_team_id == team_id)
    if state is not None:
        stmt = stmt.where(Escalation.state == state)
    if overdue is True:
        stmt = stmt.where(Escalation.state == EscalationState.open, Escalation.due_at <= now)
    elif overdue is False:
        stmt = stmt.where(or_(Escalation.state != EscalationState.open, Escalation.due_at > now))
    if before_id is not None:
        stmt = stmt.where(Escalation.id < before_id)
    return [(e, w) for e, w in (await db.execute(stmt)).all()]


@dataclass
class CloseRate:
    team_id: int
    start: datetime
    end: datetime
    total: int
    returned_in_time: int
    returned_late: int
    open_overdue: int
    open_not_due: int

    @property
    def rate(self) -> float | None:
        decided = self.total - self.open_not_due
        return self.returned_in_time / decided if decided else None


async def close_rate(db: AsyncSession, team_id: int, start: datetime, end: datetime, now: datetime) -> CloseRate:
    """The N-day close rate of the escalations sent to ``team_id`` in [start, end) (cancelled ones do
    not count: the back office never had to finish them):

        rate = returned within their deadline / (total - open and not yet due)

    Open escalations not yet due are left out because their outcome is unknown; open ones past due
    already count as failures, as do late returns. None when nothing is decided yet."""
    if end <= start:
        raise Invalid("the period must end after it starts")
    returned = Escalation.state == EscalationState.returned
    is_open = Escalation.state == EscalationState.open

    row = (
        await db.execute(
            select(
                func.count(),
                func.count().filter(and_(returned, Escalation.returned_at <= Escalation.due_at)),
                func.count().filter(and_(returned, Escalation.returned_at > Escalation.due_at)),
                func.count().filter(and_(is_open, Escalation.due_at <= now)),
                func.count().filter(and_(is_open, Escalation.due_at > now)),
            ).where(
                Escalation.to_team_id == team_id,
                Escalation.sent_at >= start,
                Escalation.sent_at < end,
                Escalation.state != EscalationState.cancelled,
            )
        )
    ).one()
    return CloseRate(team_id, start, end, *(int(v or 0) for v in row))
