"""The supervisors' live view of routing: every active queue with its waiting contacts and today's
figures so far, and every agent in routing with their presence and load.

``snapshot`` runs the same six queries however many queues, agents or contacts there are (queues,
memberships, one GROUP BY over the queue figures, the waiting contacts, the agents, the contacts per
agent); everything per queue or per agent is counted in SQL or from rows already read.

"Today" is the principal's calendar day: it starts at midnight in ``principal.time_zone``. A contact
is counted in the queue it is in now (a contact moved or overflowed counts in its last queue), and
its wait is measured from ``waiting_since``, the clock kept across moves.

Service level today (the standard call-centre definition, abandons within the threshold excluded)::

    SL = answered within the threshold / (answered + unanswered after the threshold)

- *answered*: contacts answered today (``answered_at`` on or after midnight);
- *answered within the threshold*: of those, answered at most ``sl_threshold_seconds`` after
  ``waiting_since``;
- *unanswered after the threshold*: contacts that left the queue today without an answer after
  waiting longer than the threshold: the customer abandoned, or the queue's maximum-wait action took
  the contact out (work order, callback, voicemail). Contacts that gave up within the threshold count
  neither for nor against the queue (the customer did not give it a fair chance);
- ``service_level_today`` is that share in percent, ``None`` while the denominator is zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import String, and_, case, cast, func, literal, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.policy import Principal
from kefu.db.base import UTCDateTime, utcnow
from kefu.identity.models import User
from kefu.routing.models import AgentState, EntryState, QueueMember, RoutingEntry, RoutingQueue
from kefu.routing.policy import CHANNEL_CLASSES, Presence, channel_class

# The waiting contacts listed (oldest first); the queue figures always count them all.
CONTACTS_SHOWN = 200
OPEN_STATES = (EntryState.waiting, EntryState.offered)
# Outcomes of a contact the queue's maximum-wait (or closed) action took out of routing unanswered.
ACTION_OUTCOMES = ("max_wait:%", "closed:%")
# Agents are listed busiest state first, then by name.
PRESENCE_ORDER = {
    Presence.on_contact: 0,
    Presence.after_contact: 1,
    Presence.available: 2,
    Presence.training: 3,
    Presence.break_: 4,
    Presence.offline: 5,
}


@dataclass(frozen=True)
class QueueLive:
    id: int
    code: str
    name: str
    channel: str
    sl_threshold_seconds: int
    sl_target_percent: int
    waiting: int  # waiting or ringing now
    ringing: int  # of those, offered to an agent now
    longest_wait_seconds: int | None
    offered_today: int  # contacts that entered routing today (now in this queue)
    answered_today: int
    answered_within_threshold_today: int
    abandoned_today: int
    diverted_today: int  # taken out unanswered by the maximum-wait or closed action
    unanswered_after_threshold_today: int
    service_level_today: float | None  # percent; see the module docstring
    agents_staffed: int  # members not offline
    agents_available: int
    agents_on_contact: int


@dataclass(frozen=True)
class AgentLive:
    user_id: int
    display_name: str
    presence: str
    reason: str | None
    since: datetime | None  # None: never signed in to routing
    seconds_in_state: int | None
    loads: dict[str, int]
    capacity: dict[str, int]
    contacts: int  # contacts accepted and not yet ended
    ringing: int  # offers ringing for them now
    queue_ids: tuple[int, ...]


@dataclass(frozen=True)
class ContactLive:
    interaction_id: int
    queue_id: int
    channel_class: str
    state: str  # waiting or offered
    priority: int
    waiting_since: datetime
    waited_seconds: int
    offer_agent_id: int | None


@dataclass(frozen=True)
class LiveSnapshot:
    at: datetime
    day_start: datetime  # midnight in ``time_zone``, as UTC
    time_zone: str
    queues: list[QueueLive]
    agents: list[AgentLive]
    contacts: list[ContactLive]  # the oldest CONTACTS_SHOWN waiting contacts
    contacts_total: int  # all waiting contacts (in active queues)
    queue_ids_by_channel_class: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentPresence:
    """One agent's own presence, for the desk."""

    presence: str
    reason: str | None
    since: datetime | None
    seconds_in_state: int | None
    after_contact_until: datetime | None


def zone_of(principal: Principal) -> ZoneInfo:
    try:
        return ZoneInfo(principal.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def day_start(now: datetime, zone: ZoneInfo) -> datetime:
    """Midnight of ``now``'s day in ``zone``, as an aware UTC datetime."""
    local = now.astimezone(zone)
    return datetime.combine(local.date(), time(0), tzinfo=zone).astimezone(UTC)


def _seconds(later: datetime, earlier: datetime | None) -> int | None:
    if earlier is None:
        return None
    return max(0, int((later - earlier).total_seconds()))


def _plus_seconds(db: AsyncSession, moment: Any, seconds: Any) -> Any:
    """``moment + seconds`` in SQL, exact to the microsecond on both databases (the SL threshold is
    compared with ``<=``: a contact answered at exactly 20.000000 s is within 20 s)."""
    if db.bind.dialect.name == "postgresql":
        return type_coerce(moment + func.make_interval(0, 0, 0, 0, 0, 0, seconds), UTCDateTime)
    # SQLite keeps times as 'YYYY-MM-DD HH:MM:SS.ffffff' text (UTC): add whole seconds to the first 19
    # characters, keep the microseconds; the result compares as text like the stored values.
    modifier = literal("+") + cast(seconds, String) + literal(" seconds")
    shifted = func.strftime("%Y-%m-%d %H:%M:%S", moment, modifier, type_=String)
    return shifted + func.substr(moment, 20, type_=String)


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


async def snapshot(db: AsyncSession, principal: Principal, *, now: datetime | None = None) -> LiveSnapshot:
    """Queues and agents as they are now, with today's figures so far (see the module docstring)."""
    now = now or utcnow()
    zone = zone_of(principal)
    start = day_start(now, zone)
    E = RoutingEntry  # noqa: N806 - short alias for a long expression list

    queues = (
        await db.scalars(
            select(RoutingQueue)
            .where(RoutingQueue.active.is_(True))
            .order_by(RoutingQueue.priority.desc(), RoutingQueue.code)
        )
    ).all()
    members = (
        await db.execute(
            select(QueueMember.queue_id, QueueMember.user_id)
            .join(RoutingQueue, RoutingQueue.id == QueueMember.queue_id)
            .where(RoutingQueue.active.is_(True))
        )
    ).all()

    # One pass over today's entries and the open ones, grouped by queue.
    is_open = E.state.in_(OPEN_STATES)
    deadline = _plus_seconds(db, E.waiting_since, RoutingQueue.sl_threshold_seconds)
    answered = E.answered_at >= start
    left_unanswered = and_(
        E.ended_at >= start,
        E.answered_at.is_(None),
        or_(E.outcome == "abandoned", *(E.outcome.like(pattern) for pattern in ACTION_OUTCOMES)),
    )
    figures = {
        row.queue_id: row
        for row in (
            await db.execute(
                select(
                    E.queue_id,
                    _count(is_open).label("waiting"),
                    _count(E.state == EntryState.offered).label("ringing"),
                    type_coerce(func.min(case((is_open, E.waiting_since))), UTCDateTime).label("oldest"),
                    _count(E.entered_at >= start).label("offered"),
                    _count(answered).label("answered"),
                    _count(and_(answered, E.answered_at <= deadline)).label("answered_within"),
                    _count(and_(E.ended_at >= start, E.outcome == "abandoned")).label("abandoned"),
                    _count(
                        and_(E.ended_at >= start, or_(*(E.outcome.like(pattern) for pattern in ACTION_OUTCOMES)))
                    ).label("diverted"),
                    _count(and_(left_unanswered, E.ended_at > deadline)).label("unanswered_late"),
                )
                .join(RoutingQueue, RoutingQueue.id == E.queue_id)
                .where(
                    RoutingQueue.active.is_(True),
                    # Everything counted today is either still in routing or ended today.
                    or_(E.state != EntryState.ended, E.ended_at >= start),
                )
                .group_by(E.queue_id)
            )
        ).all()
    }

    active_ids = [q.id for q in queues]
    contacts_rows = (
        (
            await db.scalars(
                select(E)
                .where(E.state.in_(OPEN_STATES), E.queue_id.in_(active_ids))
                .order_by(E.waiting_since, E.interaction_id)
                .limit(CONTACTS_SHOWN)
            )
        ).all()
        if active_ids
        else []
    )

    # In routing now, or a member of an active queue (shown offline if they never signed in).
    agent_filter = AgentState.presence != Presence.offline
    if members:
        serving = select(QueueMember.user_id).join(RoutingQueue, RoutingQueue.id == QueueMember.queue_id)
        agent_filter = or_(agent_filter, User.id.in_(serving.where(RoutingQueue.active.is_(True))))
    agent_rows = (
        await db.execute(
            select(User.id, User.display_name, User.username, AgentState)
            .outerjoin(AgentState, AgentState.user_id == User.id)
            .where(User.is_active.is_(True), agent_filter)
        )
    ).all()
    in_hand: dict[int, dict[str, int]] = {}
    for agent_id, state, count in (
        await db.execute(
            select(func.coalesce(E.agent_id, E.offer_agent_id), E.state, func.count())
            .where(E.state.in_((EntryState.offered, EntryState.assigned)))
            .group_by(func.coalesce(E.agent_id, E.offer_agent_id), E.state)
        )
    ).all():
        if agent_id is not None:
            in_hand.setdefault(agent_id, {})[state] = count

    queues_of: dict[int, list[int]] = {}
    for queue_id, user_id in members:
        queues_of.setdefault(user_id, []).append(queue_id)
    agents: list[AgentLive] = []
    presence_of: dict[int, str] = {}
    for user_id, display_name, username, state in agent_rows:
        presence = state.presence if state is not None else Presence.offline
        presence_of[user_id] = presence
        counts = in_hand.get(user_id, {})
        agents.append(
            AgentLive(
                user_id=user_id,
                display_name=display_name or username,
                presence=presence,
                reason=state.reason if state is not None else None,
                since=state.since if state is not None else None,
                seconds_in_state=_seconds(now, state.since) if state is not None else None,
                loads={cls: getattr(state, f"load_{cls}") if state is not None else 0 for cls in CHANNEL_CLASSES},
                capacity={cls: getattr(state, f"cap_{cls}") if state is not None else 0 for cls in CHANNEL_CLASSES},
                contacts=counts.get(EntryState.assigned, 0),
                ringing=counts.get(EntryState.offered, 0),
                queue_ids=tuple(sorted(queues_of.get(user_id, ()))),
            )
        )
    agents.sort(key=lambda a: (PRESENCE_ORDER.get(a.presence, 9), a.display_name, a.user_id))

    staffed: dict[int, list[str]] = {}
    for queue_id, user_id in members:
        staffed.setdefault(queue_id, []).append(presence_of.get(user_id, Presence.offline))
    result_queues = []
    by_class: dict[str, list[int]] = {}
    for q in queues:
        row = figures.get(q.id)
        answered_n = row.answered if row is not None else 0
        within = row.answered_within if row is not None else 0
        late = row.unanswered_late if row is not None else 0
        denominator = answered_n + late
        presences = staffed.get(q.id, [])
        by_class.setdefault(channel_class(q.channel), []).append(q.id)
        result_queues.append(
            QueueLive(
                id=q.id,
                code=q.code,
                name=q.name,
                channel=q.channel,
                sl_threshold_seconds=q.sl_threshold_seconds,
                sl_target_percent=q.sl_target_percent,
                waiting=row.waiting if row is not None else 0,
                ringing=row.ringing if row is not None else 0,
                longest_wait_seconds=_seconds(now, row.oldest) if row is not None else None,
                offered_today=row.offered if row is not None else 0,
                answered_today=answered_n,
                answered_within_threshold_today=within,
                abandoned_today=row.abandoned if row is not None else 0,
                diverted_today=row.diverted if row is not None else 0,
                unanswered_after_threshold_today=late,
                service_level_today=100.0 * within / denominator if denominator else None,
                agents_staffed=sum(1 for p in presences if p != Presence.offline),
                agents_available=sum(1 for p in presences if p == Presence.available),
                agents_on_contact=sum(1 for p in presences if p == Presence.on_contact),
            )
        )
    contacts = [
        ContactLive(
            interaction_id=e.interaction_id,
            queue_id=e.queue_id,
            channel_class=e.channel_class,
            state=e.state,
            priority=e.priority,
            waiting_since=e.waiting_since,
            waited_seconds=_seconds(now, e.waiting_since) or 0,
            offer_agent_id=e.offer_agent_id,
        )
        for e in contacts_rows
    ]
    return LiveSnapshot(
        at=now,
        day_start=start,
        time_zone=zone.key,
        queues=result_queues,
        agents=agents,
        contacts=contacts,
        contacts_total=sum(q.waiting for q in result_queues),
        queue_ids_by_channel_class=by_class,
    )


async def presence_of(db: AsyncSession, user_id: int, *, now: datetime | None = None) -> AgentPresence:
    """An agent's presence as it is (offline if they never signed in to routing); reads only."""
    now = now or utcnow()
    state = await db.get(AgentState, user_id)
    if state is None:
        return AgentPresence(Presence.offline, None, None, None, None)
    return AgentPresence(
        presence=state.presence,
        reason=state.reason,
        since=state.since,
        seconds_in_state=_seconds(now, state.since),
        after_contact_until=state.after_contact_until,
    )


__all__ = [
    "AgentLive",
    "AgentPresence",
    "ContactLive",
    "LiveSnapshot",
    "QueueLive",
    "day_start",
    "presence_of",
    "snapshot",
]
