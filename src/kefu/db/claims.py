"""Work that one process at a time should do (a sweep, a build that takes minutes): a PostgreSQL
advisory lock, taken without waiting by a transaction of its own and held for as long as the work runs.
A process that dies lets go with its connection. SQLite serves one process: there the claim is always
granted."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError


def advisory_key(name: str) -> int:
    """A stable 63-bit lock key for ``name`` (the same in every process and release)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big") >> 1


@asynccontextmanager
async def one_process(factory: Any, name: str) -> AsyncIterator[bool]:
    """Yields whether this process holds the claim ``name`` (another holding it: False, at once)."""
    async with factory() as guard:
        if guard.bind.dialect.name != "postgresql":
            yield True
            return
        got = bool(await guard.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": advisory_key(name)}))
        try:
            yield got
        finally:
            # Ends the transaction: the lock goes with it. A connection lost meanwhile has let it go
            # already; its error must not hide the work's own.
            with contextlib.suppress(SQLAlchemyError):
                await guard.rollback()
