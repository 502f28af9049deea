"""SLA clocks on business calendars.

A work order gets the most specific active policy matching its team, type and priority (each of them
set on the policy must equal the work order's; more set fields win; ties go to the lowest id). The
policy's targets are business seconds on the policy's calendar (no calendar: 24x7):

- created: first-response and resolution due times are set from the creation time;
- first public reply by staff: the first-response clock stops (a breach is recorded if late);
- pending: both running clocks pause (``sla_paused_at``); leaving pending moves the due times forward
  by the business time spent paused. A clock already past due when paused stays breached;
- escalated: the clocks keep running (the customer is still waiting);
- resolved / closed: the clocks stop; a late resolution (or a first response never given in time)
  is recorded as a breach;
- reopened: a fresh resolution clock from the reopen time;
- type, priority or team changed: the policy is matched again and the due times are recomputed on the
  new policy, keeping the business time already used (measured as the old target minus what was left).

Due times are not recomputed when a policy or calendar is edited later: the targets a work order was
given stay its targets. ``sweep`` (every minute) records warnings and breaches of running clocks once
each (``SlaEvent`` is unique per work order, target, kind and due time) and tells the assignee.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.errors import Conflict, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.jobs import Job, periodic
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity import service as identity
from kefu.settings import Settings
from kefu.tickets.calendar import (
    Calendar,
    CalendarError,
    add_business_seconds,
    business_seconds_between,
    load_calendar,
    validate_day_hours,
    validate_weekly_hours,
)
from kefu.tickets.models import BusinessCalendar, CalendarDay, SlaEvent, SlaPolicy, WorkOrder, WorkOrderStatus

S = WorkOrderStatus
FIRST_RESPONSE = "first_response"
RESOLUTION = "resolution"
WARNING = "warning"
BREACH = "breach"
STOPPED = frozenset({S.resolved, S.closed})
# The sweep handles at most this many work orders per target and kind per run; the rest wait a minute.
SWEEP_BATCH = 500


# --- policies -------------------------------------------------------------------------------------
def specificity(policy: SlaPolicy) -> int:
    return sum(value is not None for value in (policy.team_id, policy.work_order_type, policy.priority))


async def match_policy(
    db: AsyncSession, *, team_id: int | None, work_order_type: str, priority: str
) -> SlaPolicy | None:
    """The most specific active policy for these values; ties go to the lowest id."""
    stmt = select(SlaPolicy).where(
        SlaPolicy.active.is_(True),
        or_(SlaPolicy.team_id.is_(None), SlaPolicy.team_id == team_id) if team_id else SlaPolicy.team_id.is_(None),
        or_(SlaPolicy.work_order_type.is_(None), SlaPolicy.work_order_type == work_order_type),
        or_(SlaPolicy.priority.is_(None), SlaPolicy.priority == priority),
    )
    candidates = list((await db.scalars(stmt)).all())
    if not candidates:
        return None
    return min(candidates, key=lambda p: (-specificity(p), p.id))


async def policy_for(db: AsyncSession, work_order: WorkOrder) -> SlaPolicy | None:
    return await match_policy(
        db, team_id=work_order.team_id, work_order_type=work_order.type, priority=work_order.priority
    )


async def _policy_and_calendar(db: AsyncSession, policy_id: int | None) -> tuple[SlaPolicy | None, Calendar | None]:
    policy = await db.get(SlaPolicy, policy_id) if policy_id is not None else None
    calendar = await load_calendar(db, policy.calendar_id) if policy is not None else None
    return policy, calendar


def _due(cal: Calendar | None, start: datetime, seconds: int | None) -> datetime | None:
    return add_business_seconds(cal, start, seconds) if seconds is not None else None


# --- events ---------------------------------------------------------------------------------------
def _event_data(work_order: WorkOrder, target: str, due_at: datetime) -> dict[str, Any]:
    return {
        "work_order_id": work_order.id,
        "number": work_order.number,
        "target": target,
        "due_at": due_at.isoformat(),
    }


async def record_sla_event(
    db: AsyncSession, work_order: WorkOrder, target: str, kind: str, due_at: datetime, now: datetime
) -> bool:
    """Record a warning or breach once (the sweep and a late resolution may both get there; two
    sweeps may run at once); publish it to the assignee when it is new. True if it was new."""
    insert = postgresql.insert if db.bind.dialect.name == "postgresql" else sqlite.insert
    result = await db.execute(
        insert(SlaEvent)
        .values(work_order_id=work_order.id, target=target, kind=kind, due_at=due_at, recorded_at=now)
        .on_conflict_do_nothing(index_elements=["work_order_id", "target", "kind", "due_at"])
    )
    if not result.rowcount:
        return False
    users = (work_order.assignee_id,) if work_order.assignee_id is not None else ()
    # Nobody holds an unassigned work order yet: its breach goes to the supervisors.
    roles = ("supervisor",) if not users and kind == BREACH else ()
    publish_on_commit(
        db, Event(f"work_order.sla_{kind}", _event_data(work_order, target, due_at), user_ids=users, roles=roles)
    )
    return True


async def _breach_if_late(
    db: AsyncSession, work_order: WorkOrder, target: str, due: datetime | None, now: datetime
) -> None:
    if due is not None and due < now:
        await record_sla_event(db, work_order, target, BREACH, due, now)


# --- the clocks -----------------------------------------------------------------------------------
async def start_clocks(db: AsyncSession, work_order: WorkOrder, now: datetime) -> None:
    """On creation: choose the policy, set the due times."""
    policy = await policy_for(db, work_order)
    work_order.sla_policy_id = policy.id if policy is not None else None
    if policy is None:
        work_order.first_response_due_at = work_order.resolution_due_at = None
        return
    calendar = await load_calendar(db, policy.calendar_id)
    work_order.first_response_due_at = (
        _due(calendar, now, policy.first_response_seconds) if work_order.first_responded_at is None else None
    )
    work_order.resolution_due_at = _due(calendar, now, policy.resolution_seconds)
    if work_order.status == S.pending and work_order.sla_paused_at is None:
        work_order.sla_paused_at = now


async def on_status_change(db: AsyncSession, work_order: WorkOrder, old: str, new: str, now: datetime) -> None:
    """Pending pauses, leaving pending resumes (due times move by the paused business time), resolved
    and closed stop (recording late ones), reopened starts a fresh resolution clock."""
    if old == new:
        return
    _, calendar = await _policy_and_calendar(db, work_order.sla_policy_id)
    if old == S.pending and work_order.sla_paused_at is not None:
        paused_at = work_order.sla_paused_at
        work_order.sla_paused_at = None
        if new not in STOPPED:
            work_order.first_response_due_at = _resume(
                calendar,
                work_order.first_response_due_at,
                paused_at,
                now,
                running=work_order.first_responded_at is None,
            )
            work_order.resolution_due_at = _resume(calendar, work_order.resolution_due_at, paused_at, now, running=True)
    if new == S.pending:
        work_order.sla_paused_at = now
    elif new in STOPPED and old not in STOPPED:
        await _on_stop(db, work_order, now, paused=old == S.pending)
    elif new == S.reopened:
        await _on_reopen(db, work_order, now)


def _resume(
    cal: Calendar | None, due: datetime | None, paused_at: datetime, now: datetime, *, running: bool
) -> datetime | None:
    if due is None or not running or due <= paused_at:
        return due  # stopped, or already breached before the pause: pausing forgives nothing
    return add_business_seconds(cal, now, business_seconds_between(cal, paused_at, due))


async def _on_stop(db: AsyncSession, work_order: WorkOrder, now: datetime, *, paused: bool) -> None:
    # While pending the clocks were not running: what counts is where they stood at the pause.
    at = work_order.sla_paused_at if paused and work_order.sla_paused_at else now
    if work_order.first_responded_at is None:
        await _breach_if_late(db, work_order, FIRST_RESPONSE, work_order.first_response_due_at, at)
    await _breach_if_late(db, work_order, RESOLUTION, work_order.resolution_due_at, at)


async def _on_reopen(db: AsyncSession, work_order: WorkOrder, now: datetime) -> None:
    policy, calendar = await _policy_and_calendar(db, work_order.sla_policy_id)
    if policy is None or not policy.active:
        policy = await policy_for(db, work_order)
        work_order.sla_policy_id = policy.id if policy is not None else None
        calendar = await load_calendar(db, policy.calendar_id) if policy is not None else None
    work_order.sla_paused_at = None
    work_order.resolution_due_at = _due(calendar, now, policy.resolution_seconds) if policy is not None else None


async def on_first_response(db: AsyncSession, work_order: WorkOrder, now: datetime) -> None:
    """The first public reply by staff stops the first-response clock."""
    if work_order.first_responded_at is not None:
        return
    work_order.first_responded_at = now
    await _breach_if_late(db, work_order, FIRST_RESPONSE, work_order.first_response_due_at, now)


async def on_classification_change(db: AsyncSession, work_order: WorkOrder, now: datetime) -> None:
    """Type, priority or team changed: the matching policy may differ; due times follow it, keeping the
    business time already used on each running clock."""
    if work_order.status in STOPPED:
        return
    new_policy = await policy_for(db, work_order)
    old_policy, old_calendar = await _policy_and_calendar(db, work_order.sla_policy_id)
    if new_policy is not None and old_policy is not None and new_policy.id == old_policy.id:
        return
    work_order.sla_policy_id = new_policy.id if new_policy is not None else None
    if new_policy is None:
        work_order.first_response_due_at = work_order.resolution_due_at = None
        return
    new_calendar = await load_calendar(db, new_policy.calendar_id)
    # The clocks stand still at the pause while pending.
    at = work_order.sla_paused_at or now

    def used(old_target: int | None, old_due: datetime | None) -> int:
        if old_policy is not None and old_target is not None and old_due is not None:
            return max(0, old_target - business_seconds_between(old_calendar, at, old_due))
        # No clock ran before (no policy matched): count from creation on the new calendar.
        return max(0, business_seconds_between(new_calendar, work_order.created_at or at, at))

    if work_order.first_responded_at is None:
        old_target = old_policy.first_response_seconds if old_policy is not None else None
        spent = used(old_target, work_order.first_response_due_at)
        target = new_policy.first_response_seconds
        work_order.first_response_due_at = (
            add_business_seconds(new_calendar, at, target - spent) if target is not None else None
        )
    old_target = old_policy.resolution_seconds if old_policy is not None else None
    spent = used(old_target, work_order.resolution_due_at)
    target = new_policy.resolution_seconds
    work_order.resolution_due_at = (
        add_business_seconds(new_calendar, at, target - spent) if target is not None else None
    )


# --- the sweep ------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    warnings: int = 0
    breaches: int = 0


RUNNING = (S.new, S.open, S.escalated, S.reopened)


async def sweep(db: AsyncSession, now: datetime) -> SweepResult:
    """Record (and announce) each warning and breach due by ``now``, once. Paused and stopped clocks
    are skipped. A clock first seen already past due gets its breach only, no late warning."""
    result = SweepResult()
    max_warn = await db.scalar(select(func.max(SlaPolicy.warn_before_seconds))) or 0
    for target, due_column, running in (
        (FIRST_RESPONSE, WorkOrder.first_response_due_at, WorkOrder.first_responded_at.is_(None)),
        (RESOLUTION, WorkOrder.resolution_due_at, True),
    ):

        def recorded(kind: str, due_column=due_column, target=target):  # noqa: ANN001, ANN202
            return exists().where(
                SlaEvent.work_order_id == WorkOrder.id,
                SlaEvent.target == target,
                SlaEvent.kind == kind,
                SlaEvent.due_at == due_column,
            )

        base = (
            select(WorkOrder, func.coalesce(SlaPolicy.warn_before_seconds, 0))
            .outerjoin(SlaPolicy, SlaPolicy.id == WorkOrder.sla_policy_id)
            .where(
                WorkOrder.status.in_(RUNNING),
                WorkOrder.sla_paused_at.is_(None),
                due_column.is_not(None),
                running,
            )
            .order_by(due_column, WorkOrder.id)
            .limit(SWEEP_BATCH)
        )
        breached = base.where(due_column <= now, ~recorded(BREACH))
        for work_order, _ in (await db.execute(breached)).all():
            due = getattr(work_order, due_column.key)
            result.breaches += await record_sla_event(db, work_order, target, BREACH, due, now)
        if max_warn > 0:
            warned = base.where(due_column > now, due_column <= now + timedelta(seconds=max_warn), ~recorded(WARNING))
            for work_order, warn_before in (await db.execute(warned)).all():
                due = getattr(work_order, due_column.key)
                if warn_before > 0 and due - timedelta(seconds=warn_before) <= now:
                    result.warnings += await record_sla_event(db, work_order, target, WARNING, due, now)
    return result


@periodic("sla.sweep", every_seconds=60)
async def sweep_job(db: AsyncSession, job: Job, settings: Settings) -> None:
    await sweep(db, utcnow())


# --- reading the clocks ---------------------------------------------------------------------------
@dataclass
class ClockView:
    target: str
    due_at: datetime | None
    stopped_at: datetime | None  # responded / resolved
    # Business seconds left (negative: overdue); None without a due time or once stopped.
    remaining_seconds: int | None
    breached: bool


@dataclass
class SlaView:
    work_order: WorkOrder
    policy: SlaPolicy | None
    paused: bool
    clocks: list[ClockView]
    events: list[SlaEvent]


async def sla_view(db: AsyncSession, work_order: WorkOrder, now: datetime) -> SlaView:
    policy, calendar = await _policy_and_calendar(db, work_order.sla_policy_id)
    events = list(
        (await db.scalars(select(SlaEvent).where(SlaEvent.work_order_id == work_order.id).order_by(SlaEvent.id))).all()
    )
    at = work_order.sla_paused_at or now
    clocks = []
    for target, due, stopped_at in (
        (FIRST_RESPONSE, work_order.first_response_due_at, work_order.first_responded_at),
        (RESOLUTION, work_order.resolution_due_at, work_order.resolved_at if work_order.status in STOPPED else None),
    ):
        remaining = None
        if due is not None and stopped_at is None and work_order.status not in STOPPED:
            remaining = business_seconds_between(calendar, at, due)
        breached = any(e.target == target and e.kind == BREACH and e.due_at == due for e in events) or (
            due is not None and due < (stopped_at or at)
        )
        clocks.append(ClockView(target, due, stopped_at, remaining, breached))
    return SlaView(work_order, policy, work_order.sla_paused_at is not None, clocks, events)


def overdue_clause(now: datetime) -> Any:
    """Work orders past a running due time: for the "overdue" lists."""
    return and_(
        WorkOrder.status.in_(RUNNING),
        WorkOrder.sla_paused_at.is_(None),
        or_(
            WorkOrder.resolution_due_at <= now,
            and_(WorkOrder.first_responded_at.is_(None), WorkOrder.first_response_due_at <= now),
        ),
    )


# --- administration: calendars and policies -------------------------------------------------------
@dataclass
class CalendarWithDays:
    calendar: BusinessCalendar
    days: list[CalendarDay]


async def _days_of(db: AsyncSession, calendar_ids: list[int]) -> dict[int, list[CalendarDay]]:
    by_calendar: dict[int, list[CalendarDay]] = {i: [] for i in calendar_ids}
    if calendar_ids:
        rows = await db.scalars(
            select(CalendarDay).where(CalendarDay.calendar_id.in_(calendar_ids)).order_by(CalendarDay.day)
        )
        for row in rows:
            by_calendar[row.calendar_id].append(row)
    return by_calendar


async def list_calendars(db: AsyncSession) -> list[CalendarWithDays]:
    calendars = list((await db.scalars(select(BusinessCalendar).order_by(BusinessCalendar.id))).all())
    days = await _days_of(db, [c.id for c in calendars])
    return [CalendarWithDays(c, days[c.id]) for c in calendars]


async def get_calendar(db: AsyncSession, calendar_id: int, *, for_update: bool = False) -> BusinessCalendar:
    stmt = select(BusinessCalendar).where(BusinessCalendar.id == calendar_id)
    if for_update:
        stmt = stmt.with_for_update()
    found = await db.scalar(stmt)
    if found is None:
        raise NotFound("business calendar")
    return found


async def _with_days(db: AsyncSession, calendar: BusinessCalendar) -> CalendarWithDays:
    await db.flush()
    return CalendarWithDays(calendar, (await _days_of(db, [calendar.id]))[calendar.id])


async def _name_free(db: AsyncSession, model: Any, name: str, exclude_id: int | None = None) -> None:
    stmt = select(model.id).where(model.name == name)
    if exclude_id is not None:
        stmt = stmt.where(model.id != exclude_id)
    if await db.scalar(stmt) is not None:
        raise Conflict("this name is taken")


def _checked_calendar(time_zone_name: str, weekly_hours: dict[str, Any]) -> None:
    try:
        Calendar.build(time_zone_name, weekly_hours)
    except CalendarError as exc:
        raise Invalid(str(exc)) from None


async def create_calendar(
    db: AsyncSession, principal: Principal, *, name: str, time_zone: str, weekly_hours: dict[str, Any]
) -> CalendarWithDays:
    _checked_calendar(time_zone, weekly_hours)
    await _name_free(db, BusinessCalendar, name)
    calendar = BusinessCalendar(name=name, time_zone=time_zone, weekly_hours=validate_weekly_hours(weekly_hours))
    db.add(calendar)
    await db.flush()
    await audit.record(
        db,
        identity.actor_of(principal),
        "business_calendar.create",
        object_type="business_calendar",
        object_id=calendar.id,
        details={"name": name, "time_zone": time_zone, "weekly_hours": calendar.weekly_hours},
    )
    return await _with_days(db, calendar)


async def update_calendar(
    db: AsyncSession, principal: Principal, calendar_id: int, changes: dict[str, Any]
) -> CalendarWithDays:
    """Changes apply to due times computed from now on; running clocks keep theirs."""
    calendar = await get_calendar(db, calendar_id, for_update=True)
    changes = {k: v for k, v in changes.items() if v is not None}
    if "name" in changes:
        await _name_free(db, BusinessCalendar, changes["name"], calendar.id)
    if "weekly_hours" in changes:
        changes["weekly_hours"] = validate_weekly_hours(changes["weekly_hours"])
    _checked_calendar(changes.get("time_zone", calendar.time_zone), changes.get("weekly_hours", calendar.weekly_hours))
    for key, value in changes.items():
        setattr(calendar, key, value)
    if changes:
        calendar.updated_at = utcnow()
        await audit.record(
            db,
            identity.actor_of(principal),
            "business_calendar.update",
            object_type="business_calendar",
            object_id=calendar.id,
            details=changes,
        )
    return await _with_days(db, calendar)


async def replace_calendar_days(
    db: AsyncSession, principal: Principal, calendar_id: int, year: int, days: list[dict[str, Any]]
) -> CalendarWithDays:
    """The holidays and make-up workdays of ``year``, replaced as a whole (a published holiday
    arrangement is one document)."""
    calendar = await get_calendar(db, calendar_id, for_update=True)
    for item in days:
        if item["day"].year != year:
            raise Invalid(f"every day must be in {year}")
        if item["kind"] == "holiday" and item.get("hours"):
            raise Invalid("a holiday has no working hours")
        try:
            item["hours"] = validate_day_hours(item.get("hours") or [])
        except CalendarError as exc:
            raise Invalid(str(exc)) from None
    if len({item["day"] for item in days}) != len(days):
        raise Invalid("a day is listed twice")
    await db.execute(
        delete(CalendarDay).where(
            CalendarDay.calendar_id == calendar.id,
            CalendarDay.day >= date(year, 1, 1),
            CalendarDay.day <= date(year, 12, 31),
        )
    )
    for item in days:
        db.add(
            CalendarDay(
                calendar_id=calendar.id,
                day=item["day"],
                kind=item["kind"],
                name=item.get("name", ""),
                hours=item["hours"],
            )
        )
    calendar.updated_at = utcnow()
    await audit.record(
        db,
        identity.actor_of(principal),
        "business_calendar.days",
        object_type="business_calendar",
        object_id=calendar.id,
        details={
            "year": year,
            "holidays": sum(item["kind"] == "holiday" for item in days),
            "workdays": sum(item["kind"] == "workday" for item in days),
        },
    )
    return await _with_days(db, calendar)


async def list_policies(db: AsyncSession) -> list[SlaPolicy]:
    return list((await db.scalars(select(SlaPolicy).order_by(SlaPolicy.id))).all())


async def _check_policy_refs(db: AsyncSession, values: dict[str, Any]) -> None:
    if values.get("team_id") is not None:
        try:
            await identity.get_team(db, values["team_id"])
        except NotFound:
            raise Invalid(f"team {values['team_id']} does not exist") from None
    if values.get("calendar_id") is not None and await db.get(BusinessCalendar, values["calendar_id"]) is None:
        raise Invalid(f"business calendar {values['calendar_id']} does not exist")


async def create_policy(db: AsyncSession, principal: Principal, values: dict[str, Any]) -> SlaPolicy:
    await _name_free(db, SlaPolicy, values["name"])
    await _check_policy_refs(db, values)
    policy = SlaPolicy(**values)
    db.add(policy)
    await db.flush()
    await audit.record(
        db,
        identity.actor_of(principal),
        "sla_policy.create",
        object_type="sla_policy",
        object_id=policy.id,
        details=values,
    )
    return policy


async def update_policy(db: AsyncSession, principal: Principal, policy_id: int, changes: dict[str, Any]) -> SlaPolicy:
    """Changes apply to work orders whose clocks start (or are re-matched) from now on."""
    policy = await db.scalar(select(SlaPolicy).where(SlaPolicy.id == policy_id).with_for_update())
    if policy is None:
        raise NotFound("SLA policy")
    for required in ("name", "warn_before_seconds", "active"):
        if required in changes and changes[required] is None:
            raise Invalid(f"{required} cannot be empty")
    if "name" in changes:
        await _name_free(db, SlaPolicy, changes["name"], policy.id)
    await _check_policy_refs(db, changes)
    first = changes.get("first_response_seconds", policy.first_response_seconds)
    if first is None and changes.get("resolution_seconds", policy.resolution_seconds) is None:
        raise Invalid("a policy needs a first-response or a resolution target")
    for key, value in changes.items():
        setattr(policy, key, value)
    if changes:
        policy.updated_at = utcnow()
        await audit.record(
            db,
            identity.actor_of(principal),
            "sla_policy.update",
            object_type="sla_policy",
            object_id=policy.id,
            details=changes,
        )
    await db.flush()
    return policy
