"""Contacts that leave an agent before they are done, and contacts nobody can take.

``requeue_at_head``: an answered contact whose agent is gone (a chat whose agent's connection dropped for
longer than the grace period) goes back to the head of its queue. Its interaction ends (the agent's
capacity frees up through the usual path) and a new interaction, a new segment of the same contact, is
queued with the original wait clock and ahead of everyone waiting in that queue, then routed to the next
agent (never the one who left). Contact centres record transfers the same way: one interaction per agent.

``divert_waiting``: a waiting contact leaves live routing for its work order (the queue is closed, or no
agent is signed in to serve it), as routing's own maximum-wait action does.

Locks follow routing's order: the routing entry first, then the interaction, then agents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.interactions import service as interactions
from kefu.interactions.models import Interaction
from kefu.routing import service as routing
from kefu.routing.models import AgentState, EntryState, MaxWaitAction, QueueMember, RoutingEntry, RoutingQueue
from kefu.routing.policy import Presence

SYSTEM = Principal(user_id=None, username="routing-requeue", roles=frozenset({"admin"}), via="system")
# An agent in one of these states is signed in to serve (or back soon): the queue is staffed.
STAFFED = (Presence.available, Presence.on_contact, Presence.after_contact, Presence.break_)


async def staffed_agents(db: AsyncSession, queue_id: int) -> int:
    """How many members of the queue are signed in (available, on a contact, in wrap-up or on a break)."""
    found = await db.scalar(
        select(func.count())
        .select_from(QueueMember)
        .join(AgentState, AgentState.user_id == QueueMember.user_id)
        .where(QueueMember.queue_id == queue_id, AgentState.presence.in_([p.value for p in STAFFED]))
    )
    return int(found or 0)


async def queue_open(db: AsyncSession, queue_id: int, now: datetime) -> bool:
    """Whether the queue's business calendar says it is open now (a queue without one is always open)."""
    calendar_id = await db.scalar(select(RoutingQueue.calendar_id).where(RoutingQueue.id == queue_id))
    if calendar_id is None:
        return True
    from kefu.tickets import calendar

    return calendar.is_business_time(await calendar.load_calendar(db, calendar_id), now)


def _entry_event(entry: RoutingEntry, what: str, **extra: Any) -> Event:
    return Event(
        routing.ENTRY_EVENT,
        {"interaction_id": entry.interaction_id, "queue_id": entry.queue_id, "what": what, **extra},
        roles=routing.SUPERVISOR_ROLES,
    )


async def divert_waiting(db: AsyncSession, interaction_id: int, *, why: str, now: datetime) -> bool:
    """Take a waiting contact out of live routing towards its work order; False if it is not waiting (an
    agent is being offered it or has it, or it already left)."""
    entry = await db.get(RoutingEntry, interaction_id, with_for_update=True, populate_existing=True)
    if entry is None or entry.state != EntryState.waiting:
        return False
    entry.state = EntryState.ended
    entry.outcome = f"{why}:{MaxWaitAction.work_order}"
    entry.ended_at = now
    entry.review_at = None
    entry.version += 1
    await db.flush()
    publish_on_commit(db, _entry_event(entry, why, action=MaxWaitAction.work_order))
    return True


async def _ahead_of(db: AsyncSession, entry: RoutingEntry) -> int | None:
    """The smallest priority order among contacts waiting in the entry's queue that would be served before
    it (None: nobody would)."""
    return await db.scalar(
        select(func.min(RoutingEntry.priority_order)).where(
            RoutingEntry.queue_id == entry.queue_id,
            RoutingEntry.state.in_([EntryState.waiting, EntryState.offered]),
            RoutingEntry.interaction_id != entry.interaction_id,
            or_(
                RoutingEntry.priority_order < entry.priority_order,
                and_(
                    RoutingEntry.priority_order == entry.priority_order,
                    RoutingEntry.waiting_since <= entry.waiting_since,
                ),
            ),
        )
    )


async def requeue_at_head(
    db: AsyncSession,
    interaction_id: int,
    *,
    external_id: str,
    now: datetime,
    attributes: dict[str, Any] | None = None,
) -> int | None:
    """Send an answered contact back to the head of its queue (see the module docstring). Returns the new
    interaction's id, or None when the contact is not held by an agent (any more)."""
    entry = await db.get(RoutingEntry, interaction_id, with_for_update=True, populate_existing=True)
    if entry is None or entry.state != EntryState.assigned:
        return None
    old = await db.get(Interaction, interaction_id, populate_existing=True)
    assert old is not None
    gone_agent = entry.agent_id
    waiting_since = entry.waiting_since
    queue_id, priority, customer_id = entry.queue_id, entry.priority, entry.customer_id
    if old.ended_at is None:
        # The usual end of a contact: the agent's capacity frees up, wrap-up follows on their desk.
        await interactions.record_event(db, SYSTEM, interaction_id, "ended", at=now)
    view, _created = await interactions.create_interaction(
        db,
        SYSTEM,
        interactions.NewInteraction(
            channel=old.channel,
            external_id=external_id,
            identity_kind=old.identity_kind,
            identity_value=old.identity_value,
            customer_id=customer_id,
            subject=old.subject,
            work_order_id=old.work_order_id,
            arrived_at=now,
            attributes={**(old.attributes or {}), **(attributes or {}), "requeued_from": interaction_id},
        ),
    )
    new_id = view.interaction.id
    result = await routing.enqueue(
        db, new_id, queue_id, channel=old.channel, customer_id=customer_id, priority=priority, now=now, route=False
    )
    if result.action is not None:
        return new_id  # the queue is closed now: its closed action already applied
    fresh = await db.get(RoutingEntry, new_id, with_for_update=True, populate_existing=True)
    assert fresh is not None
    fresh.waiting_since = waiting_since  # the customer's wait clock keeps running from the first arrival
    fresh.excluded_agents = sorted({*(fresh.excluded_agents or ()), *([gone_agent] if gone_agent else [])})
    fresh.sticky_agent_id = None
    fresh.sticky_until = None
    await db.flush()
    ahead = await _ahead_of(db, fresh)
    if ahead is not None:
        fresh.priority_order = min(ahead, fresh.priority_order) - 1
    fresh.version += 1
    await db.flush()
    publish_on_commit(db, _entry_event(fresh, "requeued", from_interaction_id=interaction_id))
    await routing.route_contact(db, new_id, now=now)
    return new_id


__all__ = ["divert_waiting", "queue_open", "requeue_at_head", "staffed_agents"]
