"""Helpers for the chat tests: a chat queue with agents, settings that point the widget at it, starting a
chat as the widget does and accepting it as the desk does."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select

from kefu.channels.chat import service
from kefu.channels.chat.models import ChatConversation, ChatMessage
from kefu.channels.chat.schemas import ConversationCreate
from kefu.core.events import bind_bus
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity.models import User
from kefu.routing import service as routing
from kefu.routing.models import QueueMember, RoutingEntry, RoutingQueue
from kefu.settings import Settings


def code(prefix: str = "chat") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def principal(user: User, *roles: str) -> Principal:
    return Principal(
        user_id=user.id,
        username=user.username,
        display_name=user.display_name,
        roles=frozenset(roles or ("agent",)),
        via="session",
    )


async def chat_queue(app: Any, **fields: Any) -> RoutingQueue:
    values: dict[str, Any] = {"code": code(), "name": "在线客服测试", "channel": "chat", "offer_timeout_seconds": 120}
    values.update(fields)
    async with app.state.session_factory() as db, db.begin():
        queue = RoutingQueue(**values)
        db.add(queue)
        await db.flush()
    routing.invalidate_queues()
    return queue


async def agent_for(app: Any, make: Any, queue: RoutingQueue, presence: str | None = "available") -> User:
    user = await make.user("agent")
    async with app.state.session_factory() as db, db.begin():
        db.add(QueueMember(queue_id=queue.id, user_id=user.id))
    if presence is not None:
        await set_presence(app, user, presence)
    return user


async def set_presence(app: Any, user: User, presence: str, reason: str | None = None) -> None:
    async with app.state.session_factory() as db:
        bind_bus(db, app.state.event_bus)
        async with db.begin():
            await routing.set_presence(
                db, principal(user), user.id, presence, reason=reason or ("meal" if presence == "break" else None)
            )


def chat_settings(settings: Settings, queue: RoutingQueue, **extra: Any) -> Settings:
    return settings.model_copy(update={"chat_widgets": {"default": queue.code}, **extra})


async def start_chat(
    app: Any,
    settings: Settings,
    *,
    name: str = "张三",
    email: str | None = None,
    phone: str | None = "13800138000",
    question: str = "我的快递三天没动了",
    now: datetime | None = None,
) -> tuple[ChatConversation, str]:
    data = ConversationCreate(name=name, email=email, phone=phone, question=question)
    async with app.state.session_factory() as db:
        bind_bus(db, app.state.event_bus)
        async with db.begin():
            return await service.start_conversation(db, settings, data, now=now)


async def accept(app: Any, settings: Settings, agent: User, conv_id: int) -> ChatConversation:
    """The agent accepts the ringing offer (as the desk's accept button does), then the chat syncs."""
    async with app.state.session_factory() as db:
        bind_bus(db, app.state.event_bus)
        async with db.begin():
            conv = await db.get(ChatConversation, conv_id)
            assert conv is not None
            await routing.accept_offer(db, principal(agent), conv.interaction_id)
    return await sync(app, settings, conv_id)


async def sync(app: Any, settings: Settings, conv_id: int, now: datetime | None = None) -> ChatConversation:
    async with app.state.session_factory() as db:
        bind_bus(db, app.state.event_bus)
        async with db.begin():
            conv = await service.sync(db, settings, conv_id, now=now or utcnow())
            assert conv is not None
            return conv


async def conversation(app: Any, conv_id: int) -> ChatConversation:
    async with app.state.session_factory() as db:
        conv = await db.get(ChatConversation, conv_id)
        assert conv is not None
        return conv


async def messages(app: Any, conv_id: int) -> list[ChatMessage]:
    async with app.state.session_factory() as db:
        return list(
            (
                await db.scalars(
                    select(ChatMessage).where(ChatMessage.conversation_id == conv_id).order_by(ChatMessage.seq)
                )
            ).all()
        )


async def entry(app: Any, interaction_id: int) -> RoutingEntry | None:
    async with app.state.session_factory() as db:
        return await db.get(RoutingEntry, interaction_id)
