"""Routing configuration: queues (rules, skill requirements, members), capacity profiles and where they
apply, and the read models the routing API shows (presence, offers, entries, presence history).

Every write checks all of its input before it writes anything and names the field it refuses, so a
refused request leaves nothing behind; every write is audited. A change that alters who may take what
(members, capacity, a queue's rules) makes routing run again for the agents concerned, in the same
transaction, through ``routing.service``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.errors import Conflict, Invalid, NotFound
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity import service as identity
from kefu.identity.models import TeamMember, User, UserRole
from kefu.identity.service import actor_of
from kefu.routing import policy, service
from kefu.routing.models import (
    AgentState,
    AgentStateChange,
    CapacityAssignment,
    CapacityProfile,
    EntryState,
    MaxWaitAction,
    Offer,
    QueueMember,
    QueueSkill,
    RoutingEntry,
    RoutingQueue,
)

# Codes look like the project's other codes (contact reasons): a letter or digit, then letters,
# digits, dot, underscore, hyphen.
CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
CODE_MAX = 64
NAME_MAX = 128
LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"
LANGUAGE_MAX = 16
_CODE = re.compile(CODE_PATTERN)
_LANGUAGE = re.compile(LANGUAGE_PATTERN)

# Inclusive ranges of the queue's numbers (the API schemas use the same ones).
RANGES: dict[str, tuple[int, int]] = {
    "priority": (-100, 100),
    "sl_target_percent": (1, 100),
    # Up to a week: email and web-form queues promise answers in hours or days, not seconds.
    "sl_threshold_seconds": (1, 7 * 86400),
    "sticky_seconds": (0, 86_400),
    "offer_timeout_seconds": (5, 300),
    "after_contact_seconds": (0, 3600),
    "expected_handle_seconds": (1, 86_400),
    "overflow_after_seconds": (1, 86_400),
    "max_wait_seconds": (1, 86_400),
}
BULLSEYE_MAX_STEPS = 10
BULLSEYE_AFTER = (1, 86_400)
BULLSEYE_DROP = (0, 4)
PROFICIENCY = (1, 5)
MAX_QUEUE_SKILLS = 50
MAX_MEMBERS = 2000
# Capacity limits per channel class, as the table's check constraints have them.
CAPACITY_LIMITS: dict[str, tuple[int, int]] = {"voice": (0, 1), "chat": (0, 20), "email": (0, 50), "message": (0, 50)}
# Staff who take contacts: the roles that may be queue members and have a presence.
CONTACT_ROLES = ("agent", "supervisor", "admin")

QUEUE_DEFAULTS: dict[str, Any] = {
    "language": None,
    "priority": 0,
    "sl_target_percent": 80,
    "sl_threshold_seconds": 20,
    "bullseye": [],
    "sticky_seconds": 0,
    "offer_timeout_seconds": 20,
    "after_contact_seconds": 0,
    "expected_handle_seconds": 180,
    "overflow_queue_id": None,
    "overflow_after_seconds": None,
    "max_wait_seconds": None,
    "max_wait_action": MaxWaitAction.keep,
    "calendar_id": None,
    "closed_action": MaxWaitAction.keep,
    "team_id": None,
    "active": True,
}
QUEUE_FIELDS = ("code", "name", "channel", *QUEUE_DEFAULTS)
REQUIRED = ("code", "name", "channel", *(k for k, v in QUEUE_DEFAULTS.items() if v is not None))
# Changes that alter who may take a queue's contacts or in what order: routing runs again after them.
RULE_FIELDS = frozenset(
    {"language", "priority", "bullseye", "sticky_seconds", "active", "overflow_queue_id", "overflow_after_seconds"}
    | {"max_wait_seconds", "max_wait_action", "calendar_id", "closed_action"}
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(field: str, value: Any, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise Invalid(f"{field} must be a whole number from {low} to {high}", {"field": field, "min": low, "max": high})
    return value


def _check_text(field: str, value: Any, max_length: int, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise Invalid(f"{field} must be text of 1 to {max_length} characters", {"field": field})
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise Invalid(f"{field} contains a control character", {"field": field})
    if pattern is not None and not pattern.match(value):
        raise Invalid(f"{field} has an invalid format", {"field": field, "pattern": pattern.pattern})
    return value


def check_bullseye(raw: Any) -> list[dict[str, Any]]:
    """The widening steps, normalised to {after_seconds, proficiency_drop, any_member} each."""
    if not isinstance(raw, list | tuple):
        raise Invalid("bullseye must be a list of steps", {"field": "bullseye"})
    if len(raw) > BULLSEYE_MAX_STEPS:
        raise Invalid(f"bullseye has at most {BULLSEYE_MAX_STEPS} steps", {"field": "bullseye"})
    steps: list[dict[str, Any]] = []
    for index, step in enumerate(raw):
        where = f"bullseye[{index}]"
        if not isinstance(step, Mapping) or set(step) - {"after_seconds", "proficiency_drop", "any_member"}:
            raise Invalid("a bullseye step has after_seconds, proficiency_drop and any_member", {"field": where})
        after = _check_int(f"{where}.after_seconds", step.get("after_seconds"), *BULLSEYE_AFTER)
        drop = _check_int(f"{where}.proficiency_drop", step.get("proficiency_drop", 1), *BULLSEYE_DROP)
        any_member = step.get("any_member", False)
        if not isinstance(any_member, bool):
            raise Invalid("any_member must be true or false", {"field": f"{where}.any_member"})
        if steps and after <= steps[-1]["after_seconds"]:
            raise Invalid("bullseye steps must wait strictly longer each", {"field": f"{where}.after_seconds"})
        if steps and steps[-1]["any_member"]:
            raise Invalid("no step can follow an any-member step (it already takes everyone)", {"field": where})
        steps.append({"after_seconds": after, "proficiency_drop": drop, "any_member": any_member})
    return steps


# --- queues ------------------------------------------------------------------------------------------
@dataclass
class QueueView:
    queue: RoutingQueue
    skills: list[QueueSkill]
    member_count: int


async def _views(db: AsyncSession, queues: Sequence[RoutingQueue]) -> list[QueueView]:
    ids = [q.id for q in queues]
    skills: dict[int, list[QueueSkill]] = {i: [] for i in ids}
    members: dict[int, int] = {}
    if ids:
        for row in (
            await db.scalars(
                select(QueueSkill)
                .where(QueueSkill.queue_id.in_(ids))
                .order_by(QueueSkill.queue_id, QueueSkill.skill_id)
            )
        ).all():
            skills[row.queue_id].append(row)
        members = dict(
            (
                await db.execute(
                    select(QueueMember.queue_id, func.count())
                    .where(QueueMember.queue_id.in_(ids))
                    .group_by(QueueMember.queue_id)
                )
            ).all()
        )
    return [QueueView(q, skills[q.id], int(members.get(q.id, 0))) for q in queues]


async def _queue(db: AsyncSession, queue_id: int, *, for_update: bool = False) -> RoutingQueue:
    queue = await db.get(RoutingQueue, queue_id, with_for_update=for_update, populate_existing=for_update)
    if queue is None:
        raise NotFound("routing queue")
    return queue


async def list_queues(db: AsyncSession, *, include_inactive: bool = True) -> list[QueueView]:
    query = select(RoutingQueue).order_by(RoutingQueue.code)
    if not include_inactive:
        query = query.where(RoutingQueue.active.is_(True))
    return await _views(db, list((await db.scalars(query)).all()))


async def get_queue(db: AsyncSession, queue_id: int) -> QueueView:
    return (await _views(db, [await _queue(db, queue_id)]))[0]


async def _code_free(db: AsyncSession, code: str, exclude_id: int | None = None) -> None:
    query = select(RoutingQueue.id).where(RoutingQueue.code == code)
    if exclude_id is not None:
        query = query.where(RoutingQueue.id != exclude_id)
    if await db.scalar(query) is not None:
        raise Conflict("a routing queue with this code exists", {"field": "code", "code": code})


async def _check_overflow(db: AsyncSession, values: dict[str, Any], queue_id: int | None) -> None:
    """The overflow target exists, is active, serves the same channel class, and following overflows
    from it never comes back to this queue."""
    target_id = values["overflow_queue_id"]
    if target_id is None:
        if values["overflow_after_seconds"] is not None:
            raise Invalid("overflow_after_seconds needs an overflow queue", {"field": "overflow_after_seconds"})
        for field in ("max_wait_action", "closed_action"):
            if values[field] == MaxWaitAction.overflow:
                raise Invalid(f"{field} overflow needs an overflow queue", {"field": field})
        return
    if not _is_int(target_id):
        raise Invalid("overflow_queue_id must be a queue id", {"field": "overflow_queue_id"})
    if target_id == queue_id:
        raise Invalid("a queue cannot overflow to itself", {"field": "overflow_queue_id"})
    target = await db.get(RoutingQueue, target_id)
    if target is None:
        raise Invalid("overflow_queue_id does not name a routing queue", {"field": "overflow_queue_id"})
    if not target.active:
        raise Invalid("the overflow queue is not active", {"field": "overflow_queue_id"})
    if policy.channel_class(target.channel) != policy.channel_class(values["channel"]):
        raise Invalid("the overflow queue serves another channel class", {"field": "overflow_queue_id"})
    if values["overflow_after_seconds"] is None:
        raise Invalid("an overflow queue needs overflow_after_seconds", {"field": "overflow_after_seconds"})
    if queue_id is not None:
        links = dict(
            (await db.execute(select(RoutingQueue.id, RoutingQueue.overflow_queue_id))).all()  # small table
        )
        seen = {queue_id}
        at: int | None = target_id
        while at is not None:
            if at in seen:
                raise Invalid("overflows would go round in a cycle", {"field": "overflow_queue_id", "queue_id": at})
            seen.add(at)
            at = links.get(at)


async def _check_queue(db: AsyncSession, values: dict[str, Any], queue_id: int | None) -> dict[str, Any]:
    """Every field of a queue checked (field named in each refusal); returns the normalised values."""
    for field in REQUIRED:
        if values.get(field) is None:
            raise Invalid(f"{field} cannot be null", {"field": field})
    _check_text("code", values["code"], CODE_MAX, _CODE)
    _check_text("name", values["name"], NAME_MAX)
    if values["channel"] not in policy.CHANNEL_CLASS:
        raise Invalid("channel is not one routing knows", {"field": "channel", "allowed": sorted(policy.CHANNEL_CLASS)})
    if values["language"] is not None:
        _check_text("language", values["language"], LANGUAGE_MAX, _LANGUAGE)
    for field, (low, high) in RANGES.items():
        if values[field] is not None:
            _check_int(field, values[field], low, high)
    values["bullseye"] = check_bullseye(values["bullseye"])
    for field in ("max_wait_action", "closed_action"):
        if values[field] not in MaxWaitAction.ALL:
            raise Invalid(f"{field} is not a known action", {"field": field, "allowed": list(MaxWaitAction.ALL)})
    if values["max_wait_action"] != MaxWaitAction.keep and values["max_wait_seconds"] is None:
        raise Invalid("a maximum-wait action needs max_wait_seconds", {"field": "max_wait_seconds"})
    if not isinstance(values["active"], bool):
        raise Invalid("active must be true or false", {"field": "active"})
    await _check_overflow(db, values, queue_id)
    if values["calendar_id"] is not None:
        from kefu.tickets import sla

        try:
            await sla.get_calendar(db, values["calendar_id"])
        except NotFound:
            raise Invalid("calendar_id does not name a business calendar", {"field": "calendar_id"}) from None
    if values["team_id"] is not None:
        try:
            await identity.get_team(db, values["team_id"])
        except NotFound:
            raise Invalid("team_id does not name a team", {"field": "team_id"}) from None
    return values


async def _check_skills(db: AsyncSession, skills: Any) -> list[tuple[int, int]]:
    if not isinstance(skills, list | tuple) or len(skills) > MAX_QUEUE_SKILLS:
        raise Invalid(f"skills is a list of at most {MAX_QUEUE_SKILLS} requirements", {"field": "skills"})
    found: dict[int, int] = {}
    for index, need in enumerate(skills):
        where = f"skills[{index}]"
        if not isinstance(need, Mapping):
            raise Invalid("a skill requirement has skill_id and min_proficiency", {"field": where})
        skill_id = need.get("skill_id")
        if not _is_int(skill_id):
            raise Invalid("skill_id must be a skill's id", {"field": f"{where}.skill_id"})
        level = _check_int(f"{where}.min_proficiency", need.get("min_proficiency", 1), *PROFICIENCY)
        if skill_id in found:
            raise Invalid("each skill may appear once", {"field": f"{where}.skill_id"})
        try:
            await identity.get_skill(db, skill_id)
        except NotFound:
            raise Invalid("skill_id does not name a skill", {"field": f"{where}.skill_id"}) from None
        found[skill_id] = level
    return sorted(found.items())


async def _write_skills(db: AsyncSession, queue_id: int, skills: list[tuple[int, int]]) -> None:
    await db.execute(delete(QueueSkill).where(QueueSkill.queue_id == queue_id))
    for skill_id, level in skills:
        db.add(QueueSkill(queue_id=queue_id, skill_id=skill_id, min_proficiency=level))
    await db.flush()


async def create_queue(db: AsyncSession, principal: Principal, data: Mapping[str, Any]) -> QueueView:
    """A new queue from ``data`` (missing fields take their defaults; ``skills`` optional)."""
    unknown = set(data) - {*QUEUE_FIELDS, "skills"}
    if unknown:
        raise Invalid("unknown queue fields", {"field": sorted(unknown)[0]})
    values = {**QUEUE_DEFAULTS, **{k: v for k, v in data.items() if k != "skills"}}
    values = await _check_queue(db, values, None)
    skills = await _check_skills(db, data.get("skills") or [])
    await _code_free(db, values["code"])
    queue = RoutingQueue(**values)
    db.add(queue)
    try:
        await db.flush()
    except IntegrityError:  # the same code created concurrently; the route rolls the whole request back
        raise Conflict("a routing queue with this code exists", {"field": "code"}) from None
    await _write_skills(db, queue.id, skills)
    await audit.record(
        db,
        actor_of(principal),
        "routing.queue.create",
        object_type="routing_queue",
        object_id=queue.id,
        details={**values, "skills": [list(s) for s in skills]},
    )
    return await get_queue(db, queue.id)


async def update_queue(
    db: AsyncSession, principal: Principal, queue_id: int, changes: Mapping[str, Any], *, now: datetime | None = None
) -> QueueView:
    """Change the fields in ``changes`` (``skills`` replaces the requirement set); routing runs again
    for the queue's waiting contacts and present members when the rules changed."""
    queue = await _queue(db, queue_id, for_update=True)
    unknown = set(changes) - {*QUEUE_FIELDS, "skills"}
    if unknown:
        raise Invalid("unknown queue fields", {"field": sorted(unknown)[0]})
    fields = {k: v for k, v in changes.items() if k != "skills"}
    before = {f: getattr(queue, f) for f in QUEUE_FIELDS}
    values = await _check_queue(db, {**before, **fields}, queue.id)
    skills = await _check_skills(db, changes["skills"]) if "skills" in changes else None
    if values["code"] != queue.code:
        await _code_free(db, values["code"], exclude_id=queue.id)
    await _check_channel_change(db, queue, values["channel"])
    if queue.active and not values["active"]:
        feeding = await db.scalar(
            select(RoutingQueue.code).where(RoutingQueue.overflow_queue_id == queue.id, RoutingQueue.active.is_(True))
        )
        if feeding is not None:
            raise Conflict("active queues overflow to this one", {"field": "active", "queue": feeding})
    changed = {f: values[f] for f in QUEUE_FIELDS if values[f] != before[f]}
    old_skills = [(s.skill_id, s.min_proficiency) for s in (await get_queue(db, queue.id)).skills]
    for field, value in changed.items():
        setattr(queue, field, value)
    try:
        await db.flush()
    except IntegrityError:
        raise Conflict("a routing queue with this code exists", {"field": "code"}) from None
    # This process's decisions see the change at once; other processes within service.QUEUE_CACHE_SECONDS.
    service.invalidate_queues()
    skills_changed = skills is not None and skills != old_skills
    if skills_changed:
        assert skills is not None
        await _write_skills(db, queue.id, skills)
    if changed or skills_changed:
        details: dict[str, Any] = {"before": {f: before[f] for f in changed}, "after": changed}
        if skills_changed:
            details["skills"] = {"before": [list(s) for s in old_skills], "after": [list(s) for s in skills or ()]}
        await audit.record(
            db,
            actor_of(principal),
            "routing.queue.update",
            object_type="routing_queue",
            object_id=queue.id,
            details=details,
        )
    if skills_changed or RULE_FIELDS.intersection(changed):
        await _rules_changed(db, queue, now=now)
    return await get_queue(db, queue.id)


async def _check_channel_change(db: AsyncSession, queue: RoutingQueue, channel: str) -> None:
    if policy.channel_class(channel) == policy.channel_class(queue.channel):
        return
    in_routing = await db.scalar(
        select(RoutingEntry.interaction_id)
        .where(RoutingEntry.queue_id == queue.id, RoutingEntry.state != EntryState.ended)
        .limit(1)
    )
    if in_routing is not None:
        raise Conflict("contacts are in this queue: its channel class cannot change now", {"field": "channel"})
    feeding = await db.scalar(select(RoutingQueue.code).where(RoutingQueue.overflow_queue_id == queue.id).limit(1))
    if feeding is not None:
        raise Invalid("other queues overflow to this one on its channel class", {"field": "channel", "queue": feeding})


async def _rules_changed(db: AsyncSession, queue: RoutingQueue, *, now: datetime | None = None) -> None:
    """Waiting contacts take the queue's new priority and are reviewed at once (new bullseye, overflow,
    maximum wait), and every present member is routed again. The entries' versions stay: neither
    column is part of an offer's compare-and-set."""
    now = now or utcnow()
    await service.refresh_member_ranks(db, queue_ids=[queue.id])
    await db.execute(
        update(RoutingEntry)
        .where(RoutingEntry.queue_id == queue.id, RoutingEntry.state.in_([EntryState.waiting, EntryState.offered]))
        .values(priority_order=-(queue.priority + RoutingEntry.priority))
        .execution_options(synchronize_session=False)
    )
    await db.execute(
        update(RoutingEntry)
        .where(RoutingEntry.queue_id == queue.id, RoutingEntry.state == EntryState.waiting)
        .values(review_at=now)
        .execution_options(synchronize_session=False)
    )
    if queue.active:
        present = (
            await db.scalars(
                select(AgentState.user_id)
                .join(QueueMember, QueueMember.user_id == AgentState.user_id)
                .where(QueueMember.queue_id == queue.id, AgentState.presence.in_([p.value for p in policy.ROUTABLE]))
                .order_by(AgentState.user_id)
            )
        ).all()
        for user_id in present:
            await service.agent_changed(db, user_id, now=now)


# --- members -----------------------------------------------------------------------------------------
@dataclass
class Member:
    user_id: int
    display_name: str
    presence: str


async def check_contact_staff(db: AsyncSession, user_ids: Iterable[int], *, field: str = "user_ids") -> None:
    """Every user is active and in a role that takes contacts, or an Invalid naming the first who is not."""
    wanted = sorted(set(user_ids))
    if not wanted:
        return
    ok = set(
        (
            await db.scalars(
                select(User.id).where(
                    User.id.in_(wanted),
                    User.is_active.is_(True),
                    User.id.in_(select(UserRole.user_id).where(UserRole.role.in_(CONTACT_ROLES))),
                )
            )
        ).all()
    )
    refused = [u for u in wanted if u not in ok]
    if refused:
        raise Invalid(
            "not an active staff member who takes contacts",
            {"field": field, "user_ids": refused, "roles": CONTACT_ROLES},
        )


async def list_members(db: AsyncSession, queue_id: int) -> list[Member]:
    await _queue(db, queue_id)
    rows = await db.execute(
        select(User.id, User.display_name, AgentState.presence)
        .join(QueueMember, QueueMember.user_id == User.id)
        .outerjoin(AgentState, AgentState.user_id == User.id)
        .where(QueueMember.queue_id == queue_id)
        .order_by(User.display_name, User.id)
    )
    return [Member(uid, name, presence or policy.Presence.offline) for uid, name, presence in rows.all()]


async def set_members(
    db: AsyncSession, principal: Principal, queue_id: int, user_ids: Sequence[int], *, now: datetime | None = None
) -> list[Member]:
    """Replace the queue's members; routing runs again for everyone added or removed."""
    await _queue(db, queue_id, for_update=True)
    wanted = set(user_ids)
    if len(wanted) > MAX_MEMBERS:
        raise Invalid(f"a queue has at most {MAX_MEMBERS} members", {"field": "user_ids"})
    await check_contact_staff(db, wanted)
    have = set((await db.scalars(select(QueueMember.user_id).where(QueueMember.queue_id == queue_id))).all())
    return await _change_members(db, principal, queue_id, wanted - have, have - wanted, now=now)


async def add_members(
    db: AsyncSession, principal: Principal, queue_id: int, user_ids: Sequence[int], *, now: datetime | None = None
) -> list[Member]:
    await _queue(db, queue_id, for_update=True)
    await check_contact_staff(db, user_ids)
    have = set((await db.scalars(select(QueueMember.user_id).where(QueueMember.queue_id == queue_id))).all())
    return await _change_members(db, principal, queue_id, set(user_ids) - have, set(), now=now)


async def remove_members(
    db: AsyncSession, principal: Principal, queue_id: int, user_ids: Sequence[int], *, now: datetime | None = None
) -> list[Member]:
    await _queue(db, queue_id, for_update=True)
    have = set((await db.scalars(select(QueueMember.user_id).where(QueueMember.queue_id == queue_id))).all())
    return await _change_members(db, principal, queue_id, set(), set(user_ids) & have, now=now)


async def _change_members(
    db: AsyncSession, principal: Principal, queue_id: int, add: set[int], remove: set[int], *, now: datetime | None
) -> list[Member]:
    if remove:
        await db.execute(
            delete(QueueMember).where(QueueMember.queue_id == queue_id, QueueMember.user_id.in_(sorted(remove)))
        )
    for user_id in sorted(add):
        db.add(QueueMember(queue_id=queue_id, user_id=user_id))
    await db.flush()
    if add:
        await service.refresh_member_ranks(db, queue_ids=[queue_id], user_ids=add)
    if add or remove:
        await audit.record(
            db,
            actor_of(principal),
            "routing.queue.members",
            object_type="routing_queue",
            object_id=queue_id,
            details={"added": sorted(add), "removed": sorted(remove)},
        )
    for user_id in sorted(add | remove):
        await service.agent_changed(db, user_id, now=now)
    return await list_members(db, queue_id)


async def move_agent(
    db: AsyncSession,
    principal: Principal,
    user_id: int,
    add: Sequence[int] = (),
    remove: Sequence[int] = (),
    *,
    now: datetime | None = None,
) -> list[int]:
    """A supervisor moves an agent between queues; returns the queues they serve now."""
    await _staff_user(db, user_id)
    return await service.set_memberships(db, principal, user_id, add, remove, now=now)


async def _staff_user(db: AsyncSession, user_id: int) -> None:
    user = await db.get(User, user_id)
    if user is None or not user.is_active or not user.role_names.intersection(CONTACT_ROLES):
        raise NotFound("agent")


# --- capacity profiles -------------------------------------------------------------------------------
PROFILE_FIELDS = ("name", *CAPACITY_LIMITS, "voice_blocks_others", "others_block_voice")
PROFILE_DEFAULTS: dict[str, Any] = {
    "voice": 1,
    "chat": 3,
    "email": 5,
    "message": 5,
    "voice_blocks_others": True,
    "others_block_voice": False,
}


def _check_profile(values: dict[str, Any]) -> None:
    for field in PROFILE_FIELDS:
        if values.get(field) is None:
            raise Invalid(f"{field} cannot be null", {"field": field})
    _check_text("name", values["name"], NAME_MAX)
    for cls, (low, high) in CAPACITY_LIMITS.items():
        _check_int(cls, values[cls], low, high)
    for flag in ("voice_blocks_others", "others_block_voice"):
        if not isinstance(values[flag], bool):
            raise Invalid(f"{flag} must be true or false", {"field": flag})


async def _profile_name_free(db: AsyncSession, name: str, exclude_id: int | None = None) -> None:
    query = select(CapacityProfile.id).where(CapacityProfile.name == name)
    if exclude_id is not None:
        query = query.where(CapacityProfile.id != exclude_id)
    if await db.scalar(query) is not None:
        raise Conflict("a capacity profile with this name exists", {"field": "name"})


@dataclass
class ProfileView:
    profile: CapacityProfile
    team_ids: list[int]
    user_ids: list[int]


async def _profile_views(db: AsyncSession, profiles: Sequence[CapacityProfile]) -> list[ProfileView]:
    ids = [p.id for p in profiles]
    teams: dict[int, list[int]] = {i: [] for i in ids}
    users: dict[int, list[int]] = {i: [] for i in ids}
    if ids:
        for row in (
            await db.scalars(
                select(CapacityAssignment).where(CapacityAssignment.profile_id.in_(ids)).order_by(CapacityAssignment.id)
            )
        ).all():
            if row.team_id is not None:
                teams[row.profile_id].append(row.team_id)
            if row.user_id is not None:
                users[row.profile_id].append(row.user_id)
    return [ProfileView(p, teams[p.id], users[p.id]) for p in profiles]


async def list_profiles(db: AsyncSession) -> list[ProfileView]:
    return await _profile_views(
        db, list((await db.scalars(select(CapacityProfile).order_by(CapacityProfile.name))).all())
    )


async def get_profile(db: AsyncSession, profile_id: int, *, for_update: bool = False) -> CapacityProfile:
    profile = await db.get(CapacityProfile, profile_id, with_for_update=for_update, populate_existing=for_update)
    if profile is None:
        raise NotFound("capacity profile")
    return profile


async def create_profile(db: AsyncSession, principal: Principal, data: Mapping[str, Any]) -> ProfileView:
    unknown = set(data) - set(PROFILE_FIELDS)
    if unknown:
        raise Invalid("unknown capacity profile fields", {"field": sorted(unknown)[0]})
    values = {**PROFILE_DEFAULTS, **data}
    _check_profile(values)
    await _profile_name_free(db, values["name"])
    profile = CapacityProfile(**values)
    db.add(profile)
    try:
        await db.flush()
    except IntegrityError:
        raise Conflict("a capacity profile with this name exists", {"field": "name"}) from None
    await audit.record(
        db,
        actor_of(principal),
        "routing.capacity.create",
        object_type="capacity_profile",
        object_id=profile.id,
        details=values,
    )
    return (await _profile_views(db, [profile]))[0]


async def _users_of_profile(db: AsyncSession, profile_id: int) -> list[int]:
    direct = select(CapacityAssignment.user_id).where(
        CapacityAssignment.profile_id == profile_id, CapacityAssignment.user_id.is_not(None)
    )
    via_team = select(TeamMember.user_id).join(CapacityAssignment, CapacityAssignment.team_id == TeamMember.team_id)
    via_team = via_team.where(CapacityAssignment.profile_id == profile_id)
    found = set((await db.scalars(direct)).all()) | set((await db.scalars(via_team)).all())
    return sorted(u for u in found if u is not None)


async def _capacity_changed(db: AsyncSession, user_ids: Sequence[int], *, now: datetime | None) -> None:
    await service.refresh_capacity(db, user_ids)
    for user_id in sorted(set(user_ids)):
        await service.agent_changed(db, user_id, now=now)


async def update_profile(
    db: AsyncSession, principal: Principal, profile_id: int, changes: Mapping[str, Any], *, now: datetime | None = None
) -> ProfileView:
    profile = await get_profile(db, profile_id, for_update=True)
    unknown = set(changes) - set(PROFILE_FIELDS)
    if unknown:
        raise Invalid("unknown capacity profile fields", {"field": sorted(unknown)[0]})
    before = {f: getattr(profile, f) for f in PROFILE_FIELDS}
    values = {**before, **changes}
    _check_profile(values)
    if values["name"] != profile.name:
        await _profile_name_free(db, values["name"], exclude_id=profile.id)
    changed = {f: values[f] for f in PROFILE_FIELDS if values[f] != before[f]}
    for field, value in changed.items():
        setattr(profile, field, value)
    try:
        await db.flush()
    except IntegrityError:
        raise Conflict("a capacity profile with this name exists", {"field": "name"}) from None
    if changed:
        await audit.record(
            db,
            actor_of(principal),
            "routing.capacity.update",
            object_type="capacity_profile",
            object_id=profile.id,
            details={"before": {f: before[f] for f in changed}, "after": changed},
        )
        await _capacity_changed(db, await _users_of_profile(db, profile.id), now=now)
    return (await _profile_views(db, [profile]))[0]


async def assign_profile(
    db: AsyncSession,
    principal: Principal,
    *,
    team_id: int | None = None,
    user_id: int | None = None,
    profile_id: int | None,
    now: datetime | None = None,
) -> list[int]:
    """Apply a profile to a team's members or to one agent (``profile_id`` None removes it); returns the
    agents whose capacity was refreshed."""
    if (team_id is None) == (user_id is None):
        raise Invalid("give exactly one of team_id and user_id", {"field": "team_id"})
    if team_id is not None:
        try:
            await identity.get_team(db, team_id)
        except NotFound:
            raise Invalid("team_id does not name a team", {"field": "team_id"}) from None
        affected = sorted((await db.scalars(select(TeamMember.user_id).where(TeamMember.team_id == team_id))).all())
        owner = CapacityAssignment.team_id == team_id
    else:
        assert user_id is not None
        await check_contact_staff(db, [user_id], field="user_id")
        affected = [user_id]
        owner = CapacityAssignment.user_id == user_id
    if profile_id is not None:
        try:
            await get_profile(db, profile_id)
        except NotFound:
            raise Invalid("profile_id does not name a capacity profile", {"field": "profile_id"}) from None
    current = await db.scalar(select(CapacityAssignment).where(owner).with_for_update())
    previous = current.profile_id if current is not None else None
    if previous == profile_id:
        return affected
    if profile_id is None:
        await db.execute(delete(CapacityAssignment).where(owner))
    elif current is not None:
        current.profile_id = profile_id
    else:
        db.add(CapacityAssignment(profile_id=profile_id, team_id=team_id, user_id=user_id))
    try:
        await db.flush()
    except IntegrityError:  # assigned concurrently; the route rolls the request back
        raise Conflict("the assignment changed meanwhile, try again", {"field": "profile_id"}) from None
    await audit.record(
        db,
        actor_of(principal),
        "routing.capacity.assign",
        object_type="team" if team_id is not None else "user",
        object_id=team_id if team_id is not None else user_id or "",
        details={"before": previous, "after": profile_id},
    )
    await _capacity_changed(db, affected, now=now)
    return affected


# --- presence, offers, entries, history: what the API reads -----------------------------------------
async def presence_of(db: AsyncSession, user_id: int, *, now: datetime | None = None) -> AgentState:
    """The agent's state as stored now (created offline on first use)."""
    await _staff_user(db, user_id)
    state = await service.agent_state(db, user_id, now=now)
    await db.refresh(state)
    return state


async def queues_of(db: AsyncSession, user_id: int) -> list[int]:
    return sorted((await db.scalars(select(QueueMember.queue_id).where(QueueMember.user_id == user_id))).all())


async def set_presence(
    db: AsyncSession,
    principal: Principal,
    user_id: int,
    presence: str,
    *,
    reason: str | None = None,
    now: datetime | None = None,
) -> AgentState:
    await _staff_user(db, user_id)
    await service.set_presence(db, principal, user_id, presence, reason=reason, now=now)
    return await presence_of(db, user_id, now=now)


async def state_changes(
    db: AsyncSession, principal: Principal, user_id: int, *, before_id: int | None = None, limit: int = 50
) -> list[AgentStateChange]:
    """An agent's presence history, newest first; the agent's own, or anyone's for a supervisor."""
    if user_id != principal.user_id and not principal.has_role(*service.SUPERVISOR_ROLES):
        raise NotFound("agent")
    query = select(AgentStateChange).where(AgentStateChange.user_id == user_id)
    if before_id is not None:
        query = query.where(AgentStateChange.id < before_id)
    return list((await db.scalars(query.order_by(AgentStateChange.id.desc()).limit(limit))).all())


@dataclass
class OfferView:
    interaction_id: int
    queue_id: int
    queue_code: str
    channel: str
    offered_at: datetime
    expires_at: datetime


async def offers_for(db: AsyncSession, user_id: int, *, now: datetime | None = None) -> list[OfferView]:
    """The offers ringing for an agent now (leases not yet expired), oldest first."""
    now = now or utcnow()
    rows = await db.execute(
        select(RoutingEntry.interaction_id, RoutingEntry.queue_id, RoutingQueue.code, RoutingQueue.channel)
        .add_columns(Offer.offered_at, RoutingEntry.offer_expires_at)
        .join(RoutingQueue, RoutingQueue.id == RoutingEntry.queue_id)
        .join(
            Offer,
            (Offer.interaction_id == RoutingEntry.interaction_id)
            & (Offer.agent_id == user_id)
            & Offer.outcome.is_(None),
        )
        .where(
            RoutingEntry.offer_agent_id == user_id,
            RoutingEntry.state == EntryState.offered,
            RoutingEntry.offer_expires_at > now,
        )
        .order_by(Offer.offered_at, RoutingEntry.interaction_id)
    )
    return [OfferView(*row) for row in rows.all()]


async def list_entries(
    db: AsyncSession,
    *,
    queue_id: int | None = None,
    state: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[RoutingEntry]:
    """Contacts in routing (every state but ended unless ``state`` says), by interaction id."""
    query = select(RoutingEntry)
    if queue_id is not None:
        query = query.where(RoutingEntry.queue_id == queue_id)
    if state is not None:
        query = query.where(RoutingEntry.state == state)
    else:
        query = query.where(RoutingEntry.state != EntryState.ended)
    if after_id is not None:
        query = query.where(RoutingEntry.interaction_id > after_id)
    return list((await db.scalars(query.order_by(RoutingEntry.interaction_id).limit(limit))).all())


async def get_entry(db: AsyncSession, interaction_id: int) -> RoutingEntry:
    entry = await db.get(RoutingEntry, interaction_id, populate_existing=True)
    if entry is None:
        raise NotFound("routing entry")
    return entry


async def set_entry_priority(
    db: AsyncSession, principal: Principal, interaction_id: int, priority: int, *, now: datetime | None = None
) -> RoutingEntry:
    """A supervisor changes a waiting contact's own priority (added to its queue's)."""
    _check_int("priority", priority, *RANGES["priority"])
    entry = await service.set_priority(db, principal, interaction_id, priority, now=now)
    await audit.record(
        db,
        actor_of(principal),
        "routing.contact.priority",
        object_type="interaction",
        object_id=interaction_id,
        details={"priority": priority},
    )
    return await get_entry(db, entry.interaction_id)


__all__ = [
    "CAPACITY_LIMITS",
    "CODE_PATTERN",
    "CONTACT_ROLES",
    "LANGUAGE_PATTERN",
    "RANGES",
    "Member",
    "OfferView",
    "ProfileView",
    "QueueView",
    "add_members",
    "assign_profile",
    "check_bullseye",
    "check_contact_staff",
    "create_profile",
    "create_queue",
    "get_entry",
    "get_profile",
    "get_queue",
    "list_entries",
    "list_members",
    "list_profiles",
    "list_queues",
    "move_agent",
    "offers_for",
    "presence_of",
    "queues_of",
    "remove_members",
    "set_entry_priority",
    "set_members",
    "set_presence",
    "state_changes",
    "update_profile",
    "update_queue",
]
