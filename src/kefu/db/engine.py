"""Engine and session factory. SQLite gets WAL, a busy timeout and foreign keys on every connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 15_000


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
    # pool_pre_ping lets the app recover by itself after the database comes back.
    return create_async_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=10)


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
