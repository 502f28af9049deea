"""Work orders: the rules, and the only place that writes them.

Shared core used by the rest of the tickets domain (SLA, escalation, macros, pages):
``visibility_clause`` (the one row-level rule for every list, search, export and by-id read),
``get_work_order``, ``record_event`` (the append-only history) and ``change_status`` (the state
machine, which also drives the SLA clocks). Below them: creating and changing work orders, custom
fields, comments, tags, links, merges, the one list function (API, pages and export) with saved
views, and suggestion forwards.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, delete, false, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from kefu.core import audit
from kefu.core.errors import Conflict, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.customers.models import Customer
from kefu.customers.owners import register_mover
from kefu.db.base import utcnow
from kefu.identity.models import Team, User, UserRole
from kefu.identity.service import actor_of
from kefu.tickets.models import (
    OPEN_STATUSES,
    Escalation,
    SavedView,
    SuggestionForward,
    WorkOrder,
    WorkOrderComment,
    WorkOrderEvent,
    WorkOrderField,
    WorkOrderLink,
    WorkOrderStatus,
    WorkOrderTag,
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


# =====================================================================================================
# Creating and changing work orders
# =====================================================================================================
STAFF_ROLES = ("agent", "supervisor", "admin", "knowledge_manager")
MAX_TAGS = 50
CLASSIFYING_FIELDS = frozenset({"type", "priority", "team_id"})


async def _require_customer(db: AsyncSession, principal: Principal, customer_id: int) -> None:
    from kefu.customers import service as customers  # imported late: the customers domain imports this one

    try:
        customer = await customers.get_customer(db, principal, customer_id)
    except NotFound:
        raise Invalid("no such customer", {"customer_id": customer_id}) from None
    if customer.merged_into_id is not None:
        raise Invalid("this customer was merged into another", {"merged_into_id": customer.merged_into_id})


async def _require_team(db: AsyncSession, team_id: int) -> None:
    found = await db.scalar(select(Team.id).where(Team.id == team_id, Team.is_active.is_(True)))
    if found is None:
        raise Invalid("no such active team", {"team_id": team_id})


async def _require_staff(db: AsyncSession, user_id: int, what: str = "assignee_id") -> None:
    found = await db.scalar(
        select(User.id)
        .join(UserRole, UserRole.user_id == User.id)
        .where(User.id == user_id, User.is_active.is_(True), UserRole.role.in_(STAFF_ROLES))
        .limit(1)
    )
    if found is None:
        raise Invalid("not an active staff user", {what: user_id})


def _refuse_if_merged(work_order: WorkOrder) -> None:
    if work_order.merged_into_id is not None:
        raise Invalid(
            "this work order was merged into another; work on that one", {"merged_into_id": work_order.merged_into_id}
        )


# --- custom fields -----------------------------------------------------------------------------------
FIELD_KINDS = ("text", "number", "date", "choice")


async def active_fields(db: AsyncSession) -> dict[str, WorkOrderField]:
    rows = await db.scalars(select(WorkOrderField).where(WorkOrderField.active.is_(True)))
    return {f.key: f for f in rows}


def _field_value(definition: WorkOrderField, value: Any) -> Any:
    """The stored form of ``value`` for ``definition``, or Invalid."""
    key = definition.key
    if definition.kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"custom field {key!r} takes a number", {"field": key})
        return value
    if not isinstance(value, str):
        raise Invalid(f"custom field {key!r} takes text", {"field": key})
    if definition.kind == "date":
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise Invalid(f"custom field {key!r} takes a date (YYYY-MM-DD)", {"field": key}) from None
    if definition.kind == "choice" and value not in definition.choices:
        raise Invalid(f"custom field {key!r} takes one of its choices", {"field": key, "choices": definition.choices})
    return value


async def validate_custom_fields(
    db: AsyncSession, current: dict[str, Any], changes: dict[str, Any], *, creating: bool
) -> dict[str, Any]:
    """``current`` with ``changes`` applied (a None value removes a field), checked against the active
    definitions: unknown keys and wrong kinds are refused; required fields must be given at creation
    and cannot be removed later (work orders older than a new required field stay valid)."""
    definitions = await active_fields(db)
    unknown = sorted(set(changes) - set(definitions))
    if unknown:
        raise Invalid("unknown custom fields", {"fields": unknown})
    result = dict(current)
    for key, value in changes.items():
        if value is None or value == "":
            if definitions[key].required:
                raise Invalid(f"custom field {key!r} is required", {"field": key})
            result.pop(key, None)
        else:
            result[key] = _field_value(definitions[key], value)
    if creating:
        missing = sorted(k for k, f in definitions.items() if f.required and k not in result)
        if missing:
            raise Invalid("required custom fields are missing", {"fields": missing})
    return result


def _check_choices(kind: str, choices: list[str]) -> list[str]:
    unique_choices = list(dict.fromkeys(choices))
    if kind == "choice" and not unique_choices:
        raise Invalid("a choice field needs at least one choice")
    if kind != "choice" and unique_choices:
        raise Invalid("only choice fields have choices")
    return unique_choices


async def list_fields(db: AsyncSession, *, include_inactive: bool = True) -> list[WorkOrderField]:
    stmt = select(WorkOrderField).order_by(WorkOrderField.id)
    if not include_inactive:
        stmt = stmt.where(WorkOrderField.active.is_(True))
    return list((await db.scalars(stmt)).all())


async def create_field(
    db: AsyncSession, principal: Principal, *, key: str, label: str, kind: str, choices: list[str], required: bool
) -> WorkOrderField:
    if kind not in FIELD_KINDS:
        raise Invalid(f"unknown field kind {kind!r}")
    if await db.scalar(select(WorkOrderField.id).where(WorkOrderField.key == key)) is not None:
        raise Conflict("a custom field with this key exists", {"key": key})
    definition = WorkOrderField(
        key=key, label=label, kind=kind, choices=_check_choices(kind, choices), required=required, active=True
    )
    db.add(definition)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "work_order_field.created",
        object_type="work_order_field",
        object_id=definition.id,
        details={"key": key, "kind": kind, "required": required},
    )
    return definition


async def update_field(db: AsyncSession, principal: Principal, field_id: int, **changes: Any) -> WorkOrderField:
    """Label, choices, required and active change; key and kind never do (stored values depend on them)."""
    definition = await db.get(WorkOrderField, field_id)
    if definition is None:
        raise NotFound("custom field")
    if "choices" in changes and changes["choices"] is not None:
        changes["choices"] = _check_choices(definition.kind, changes["choices"])
    changed = {}
    for name, value in changes.items():
        if value is not None and getattr(definition, name) != value:
            changed[name] = value
            setattr(definition, name, value)
    if changed:
        await audit.record(
            db,
            actor_of(principal),
            "work_order_field.updated",
            object_type="work_order_field",
            object_id=definition.id,
            details={"key": definition.key, "changes": changed},
        )
    return definition


# --- tags --------------------------------------------------------------------------------------------
def _clean_tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in tags if t.strip()))


async def tags_of(db: AsyncSession, work_order_ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {i: [] for i in work_order_ids}
    if not work_order_ids:
        return found
    rows = await db.execute(
        select(WorkOrderTag.work_order_id, WorkOrderTag.tag)
        .where(WorkOrderTag.work_order_id.in_(work_order_ids))
        .order_by(WorkOrderTag.work_order_id, WorkOrderTag.tag)
    )
    for work_order_id, tag in rows:
        found[work_order_id].append(tag)
    return found


async def _add_tags(db: AsyncSession, work_order: WorkOrder, actor_id: int | None, tags: list[str]) -> list[str]:
    existing = set((await tags_of(db, [work_order.id]))[work_order.id])
    new = [t for t in _clean_tags(tags) if t not in existing]
    if len(existing) + len(new) > MAX_TAGS:
        raise Invalid(f"a work order may have at most {MAX_TAGS} tags")
    for tag in new:
        db.add(WorkOrderTag(work_order_id=work_order.id, tag=tag))
    if new:
        await db.flush()
        await record_event(db, work_order, actor_id, "tags_added", tags=new)
    return sorted(existing | set(new))


async def _remove_tags(db: AsyncSession, work_order: WorkOrder, actor_id: int | None, tags: list[str]) -> list[str]:
    existing = set((await tags_of(db, [work_order.id]))[work_order.id])
    gone = [t for t in _clean_tags(tags) if t in existing]
    if gone:
        await db.execute(
            delete(WorkOrderTag).where(WorkOrderTag.work_order_id == work_order.id, WorkOrderTag.tag.in_(gone))
        )
        await record_event(db, work_order, actor_id, "tags_removed", tags=gone)
    return sorted(existing - set(gone))


async def add_tags(db: AsyncSession, principal: Principal, work_order_id: int, tags: list[str]) -> list[str]:
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    _refuse_if_merged(work_order)
    return await _add_tags(db, work_order, principal.user_id, tags)


async def remove_tags(db: AsyncSession, principal: Principal, work_order_id: int, tags: list[str]) -> list[str]:
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    _refuse_if_merged(work_order)
    return await _remove_tags(db, work_order, principal.user_id, tags)


async def remove_tag(db: AsyncSession, principal: Principal, work_order_id: int, tag: str) -> list[str]:
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    _refuse_if_merged(work_order)
    if tag.strip() not in (await tags_of(db, [work_order.id]))[work_order.id]:
        raise NotFound("tag")
    return await _remove_tags(db, work_order, principal.user_id, [tag])


# --- create, update, assign --------------------------------------------------------------------------
async def create_work_order(db: AsyncSession, principal: Principal, data: Any) -> WorkOrder:
    """``data``: a ``tickets.schemas.WorkOrderCreate`` (or anything with its attributes)."""
    now = utcnow()
    if data.customer_id is not None:
        await _require_customer(db, principal, data.customer_id)
    team_id = data.team_id
    if team_id is None and len(principal.team_ids) == 1:
        # The creator's own team, when it is unambiguous: a restricted work order must belong to someone.
        (team_id,) = principal.team_ids
    if team_id is not None:
        await _require_team(db, team_id)
    if data.assignee_id is not None:
        await _require_staff(db, data.assignee_id)
    custom = await validate_custom_fields(db, {}, dict(data.custom_fields or {}), creating=True)
    work_order = WorkOrder(
        type=data.type,
        status=S.new,
        priority=data.priority,
        title=data.title,
        description=data.description or "",
        customer_id=data.customer_id,
        team_id=team_id,
        assignee_id=data.assignee_id,
        restricted=bool(data.restricted),
        custom_fields=custom,
        created_by_id=principal.user_id,
        created_at=now,
        updated_at=now,
    )
    db.add(work_order)
    await db.flush()
    tags = _clean_tags(list(data.tags or []))
    if len(tags) > MAX_TAGS:
        raise Invalid(f"a work order may have at most {MAX_TAGS} tags")
    for tag in tags:
        db.add(WorkOrderTag(work_order_id=work_order.id, tag=tag))
    await db.flush()  # sessions do not autoflush: later reads in this transaction must see the tags
    from kefu.tickets import sla

    await sla.start_clocks(db, work_order, now)
    await record_event(
        db,
        work_order,
        principal.user_id,
        "created",
        now,
        type=work_order.type,
        priority=work_order.priority,
        team_id=team_id,
        assignee_id=work_order.assignee_id,
    )
    notify(db, work_order, "created")
    return work_order


UPDATABLE = ("type", "priority", "title", "description", "customer_id", "team_id", "assignee_id", "restricted")


async def update_work_order(
    db: AsyncSession, principal: Principal, work_order_id: int, changes: dict[str, Any]
) -> WorkOrder:
    """Apply ``changes`` (only the keys given); each changed field is one history event with old and new."""
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    _refuse_if_merged(work_order)
    now = utcnow()
    unknown = set(changes) - set(UPDATABLE) - {"custom_fields"}
    if unknown:
        raise Invalid("these fields cannot be changed here", {"fields": sorted(unknown)})
    for name in ("type", "priority", "title", "restricted"):
        if name in changes and changes[name] is None:
            raise Invalid(f"{name} cannot be empty", {"field": name})
    if changes.get("customer_id") is not None and changes["customer_id"] != work_order.customer_id:
        await _require_customer(db, principal, changes["customer_id"])
    if changes.get("team_id") is not None and changes["team_id"] != work_order.team_id:
        await _require_team(db, changes["team_id"])
    if changes.get("assignee_id") is not None and changes["assignee_id"] != work_order.assignee_id:
        await _require_staff(db, changes["assignee_id"])
    if "description" in changes and changes["description"] is None:
        changes["description"] = ""
    changed: list[str] = []
    for name in UPDATABLE:
        if name not in changes:
            continue
        old, new = getattr(work_order, name), changes[name]
        if old == new:
            continue
        setattr(work_order, name, new)
        changed.append(name)
        await record_event(db, work_order, principal.user_id, "field_changed", now, field=name, old=old, new=new)
    if changes.get("custom_fields"):
        old_custom = dict(work_order.custom_fields or {})
        new_custom = await validate_custom_fields(db, old_custom, changes["custom_fields"], creating=False)
        for key in sorted(set(old_custom) | set(new_custom)):
            if old_custom.get(key) != new_custom.get(key):
                changed.append(f"custom_fields.{key}")
                await record_event(
                    db,
                    work_order,
                    principal.user_id,
                    "field_changed",
                    now,
                    field=f"custom_fields.{key}",
                    old=old_custom.get(key),
                    new=new_custom.get(key),
                )
        work_order.custom_fields = new_custom
    if CLASSIFYING_FIELDS.intersection(changed):
        from kefu.tickets import sla

        await sla.on_classification_change(db, work_order, now)
    if changed:
        notify(db, work_order, "updated", fields=changed)
    return work_order


async def assign(
    db: AsyncSession, principal: Principal, work_order_id: int, assignee_id: int | None, team_id: int | None = None
) -> WorkOrder:
    """Give the work order to ``assignee_id`` (None: nobody), optionally moving it to ``team_id``."""
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    _refuse_if_merged(work_order)
    now = utcnow()
    if assignee_id is not None and assignee_id != work_order.assignee_id:
        await _require_staff(db, assignee_id)
    if team_id is not None and team_id != work_order.team_id:
        await _require_team(db, team_id)
    old_assignee, old_team = work_order.assignee_id, work_order.team_id
    new_team = team_id if team_id is not None else old_team
    if (old_assignee, old_team) == (assignee_id, new_team):
        return work_order
    work_order.assignee_id = assignee_id
    work_order.team_id = new_team
    await record_event(
        db,
        work_order,
        principal.user_id,
        "assigned",
        now,
        old=old_assignee,
        new=assignee_id,
        old_team_id=old_team,
        team_id=new_team,
    )
    if new_team != old_team:
        from kefu.tickets import sla

        await sla.on_classification_change(db, work_order, now)
    notify(db, work_order, "assigned", previous_assignee_id=old_assignee)
    return work_order


async def set_status(
    db: AsyncSession, principal: Principal, work_order_id: int, status: str, reason: str = ""
) -> WorkOrder:
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    await change_status(db, principal, work_order, status, reason=reason)
    return work_order


# --- comments and history ----------------------------------------------------------------------------
async def _add_comment(
    db: AsyncSession, work_order: WorkOrder, author_id: int | None, body: str, *, internal: bool, kind: str = "comment"
) -> WorkOrderComment:
    now = utcnow()
    comment = WorkOrderComment(
        work_order_id=work_order.id, author_id=author_id, internal=internal, body=body, created_at=now
    )
    db.add(comment)
    await db.flush()
    if not internal and author_id is not None and work_order.first_responded_at is None:
        from kefu.tickets import sla

        await sla.on_first_response(db, work_order, now)
        work_order.first_responded_at = work_order.first_responded_at or now
    await record_event(db, work_order, author_id, kind, now, comment_id=comment.id, internal=internal)
    notify(db, work_order, "commented", comment_id=comment.id, internal=internal)
    return comment


# Channels that carry public replies back to the customer (email, SMS...) listen here, so tickets never
# imports a channel: (db, principal, work_order_id, comment), in the reply's own transaction.
PublicReplyListener = Callable[[AsyncSession, Principal, int, WorkOrderComment], Awaitable[None]]
_public_reply_listeners: list[PublicReplyListener] = []


def on_public_reply(listener: PublicReplyListener) -> PublicReplyListener:
    """Register ``listener`` for every public reply added through ``add_comment`` (idempotent)."""
    if listener not in _public_reply_listeners:
        _public_reply_listeners.append(listener)
    return listener


async def add_comment(
    db: AsyncSession, principal: Principal, work_order_id: int, body: str, *, internal: bool
) -> WorkOrderComment:
    """A public reply to the customer (``internal=False``) or an internal note. The first public reply
    by staff stops the first-response clock; the channels listening (``on_public_reply``) deliver it."""
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    _refuse_if_merged(work_order)
    comment = await _add_comment(db, work_order, principal.user_id, body, internal=internal)
    if not internal:
        for listener in _public_reply_listeners:
            await listener(db, principal, work_order.id, comment)
    return comment


async def list_comments(
    db: AsyncSession, principal: Principal, work_order_id: int
) -> list[tuple[WorkOrderComment, str | None]]:
    await get_work_order(db, principal, work_order_id)
    rows = await db.execute(
        select(WorkOrderComment, User.display_name)
        .outerjoin(User, User.id == WorkOrderComment.author_id)
        .where(WorkOrderComment.work_order_id == work_order_id)
        .order_by(WorkOrderComment.id)
    )
    return [(comment, name) for comment, name in rows]


async def history(db: AsyncSession, principal: Principal, work_order_id: int) -> list[WorkOrderEvent]:
    await get_work_order(db, principal, work_order_id)
    stmt = select(WorkOrderEvent).where(WorkOrderEvent.work_order_id == work_order_id).order_by(WorkOrderEvent.id)
    return list((await db.scalars(stmt)).all())


# --- links and merges --------------------------------------------------------------------------------
async def links_of(db: AsyncSession, work_order_id: int) -> list[tuple[int, str]]:
    rows = await db.execute(
        select(WorkOrderLink.from_id, WorkOrderLink.to_id, WorkOrderLink.kind)
        .where(or_(WorkOrderLink.from_id == work_order_id, WorkOrderLink.to_id == work_order_id))
        .order_by(WorkOrderLink.id)
    )
    return [(to_id if from_id == work_order_id else from_id, kind) for from_id, to_id, kind in rows]


async def link(db: AsyncSession, principal: Principal, work_order_id: int, other_id: int) -> list[tuple[int, str]]:
    """Relate two work orders the principal can both see; stored once per pair, smaller id first."""
    if work_order_id == other_id:
        raise Invalid("a work order cannot be linked to itself")
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    other = await get_work_order(db, principal, other_id, for_update=True)
    low, high = sorted((work_order_id, other_id))
    exists = await db.scalar(select(WorkOrderLink.id).where(WorkOrderLink.from_id == low, WorkOrderLink.to_id == high))
    if exists is None:
        db.add(WorkOrderLink(from_id=low, to_id=high, kind="related", created_by_id=principal.user_id))
        await record_event(db, work_order, principal.user_id, "linked", other_id=other_id)
        await record_event(db, other, principal.user_id, "linked", other_id=work_order_id)
        await db.flush()
    return await links_of(db, work_order_id)


async def unlink(db: AsyncSession, principal: Principal, work_order_id: int, other_id: int) -> None:
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    low, high = sorted((work_order_id, other_id))
    found = await db.scalar(select(WorkOrderLink).where(WorkOrderLink.from_id == low, WorkOrderLink.to_id == high))
    if found is None:
        raise NotFound("link")
    await db.delete(found)
    await record_event(db, work_order, principal.user_id, "unlinked", other_id=other_id)
    other = await db.scalar(select(WorkOrder).where(WorkOrder.id == other_id))
    if other is not None:
        await record_event(db, other, principal.user_id, "unlinked", other_id=work_order_id)


def _audience(work_order: WorkOrder) -> tuple[bool, int | None]:
    """Who may read a work order beyond supervisors: everyone, or one team (and its assignee)."""
    return (True, work_order.team_id) if work_order.restricted else (False, None)


async def merge(db: AsyncSession, principal: Principal, work_order_id: int, into_id: int) -> WorkOrder:
    """Close ``work_order_id`` as a duplicate of ``into_id``. Its comments and history stay where they
    are (the survivor's history points at it). Both must be visible to the principal and have the same
    audience: merging must never show a restricted work order's thread to people who could not see it."""
    if work_order_id == into_id:
        raise Invalid("a work order cannot be merged into itself")
    # Lock in id order: two merges of the same pair in opposite directions must not deadlock.
    first, second = sorted((work_order_id, into_id))
    locked = {
        first: await get_work_order(db, principal, first, for_update=True),
        second: await get_work_order(db, principal, second, for_update=True),
    }
    source, target = locked[work_order_id], locked[into_id]
    if source.merged_into_id is not None:
        raise Invalid("this work order was already merged", {"merged_into_id": source.merged_into_id})
    if target.merged_into_id is not None:
        raise Invalid(
            "cannot merge into a work order that was itself merged", {"merged_into_id": target.merged_into_id}
        )
    if _audience(source) != _audience(target):
        raise Invalid("cannot merge work orders with different restricted visibility")
    if source.status == S.escalated:
        raise Invalid("the work order is with a back-office team; get it back before merging")
    now = utcnow()
    if source.status != S.closed:
        await change_status(db, principal, source, S.closed, reason=f"merged into {target.number}", now=now)
    source.merged_into_id = target.id
    await record_event(db, source, principal.user_id, "merged", now, into_id=target.id)
    await record_event(db, target, principal.user_id, "merged_from", now, from_id=source.id)
    notify(db, target, "merged", from_id=source.id)
    return target


# =====================================================================================================
# Lists: one function for the API, the pages and the export
# =====================================================================================================
VIEWS = ("mine", "team", "overdue", "escalated", "all-visible")
_NUMBER = re.compile(r"(?i)^(?:wo)?0*(\d{1,18})$")


@dataclass
class WorkOrderFilter:
    view: str = "all-visible"
    status: list[str] = field(default_factory=list)
    type: str | None = None
    priority: str | None = None
    team_id: int | None = None
    assignee_id: int | None = None
    customer_id: int | None = None
    tag: str | None = None
    q: str = ""
    created_from: date | None = None
    created_to: date | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> WorkOrderFilter:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("created_from", "created_to"):
            if isinstance(known.get(name), str):
                known[name] = date.fromisoformat(known[name])
        return cls(**known)


@dataclass
class WorkOrderRow:
    """A work order with the names a list shows, loaded in the same query."""

    work_order: WorkOrder
    assignee_name: str | None
    team_name: str | None
    customer_name: str | None
    tags: list[str]


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def filter_clauses(principal: Principal, flt: WorkOrderFilter, now: datetime) -> list[ColumnElement[bool]]:
    """Every condition of ``flt``, the visibility rule always included."""
    clauses: list[ColumnElement[bool]] = [visibility_clause(principal)]
    if flt.view not in VIEWS:
        raise Invalid(f"unknown view {flt.view!r}", {"views": list(VIEWS)})
    if flt.view == "mine":
        clauses.append(WorkOrder.assignee_id == principal.user_id)
    elif flt.view == "team":
        clauses.append(WorkOrder.team_id.in_(sorted(principal.team_ids)) if principal.team_ids else false())
    elif flt.view == "overdue":
        clauses.append(WorkOrder.status.in_(sorted(OPEN_STATUSES)))
        clauses.append(WorkOrder.sla_paused_at.is_(None))
        clauses.append(
            or_(
                WorkOrder.resolution_due_at < now,
                and_(WorkOrder.first_responded_at.is_(None), WorkOrder.first_response_due_at < now),
            )
        )
    elif flt.view == "escalated":
        clauses.append(WorkOrder.status == S.escalated)
    if flt.status:
        clauses.append(WorkOrder.status.in_(sorted(set(flt.status))))
    for name in ("type", "priority", "team_id", "assignee_id", "customer_id"):
        value = getattr(flt, name)
        if value is not None:
            clauses.append(getattr(WorkOrder, name) == value)
    if flt.tag:
        tagged = select(WorkOrderTag.work_order_id).where(WorkOrderTag.tag == flt.tag.strip())
        clauses.append(WorkOrder.id.in_(tagged))
    q = flt.q.strip()
    if q:
        by_title = WorkOrder.title.ilike(_like(q), escape="\\")
        number = _NUMBER.match(q)
        if number and int(number.group(1)) <= 2**63 - 1:
            clauses.append(or_(WorkOrder.id == int(number.group(1)), by_title))
        else:
            clauses.append(by_title)
    if flt.created_from is not None:
        clauses.append(WorkOrder.created_at >= datetime.combine(flt.created_from, time.min, UTC))
    if flt.created_to is not None:
        clauses.append(WorkOrder.created_at < datetime.combine(flt.created_to + timedelta(days=1), time.min, UTC))
    return clauses


def encode_cursor(work_order: WorkOrder) -> str:
    raw = f"{work_order.updated_at.astimezone(UTC).isoformat()}|{work_order.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, id_text = raw.split("|")
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at.astimezone(UTC), int(id_text)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("bad cursor") from None


def _row_query() -> Select[Any]:
    assignee = aliased(User)
    return (
        select(WorkOrder, assignee.display_name, Team.name, Customer.display_name)
        .outerjoin(assignee, assignee.id == WorkOrder.assignee_id)
        .outerjoin(Team, Team.id == WorkOrder.team_id)
        .outerjoin(Customer, Customer.id == WorkOrder.customer_id)
    )


async def _rows(db: AsyncSession, stmt: Select[Any]) -> list[WorkOrderRow]:
    await db.flush()  # no autoflush: a read after a write in one transaction must join the new values
    result = (await db.execute(stmt)).all()
    tags = await tags_of(db, [r[0].id for r in result])
    return [WorkOrderRow(wo, assignee, team, customer, tags[wo.id]) for wo, assignee, team, customer in result]


async def list_work_orders(
    db: AsyncSession,
    principal: Principal,
    flt: WorkOrderFilter,
    cursor: str | None = None,
    limit: int = 50,
    *,
    now: datetime | None = None,
) -> tuple[list[WorkOrderRow], str | None]:
    """One page of the work orders ``principal`` may see matching ``flt``, newest activity first, and
    the cursor of the next page (None at the end). Two queries whatever the page size."""
    limit = max(1, min(limit, 500))
    stmt = _row_query().where(*filter_clauses(principal, flt, now or utcnow()))
    if cursor:
        at, last_id = decode_cursor(cursor)
        stmt = stmt.where(or_(WorkOrder.updated_at < at, and_(WorkOrder.updated_at == at, WorkOrder.id < last_id)))
    stmt = stmt.order_by(WorkOrder.updated_at.desc(), WorkOrder.id.desc()).limit(limit + 1)
    rows = await _rows(db, stmt)
    next_cursor = encode_cursor(rows[limit - 1].work_order) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def work_orders_for_customer(
    db: AsyncSession, principal: Principal, customer_id: int, limit: int = 20
) -> list[WorkOrderRow]:
    """For the customer 360 page: the customer's visible work orders, open ones first, then recent."""
    is_open = case((WorkOrder.status.in_(sorted(OPEN_STATUSES)), 0), else_=1)
    stmt = (
        _row_query()
        .where(WorkOrder.customer_id == customer_id, visibility_clause(principal))
        .order_by(is_open, WorkOrder.updated_at.desc(), WorkOrder.id.desc())
        .limit(max(1, min(limit, 200)))
    )
    return await _rows(db, stmt)


async def row_of(db: AsyncSession, principal: Principal, work_order_id: int) -> WorkOrderRow:
    """One work order with its names and tags (for the by-id answer)."""
    rows = await _rows(db, _row_query().where(WorkOrder.id == work_order_id, visibility_clause(principal)))
    if not rows:
        raise NotFound("work order")
    return rows[0]


# --- saved views -------------------------------------------------------------------------------------
async def list_saved_views(db: AsyncSession, principal: Principal) -> list[SavedView]:
    stmt = select(SavedView).where(SavedView.user_id == principal.user_id).order_by(SavedView.name, SavedView.id)
    return list((await db.scalars(stmt)).all())


async def create_saved_view(db: AsyncSession, principal: Principal, name: str, filters: dict[str, Any]) -> SavedView:
    if principal.user_id is None:
        raise Invalid("sign in first")
    exists = await db.scalar(select(SavedView.id).where(SavedView.user_id == principal.user_id, SavedView.name == name))
    if exists is not None:
        raise Conflict("you already have a view with this name", {"name": name})
    view = SavedView(user_id=principal.user_id, name=name, filters=filters)
    db.add(view)
    await db.flush()
    return view


async def delete_saved_view(db: AsyncSession, principal: Principal, view_id: int) -> None:
    view = await db.scalar(select(SavedView).where(SavedView.id == view_id, SavedView.user_id == principal.user_id))
    if view is None:
        raise NotFound("saved view")
    await db.delete(view)


# =====================================================================================================
# Customer suggestions forwarded for an answer
# =====================================================================================================
ANSWERS_FOR_OTHERS = ("supervisor", "admin")


async def forward_suggestion(
    db: AsyncSession, principal: Principal, work_order_id: int, to_user_id: int, question: str
) -> SuggestionForward:
    work_order = await get_work_order(db, principal, work_order_id, for_update=True)
    _refuse_if_merged(work_order)
    if work_order.type != "suggestion":
        raise Invalid("only work orders of type suggestion are forwarded")
    await _require_staff(db, to_user_id, "to_user_id")
    now = utcnow()
    forward = SuggestionForward(
        work_order_id=work_order.id,
        to_user_id=to_user_id,
        question=question,
        forwarded_by_id=principal.user_id,
        forwarded_at=now,
    )
    db.add(forward)
    await db.flush()
    await record_event(
        db, work_order, principal.user_id, "forwarded", now, forward_id=forward.id, to_user_id=to_user_id
    )
    publish_on_commit(
        db,
        Event(
            "suggestion.forwarded",
            {"forward_id": forward.id, "work_order_id": work_order.id, "number": work_order.number},
            user_ids=(to_user_id,),
        ),
    )
    return forward


@dataclass
class ForwardRow:
    forward: SuggestionForward
    number: str
    title: str
    description: str


async def suggestions_for(db: AsyncSession, principal: Principal, limit: int = 100) -> list[ForwardRow]:
    """Forwards addressed to the principal, unanswered first, then newest."""
    rows = await db.execute(
        select(SuggestionForward, WorkOrder.id, WorkOrder.title, WorkOrder.description)
        .join(WorkOrder, WorkOrder.id == SuggestionForward.work_order_id)
        .where(SuggestionForward.to_user_id == principal.user_id)
        .order_by(
            case((SuggestionForward.answered_at.is_(None), 0), else_=1),
            SuggestionForward.forwarded_at.desc(),
            SuggestionForward.id.desc(),
        )
        .limit(max(1, min(limit, 500)))
    )
    return [ForwardRow(f, f"WO{wo_id:08d}", title, description) for f, wo_id, title, description in rows]


async def answer_suggestion(db: AsyncSession, principal: Principal, forward_id: int, answer: str) -> SuggestionForward:
    """The recipient (or a supervisor/admin) answers; the answer goes to the customer as a public reply."""
    forward = await db.scalar(select(SuggestionForward).where(SuggestionForward.id == forward_id).with_for_update())
    if forward is None or (forward.to_user_id != principal.user_id and not principal.has_role(*ANSWERS_FOR_OTHERS)):
        raise NotFound("suggestion forward")
    if forward.answered_at is not None:
        raise Conflict("this suggestion was already answered")
    # Addressed to the recipient: they answer even if the work order's list would not show it to them.
    work_order = await db.scalar(select(WorkOrder).where(WorkOrder.id == forward.work_order_id).with_for_update())
    if work_order is None:
        raise NotFound("work order")
    now = utcnow()
    forward.answer = answer
    forward.answered_at = now
    comment = await _add_comment(db, work_order, principal.user_id, answer, internal=False, kind="suggestion_answered")
    work_order.updated_at = now
    notify(db, work_order, "suggestion_answered", forward_id=forward.id, comment_id=comment.id)
    return forward
