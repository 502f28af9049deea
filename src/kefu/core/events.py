"""Event bus: domain events to the browsers of the users they concern, across every app process.

``InProcessBus`` serves one process (the embedded SQLite default). ``PostgresBus`` uses
LISTEN/NOTIFY and ``RedisBus`` Redis pub/sub, so an event published by any process reaches the
WebSocket clients of every process. Each bus fans an incoming event out to local subscribers.

Events are notifications, not documents: keep them small (ids and a few fields; at most
``MAX_PAYLOAD_BYTES``) and let the receiver fetch the rest through the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from kefu.db.base import utcnow

log = logging.getLogger(__name__)

PG_CHANNEL = "kefu_events"
REDIS_CHANNEL = "kefu:events"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7500
SUBSCRIBER_QUEUE_SIZE = 1000


@dataclass(frozen=True)
class Event:
    """``user_ids`` and ``roles`` name the audience; an event with neither goes to nobody."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    user_ids: tuple[int, ...] = ()
    roles: tuple[str, ...] = ()
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    at: str = field(default_factory=lambda: utcnow().isoformat())

    def to_json(self) -> str:
        # A plain dict, not dataclasses.asdict: that deep-copies ``data``, and every routing decision
        # serializes its events (once to check the size when queued, once when published).
        fields = {
            "type": self.type,
            "data": self.data,
            "user_ids": self.user_ids,
            "roles": self.roles,
            "id": self.id,
            "at": self.at,
        }
        text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        if len(text.encode()) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"event {self.type!r} is larger than {MAX_PAYLOAD_BYTES} bytes")
        return text

    @classmethod
    def from_json(cls, text: str) -> Event:
        raw = json.loads(text)
        return cls(
            type=raw["type"],
            data=raw.get("data") or {},
            user_ids=tuple(raw.get("user_ids") or ()),
            roles=tuple(raw.get("roles") or ()),
            id=raw["id"],
            at=raw["at"],
        )

    def concerns(self, user_id: int, roles: frozenset[str]) -> bool:
        return user_id in self.user_ids or bool(roles.intersection(self.roles))


class EventBus(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, event: Event) -> None: ...
    def subscribe(self) -> Subscription: ...


class Subscription:
    """One local listener (a WebSocket). A slow one loses its oldest events, never blocks others."""

    def __init__(self, hub: _LocalHub) -> None:
        self._hub = hub
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE_SIZE)

    def put(self, event: Event) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._hub.subscribers.discard(self)


class _LocalHub:
    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self.subscribers.add(sub)
        return sub

    def deliver(self, event: Event) -> None:
        for sub in list(self.subscribers):
            sub.put(event)

    def deliver_raw(self, payload: str) -> None:
        try:
            event = Event.from_json(payload)
        except (ValueError, KeyError, TypeError):
            log.warning("dropped a malformed event payload")
            return
        self.deliver(event)


class InProcessBus:
    def __init__(self) -> None:
        self._hub = _LocalHub()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(self, event: Event) -> None:
        event.to_json()  # same size rule as the cross-process buses
        self._hub.deliver(event)

    def subscribe(self) -> Subscription:
        return self._hub.subscribe()


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class PostgresBus:
    """LISTEN on one dedicated connection; NOTIFY through another. Reconnects when the server returns."""

    def __init__(self, database_url: str, *, reconnect_seconds: float = 1.0) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._hub = _LocalHub()
        self._reconnect_seconds = reconnect_seconds
        self._listener: Any = None
        self._publisher: Any = None
        self._outbox: list[tuple[str, asyncio.Future[None]]] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="kefu-pg-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), timeout=10)

    async def _listen_forever(self) -> None:
        import asyncpg

        while True:
            try:
                self._listener = await asyncpg.connect(self._dsn)
                closed = asyncio.Event()
                self._listener.add_termination_listener(lambda _conn, ev=closed: ev.set())
                await self._listener.add_listener(PG_CHANNEL, self._on_notify)
                self.listening.set()
                await closed.wait()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - server away: retry until it returns
                log.warning("event listener lost its PostgreSQL connection; retrying")
            self.listening.clear()
            await asyncio.sleep(self._reconnect_seconds)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._hub.deliver_raw(payload)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for conn in (self._listener, self._publisher):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def publish(self, event: Event) -> None:
        """Queue the event and wait until it is sent. Events that queue up while a send is in flight
        go together in the next round trip, so a busy process does not wait in line one by one."""
        waiter = asyncio.get_running_loop().create_future()
        self._outbox.append((event.to_json(), waiter))
        if not self._flushing:
            self._flushing = True
            task = asyncio.create_task(self._flush(), name="kefu-pg-notify")
            _publishing.add(task)
            task.add_done_callback(_publishing.discard)
        await waiter

    async def _flush(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                try:
                    await self._send([payload for payload, _ in batch])
                except Exception as exc:  # noqa: BLE001 - handed to every waiter of the batch
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                else:
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            # No await between the empty check above and this: a publish() arriving now starts a new flush.
            self._flushing = False

    async def _send(self, payloads: list[str]) -> None:
        import asyncpg

        for attempt in (1, 2):
            try:
                if self._publisher is None or self._publisher.is_closed():
                    self._publisher = await asyncpg.connect(self._dsn)
                # One statement, one round trip; NOTIFYs of one transaction are delivered in order.
                await self._publisher.execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n",
                    PG_CHANNEL,
                    payloads,
                )
                return
            except (
                OSError,
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                asyncpg.exceptions.InternalClientError,
            ):
                # A connection killed under us may surface as any of these (the last when the
                # protocol is caught mid-operation): drop it, retry once on a fresh one.
                broken, self._publisher = self._publisher, None
                if broken is not None:
                    broken.terminate()
                if attempt == 2:
                    raise

    def subscribe(self) -> Subscription:
        return self._hub.subscribe()


class RedisBus:
    def __init__(self, redis_url: str) -> None:
        self._url = redis_url
        self._hub = _LocalHub()
        self._redis: Any = None
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self._url, decode_responses=True)
        self._task = asyncio.create_task(self._listen_forever(), name="kefu-redis-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), timeout=10)

    async def _listen_forever(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(REDIS_CHANNEL)
                self.listening.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._hub.deliver_raw(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis away: retry until it returns
                log.warning("event listener lost Redis; retrying")
            self.listening.clear()
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            await self._redis.aclose()

    async def publish(self, event: Event) -> None:
        await self._redis.publish(REDIS_CHANNEL, event.to_json())

    def subscribe(self) -> Subscription:
        return self._hub.subscribe()


def make_bus(backend: str, *, database_url: str, redis_url: str) -> EventBus:
    if backend == "auto":
        if database_url.startswith("postgresql"):
            backend = "postgres"
        elif redis_url:
            backend = "redis"
        else:
            backend = "inprocess"
    if backend == "postgres":
        return PostgresBus(database_url)
    if backend == "redis":
        if not redis_url:
            raise ValueError("KEFU_EVENT_BACKEND=redis needs KEFU_REDIS_URL")
        return RedisBus(redis_url)
    return InProcessBus()


# --- publish when the transaction commits -------------------------------------------------------
_PENDING = "kefu_pending_events"
_BUS = "kefu_event_bus"


def bind_bus(session: AsyncSession, bus: EventBus) -> None:
    session.sync_session.info[_BUS] = bus


def session_info_for(bus: EventBus | None) -> dict[str, Any]:
    """The ``info`` a session factory gives each session so its events reach ``bus`` (none: dropped)."""
    return {_BUS: bus} if bus is not None else {}


def publish_on_commit(session: AsyncSession, event: Event) -> None:
    """Queue ``event``; it is published only if and after the session's outermost transaction commits.

    Savepoints count: releasing one publishes nothing yet, and rolling one back drops the events
    queued inside it (but not those queued before it).
    """
    event.to_json()  # fail now, in the request, rather than after the commit
    sync_session = session.sync_session
    savepoints: list[SessionTransaction] = []
    nested = sync_session.get_nested_transaction()
    while nested is not None:
        if nested.nested:
            savepoints.append(nested)
        nested = nested.parent
    sync_session.info.setdefault(_PENDING, []).append((event, tuple(savepoints)))


def queued_events(sync_session: Session) -> list[Event]:
    """The events ``publish_on_commit`` queued in this session's transaction so far (for a
    ``before_commit`` hook that turns some of them into rows of the same transaction)."""
    return [event for event, _savepoints in sync_session.info.get(_PENDING, [])]


@sa_event.listens_for(Session, "after_commit")
def _publish_pending(sync_session: Session) -> None:
    if sync_session.get_nested_transaction() is not None:
        return  # a savepoint was released (this hook fires for those too); the real commit comes later
    pending = sync_session.info.pop(_PENDING, [])
    bus = sync_session.info.get(_BUS)
    if not pending or bus is None:
        return
    loop = asyncio.get_running_loop()
    for ev, _savepoints in pending:
        task = loop.create_task(bus.publish(ev))
        _publishing.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(_publish_done)


@sa_event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(sync_session: Session, previous_transaction: SessionTransaction) -> None:
    if not previous_transaction.nested:
        sync_session.info.pop(_PENDING, None)
        return
    # Only the savepoint's own events go; the enclosing transaction may still commit.
    pending = sync_session.info.get(_PENDING)
    if pending:
        pending[:] = [item for item in pending if previous_transaction not in item[1]]


@sa_event.listens_for(Session, "after_transaction_end")
def _forget_pending(sync_session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended without a commit (e.g. the session was closed): drop the rest.
    if transaction.parent is None:
        sync_session.info.pop(_PENDING, None)


_publishing: set[asyncio.Task[None]] = set()


def _publish_done(task: asyncio.Task[None]) -> None:
    _publishing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("event publish failed", exc_info=task.exception())
