"""The request-scoped database session dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import idempotency
from kefu.core.events import bind_bus


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """A session per request. Writes are explicit: services run inside ``async with db.begin()``."""
    factory = request.app.state.session_factory
    async with factory() as session:
        bind_bus(session, request.app.state.event_bus)
        idempotency.attach(session, request)
        yield session
