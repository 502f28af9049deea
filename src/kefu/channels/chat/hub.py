"""One event-bus subscription per process for all of its chat sockets.

Every socket subscribing to the bus itself would make each event wake every socket of the process (two
hundred open chats: two hundred tasks woken per message, to find out it is not theirs). The hub reads the
bus once and hands each event only to the sockets it concerns: by conversation (messages, state, typing),
by interaction (routing's entry events for a waiting visitor) and by agent (a chat just accepted, a chat
taken away). A socket's inbox is bounded like a bus subscription: a slow socket loses its oldest events,
which only say "look now"; the socket's quiet-time check still finds every message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

from kefu.channels.chat.service import MESSAGE_EVENT, STATE_EVENT, TYPING_EVENT
from kefu.core.events import Event

log = logging.getLogger(__name__)
INBOX_SIZE = 1000
CHAT_EVENTS = (MESSAGE_EVENT, STATE_EVENT, TYPING_EVENT)


class Inbox:
    """A socket's events, oldest dropped first when it falls behind."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=INBOX_SIZE)

    def put(self, event: Event) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()


class ChatHub:
    def __init__(self, bus: Any, entry_event: str) -> None:
        self.bus = bus
        self.entry_event = entry_event
        self.inboxes: dict[int, Inbox] = {}  # id(socket) -> its inbox
        self.keys: dict[int, set[tuple[str, int]]] = {}  # id(socket) -> what it watches
        self.watchers: defaultdict[tuple[str, int], set[int]] = defaultdict(set)  # key -> sockets
        self._subscription: Any = None
        self._task: asyncio.Task[None] | None = None

    # --- sockets -----------------------------------------------------------------------------------
    def join(self, socket: object) -> Inbox:
        self._start()
        inbox = self.inboxes[id(socket)] = Inbox()
        self.keys[id(socket)] = set()
        return inbox

    def leave(self, socket: object) -> None:
        for key in self.keys.pop(id(socket), set()):
            self._drop(key, id(socket))
        self.inboxes.pop(id(socket), None)

    def watch(self, socket: object, kind: str, value: int | None) -> None:
        """``kind``: "conversation", "interaction" or "agent"."""
        if value is None or id(socket) not in self.keys:
            return
        key = (kind, int(value))
        self.keys[id(socket)].add(key)
        self.watchers[key].add(id(socket))

    def unwatch(self, socket: object, kind: str, value: int | None) -> None:
        if value is None:
            return
        key = (kind, int(value))
        self.keys.get(id(socket), set()).discard(key)
        self._drop(key, id(socket))

    def _drop(self, key: tuple[str, int], socket_id: int) -> None:
        found = self.watchers.get(key)
        if found is not None:
            found.discard(socket_id)
            if not found:
                del self.watchers[key]

    # --- events ------------------------------------------------------------------------------------
    def targets(self, event: Event) -> set[int]:
        data = event.data
        found: set[int] = set()

        def add(kind: str, value: Any) -> None:
            if isinstance(value, int) and not isinstance(value, bool):
                found.update(self.watchers.get((kind, value), ()))

        if event.type == self.entry_event:
            add("interaction", data.get("interaction_id"))
            add("agent", data.get("agent_id"))
        elif event.type in CHAT_EVENTS:
            add("conversation", data.get("conversation_id"))
            if event.type == STATE_EVENT:
                for user_id in event.user_ids or ():
                    add("agent", user_id)
        return found

    def dispatch(self, event: Event) -> None:
        for socket_id in self.targets(event):
            inbox = self.inboxes.get(socket_id)
            if inbox is not None:
                inbox.put(event)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._subscription = self.bus.subscribe()
            self._task = asyncio.create_task(self._run(self._subscription), name="kefu-chat-hub")

    async def _run(self, subscription: Any) -> None:
        while True:
            event = await subscription.get()
            try:
                self.dispatch(event)
            except Exception:  # noqa: BLE001 - one odd event must not stop every chat of the process
                log.exception("chat event not dispatched")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None


def hub_of(app: Any) -> ChatHub:
    """The app's hub, made on first use (the sockets may open before or without the chat sweep)."""
    from kefu.routing.service import ENTRY_EVENT

    hub = getattr(app.state, "chat_hub", None)
    if hub is None:
        hub = app.state.chat_hub = ChatHub(app.state.event_bus, ENTRY_EVENT)
    return hub
