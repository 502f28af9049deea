"""Helpers for routing tests: queues, agents with skills and queue memberships, contacts, a clock."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity import service as identity
from kefu.identity.models import User
from kefu.identity.service import Actor
from kefu.interactions import service as interactions
from kefu.routing import service as routing
from kefu.routing.models import QueueMember, QueueSkill, RoutingQueue

SYSTEM = Principal(user_id=None, username="routing-test", roles=frozenset({"admin"}), via="session")
_channel_users: dict[int, Principal] = {}


async def channel_principal(app: Any) -> Principal:
    """A signed-in integration user (as a PBX or chat server would be) for recording timeline facts."""
    found = _channel_users.get(id(app))
    if found is None:
        async with app.state.session_factory() as db, db.begin():
            user = await identity.create_user(
                db, Actor.system("test"), username=code("pbx"), display_name="PBX", roles=("supervisor",)
            )
        found = Principal(user_id=user.id, username=user.username, roles=frozenset({"supervisor"}), via="token")
        _channel_users[id(app)] = found
    return found


def code(prefix: str = "q") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class Clock:
    """A test's own 'now', moved by hand: routing takes ``now`` wherever time matters."""

    now: datetime

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def clock() -> Clock:
    # A little in the past, so moving forward by minutes never reaches "the future" for timeline checks.
    return Clock(utcnow() - timedelta(hours=6))


async def make_queue(app: Any, *, skills: dict[int, int] | None = None, **fields: Any) -> RoutingQueue:
    values: dict[str, Any] = {"code": code(), "name": "测试队列", "channel": "phone", "offer_timeout_seconds": 20}
    values.update(fields)
    async with app.state.session_factory() as db, db.begin():
        queue = RoutingQueue(**values)
        db.add(queue)
        await db.flush()
        for skill_id, level in (skills or {}).items():
            db.add(QueueSkill(queue_id=queue.id, skill_id=skill_id, min_proficiency=level))
        return queue


async def make_agent(
    app: Any,
    make: Any,
    *,
    queues: tuple[int, ...] = (),
    skills: dict[int, int] | None = None,
    languages: tuple[str, ...] = (),
) -> User:
    user = await make.user("agent")
    async with app.state.session_factory() as db, db.begin():
        loaded = await identity.get_user(db, user.id)
        await identity.set_agent_skills(db, Actor.system("test"), loaded, skills=skills or {}, languages=languages)
        for queue_id in queues:
            db.add(QueueMember(queue_id=queue_id, user_id=user.id))
        await db.flush()
        await routing.refresh_member_ranks(db, user_ids=[user.id])
    return user


def principal(user: User) -> Principal:
    return Principal(user_id=user.id, username=user.username, roles=frozenset({"agent"}), via="session")


async def set_presence(app: Any, user: User, presence: str, now: datetime, reason: str | None = None) -> None:
    async with app.state.session_factory() as db, db.begin():
        await routing.set_presence(db, principal(user), user.id, presence, reason=reason, now=now)


async def contact(
    app: Any,
    queue: RoutingQueue,
    now: datetime,
    *,
    channel: str | None = None,
    customer_id: int | None = None,
    priority: int = 0,
    route: bool = True,
) -> int:
    """A new inbound contact enqueued (and routed, unless ``route`` is false) at ``now``; returns its
    interaction id."""
    async with app.state.session_factory() as db, db.begin():
        view, _ = await interactions.create_interaction(
            db,
            SYSTEM,
            interactions.NewInteraction(
                channel=channel or queue.channel, customer_id=customer_id, arrived_at=now - timedelta(seconds=1)
            ),
        )
        await routing.enqueue(
            db,
            view.interaction.id,
            queue.id,
            channel=channel or queue.channel,
            customer_id=customer_id,
            priority=priority,
            now=now,
            route=route,
        )
        return view.interaction.id


async def entry(app: Any, interaction_id: int) -> Any:
    from kefu.routing.models import RoutingEntry

    async with app.state.session_factory() as db:
        return await db.get(RoutingEntry, interaction_id)


async def offered_to(app: Any, interaction_id: int) -> int | None:
    found = await entry(app, interaction_id)
    return found.offer_agent_id if found is not None and found.state == "offered" else None


async def accept(app: Any, user: User, interaction_id: int, now: datetime) -> None:
    async with app.state.session_factory() as db, db.begin():
        await routing.accept_offer(db, principal(user), interaction_id, now=now)


async def reject(app: Any, user: User, interaction_id: int, now: datetime) -> None:
    async with app.state.session_factory() as db, db.begin():
        await routing.reject_offer(db, principal(user), interaction_id, now=now)


async def end(app: Any, interaction_id: int, now: datetime) -> None:
    """The contact ends (hang-up) at ``now``: through the interactions timeline, as a channel does it."""
    who = await channel_principal(app)
    async with app.state.session_factory() as db, db.begin():
        await interactions.record_event(db, who, interaction_id, "ended", at=now)


async def sweep(app: Any, now: datetime) -> routing.SweepResult:
    async with app.state.session_factory() as db, db.begin():
        return await routing.sweep(db, now=now)


async def state_of(app: Any, user: User) -> Any:
    from kefu.routing.models import AgentState

    async with app.state.session_factory() as db:
        return await db.get(AgentState, user.id)
