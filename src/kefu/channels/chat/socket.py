"""The chat's two WebSockets: the visitor's (``/chat/ws/{public id}?token=...``) and the agent's
(``/chat/agent/ws``, the signed-in desk).

Delivery is by sequence number, never by event: a socket remembers the last number it sent per chat and
reads ``seq > N`` from the database, so a reconnecting client that says ``{"type": "resume", "after_seq":
N}`` gets exactly what it misses, in order. An event names the chat and the number it stored; the socket
reads only that chat, and only when the number is past what it sent (one query, however many chats an
agent holds). When all is quiet for ``chat_poll_seconds`` it checks every chat it holds against its
``last_seq`` in one query, so a lost bus event delays a message but never loses it.

Visitor protocol (JSON text frames):
  client -> {"type": "resume", "after_seq": N} | {"type": "message", "client_msg_id", "text"}
            {"type": "typing", "on": bool} | {"type": "ping"}
  server -> {"type": "hello", ...} {"type": "message", "seq", ...} {"type": "ack", "client_msg_id", "seq"}
            {"type": "state", "status", "position", "expected_wait_seconds", ...} {"type": "typing", ...}
            {"type": "error", "code", "message", ...} {"type": "ping"}
Agent protocol: the same, with ``conversation`` (public id) on every frame, ``{"type": "resume",
"after": {public_id: N, ...}}`` and ``{"type": "conversations", "items": [...]}`` whenever the agent's set
of open chats changes. Agent messages go through REST (``POST /api/v1/chat/conversations/{id}/messages``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.chat import service
from kefu.channels.chat.hub import ChatHub, hub_of
from kefu.channels.chat.models import ChatConversation, ConversationStatus
from kefu.core.errors import ApiError, NotFound
from kefu.core.events import Event, bind_bus
from kefu.core.policy import Authorize
from kefu.routing.service import ENTRY_EVENT

log = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")
MAX_FRAME_CHARS = 64_000
PING_SECONDS = 25.0
TYPING_MIN_GAP = 0.8
# The agent's list of chats is re-read this often even without events (another process may have changed it).
REFRESH_SECONDS = 5.0
_visitor_permission = Authorize("chat_visitor", "create")
_agent_permission = Authorize("chat_conversation", "read")


async def _refuse(websocket: WebSocket, code: int) -> None:
    # Accept first so the browser sees the reason (4401 token/sign-in, 4403 origin/forbidden).
    await websocket.accept()
    await websocket.close(code=code)


async def _write(app: Any, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work`` in one transaction, retried once when a concurrent duplicate lost on a unique constraint."""
    factory = app.state.session_factory
    for attempt in (1, 2):
        try:
            async with factory() as db:
                bind_bus(db, app.state.event_bus)
                async with db.begin():
                    return await work(db)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class ChatSocket:
    """What both sockets share: a send lock, the events the hub hands it, wake-ups, per-chat cursors."""

    def __init__(self, websocket: WebSocket, hub: ChatHub) -> None:
        self.websocket = websocket
        self.hub = hub
        self.app = websocket.app
        self.settings = websocket.app.state.settings
        self.send_lock = asyncio.Lock()
        self.deliver_lock = asyncio.Lock()  # one writer of message frames and cursors at a time
        self.wake = asyncio.Event()
        self.cursors: dict[int, int] = {}  # conversation id -> last seq sent
        self.public_ids: dict[int, str] = {}  # conversation id -> public id (what frames name)
        self.due: set[int] = set()  # conversations with (perhaps) something past their cursor
        self.last_event = 0.0
        self.last_sent = time.monotonic()

    async def send(self, frame: dict[str, Any]) -> None:
        text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"), default=str)
        async with self.send_lock:
            await self.websocket.send_text(text)
            self.last_sent = time.monotonic()

    async def error(self, code: str, message: str, **extra: Any) -> None:
        await self.send({"type": "error", "code": code, "message": message, **extra})

    def poke(self) -> None:
        self.last_event = time.monotonic()
        self.wake.set()

    async def stored(self, conversation_id: int, seq: Any, message: Any = None) -> None:
        """An event says message ``seq`` of the chat is stored. The next number, carried whole by the event,
        is sent at once; anything else past the cursor makes the chat due (read from the database)."""
        sent = self.cursors.get(conversation_id)
        if sent is None:
            return  # the client has not resumed this chat yet: its resume reads it
        if not isinstance(seq, int) or isinstance(seq, bool):
            self.due.add(conversation_id)
            self.poke()
            return
        if seq <= sent:
            return  # already delivered (a read for an earlier event found it)
        if isinstance(message, dict) and message.get("seq") == seq and conversation_id not in self.due:
            async with self.deliver_lock:
                sent = self.cursors.get(conversation_id)
                if sent is not None and seq <= sent:
                    return
                if sent is not None and seq == sent + 1 and conversation_id not in self.due:
                    public_id = self.public_ids.get(conversation_id)
                    if public_id is None:
                        return
                    await self.send({"type": "message", "conversation": public_id, **message})
                    self.cursors[conversation_id] = seq
                    return
        self.due.add(conversation_id)
        self.poke()

    async def deliver_due(self) -> None:
        """Send every stored message after the cursor of each due chat, in order: one query for all of them
        (more only when a chat has more than a batch to catch up)."""
        if not self.due:
            return
        async with self.deliver_lock:
            due, self.due = self.due, set()
            after = {c: self.cursors[c] for c in due if c in self.cursors}
            while after:
                # Read, then send: a slow client never holds a database connection.
                async with self.app.state.session_factory() as db:
                    batch = await service.messages_after_many(db, after)
                for message, attachment in batch:
                    conversation_id = message.conversation_id
                    public_id = self.public_ids.get(conversation_id)
                    if public_id is None or message.seq <= self.cursors.get(conversation_id, 0):
                        continue
                    await self.send(
                        {"type": "message", "conversation": public_id, **service.message_dict(message, attachment)}
                    )
                    self.cursors[conversation_id] = message.seq
                if len(batch) < service.READ_BATCH:
                    break
                # A full batch: the chats in it may have more (the rest start where they stopped).
                after = {c: self.cursors[c] for c in {m.conversation_id for m, _ in batch} if c in self.cursors}

    async def find_behind(self) -> dict[int, tuple[int, str]]:
        """Every chat whose last number is past what was sent becomes due (one query for all); returns
        ``{conversation id: (last seq, status)}``."""
        watched = list(self.cursors)
        if not watched:
            return {}
        async with self.app.state.session_factory() as db:
            last = await service.last_seqs(db, watched)
        for conversation_id, (last_seq, _status) in last.items():
            if last_seq > self.cursors.get(conversation_id, last_seq):
                self.due.add(conversation_id)
        return last

    async def wait(self) -> bool:
        """Until something happened or it is time to look anyway (quiet since ``chat_poll_seconds``);
        True when it was quiet."""
        timeout = max(0.05, float(self.settings.chat_poll_seconds))
        quiet = False
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=timeout)
        except TimeoutError:
            quiet = True
        self.wake.clear()
        if time.monotonic() - self.last_sent > PING_SECONDS:
            await self.send({"type": "ping"})
        return quiet

    async def frames(self) -> Any:
        """The client's frames as dicts; refuses oversize or malformed ones with an error frame."""
        while True:
            text = await self.websocket.receive_text()
            if len(text) > MAX_FRAME_CHARS:
                await self.error("payload_too_large", f"a frame may have at most {MAX_FRAME_CHARS} characters")
                continue
            try:
                frame = json.loads(text)
            except ValueError:
                await self.error("malformed_json", "a frame must be a JSON object")
                continue
            if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                await self.error("invalid", "a frame must be a JSON object with a type")
                continue
            yield frame

    async def run(self, *tasks: Callable[[], Awaitable[None]]) -> None:
        running = [asyncio.create_task(task()) for task in tasks]
        try:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in running:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, WebSocketDisconnect | RuntimeError):
                        log.warning("chat socket task failed", exc_info=exc)
        finally:
            for task in running:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                    await task


def _seq(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**31:
        return None
    return value


# --- the visitor -----------------------------------------------------------------------------------
class VisitorSocket(ChatSocket):
    def __init__(self, websocket: WebSocket, hub: ChatHub, conv: ChatConversation) -> None:
        super().__init__(websocket, hub)
        self.conv = conv  # as it was at connect: its id and the visitor's name do not change
        self.conv_id = conv.id
        self.public_id = conv.public_id
        self.public_ids[conv.id] = conv.public_id
        self.interaction_id = conv.interaction_id
        self.agent_id = conv.agent_id
        self.status = conv.status
        self.need_sync = True
        self.last_state: dict[str, Any] | None = None
        self.last_position_at = 0.0
        self.typing_sent = 0.0

    async def listen(self, subscription: Any) -> None:
        while True:
            event: Event = await subscription.get()
            data = event.data
            if event.type == ENTRY_EVENT:
                if data.get("interaction_id") == self.interaction_id:
                    self.need_sync = True
                    self.poke()
            elif data.get("conversation") == self.public_id:
                if event.type == service.TYPING_EVENT:
                    if data.get("from") == "agent":
                        await self.send({"type": "typing", "from": "agent", "on": bool(data.get("on"))})
                elif event.type == service.MESSAGE_EVENT:
                    await self.stored(self.conv_id, data.get("seq"), data.get("message"))
                elif event.type == service.STATE_EVENT:
                    self.need_sync = True
                    self.due.add(self.conv_id)  # the closing note, the agent's greeting
                    self.poke()

    async def refresh_state(self) -> None:
        now = time.monotonic()
        due = self.status == ConversationStatus.waiting and now - self.last_position_at >= float(
            self.settings.chat_position_seconds
        )
        if not (self.need_sync or due):
            return
        self.need_sync = False
        self.last_position_at = now

        async def work(db: AsyncSession) -> dict[str, Any]:
            conv = await service.sync(db, self.settings, self.conv_id)
            assert conv is not None
            frame: dict[str, Any] = {"type": "state", "status": conv.status, "reason": conv.closed_reason}
            place = await service.position(db, conv)
            if place is not None:
                frame.update(place)
            if conv.interaction_id != self.interaction_id:  # sent back to the queue: a new contact
                self.hub.unwatch(self, "interaction", self.interaction_id)
                self.hub.watch(self, "interaction", conv.interaction_id)
            self.interaction_id, self.agent_id, self.status = conv.interaction_id, conv.agent_id, conv.status
            return frame

        frame = await _write(self.app, work)
        if frame != self.last_state:
            self.last_state = frame
            await self.send(frame)

    async def pump(self) -> None:
        while True:
            await self.deliver_due()
            await self.refresh_state()
            if await self.wait() and self.conv_id in self.cursors:
                self.due.add(self.conv_id)  # quiet: look anyway (a lost event delays, never loses)

    async def receive(self) -> None:
        async for frame in self.frames():
            kind = frame["type"]
            if kind == "resume":
                after = _seq(frame.get("after_seq", 0))
                if after is None:
                    await self.error("invalid", "after_seq must be a whole number >= 0", field="after_seq")
                    continue
                self.cursors[self.conv_id] = after
                self.due.add(self.conv_id)
                self.need_sync = True
                self.poke()
            elif kind == "message":
                await self.on_message(frame)
            elif kind == "typing":
                moment = time.monotonic()
                on = bool(frame.get("on"))
                if on and moment - self.typing_sent < TYPING_MIN_GAP:
                    continue
                self.typing_sent = moment if on else 0.0
                async with self.app.state.session_factory() as db:
                    conv = await db.get(ChatConversation, self.conv_id)
                if conv is not None and conv.agent_id is not None:
                    await self.app.state.event_bus.publish(service.typing_event(conv, "visitor", on))
            elif kind == "ping":
                await self.send({"type": "pong"})
            else:
                await self.error("invalid", f"unknown frame type {kind[:32]!r}")

    async def on_message(self, frame: dict[str, Any]) -> None:
        client_id = frame.get("client_msg_id")
        text = frame.get("text")
        if client_id is not None and (
            not isinstance(client_id, str) or not 1 <= len(client_id) <= 64 or not client_id.isascii()
        ):
            await self.error("invalid", "client_msg_id: 1 to 64 ASCII characters", field="client_msg_id")
            return
        if not isinstance(text, str):
            await self.error("invalid", "text must be a string", field="text", client_msg_id=client_id)
            return

        async def work(db: AsyncSession) -> tuple[int, bool]:
            # A chat that ended meanwhile refuses the message (post_message checks the status it writes).
            message, created = await service.visitor_message(db, self.settings, self.conv, text, client_id)
            return message.seq, created

        try:
            from kefu.core.schemas import multi_line

            multi_line(text)
            seq, created = await _write(self.app, work)
        except ApiError as exc:
            await self.error(exc.code, exc.message, details=exc.details, client_msg_id=client_id)
            return
        except ValueError as exc:
            await self.error("invalid", str(exc), field="text", client_msg_id=client_id)
            return
        await self.send({"type": "ack", "client_msg_id": client_id, "seq": seq, "created": created})


@router.websocket("/chat/ws/{public_id}")
async def visitor_socket(websocket: WebSocket, public_id: str) -> None:
    """The visitor's live chat; the token given when the chat started proves it is theirs."""
    app = websocket.app
    if not service.origin_allowed(app.state.settings, websocket.headers.get("origin")):
        await _refuse(websocket, 4403)
        return
    try:
        async with app.state.session_factory() as db:
            conv = await service.by_token(db, public_id[:64], websocket.query_params.get("token", ""))
    except NotFound:
        await _refuse(websocket, 4401)
        return
    hub = hub_of(app)
    session = VisitorSocket(websocket, hub, conv)
    inbox = hub.join(session)
    hub.watch(session, "conversation", conv.id)
    hub.watch(session, "interaction", conv.interaction_id)
    await websocket.accept()
    try:
        await session.send(
            {"type": "hello", "conversation": conv.public_id, "status": conv.status, "last_seq": conv.last_seq}
        )
        await session.run(lambda: session.listen(inbox), session.pump, session.receive)
    finally:
        hub.leave(session)


visitor_socket.__kefu_permission__ = _visitor_permission  # type: ignore[attr-defined]


# --- the agent -------------------------------------------------------------------------------------
class AgentSocket(ChatSocket):
    def __init__(self, websocket: WebSocket, hub: ChatHub, user_id: int) -> None:
        super().__init__(websocket, hub)
        self.user_id = user_id
        self.chats: dict[str, int] = {}  # public id -> conversation id (the agent's open chats)
        self.listed: list[dict[str, Any]] | None = None
        self.refresh = True
        self.refreshed_at = 0.0
        self.sync_interactions: set[int] = set()

    async def listen(self, subscription: Any) -> None:
        while True:
            event: Event = await subscription.get()
            data = event.data
            if event.type == ENTRY_EVENT:
                if data.get("what") == "answered" and data.get("agent_id") == self.user_id:
                    self.sync_interactions.add(int(data.get("interaction_id") or 0))
                    self.refresh = True
                    self.poke()
                continue
            public_id = data.get("conversation")
            if not isinstance(public_id, str):
                continue
            mine = public_id in self.chats
            if event.type == service.TYPING_EVENT:
                if mine and data.get("from") == "visitor":
                    await self.send(
                        {"type": "typing", "conversation": public_id, "from": "visitor", "on": bool(data.get("on"))}
                    )
            elif event.type == service.STATE_EVENT:
                if mine or self.user_id in event.user_ids:
                    self.refresh = True
                    if mine:
                        await self.send(
                            {
                                "type": "state",
                                "conversation": public_id,
                                "status": data.get("status"),
                                "reason": data.get("reason"),
                            }
                        )
                        self.due.add(self.chats[public_id])  # the closing (or greeting) note
                    self.poke()
            elif event.type == service.MESSAGE_EVENT and mine:
                await self.stored(self.chats[public_id], data.get("seq"), data.get("message"))

    async def refresh_list(self) -> None:
        if self.sync_interactions:
            pending, self.sync_interactions = self.sync_interactions, set()
            for interaction_id in pending:
                await _write(self.app, lambda db, i=interaction_id: _sync_interaction(db, self.settings, i))
        if not self.refresh and time.monotonic() - self.refreshed_at < REFRESH_SECONDS:
            return
        self.refresh = False
        self.refreshed_at = time.monotonic()

        async def work(db: AsyncSession) -> list[ChatConversation]:
            await service.settle_for_agent(db, self.settings, self.user_id)
            return await service.open_for_agent(db, self.user_id)

        convs = await _write(self.app, work)
        items = [
            {
                "id": c.id,
                "public_id": c.public_id,
                "interaction_id": c.interaction_id,
                "visitor_name": c.visitor_name,
                "visitor_email": c.visitor_email,
                "visitor_phone": c.visitor_phone,
                "status": c.status,
                "last_seq": c.last_seq,
            }
            for c in convs
        ]
        # Chats that left stay delivered until their last message (the closing note) is out.
        for c in convs:
            if c.public_id not in self.chats:
                self.hub.watch(self, "conversation", c.id)
            self.chats[c.public_id] = c.id
            self.public_ids[c.id] = c.public_id
        if items != self.listed:
            self.listed = items
            await self.send({"type": "conversations", "items": items})

    async def pump(self) -> None:
        behind = False
        while True:
            await self.refresh_list()
            if behind:
                self.forget_done(await self.find_behind())
            await self.deliver_due()
            behind = await self.wait()

    def forget_done(self, last: dict[int, tuple[int, str]]) -> None:
        """Chats that ended and whose every message is out are no longer watched."""
        listed = {item["id"] for item in self.listed or ()}
        for conversation_id, (last_seq, status) in last.items():
            if (
                status == ConversationStatus.closed
                and conversation_id not in listed
                and conversation_id not in self.due
                and self.cursors.get(conversation_id, 0) >= last_seq
            ):
                self.cursors.pop(conversation_id, None)
                self.hub.unwatch(self, "conversation", conversation_id)
                public_id = self.public_ids.pop(conversation_id, None)
                if public_id is not None:
                    self.chats.pop(public_id, None)

    async def heartbeat(self) -> None:
        while True:
            await _write(self.app, lambda db: service.touch_agent(db, self.user_id))
            await asyncio.sleep(max(0.05, float(self.settings.chat_heartbeat_seconds)))

    async def receive(self) -> None:
        async for frame in self.frames():
            kind = frame["type"]
            if kind == "resume":
                after = frame.get("after")
                if not isinstance(after, dict):
                    await self.error("invalid", "after must map chats to sequence numbers", field="after")
                    continue
                for public_id, value in after.items():
                    seq = _seq(value)
                    conv_id = self.chats.get(public_id)
                    if seq is None or conv_id is None:
                        await self.error(
                            "invalid",
                            "not one of your chats, or not a sequence number",
                            conversation=str(public_id)[:32],
                        )
                        continue
                    self.cursors[conv_id] = seq
                    self.due.add(conv_id)
                self.poke()
            elif kind == "typing":
                public_id = frame.get("conversation")
                conv_id = self.chats.get(public_id) if isinstance(public_id, str) else None
                if conv_id is None:
                    continue
                async with self.app.state.session_factory() as db:
                    conv = await db.get(ChatConversation, conv_id)
                if conv is not None and conv.status != ConversationStatus.closed:
                    await self.app.state.event_bus.publish(service.typing_event(conv, "agent", bool(frame.get("on"))))
            elif kind == "ping":
                await self.send({"type": "pong"})
            else:
                await self.error("invalid", f"unknown frame type {kind[:32]!r}")


async def _sync_interaction(db: AsyncSession, settings: Any, interaction_id: int) -> None:
    from sqlalchemy import select

    conv_id = await db.scalar(select(ChatConversation.id).where(ChatConversation.interaction_id == interaction_id))
    if conv_id is not None:
        await service.sync(db, settings, conv_id)


@router.websocket("/chat/agent/ws")
async def agent_socket(websocket: WebSocket) -> None:
    """The desk's chat connection: the agent's chats live, and the proof that the agent is there."""
    from kefu.core.auth import resolve_principal
    from kefu.core.policy import check

    settings = websocket.app.state.settings
    origin = websocket.headers.get("origin")
    host = websocket.headers.get("host", "")
    if origin and origin.rstrip("/") not in {settings.base_url, f"http://{host}", f"https://{host}"}:
        await _refuse(websocket, 4403)
        return
    try:
        principal = await resolve_principal(websocket)  # type: ignore[arg-type]
        check(principal, _agent_permission.obj, _agent_permission.action)
    except ApiError as exc:
        await _refuse(websocket, 4401 if exc.status == 401 else 4403)
        return
    assert principal.user_id is not None
    hub = hub_of(websocket.app)
    session = AgentSocket(websocket, hub, principal.user_id)
    inbox = hub.join(session)
    hub.watch(session, "agent", principal.user_id)
    await websocket.accept()
    try:
        await session.send({"type": "hello", "user_id": principal.user_id})
        await session.run(lambda: session.listen(inbox), session.pump, session.receive, session.heartbeat)
    finally:
        hub.leave(session)


agent_socket.__kefu_permission__ = _agent_permission  # type: ignore[attr-defined]
