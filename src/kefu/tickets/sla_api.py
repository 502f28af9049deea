"""REST routes of business calendars, SLA policies, escalations and the escalation report."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import Invalid
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam, IdQuery
from kefu.db.base import utcnow
from kefu.db.session import get_db
from kefu.tickets import escalation as escalations
from kefu.tickets import service, sla
from kefu.tickets.models import Escalation, EscalationState, WorkOrder
from kefu.tickets.sla_schemas import (
    CalendarCreate,
    CalendarDayOut,
    CalendarDaysReplace,
    CalendarOut,
    CalendarUpdate,
    CancelIn,
    ClockOut,
    CloseRateOut,
    EscalateIn,
    EscalationOut,
    EscalationPage,
    PolicyCreate,
    PolicyOut,
    PolicyUpdate,
    ReturnIn,
    SlaEventOut,
    WorkOrderSlaOut,
)

router = APIRouter(prefix="/api/v1", tags=["sla"])
Db = Annotated[AsyncSession, Depends(get_db)]


def _calendar_out(view: sla.CalendarWithDays) -> CalendarOut:
    c = view.calendar
    return CalendarOut(
        id=c.id,
        name=c.name,
        time_zone=c.time_zone,
        weekly_hours=c.weekly_hours,
        days=[CalendarDayOut.model_validate(d) for d in view.days],
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def _escalation_out(escalation: Escalation, work_order: WorkOrder, now: datetime) -> EscalationOut:
    return EscalationOut(
        id=escalation.id,
        work_order_id=escalation.work_order_id,
        work_order_number=work_order.number,
        from_team_id=escalation.from_team_id,
        to_team_id=escalation.to_team_id,
        deadline_days=escalation.deadline_days,
        business_days=escalation.business_days,
        due_at=escalation.due_at,
        state=escalation.state,
        overdue=escalation.state == EscalationState.open and escalation.due_at <= now,
        note=escalation.note,
        sent_by_id=escalation.sent_by_id,
        sent_at=escalation.sent_at,
        returned_by_id=escalation.returned_by_id,
        returned_at=escalation.returned_at,
        return_note=escalation.return_note,
    )


# --- calendars ------------------------------------------------------------------------------------
@router.get("/business-calendars")
async def list_calendars(db: Db, principal: Principal = authorize("sla", "list")) -> list[CalendarOut]:
    return [_calendar_out(v) for v in await sla.list_calendars(db)]


@router.post("/business-calendars", status_code=201)
async def create_calendar(
    body: CalendarCreate, db: Db, principal: Principal = authorize("sla", "manage")
) -> CalendarOut:
    async with db.begin():
        view = await sla.create_calendar(
            db, principal, name=body.name, time_zone=body.time_zone, weekly_hours=body.weekly_hours
        )
    return _calendar_out(view)


@router.patch("/business-calendars/{calendar_id}")
async def update_calendar(
    calendar_id: IdParam, body: CalendarUpdate, db: Db, principal: Principal = authorize("sla", "manage")
) -> CalendarOut:
    async with db.begin():
        view = await sla.update_calendar(db, principal, calendar_id, body.model_dump(exclude_unset=True))
    return _calendar_out(view)


@router.put("/business-calendars/{calendar_id}/days")
async def replace_calendar_days(
    calendar_id: IdParam, body: CalendarDaysReplace, db: Db, principal: Principal = authorize("sla", "manage")
) -> CalendarOut:
    async with db.begin():
        view = await sla.replace_calendar_days(
            db, principal, calendar_id, body.year, [d.model_dump() for d in body.days]
        )
    return _calendar_out(view)


# --- policies -------------------------------------------------------------------------------------
@router.get("/sla-policies")
async def list_policies(db: Db, principal: Principal = authorize("sla", "list")) -> list[PolicyOut]:
    return [PolicyOut.model_validate(p) for p in await sla.list_policies(db)]


@router.post("/sla-policies", status_code=201)
async def create_policy(body: PolicyCreate, db: Db, principal: Principal = authorize("sla", "manage")) -> PolicyOut:
    async with db.begin():
        policy = await sla.create_policy(db, principal, body.model_dump())
    return PolicyOut.model_validate(policy)


@router.patch("/sla-policies/{policy_id}")
async def update_policy(
    policy_id: IdParam, body: PolicyUpdate, db: Db, principal: Principal = authorize("sla", "manage")
) -> PolicyOut:
    async with db.begin():
        policy = await sla.update_policy(db, principal, policy_id, body.changes())
    return PolicyOut.model_validate(policy)


# --- a work order's clocks ------------------------------------------------------------------------
@router.get("/work-orders/{work_order_id}/sla")
async def work_order_sla(
    work_order_id: IdParam, db: Db, principal: Principal = authorize("work_order", "read", by_id=True)
) -> WorkOrderSlaOut:
    work_order = await service.get_work_order(db, principal, work_order_id)
    view = await sla.sla_view(db, work_order, utcnow())
    return WorkOrderSlaOut(
        work_order_id=work_order.id,
        policy_id=view.policy.id if view.policy is not None else None,
        policy_name=view.policy.name if view.policy is not None else None,
        calendar_id=view.policy.calendar_id if view.policy is not None else None,
        paused=view.paused,
        paused_at=work_order.sla_paused_at,
        clocks=[ClockOut.model_validate(c) for c in view.clocks],
        events=[SlaEventOut.model_validate(e) for e in view.events],
    )


# --- escalations ----------------------------------------------------------------------------------
@router.post("/work-orders/{work_order_id}/escalations", status_code=201)
async def escalate(
    work_order_id: IdParam, body: EscalateIn, db: Db, principal: Principal = authorize("work_order", "escalate")
) -> EscalationOut:
    now = utcnow()
    async with db.begin():
        escalation = await escalations.escalate(
            db, principal, work_order_id, body.to_team_id, body.deadline_days, body.business_days, body.note, now
        )
        work_order = await db.get(WorkOrder, escalation.work_order_id)
    return _escalation_out(escalation, work_order, now)


@router.post("/escalations/{escalation_id}/return")
async def return_escalation(
    escalation_id: IdParam, body: ReturnIn, db: Db, principal: Principal = authorize("work_order", "escalate")
) -> EscalationOut:
    now = utcnow()
    async with db.begin():
        escalation = await escalations.return_escalation(db, principal, escalation_id, body.note, now)
        work_order = await db.get(WorkOrder, escalation.work_order_id)
    return _escalation_out(escalation, work_order, now)


@router.post("/escalations/{escalation_id}/cancel")
async def cancel_escalation(
    escalation_id: IdParam,
    db: Db,
    body: CancelIn | None = None,
    principal: Principal = authorize("work_order", "escalate"),
) -> EscalationOut:
    now = utcnow()
    async with db.begin():
        escalation = await escalations.cancel_escalation(
            db, principal, escalation_id, body.note if body is not None else "", now
        )
        work_order = await db.get(WorkOrder, escalation.work_order_id)
    return _escalation_out(escalation, work_order, now)


@router.get("/escalations")
async def list_escalations(
    db: Db,
    principal: Principal = authorize("escalation", "list"),
    team_id: IdQuery | None = None,
    state: Literal["open", "returned", "cancelled"] | None = None,
    overdue: bool | None = None,
    before_id: IdQuery | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> EscalationPage:
    now = utcnow()
    rows = await escalations.list_escalations(
        db, principal, now, team_id=team_id, state=state, overdue=overdue, before_id=before_id, limit=limit
    )
    return EscalationPage(
        items=[_escalation_out(e, w, now) for e, w in rows],
        next_before_id=rows[-1][0].id if len(rows) == limit else None,
    )


@router.get("/escalations/report")
async def escalation_report(
    team_id: IdQuery,
    start: datetime,
    end: datetime,
    db: Db,
    principal: Principal = authorize("escalation", "report"),
) -> CloseRateOut:
    if start.tzinfo is None or end.tzinfo is None:
        raise Invalid("start and end need a time zone (e.g. 2026-10-01T00:00:00+08:00)")
    report = await escalations.close_rate(db, team_id, start, end, utcnow())
    return CloseRateOut(
        team_id=report.team_id,
        start=report.start,
        end=report.end,
        total=report.total,
        returned_in_time=report.returned_in_time,
        returned_late=report.returned_late,
        open_overdue=report.open_overdue,
        open_not_due=report.open_not_due,
        close_rate=report.rate,
    )
