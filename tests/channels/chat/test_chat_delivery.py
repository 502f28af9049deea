"""How the chat sockets deliver, against the real database: an event names the chat and the number it
stored, and the socket reads that chat only (one query, however many chats the agent holds); the next
number carried whole by its event is sent with no read at all; a gap, a duplicate or a lost event still
ends with every message once, in order. And concurrent syncs of one accepted chat announce the agent once
(SQLite has no row locks: the chat's lock must still serialise them)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event as sa_event
from tests.channels.chat.chat_support import agent_for, chat_queue, chat_settings, messages, principal, start_chat

from kefu.channels.chat import service
from kefu.channels.chat.hub import hub_of
from kefu.channels.chat.models import ChatConversation
from kefu.channels.chat.socket import AgentSocket
from kefu.core.events import Event, bind_bus
from kefu.routing import service as routing


class FakeWebSocket:
    """What a chat socket needs of a WebSocket: the app, and somewhere to send frames."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.frames: list[dict[str, Any]] = []

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))


@contextmanager
def chat_statements(app: Any) -> Iterator[list[str]]:
    """The SQL statements on chat tables run meanwhile (other background work of the app is left out)."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        if "chat_" in statement:
            seen.append(statement)

    engine = app.state.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)


async def say(app: Any, settings: Any, conv_id: int, text: str) -> ChatConversation:
    async with app.state.session_factory() as db:
        bind_bus(db, app.state.event_bus)
        async with db.begin():
            conv = await db.get(ChatConversation, conv_id)
            assert conv is not None
            await service.visitor_message(db, settings, conv, text, None)
            return conv


async def next_message_event(subscription: Any, conv_id: int) -> Event:
    async with asyncio.timeout(10):
        while True:
            found = await subscription.get()
            if found.type == service.MESSAGE_EVENT and found.data.get("conversation_id") == conv_id:
                return found


async def test_the_desk_socket_reads_only_the_chat_an_event_names(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    agent = await agent_for(app, make, queue, presence="break")  # staffed, nobody routable: the chats wait
    cfg = chat_settings(settings, queue)
    chats = [(await start_chat(app, cfg, question=f"问题 {i}"))[0] for i in range(3)]
    a, b, c = chats
    websocket = FakeWebSocket(app)
    desk = AgentSocket(websocket, hub_of(app), agent.id)  # type: ignore[arg-type]
    for conv in chats:  # the desk has resumed each chat after what it has
        desk.public_ids[conv.id] = conv.public_id
        desk.cursors[conv.id] = conv.last_seq

    subscription = app.state.event_bus.subscribe()
    try:
        # The next number, whole in its event: sent at once, nothing read.
        await say(app, cfg, b.id, "第一条")
        stored = await next_message_event(subscription, b.id)
        assert stored.data["message"]["text"] == "第一条"
        with chat_statements(app) as statements:
            await desk.stored(b.id, stored.data["seq"], stored.data["message"])
        assert statements == []
        assert [(f["conversation"], f["text"]) for f in websocket.frames] == [(b.public_id, "第一条")]

        # A gap (an event lost, or overtaken): the chat named is read, in one query, the others are not.
        await say(app, cfg, b.id, "第二条")
        await say(app, cfg, b.id, "第三条")
        await say(app, cfg, c.id, "别的对话")
        events = [await next_message_event(subscription, b.id) for _ in range(2)]
        await desk.stored(b.id, events[1].data["seq"], events[1].data["message"])
        assert desk.due == {b.id} and len(websocket.frames) == 1
        with chat_statements(app) as statements:
            await desk.deliver_due()
        assert len(statements) == 1 and "chat_messages" in statements[0]
        assert [f["text"] for f in websocket.frames] == ["第一条", "第二条", "第三条"]
        # The late event of a message already sent changes nothing.
        await desk.stored(b.id, events[0].data["seq"], events[0].data["message"])
        assert desk.due == set() and len(websocket.frames) == 3

        # C's event never came: the quiet-time check finds it with one query for every chat held.
        with chat_statements(app) as statements:
            await desk.find_behind()
        assert desk.due == {c.id} and len(statements) == 1
        await desk.deliver_due()
        assert [(f["conversation"], f["text"]) for f in websocket.frames][-1] == (c.public_id, "别的对话")
        assert a.public_id not in {f["conversation"] for f in websocket.frames}  # nothing happened there
        sent = [(f["conversation"], f["seq"]) for f in websocket.frames]
        assert len(sent) == len(set(sent)), "every message once"
        assert [s for p, s in sent if p == b.public_id] == list(range(b.last_seq + 1, b.last_seq + 4))
    finally:
        subscription.close()


async def test_concurrent_syncs_of_an_accepted_chat_announce_the_agent_once(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    agent = await agent_for(app, make, queue)
    cfg = chat_settings(settings, queue)
    conv, _ = await start_chat(app, cfg)
    async with app.state.session_factory() as db:
        bind_bus(db, app.state.event_bus)
        async with db.begin():
            await routing.accept_offer(db, principal(agent), conv.interaction_id)

    async def sync() -> None:
        async with app.state.session_factory() as db:
            bind_bus(db, app.state.event_bus)
            async with db.begin():
                await service.sync(db, cfg, conv.id)

    # The visitor's socket, the desk's socket and the sweep may all see the answer at once.
    await asyncio.gather(*(sync() for _ in range(4)))
    codes = [m.code for m in await messages(app, conv.id)]
    assert codes.count("agent_joined") == 1
