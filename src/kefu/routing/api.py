"""Routing REST routes: thin wrappers over ``routing.queues`` (configuration, reads), ``routing.service``
(presence, offers, moves) and ``routing.live`` (the supervisors' snapshot)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import Forbidden
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam, IdQuery
from kefu.db.base import utcnow
from kefu.db.session import get_db
from kefu.routing import queues, service
from kefu.routing.schemas import (
    AgentQueuesIn,
    AgentQueuesOut,
    CapacityAssignmentIn,
    CapacityAssignmentOut,
    CapacityProfileCreate,
    CapacityProfileOut,
    CapacityProfileUpdate,
    EntryOut,
    EntryPage,
    EntryStateName,
    EntryUpdate,
    MemberOut,
    MembersReplace,
    MoveIn,
    OfferOut,
    PositionOut,
    PresenceIn,
    PresenceOut,
    QueueCreate,
    QueueOut,
    QueueUpdate,
    StateChangeOut,
    StateChangePage,
)

router = APIRouter(prefix="/api/v1", tags=["routing"])
Db = Annotated[AsyncSession, Depends(get_db)]
Limit = Annotated[int, Query(ge=1, le=200)]


def _me(principal: Principal) -> int:
    if principal.user_id is None:
        raise Forbidden("sign in first")
    return principal.user_id


# --- queues ------------------------------------------------------------------------------------------
@router.get("/routing/queues")
async def list_queues(
    db: Db,
    principal: Principal = authorize("routing_queue", "list"),
    include_inactive: Annotated[bool, Query(alias="all")] = True,
) -> list[QueueOut]:
    return [QueueOut.of(v) for v in await queues.list_queues(db, include_inactive=include_inactive)]


@router.post("/routing/queues", status_code=201)
async def create_queue(
    body: QueueCreate, db: Db, principal: Principal = authorize("routing_queue", "create")
) -> QueueOut:
    async with db.begin():
        view = await queues.create_queue(db, principal, body.model_dump())
    return QueueOut.of(view)


@router.get("/routing/queues/{queue_id}")
async def get_queue(
    queue_id: IdParam, db: Db, principal: Principal = authorize("routing_queue", "read", by_id=True)
) -> QueueOut:
    return QueueOut.of(await queues.get_queue(db, queue_id))


@router.patch("/routing/queues/{queue_id}")
async def update_queue(
    queue_id: IdParam, body: QueueUpdate, db: Db, principal: Principal = authorize("routing_queue", "update")
) -> QueueOut:
    """Only the fields sent change; ``skills`` replaces the requirement set. Routing runs again."""
    async with db.begin():
        view = await queues.update_queue(db, principal, queue_id, body.model_dump(exclude_unset=True))
    return QueueOut.of(view)


@router.get("/routing/queues/{queue_id}/members")
async def list_members(
    queue_id: IdParam, db: Db, principal: Principal = authorize("routing_queue", "read", by_id=True)
) -> list[MemberOut]:
    return [MemberOut.model_validate(m, from_attributes=True) for m in await queues.list_members(db, queue_id)]


@router.put("/routing/queues/{queue_id}/members")
async def set_members(
    queue_id: IdParam, body: MembersReplace, db: Db, principal: Principal = authorize("routing_queue", "update")
) -> list[MemberOut]:
    async with db.begin():
        members = await queues.set_members(db, principal, queue_id, body.user_ids)
    return [MemberOut.model_validate(m, from_attributes=True) for m in members]


# --- capacity ----------------------------------------------------------------------------------------
@router.get("/routing/capacity-profiles")
async def list_capacity_profiles(
    db: Db, principal: Principal = authorize("routing_capacity", "list")
) -> list[CapacityProfileOut]:
    return [CapacityProfileOut.of(v) for v in await queues.list_profiles(db)]


@router.post("/routing/capacity-profiles", status_code=201)
async def create_capacity_profile(
    body: CapacityProfileCreate, db: Db, principal: Principal = authorize("routing_capacity", "create")
) -> CapacityProfileOut:
    async with db.begin():
        view = await queues.create_profile(db, principal, body.model_dump())
    return CapacityProfileOut.of(view)


@router.patch("/routing/capacity-profiles/{profile_id}")
async def update_capacity_profile(
    profile_id: IdParam,
    body: CapacityProfileUpdate,
    db: Db,
    principal: Principal = authorize("routing_capacity", "update"),
) -> CapacityProfileOut:
    async with db.begin():
        view = await queues.update_profile(db, principal, profile_id, body.model_dump(exclude_unset=True))
    return CapacityProfileOut.of(view)


@router.put("/routing/capacity-assignments")
async def assign_capacity_profile(
    body: CapacityAssignmentIn, db: Db, principal: Principal = authorize("routing_capacity", "update")
) -> CapacityAssignmentOut:
    """Apply a profile to a team (its members' default) or one agent; ``profile_id`` null removes it."""
    async with db.begin():
        refreshed = await queues.assign_profile(
            db, principal, team_id=body.team_id, user_id=body.user_id, profile_id=body.profile_id
        )
    return CapacityAssignmentOut(
        team_id=body.team_id, user_id=body.user_id, profile_id=body.profile_id, refreshed_user_ids=refreshed
    )


# --- presence and agents -----------------------------------------------------------------------------
async def _presence(db: AsyncSession, user_id: int, state: Any = None) -> PresenceOut:
    now = utcnow()
    if state is None:
        state = await queues.presence_of(db, user_id, now=now)
    return PresenceOut.of(state, await queues.queues_of(db, user_id), now)


@router.get("/routing/presence/me")
async def my_presence(db: Db, principal: Principal = authorize("routing_presence", "read")) -> PresenceOut:
    async with db.begin():  # the state row is made on first use
        return await _presence(db, _me(principal))


@router.put("/routing/presence/me")
async def set_my_presence(
    body: PresenceIn, db: Db, principal: Principal = authorize("routing_presence", "update")
) -> PresenceOut:
    async with db.begin():
        state = await queues.set_presence(db, principal, _me(principal), body.presence, reason=body.reason)
        return await _presence(db, state.user_id, state)


@router.put("/routing/agents/{user_id}/presence")
async def set_agent_presence(
    user_id: IdParam, body: PresenceIn, db: Db, principal: Principal = authorize("routing_agent", "update")
) -> PresenceOut:
    async with db.begin():
        state = await queues.set_presence(db, principal, user_id, body.presence, reason=body.reason)
        return await _presence(db, user_id, state)


@router.put("/routing/agents/{user_id}/queues")
async def move_agent(
    user_id: IdParam, body: AgentQueuesIn, db: Db, principal: Principal = authorize("routing_agent", "update")
) -> AgentQueuesOut:
    """Move an agent between queues: added to ``add``, taken out of ``remove``."""
    async with db.begin():
        serving = await queues.move_agent(db, principal, user_id, body.add, body.remove)
    return AgentQueuesOut(user_id=user_id, queue_ids=serving)


@router.get("/routing/agents/{user_id}/state-changes")
async def state_changes(
    user_id: IdParam,
    db: Db,
    principal: Principal = authorize("routing_presence", "read", by_id=True),
    before_id: IdQuery | None = None,
    limit: Limit = 50,
) -> StateChangePage:
    """Presence history, newest first (page on with ``before_id``); one's own, or any for supervisors."""
    rows = await queues.state_changes(db, principal, user_id, before_id=before_id, limit=limit)
    return StateChangePage(
        items=[StateChangeOut.of(r) for r in rows], next_before_id=rows[-1].id if len(rows) == limit else None
    )


# --- offers ------------------------------------------------------------------------------------------
@router.get("/routing/offers/mine")
async def my_offers(db: Db, principal: Principal = authorize("routing_offer", "list")) -> list[OfferOut]:
    now = utcnow()
    return [OfferOut.of(v, now) for v in await queues.offers_for(db, _me(principal), now=now)]


@router.post("/routing/offers/{interaction_id}/accept")
async def accept_offer(
    interaction_id: IdParam, db: Db, principal: Principal = authorize("routing_offer", "accept")
) -> EntryOut:
    """409 unless the contact is ringing for the caller right now."""
    async with db.begin():
        entry = await service.accept_offer(db, principal, interaction_id)
        return EntryOut.of(await queues.get_entry(db, entry.interaction_id))


@router.post("/routing/offers/{interaction_id}/reject")
async def reject_offer(
    interaction_id: IdParam, db: Db, principal: Principal = authorize("routing_offer", "reject")
) -> EntryOut:
    async with db.begin():
        entry = await service.reject_offer(db, principal, interaction_id)
        return EntryOut.of(await queues.get_entry(db, entry.interaction_id))


# --- contacts in routing -----------------------------------------------------------------------------
@router.get("/routing/entries")
async def list_entries(
    db: Db,
    principal: Principal = authorize("routing_entry", "list"),
    queue_id: IdQuery | None = None,
    state: EntryStateName | None = None,
    after_id: IdQuery | None = None,
    limit: Limit = 50,
) -> EntryPage:
    """Contacts in routing (all but ended unless ``state`` says), by interaction id; page on with ``after_id``."""
    rows = await queues.list_entries(db, queue_id=queue_id, state=state, after_id=after_id, limit=limit)
    return EntryPage(
        items=[EntryOut.of(e) for e in rows],
        next_after_id=rows[-1].interaction_id if len(rows) == limit else None,
    )


@router.get("/routing/entries/{interaction_id}/position")
async def entry_position(
    interaction_id: IdParam, db: Db, principal: Principal = authorize("routing_position", "read", by_id=True)
) -> PositionOut:
    """Where a waiting contact stands in its queue and how long it may still wait (channels tell the caller)."""
    position = await service.position_of(db, interaction_id)
    return PositionOut.model_validate(position, from_attributes=True)


@router.post("/routing/entries/{interaction_id}/move")
async def move_entry(
    interaction_id: IdParam, body: MoveIn, db: Db, principal: Principal = authorize("routing_entry", "update")
) -> EntryOut:
    async with db.begin():
        entry = await service.move_contact(db, principal, interaction_id, body.queue_id)
        return EntryOut.of(await queues.get_entry(db, entry.interaction_id))


@router.patch("/routing/entries/{interaction_id}")
async def update_entry(
    interaction_id: IdParam, body: EntryUpdate, db: Db, principal: Principal = authorize("routing_entry", "update")
) -> EntryOut:
    async with db.begin():
        return EntryOut.of(await queues.set_entry_priority(db, principal, interaction_id, body.priority))


# --- live --------------------------------------------------------------------------------------------
@router.get("/routing/live")
async def live_snapshot(db: Db, principal: Principal = authorize("routing_live", "read")) -> dict[str, Any]:
    """Queues (waiting, longest wait, service level so far today) and agents (state, time in state)."""
    from kefu.routing import live

    return dataclasses.asdict(await live.snapshot(db, principal))
