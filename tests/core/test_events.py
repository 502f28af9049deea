"""The event bus: audience filtering, size limit, fan-out, publish-on-commit (savepoints included), and the
cross-process buses (PostgreSQL LISTEN/NOTIFY, Redis pub/sub) with real servers, including a reconnect
after the listener's PostgreSQL backend is killed."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import text

from conftest import is_postgres
from kefu.core.events import (
    MAX_PAYLOAD_BYTES,
    SUBSCRIBER_QUEUE_SIZE,
    Event,
    InProcessBus,
    PostgresBus,
    RedisBus,
    Subscription,
    asyncpg_dsn,
    bind_bus,
    make_bus,
    publish_on_commit,
)

WAIT = 10.0  # generous: only ever waited for something that should come, never measured
REDIS_URL = os.environ.get("KEFU_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
postgres_only = pytest.mark.skipif(not is_postgres(), reason="needs the PostgreSQL backend")


async def next_event(sub: Subscription, match: Callable[[Event], bool] = lambda _e: True) -> Event:
    """The next event on ``sub`` that ``match``es (other tests may publish on the same channel)."""

    async def wait() -> Event:
        while True:
            event = await sub.get()
            if match(event):
                return event

    return await asyncio.wait_for(wait(), timeout=WAIT)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# --- Event ---------------------------------------------------------------------------------------
def test_audience_by_user_id_and_role() -> None:
    to_user = Event("ticket.assigned", {"ticket_id": 7}, user_ids=(5,))
    to_role = Event("queue.changed", roles=("supervisor", "admin"))
    nobody = Event("orphan")
    assert to_user.concerns(5, frozenset())
    assert not to_user.concerns(6, frozenset({"agent"}))
    assert to_role.concerns(6, frozenset({"agent", "supervisor"}))
    assert not to_role.concerns(6, frozenset({"agent"}))
    assert not nobody.concerns(5, frozenset({"admin"}))


def test_json_round_trip_and_size_limit() -> None:
    event = Event("article.published", {"title": "退货政策", "id": 3}, user_ids=(1, 2), roles=("agent",))
    assert Event.from_json(event.to_json()) == event
    assert "退货政策" in event.to_json()  # not \u-escaped: the limit counts real bytes
    # 3000 characters but 9000 UTF-8 bytes: the limit is in bytes (PostgreSQL NOTIFY refuses >= 8000).
    too_big = Event("x", {"text": "客" * 3000}, user_ids=(1,))
    assert 3000 < MAX_PAYLOAD_BYTES < 9000
    with pytest.raises(ValueError, match="larger than"):
        too_big.to_json()
    Event("x", {"text": "a" * (MAX_PAYLOAD_BYTES - 200)}).to_json()  # just under: fine


async def test_malformed_payload_from_the_wire_is_dropped() -> None:
    bus = InProcessBus()
    sub = bus.subscribe()
    bus._hub.deliver_raw("{not json")
    bus._hub.deliver_raw('{"type": "no id"}')
    bus._hub.deliver_raw(Event("ok", user_ids=(1,)).to_json())
    assert (await next_event(sub)).type == "ok"


# --- InProcessBus --------------------------------------------------------------------------------
async def test_inprocess_fans_out_to_every_subscriber() -> None:
    bus = InProcessBus()
    await bus.start()
    first, second = bus.subscribe(), bus.subscribe()
    event = Event("ticket.updated", {"ticket_id": 1}, user_ids=(9,))
    await bus.publish(event)
    assert await next_event(first) == event
    assert await next_event(second) == event
    second.close()
    later = Event("ticket.updated", {"ticket_id": 2}, user_ids=(9,))
    await bus.publish(later)
    assert await next_event(first) == later
    assert second.queue.empty()  # a closed subscription gets nothing more
    with pytest.raises(ValueError):
        await bus.publish(Event("x", {"text": "客" * 3000}))
    await bus.stop()


async def test_slow_subscriber_loses_its_oldest_events_only() -> None:
    bus = InProcessBus()
    slow, fast = bus.subscribe(), bus.subscribe()
    total = SUBSCRIBER_QUEUE_SIZE + 5
    received: list[int] = []
    for n in range(total):
        await bus.publish(Event("tick", {"n": n}, user_ids=(1,)))
        received.append((await fast.get()).data["n"])  # a reader that keeps up loses nothing
    assert received == list(range(total))
    assert slow.queue.qsize() == SUBSCRIBER_QUEUE_SIZE
    assert (await slow.get()).data["n"] == 5  # the 5 oldest were dropped, publishing never blocked


def test_make_bus_chooses_the_backend() -> None:
    assert isinstance(make_bus("auto", database_url="sqlite+aiosqlite:///x.db", redis_url=""), InProcessBus)
    assert isinstance(make_bus("auto", database_url="sqlite+aiosqlite:///x.db", redis_url=REDIS_URL), RedisBus)
    pg = "postgresql+asyncpg://postgres@127.0.0.1:5432/x"
    assert isinstance(make_bus("auto", database_url=pg, redis_url=REDIS_URL), PostgresBus)
    assert isinstance(make_bus("inprocess", database_url=pg, redis_url=""), InProcessBus)
    with pytest.raises(ValueError, match="KEFU_REDIS_URL"):
        make_bus("redis", database_url=pg, redis_url="")


# --- publish_on_commit ---------------------------------------------------------------------------
@pytest.fixture
async def bound(db_factory) -> AsyncIterator[tuple]:  # noqa: ANN001
    """A real database session bound to a fresh in-process bus, and a subscription to that bus."""
    bus = InProcessBus()
    sub = bus.subscribe()
    async with db_factory() as session:
        bind_bus(session, bus)
        yield session, sub


async def assert_next_is(sub: Subscription, session, expected: str) -> None:  # noqa: ANN001
    """Publishes a sentinel in a committed transaction and checks that ``expected`` (or the sentinel
    itself) is the next thing on ``sub``: proves that nothing else was published before it, with no
    sleeping or timing."""
    async with session.begin():
        publish_on_commit(session, Event("sentinel", user_ids=(1,)))
    assert (await next_event(sub)).type == expected
    if expected != "sentinel":
        assert (await next_event(sub)).type == "sentinel"


async def test_published_after_commit_only(bound) -> None:  # noqa: ANN001
    session, sub = bound
    async with session.begin():
        await session.execute(text("SELECT 1"))
        publish_on_commit(session, Event("committed", user_ids=(1,)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert sub.queue.empty()  # not before the commit
    assert (await next_event(sub)).type == "committed"


async def test_dropped_on_rollback(bound) -> None:  # noqa: ANN001
    session, sub = bound
    with pytest.raises(RuntimeError):
        async with session.begin():
            await session.execute(text("SELECT 1"))
            publish_on_commit(session, Event("rolled-back", user_ids=(1,)))
            raise RuntimeError("the change failed")
    await assert_next_is(sub, session, "sentinel")


async def test_too_big_event_fails_in_the_request_not_after_commit(bound) -> None:  # noqa: ANN001
    session, _sub = bound
    async with session.begin():
        with pytest.raises(ValueError):
            publish_on_commit(session, Event("x", {"text": "客" * 3000}, user_ids=(1,)))


async def test_savepoints(bound) -> None:  # noqa: ANN001
    """Releasing a savepoint is not the commit; rolling one back drops only the events queued in it."""
    session, sub = bound
    # A released savepoint publishes nothing: the outer transaction then rolls back.
    with pytest.raises(RuntimeError):
        async with session.begin():
            publish_on_commit(session, Event("before-savepoint", user_ids=(1,)))
            async with session.begin_nested():
                publish_on_commit(session, Event("in-savepoint", user_ids=(1,)))
            raise RuntimeError
    await assert_next_is(sub, session, "sentinel")

    # A rolled-back savepoint drops its own events, not the enclosing transaction's.
    async with session.begin():
        publish_on_commit(session, Event("outer", user_ids=(1,)))
        with pytest.raises(RuntimeError):
            async with session.begin_nested():
                publish_on_commit(session, Event("inner", user_ids=(1,)))
                raise RuntimeError
        async with session.begin_nested():
            publish_on_commit(session, Event("released", user_ids=(1,)))
            async with session.begin_nested():
                publish_on_commit(session, Event("deeper", user_ids=(1,)))
    assert [(await next_event(sub)).type for _ in range(3)] == ["outer", "released", "deeper"]
    await assert_next_is(sub, session, "sentinel")


async def test_session_closed_without_commit_publishes_nothing(db_factory) -> None:  # noqa: ANN001
    bus = InProcessBus()
    sub = bus.subscribe()
    async with db_factory() as session:
        bind_bus(session, bus)
        await session.execute(text("SELECT 1"))  # autobegins; never committed
        publish_on_commit(session, Event("abandoned", user_ids=(1,)))
    async with db_factory() as session:
        bind_bus(session, bus)
        await assert_next_is(sub, session, "sentinel")


# --- PostgreSQL LISTEN/NOTIFY --------------------------------------------------------------------
@postgres_only
async def test_postgres_bus_delivers_across_instances(database_url: str) -> None:
    a, b = PostgresBus(database_url), PostgresBus(database_url)
    await a.start()
    await b.start()
    try:
        assert a.listening.is_set() and b.listening.is_set()
        on_a, on_b = a.subscribe(), b.subscribe()
        event = Event("ticket.assigned", {"ticket_id": 42, "title": "退款"}, user_ids=(3,), roles=("agent",))
        await b.publish(event)
        # Each instance has its own connections, exactly like two app processes.
        assert await next_event(on_a, lambda e: e.id == event.id) == event
        assert await next_event(on_b, lambda e: e.id == event.id) == event  # the publisher hears it too
        # The largest allowed payload passes through NOTIFY.
        big = Event("big", {"text": "a" * (MAX_PAYLOAD_BYTES - 200)}, user_ids=(3,))
        await a.publish(big)
        assert await next_event(on_b, lambda e: e.id == big.id) == big
    finally:
        await a.stop()
        await b.stop()


@postgres_only
async def test_postgres_bus_sends_concurrent_events_together_and_in_order(database_url: str) -> None:
    a, b = PostgresBus(database_url), PostgresBus(database_url)
    await a.start()
    await b.start()
    try:
        on_a = a.subscribe()
        events = [Event("burst", {"n": n}, user_ids=(1,)) for n in range(300)]
        # Published at once, as after a burst of commits: they share round trips, none is lost.
        await asyncio.gather(*(b.publish(e) for e in events))
        received = [await next_event(on_a, lambda e: e.type == "burst") for _ in events]
        assert [e.data["n"] for e in received] == list(range(300))
    finally:
        await a.stop()
        await b.stop()


@postgres_only
async def test_postgres_bus_recovers_when_its_connections_are_killed(database_url: str) -> None:
    import asyncpg

    listener = PostgresBus(database_url, reconnect_seconds=0.1)
    publisher = PostgresBus(database_url)
    await listener.start()
    await publisher.start()
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        sub = listener.subscribe()
        first = Event("before", user_ids=(1,))
        await publisher.publish(first)
        assert await next_event(sub, lambda e: e.id == first.id) == first

        # Kill the LISTEN connection's backend, as a database restart or failover would.
        old_pid = listener._listener.get_server_pid()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        await wait_until(
            lambda: listener.listening.is_set() and listener._listener.get_server_pid() != old_pid,
            "the listener to reconnect",
        )
        after = Event("after-reconnect", user_ids=(1,))
        await publisher.publish(after)
        assert await next_event(sub, lambda e: e.id == after.id) == after

        # Kill the publishing connection's backend: the next publish reconnects by itself.
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", publisher._publisher.get_server_pid())
        again = Event("publisher-reconnected", user_ids=(1,))
        await publisher.publish(again)
        assert await next_event(sub, lambda e: e.id == again.id) == again
    finally:
        await admin.close()
        await listener.stop()
        await publisher.stop()


# --- Redis pub/sub -------------------------------------------------------------------------------
async def _redis_reachable() -> bool:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


async def test_redis_bus_delivers_across_instances() -> None:
    if not await _redis_reachable():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    a, b = RedisBus(REDIS_URL), RedisBus(REDIS_URL)
    await a.start()
    await b.start()
    try:
        assert a.listening.is_set() and b.listening.is_set()
        on_a, on_b = a.subscribe(), b.subscribe()
        event = Event("chat.message", {"conversation_id": 8, "text": "您好"}, user_ids=(4,))
        await b.publish(event)
        # The channel is shared by every kefu on this Redis: wait for our event by its id.
        assert await next_event(on_a, lambda e: e.id == event.id) == event
        assert await next_event(on_b, lambda e: e.id == event.id) == event
    finally:
        await a.stop()
        await b.stop()
