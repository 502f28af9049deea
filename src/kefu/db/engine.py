"""Engine and session factory. SQLite gets WAL, a busy timeout and foreign keys on every connection."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 15_000
# A pooled connection idle longer than this is pinged before use, so the app recovers by itself after the
# database restarts or a network cut; one in use moments ago is not (a ping is a round trip, and on busy
# paths such as routing decisions it was a sixth of them). If the database goes away between two uses
# within this time, that next use fails once, and the pool replaces all its connections.
PING_WHEN_IDLE_SECONDS = 1.0
_IDLE_SINCE = "kefu_idle_since"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API objects
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(url, echo=echo, pool_size=10, max_overflow=20, pool_timeout=10)
    event.listen(engine.sync_engine.pool, "checkin", _mark_idle)
    event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle(engine))
    return engine


def _mark_idle(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(engine: AsyncEngine) -> Any:
    dialect = engine.sync_engine.dialect

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PING_WHEN_IDLE_SECONDS:
            return  # new, or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"pooled connection failed its ping: {type(error).__name__}") from error

    return checkout


def make_session_factory(engine: AsyncEngine, event_bus: Any = None) -> async_sessionmaker[AsyncSession]:
    """Sessions for the app. With ``event_bus``, events queued with ``publish_on_commit`` in any session
    (a request, the routing sweep, a mail poller, a chat socket) are published after its commit."""
    from kefu.core.events import session_info_for

    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=session_info_for(event_bus))


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One explicit unit of work: commit on success, roll back on any error."""
    async with factory() as session, session.begin():
        yield session
