"""Interactions: the rules, and the only place that writes them.

An interaction is one contact on one channel. Its timeline (DESIGN.md "Data every later capability
depends on") is written as the facts happen, each timestamp once:

    arrived -> queued -> offered -> answered -> ended -> wrap_up_ended
                    \\-----------\\-> abandoned   (the customer left before an agent answered)

Recording a fact again with the same time is a no-op (a channel retrying); with another time it is a
conflict, never an overwrite. The ``state`` column is derived from the timestamps.

Who sees what: staff see every interaction except those linked to a work order they may not see
(``tickets.service.visibility_clause``). Contact reasons are a configurable tree, deactivated, never
deleted, because past interactions keep pointing at them.

Functions for other domains: ``timeline_for_customer``, ``current_for_agent``, ``last_contact``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, bindparam, case, false, func, literal, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from kefu.core import audit
from kefu.core.errors import Conflict, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.customers.models import Customer, IdentityKind
from kefu.customers.owners import register_mover
from kefu.db.base import UTCDateTime, dialect_insert, utcnow
from kefu.identity.models import STAFF_ROLES, Team, User, UserRole
from kefu.identity.service import actor_of
from kefu.interactions.models import (
    ContactReason,
    Direction,
    Interaction,
    InteractionArticle,
    InteractionState,
)
from kefu.tickets.models import WorkOrder

POP_EVENT = "desk.pop"
# The timeline facts an API client (a channel, the desktop) may record, and the column of each.
EVENT_FIELDS: dict[str, str] = {
    "queued": "queued_at",
    "offered": "offered_at",
    "answered": "answered_at",
    "abandoned": "abandoned_at",
    "ended": "ended_at",
    "wrap_up_ended": "wrap_up_ended_at",
}
DISPOSITIONS = (
    "resolved",
    "follow_up",
    "escalated",
    "transferred",
    "no_answer",
    "wrong_number",
    "spam",
    "other",
)
IDENTITY_KINDS = tuple(k.value for k in IdentityKind)
# Channel systems' clocks drift a little from ours: a fact "in the future" by less than this is now.
CLOCK_SKEW = timedelta(seconds=5)
MAX_REASON_DEPTH = 20
ACTIVE_STATES = (InteractionState.offered, InteractionState.answered, InteractionState.wrap_up)


# --- reading -------------------------------------------------------------------------------------
@dataclass
class InteractionView:
    interaction: Interaction
    customer_name: str | None = None
    agent_name: str | None = None
    reason_name: str | None = None
    article_ids: list[int] | None = None  # loaded for single reads only


class Cursor(NamedTuple):
    """Keyset position in a newest-first list: the last row seen."""

    arrived_at: datetime
    id: int

    def encode(self) -> str:
        return f"{self.arrived_at.isoformat()}~{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        at_text, sep, id_text = text.rpartition("~")
        try:
            if not sep or not re.fullmatch(r"[0-9]{1,19}", id_text):
                raise ValueError
            at = datetime.fromisoformat(at_text)
            if at.tzinfo is None:
                raise ValueError
            at = at.astimezone(UTC)
            return cls(at, int(id_text))
        except (ValueError, OverflowError):
            raise Invalid("cursor is not valid; use next_cursor from the previous page") from None


def _sees_all(principal: Principal) -> bool:
    return principal.has_role("supervisor", "admin")


def _is_staff(principal: Principal) -> bool:
    return principal.is_authenticated and bool(principal.roles.intersection(STAFF_ROLES))


def visibility_clause(principal: Principal) -> ColumnElement[bool]:
    """Which interactions ``principal`` may see: not those of a work order hidden from them."""
    from kefu.tickets.service import visibility_clause as work_order_visibility

    if principal.via == "system":
        return true()  # kefu itself (a channel, routing): never a person, never shown anything
    if not _is_staff(principal):
        return false()
    if _sees_all(principal):
        return true()
    # Correlated EXISTS, not IN (SELECT ... every visible work order): a customer's few interactions are
    # checked by primary key, where IN made PostgreSQL hash 200k work orders for some plans.
    visible_work_order = (
        select(WorkOrder.id).where(WorkOrder.id == Interaction.work_order_id, work_order_visibility(principal)).exists()
    )
    return or_(Interaction.work_order_id.is_(None), visible_work_order)


def _with_names() -> Any:
    """Interactions with their customer, agent and reason names: one query for a whole page."""
    agent = aliased(User)
    return (
        select(Interaction, Customer.display_name, agent.display_name, ContactReason.name)
        .outerjoin(Customer, Customer.id == Interaction.customer_id)
        .outerjoin(agent, agent.id == Interaction.agent_id)
        .outerjoin(ContactReason, ContactReason.id == Interaction.contact_reason_id)
    )


def _views(rows: Any) -> list[InteractionView]:
    return [InteractionView(i, customer, agent, reason) for i, customer, agent, reason in rows]


async def _article_ids(db: AsyncSession, interaction_id: int) -> list[int]:
    rows = await db.scalars(
        select(InteractionArticle.article_id)
        .where(InteractionArticle.interaction_id == interaction_id)
        .order_by(InteractionArticle.used_at, InteractionArticle.article_id)
    )
    return list(rows.all())


async def _load(
    db: AsyncSession, principal: Principal, interaction_id: int, *, for_update: bool = False
) -> Interaction:
    stmt = select(Interaction).where(Interaction.id == interaction_id, visibility_clause(principal))
    if for_update:
        # Two facts recorded at once (a channel and the desktop): the second sees the first's result.
        stmt = stmt.with_for_update(of=Interaction).execution_options(populate_existing=True)
    found = await db.scalar(stmt)
    if found is None:
        raise NotFound("interaction")
    return found


async def view_of(db: AsyncSession, interaction: Interaction) -> InteractionView:
    row = (await db.execute(_with_names().where(Interaction.id == interaction.id))).one()
    view = _views([row])[0]
    view.article_ids = await _article_ids(db, interaction.id)
    return view


async def get_interaction(db: AsyncSession, principal: Principal, interaction_id: int) -> InteractionView:
    return await view_of(db, await _load(db, principal, interaction_id))


@dataclass(frozen=True)
class InteractionFilter:
    customer_id: int | None = None
    agent_id: int | None = None
    channel: str | None = None
    state: str | None = None
    work_order_id: int | None = None
    since: datetime | None = None


def _before(cursor: Cursor) -> ColumnElement[bool]:
    return or_(
        Interaction.arrived_at < cursor.arrived_at,
        and_(Interaction.arrived_at == cursor.arrived_at, Interaction.id < cursor.id),
    )


async def list_interactions(
    db: AsyncSession,
    principal: Principal,
    flt: InteractionFilter,
    *,
    cursor: Cursor | None = None,
    limit: int = 50,
) -> list[InteractionView]:
    """Newest first (arrived_at desc, id desc), keyset-paginated."""
    stmt = _with_names().where(visibility_clause(principal))
    if flt.customer_id is not None:
        stmt = stmt.where(Interaction.customer_id == flt.customer_id)
    if flt.agent_id is not None:
        stmt = stmt.where(Interaction.agent_id == flt.agent_id)
    if flt.channel is not None:
        stmt = stmt.where(Interaction.channel == flt.channel)
    if flt.state is not None:
        stmt = stmt.where(Interaction.state == flt.state)
    if flt.work_order_id is not None:
        stmt = stmt.where(Interaction.work_order_id == flt.work_order_id)
    if flt.since is not None:
        stmt = stmt.where(Interaction.arrived_at >= flt.since)
    if cursor is not None:
        stmt = stmt.where(_before(cursor))
    stmt = stmt.order_by(Interaction.arrived_at.desc(), Interaction.id.desc()).limit(limit)
    return _views((await db.execute(stmt)).all())


# --- for other domains (customer 360, the desktop) -----------------------------------------------
async def timeline_for_customer(
    db: AsyncSession,
    principal: Principal,
    customer_id: int,
    limit: int = 50,
    before: Cursor | datetime | None = None,
) -> list[InteractionView]:
    """A customer's interactions on every channel, newest first, with customer, agent and reason names:
    one query whatever ``limit`` is. ``before`` is a Cursor (the last row of the previous page) or a time."""
    stmt = _with_names().where(Interaction.customer_id == customer_id, visibility_clause(principal))
    if isinstance(before, Cursor):
        stmt = stmt.where(_before(before))
    elif before is not None:
        stmt = stmt.where(Interaction.arrived_at < before)
    stmt = stmt.order_by(Interaction.arrived_at.desc(), Interaction.id.desc()).limit(limit)
    return _views((await db.execute(stmt)).all())


async def last_contact(db: AsyncSession, principal: Principal, customer_id: int) -> InteractionView | None:
    """The customer's most recent interaction the caller may see (with its reason name), or None."""
    found = await timeline_for_customer(db, principal, customer_id, limit=1)
    return found[0] if found else None


async def current_for_agent(db: AsyncSession, agent_id: int) -> list[InteractionView]:
    """What is on the agent's desk now: given to them directly (arrived or queued with their name on it),
    offered, being handled, or in wrap-up; oldest first. The agent's own desk, so no visibility filter:
    these were given to them."""
    on_desk = [s.value for s in (InteractionState.arrived, InteractionState.queued, *ACTIVE_STATES)]
    stmt = (
        _with_names()
        .where(Interaction.agent_id == agent_id, Interaction.state.in_(on_desk))
        .order_by(Interaction.arrived_at, Interaction.id)
    )
    return _views((await db.execute(stmt)).all())


# --- references ------------------------------------------------------------------------------------
class Staff(NamedTuple):
    id: int
    display_name: str


async def _active_staff(db: AsyncSession, user_id: int) -> Staff:
    # Id and name only: on the path of every screen pop, so one small query, not the whole user.
    row = (
        await db.execute(
            select(User.id, User.display_name).where(
                User.id == user_id,
                User.is_active.is_(True),
                User.id.in_(select(UserRole.user_id).where(UserRole.role.in_([str(r) for r in STAFF_ROLES]))),
            )
        )
    ).first()
    if row is None:
        raise Invalid("agent_id is not an active staff user", {"field": "agent_id"})
    return Staff(row.id, row.display_name)


async def _check_team(db: AsyncSession, team_id: int) -> None:
    if await db.scalar(select(Team.id).where(Team.id == team_id)) is None:
        raise Invalid("team_id does not name a team", {"field": "team_id"})


async def _check_work_order(db: AsyncSession, principal: Principal, work_order_id: int) -> None:
    from kefu.tickets.service import get_work_order

    try:
        await get_work_order(db, principal, work_order_id)
    except NotFound:
        raise Invalid("work_order_id does not name a work order you can see", {"field": "work_order_id"}) from None


async def _active_reason(db: AsyncSession, reason_id: int) -> ContactReason:
    reason = await db.scalar(select(ContactReason).where(ContactReason.id == reason_id, ContactReason.active))
    if reason is None:
        raise Invalid("contact_reason_id does not name an active contact reason", {"field": "contact_reason_id"})
    return reason


def _check_moment(at: datetime, now: datetime, what: str) -> None:
    if at > now + CLOCK_SKEW:
        raise Invalid(f"{what} is in the future", {"field": what})


# --- screen pop ------------------------------------------------------------------------------------
def _pop(db: AsyncSession, interaction: Interaction, customer_name: str | None) -> None:
    """Tell the agent's desktop that this contact is theirs now (after the commit, or never)."""
    if interaction.agent_id is None:
        return
    identity = (
        {"kind": interaction.identity_kind, "value": interaction.identity_value}
        if interaction.identity_kind is not None
        else None
    )
    publish_on_commit(
        db,
        Event(
            POP_EVENT,
            {
                "interaction_id": interaction.id,
                "customer_id": interaction.customer_id,
                "channel": interaction.channel,
                "identity": identity,
                "customer_name": customer_name,
            },
            user_ids=(interaction.agent_id,),
        ),
    )


# --- creating --------------------------------------------------------------------------------------
@dataclass
class NewInteraction:
    channel: str
    direction: str = Direction.inbound
    external_id: str | None = None
    identity_kind: str | None = None
    identity_value: str | None = None
    create_customer: bool = False
    customer_id: int | None = None
    queue: str | None = None
    priority: int = 0
    team_id: int | None = None
    agent_id: int | None = None
    subject: str | None = None
    work_order_id: int | None = None
    arrived_at: datetime | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    display_name: str | None = None  # for a customer created from this contact


async def _existing(db: AsyncSession, principal: Principal, channel: str, external_id: str) -> InteractionView | None:
    found = await db.scalar(
        select(Interaction).where(Interaction.channel == channel, Interaction.external_id == external_id)
    )
    if found is None:
        return None
    visible = await db.scalar(select(Interaction.id).where(Interaction.id == found.id, visibility_clause(principal)))
    if visible is None:
        # Delivered before and linked to a work order the caller may not see: say no more than that.
        raise Conflict("this contact was already recorded", {"channel": channel, "external_id": external_id})
    return await view_of(db, found)


async def _customer_for(
    db: AsyncSession, principal: Principal, new: NewInteraction
) -> tuple[str | None, Customer | None]:
    """The normalized identity value and the customer the contact belongs to (None if unknown)."""
    from kefu.customers import service as customers
    from kefu.customers.identities import normalize_identity

    value = None
    if new.identity_kind is not None and new.identity_value is not None:
        value = normalize_identity(new.identity_kind, new.identity_value)
    if new.customer_id is not None:
        try:
            customer = await customers.get_customer(db, principal, new.customer_id)
        except NotFound:
            raise Invalid("customer_id does not name a customer", {"field": "customer_id"}) from None
        # A contact for a merged customer belongs to the one that holds everything now.
        return value, await customers.survivor_of(db, customer)
    if value is None:
        if new.create_customer:
            raise Invalid("create_customer needs an identity", {"field": "create_customer"})
        return None, None
    assert new.identity_kind is not None
    if new.create_customer:
        customer, _created = await customers.resolve_or_create(
            db, principal, new.identity_kind, value, new.display_name
        )
        return value, customer
    return value, await customers.find_by_identity(db, new.identity_kind, value)


async def create_interaction(
    db: AsyncSession, principal: Principal, new: NewInteraction
) -> tuple[InteractionView, bool]:
    """Record a contact; returns it and whether it is new. The same (channel, external_id) delivered again
    returns the row already stored, also when two deliveries race (the unique constraint decides)."""
    now = utcnow()
    arrived_at = new.arrived_at or now
    _check_moment(arrived_at, now, "arrived_at")
    if new.external_id is not None:
        existing = await _existing(db, principal, new.channel, new.external_id)
        if existing is not None:
            return existing, False
    agent = await _active_staff(db, new.agent_id) if new.agent_id is not None else None
    routing_queue = None
    if new.queue is not None:
        from kefu.routing import service as routing

        routing_queue = await routing.queue_by_code(db, new.queue)
    if new.team_id is not None:
        await _check_team(db, new.team_id)
    if new.work_order_id is not None:
        await _check_work_order(db, principal, new.work_order_id)
    identity_value, customer = await _customer_for(db, principal, new)
    # ON CONFLICT DO NOTHING rather than a savepoint: on PostgreSQL the loser of a race waits for the
    # winner's commit and then inserts nothing; a savepoint on SQLite (pysqlite's deferred BEGIN) could
    # commit the caller's transaction early.
    insert = dialect_insert(db)
    interaction = await db.scalar(
        insert(Interaction)
        .values(
            channel=new.channel,
            direction=new.direction,
            external_id=new.external_id,
            state=InteractionState.arrived,
            customer_id=customer.id if customer is not None else None,
            identity_kind=new.identity_kind if identity_value is not None else None,
            identity_value=identity_value,
            queue=new.queue,
            team_id=new.team_id,
            agent_id=agent.id if agent is not None else None,
            subject=new.subject,
            work_order_id=new.work_order_id,
            attributes=dict(new.attributes),
            arrived_at=arrived_at,
            created_by_id=principal.user_id,
        )
        .on_conflict_do_nothing(index_elements=["channel", "external_id"])
        .returning(Interaction)
    )
    if interaction is None:
        assert new.external_id is not None  # NULL external ids never conflict
        existing = await _existing(db, principal, new.channel, new.external_id)
        if existing is None:  # pragma: no cover - the conflict proves the winner's row is committed
            raise Conflict("the contact was recorded concurrently; retry")
        return existing, False
    customer_name = customer.display_name if customer is not None else None
    _pop(db, interaction, customer_name)
    if routing_queue is not None and agent is None and new.direction == Direction.inbound:
        from kefu.routing import service as routing

        await routing.enqueue(
            db,
            interaction.id,
            routing_queue.id,
            channel=interaction.channel,
            customer_id=interaction.customer_id,
            priority=new.priority,
            now=max(arrived_at, now),
        )
        await db.refresh(interaction)
    return InteractionView(
        interaction,
        customer_name=customer_name,
        agent_name=agent.display_name if agent is not None else None,
        article_ids=[],
    ), True


# --- the timeline ----------------------------------------------------------------------------------
def derived_state(i: Interaction) -> str:
    if i.wrap_up_ended_at is not None:
        return InteractionState.done
    if i.ended_at is not None:
        return InteractionState.wrap_up
    if i.abandoned_at is not None:
        return InteractionState.abandoned
    if i.answered_at is not None:
        return InteractionState.answered
    if i.offered_at is not None:
        return InteractionState.offered
    if i.queued_at is not None:
        return InteractionState.queued
    return InteractionState.arrived


def _latest(*times: datetime | None) -> datetime:
    return max(t for t in times if t is not None)


def _order_problem(i: Interaction, event: str, at: datetime) -> str | None:
    """Why ``event`` at ``at`` cannot follow what is already recorded, or None if it can."""
    if at < i.arrived_at:
        return "before the contact arrived"
    if event != "wrap_up_ended" and i.ended_at is not None:
        return "the contact has ended"
    if event in ("queued", "offered", "answered") and i.abandoned_at is not None:
        return "the customer abandoned the contact"
    if event == "queued":
        if i.answered_at is not None or i.offered_at is not None:
            return "the contact was already offered to an agent"
    elif event == "offered":
        if i.answered_at is not None:
            return "the contact was already answered"
        if at < _latest(i.arrived_at, i.queued_at):
            return "before the contact was queued"
    elif event == "answered":
        if at < _latest(i.arrived_at, i.queued_at, i.offered_at):
            return "before the contact was offered"
    elif event == "abandoned":
        if i.answered_at is not None:
            return "an answered contact cannot be abandoned"
        if at < _latest(i.arrived_at, i.queued_at, i.offered_at):
            return "before the contact was queued or offered"
    elif event == "ended":
        if i.abandoned_at is not None:
            return "the customer abandoned the contact"
        if i.answered_at is None and i.direction != Direction.outbound:
            return "an inbound contact ends only after it was answered"
        if at < _latest(i.arrived_at, i.answered_at):
            return "before the contact was answered"
    elif event == "wrap_up_ended":
        if i.ended_at is None:
            return "wrap-up ends only after the contact ended"
        if at < i.ended_at:
            return "before the contact ended"
    return None


async def record_event(
    db: AsyncSession,
    principal: Principal,
    interaction_id: int,
    event: str,
    *,
    at: datetime | None = None,
    agent_id: int | None = None,
) -> tuple[InteractionView, bool]:
    """Write one timeline fact; returns the interaction and whether anything changed. A fact already
    recorded with the same time (and agent) is a no-op; with another time or agent it is a Conflict."""
    column = EVENT_FIELDS.get(event)
    if column is None:
        raise Invalid(f"unknown event {event!r}")
    if agent_id is not None and event not in ("offered", "answered"):
        raise Invalid("agent_id goes with an offered or answered event", {"field": "agent_id"})
    now = utcnow()
    at = at or now
    _check_moment(at, now, "at")
    if event in ("ended", "abandoned"):
        from kefu.routing import service as routing

        await routing.lock_entry(db, interaction_id)
    interaction = await _load(db, principal, interaction_id, for_update=True)
    recorded = getattr(interaction, column)
    if recorded is not None:
        if recorded != at or (agent_id is not None and agent_id != interaction.agent_id):
            raise Conflict(
                f"{event} was already recorded",
                {"event": event, "at": recorded.isoformat(), "agent_id": interaction.agent_id},
            )
        return await view_of(db, interaction), False
    problem = _order_problem(interaction, event, at)
    if problem is not None:
        raise Invalid(f"{event} cannot be recorded: {problem}", {"event": event, "state": interaction.state})
    new_agent = None
    if agent_id is not None and agent_id != interaction.agent_id:
        new_agent = await _active_staff(db, agent_id)
        interaction.agent_id = new_agent.id
    elif event in ("offered", "answered") and interaction.agent_id is None:
        raise Invalid(f"{event} needs agent_id: the contact has no agent yet", {"field": "agent_id"})
    setattr(interaction, column, at)
    interaction.state = derived_state(interaction)
    await db.flush()
    if event in ("ended", "abandoned"):
        from kefu.routing import service as routing

        await routing.interaction_ended(db, interaction.id, event, at)
    elif event == "wrap_up_ended" and interaction.agent_id is not None:
        from kefu.routing import service as routing

        await routing.end_after_contact_work(db, interaction.agent_id, now=at)
    view = await view_of(db, interaction)
    if new_agent is not None:
        _pop(db, interaction, view.customer_name)
    return view, True


# --- written by routing ------------------------------------------------------------------------------
_ROUTING_STATES = {"queued": InteractionState.queued, "offered": InteractionState.offered}
_routing_stamps: dict[tuple[str, bool], Any] = {}


def routing_stamp_update(event: str, interaction_id: Any, at: Any, *, queue: Any = None) -> Any:
    """The UPDATE behind ``routing_stamp`` for any id/time expressions: routing runs it on its own, or on
    PostgreSQL inside its claim (a data-modifying CTE), so the stamp costs no round trip of its own."""
    column = getattr(Interaction, EVENT_FIELDS[event])
    values: dict[Any, Any] = {column: at, Interaction.state: literal(_ROUTING_STATES[event].value)}
    if queue is not None:
        values[Interaction.queue] = queue
    return (
        update(Interaction)
        .where(
            Interaction.id == interaction_id,
            column.is_(None),
            Interaction.answered_at.is_(None),
            Interaction.abandoned_at.is_(None),
            Interaction.ended_at.is_(None),
        )
        .values(values)
    )


def routing_queued_offered_update(interaction_id: Any, at: Any, *, queue: Any, offered: Any) -> Any:
    """Both of routing's stamps in one UPDATE, with the meaning of "queued" then, if the SQL condition
    ``offered`` holds, "offered" (routing_stamp_update twice): each is written only if not written yet,
    never over a later fact. One statement may not update a row twice, so a decision that queues and
    offers a contact at once stamps it with this."""
    queued_now = Interaction.queued_at.is_(None)
    offered_now = and_(offered, Interaction.offered_at.is_(None))
    return (
        update(Interaction)
        .where(
            Interaction.id == interaction_id,
            or_(queued_now, offered_now),
            Interaction.answered_at.is_(None),
            Interaction.abandoned_at.is_(None),
            Interaction.ended_at.is_(None),
        )
        .values(
            {
                # SET reads the row as it was: every CASE below sees the stamps before this statement.
                Interaction.queued_at: func.coalesce(Interaction.queued_at, at),
                Interaction.queue: case((queued_now, queue), else_=Interaction.queue),
                Interaction.offered_at: case((offered_now, at), else_=Interaction.offered_at),
                Interaction.state: case(
                    (offered_now, literal(InteractionState.offered.value)),
                    (queued_now, literal(InteractionState.queued.value)),
                    else_=Interaction.state,
                ),
            }
        )
    )


async def routing_stamp(
    db: AsyncSession, interaction_id: int, event: str, at: datetime, *, queue: str | None = None
) -> bool:
    """Routing records that a contact was queued or first offered: written once (a later re-offer keeps
    the first time), never over a later fact. One UPDATE, no read: it sits on routing's hot path."""
    key = (event, queue is not None)
    statement = _routing_stamps.get(key)
    if statement is None:
        # Built once per shape, with parameters named unlike any column (Core would add those to SET).
        statement = _routing_stamps[key] = routing_stamp_update(
            event,
            bindparam("p_id"),
            bindparam("p_at", type_=UTCDateTime()),
            queue=bindparam("p_queue") if queue is not None else None,
        ).execution_options(synchronize_session=False)
    params: dict[str, Any] = {"p_id": interaction_id, "p_at": at}
    if queue is not None:
        params["p_queue"] = queue
    done = await db.execute(statement, params)
    return done.rowcount == 1


async def routing_answered(db: AsyncSession, interaction_id: int, agent_id: int, at: datetime) -> None:
    """The agent accepted routing's offer: the contact is theirs, answered now, and pops on their desk."""
    interaction = await db.get(Interaction, interaction_id, with_for_update=True, populate_existing=True)
    if interaction is None:
        raise NotFound("interaction")
    if interaction.answered_at is not None or interaction.ended_at is not None or interaction.abandoned_at is not None:
        raise Conflict("the contact was already answered or has ended", {"interaction_id": interaction_id})
    interaction.agent_id = agent_id
    if interaction.offered_at is None:
        interaction.offered_at = at
    interaction.answered_at = at
    interaction.state = derived_state(interaction)
    await db.flush()
    customer_name = None
    if interaction.customer_id is not None:
        customer_name = await db.scalar(select(Customer.display_name).where(Customer.id == interaction.customer_id))
    _pop(db, interaction, customer_name)


async def link_work_order(db: AsyncSession, interaction_id: int, work_order_id: int) -> None:
    """Attach a work order opened for the contact by the system (routing's maximum-wait action)."""
    await db.execute(
        update(Interaction)
        .where(Interaction.id == interaction_id, Interaction.work_order_id.is_(None))
        .values(work_order_id=work_order_id)
        .execution_options(synchronize_session=False)
    )


# --- wrap-up ---------------------------------------------------------------------------------------
WRAP_UP_FIELDS = frozenset(
    {"contact_reason_id", "disposition", "resolved_first_contact", "summary", "work_order_id", "subject"}
)


async def update_wrap_up(
    db: AsyncSession, principal: Principal, interaction_id: int, changes: dict[str, Any]
) -> InteractionView:
    """Set the after-contact fields (only those in ``changes``; None clears one)."""
    unknown = set(changes) - WRAP_UP_FIELDS
    if unknown:
        raise Invalid(f"not a wrap-up field: {', '.join(sorted(unknown))}")
    interaction = await _load(db, principal, interaction_id, for_update=True)
    if changes.get("contact_reason_id") is not None:
        await _active_reason(db, changes["contact_reason_id"])
    if changes.get("disposition") is not None and changes["disposition"] not in DISPOSITIONS:
        raise Invalid("unknown disposition", {"field": "disposition", "allowed": list(DISPOSITIONS)})
    if changes.get("work_order_id") is not None and changes["work_order_id"] != interaction.work_order_id:
        await _check_work_order(db, principal, changes["work_order_id"])
    for name, value in changes.items():
        setattr(interaction, name, value)
    await db.flush()
    return await view_of(db, interaction)


async def use_article(
    db: AsyncSession, principal: Principal, interaction_id: int, article_id: int
) -> tuple[InteractionView, bool]:
    """Note that a knowledge article was used for this contact (once); returns whether it was new."""
    from kefu.knowledge import service as knowledge

    interaction = await _load(db, principal, interaction_id)
    try:
        await knowledge.get_article(db, principal, article_id)
    except NotFound:
        raise Invalid("article_id does not name an article you can see", {"field": "article_id"}) from None
    known = await db.scalar(
        select(InteractionArticle.article_id).where(
            InteractionArticle.interaction_id == interaction.id, InteractionArticle.article_id == article_id
        )
    )
    added = False
    if known is None:
        insert = dialect_insert(db)
        added = (
            await db.scalar(
                insert(InteractionArticle)
                .values(
                    interaction_id=interaction.id, article_id=article_id, used_by_id=principal.user_id, used_at=utcnow()
                )
                .on_conflict_do_nothing(index_elements=["interaction_id", "article_id"])
                .returning(InteractionArticle.article_id)
            )
            is not None
        )
    return await view_of(db, interaction), added


# --- contact reasons ---------------------------------------------------------------------------------
@dataclass
class ReasonNode:
    reason: ContactReason
    children: list[ReasonNode] = field(default_factory=list)


async def reason_tree(db: AsyncSession, *, include_inactive: bool = False) -> list[ReasonNode]:
    """The reasons as a tree (by position, then name). Without ``include_inactive``, an inactive reason
    and everything under it are left out."""
    reasons = list(
        await db.scalars(select(ContactReason).order_by(ContactReason.position, ContactReason.name, ContactReason.id))
    )
    nodes = {r.id: ReasonNode(r) for r in reasons}
    roots: list[ReasonNode] = []
    for r in reasons:
        if not include_inactive and not r.active:
            continue
        parent = nodes.get(r.parent_id) if r.parent_id is not None else None
        if r.parent_id is None:
            roots.append(nodes[r.id])
        elif parent is not None:
            parent.children.append(nodes[r.id])
    if include_inactive:
        return roots

    def reachable(node: ReasonNode) -> ReasonNode:
        return ReasonNode(node.reason, [reachable(c) for c in node.children if c.reason.active])

    return [reachable(n) for n in roots]


async def _reason(db: AsyncSession, reason_id: int, *, for_update: bool = False) -> ContactReason:
    stmt = select(ContactReason).where(ContactReason.id == reason_id)
    if for_update:
        stmt = stmt.with_for_update()
    reason = await db.scalar(stmt)
    if reason is None:
        raise NotFound("contact reason")
    return reason


async def _code_free(db: AsyncSession, code: str, exclude_id: int | None = None) -> None:
    stmt = select(ContactReason.id).where(ContactReason.code == code)
    if exclude_id is not None:
        stmt = stmt.where(ContactReason.id != exclude_id)
    if await db.scalar(stmt) is not None:
        raise Conflict("a contact reason with this code exists", {"field": "code", "code": code})


async def _check_parent(db: AsyncSession, parent_id: int, moving_id: int | None = None) -> None:
    """The parent exists, and (when moving ``moving_id``) is not the reason itself or below it."""
    ancestor_id: int | None = parent_id
    depth = 0
    while ancestor_id is not None:
        if ancestor_id == moving_id:
            raise Invalid(
                "a contact reason cannot be placed under itself or its own sub-reasons", {"field": "parent_id"}
            )
        ancestor = await db.get(ContactReason, ancestor_id)
        if ancestor is None:
            raise Invalid("parent_id does not name a contact reason", {"field": "parent_id"})
        depth += 1
        if depth >= MAX_REASON_DEPTH:
            raise Invalid(f"contact reasons nest at most {MAX_REASON_DEPTH} levels deep", {"field": "parent_id"})
        ancestor_id = ancestor.parent_id


async def create_reason(
    db: AsyncSession,
    principal: Principal,
    *,
    code: str,
    name: str,
    parent_id: int | None = None,
    position: int = 0,
    active: bool = True,
) -> ReasonNode:
    await _code_free(db, code)
    if parent_id is not None:
        await _check_parent(db, parent_id)
    reason = ContactReason(code=code, name=name, parent_id=parent_id, position=position, active=active)
    db.add(reason)
    try:
        await db.flush()
    except IntegrityError:  # the same code created concurrently; the route rolls the whole request back
        raise Conflict("a contact reason with this code exists", {"field": "code", "code": code}) from None
    await audit.record(
        db,
        actor_of(principal),
        "contact_reason.create",
        object_type="contact_reason",
        object_id=reason.id,
        details={"code": code, "name": name, "parent_id": parent_id, "active": active},
    )
    return ReasonNode(reason)


async def update_reason(db: AsyncSession, principal: Principal, reason_id: int, changes: dict[str, Any]) -> ReasonNode:
    """Change a reason (only the keys in ``changes``). Reasons are deactivated, never deleted."""
    reason = await _reason(db, reason_id, for_update=True)
    for required in ("code", "name", "position", "active"):
        if required in changes and changes[required] is None:
            raise Invalid(f"{required} cannot be null", {"field": required})
    if "code" in changes and changes["code"] != reason.code:
        await _code_free(db, changes["code"], exclude_id=reason.id)
    if changes.get("parent_id") is not None and changes["parent_id"] != reason.parent_id:
        await _check_parent(db, changes["parent_id"], moving_id=reason.id)
    before = {k: getattr(reason, k) for k in changes}
    for name, value in changes.items():
        setattr(reason, name, value)
    try:
        await db.flush()
    except IntegrityError:  # the same code taken concurrently; the route rolls the whole request back
        raise Conflict("a contact reason with this code exists", {"field": "code"}) from None
    await audit.record(
        db,
        actor_of(principal),
        "contact_reason.update",
        object_type="contact_reason",
        object_id=reason.id,
        details={"before": before, "after": changes},
    )
    return ReasonNode(reason)


# --- customer merges -----------------------------------------------------------------------------------
async def _move_interactions(
    db: AsyncSession, from_customer_id: int, to_customer_id: int, only_ids: list[int] | None
) -> list[int]:
    stmt = select(Interaction.id).where(Interaction.customer_id == from_customer_id)
    if only_ids is not None:
        stmt = stmt.where(Interaction.id.in_(only_ids))
    ids = list((await db.scalars(stmt)).all())
    if ids:
        await db.execute(update(Interaction).where(Interaction.id.in_(ids)).values(customer_id=to_customer_id))
    return ids


register_mover("interactions", _move_interactions)
