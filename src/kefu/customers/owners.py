"""Who else holds rows that belong to a customer (interactions, work orders...).

A merge moves those rows from the merged customer to the survivor, and an unmerge moves exactly the
same rows back. The customers domain cannot know other domains' tables, so each domain registers a
mover here at import time:

    async def move(db, from_customer_id, to_customer_id, only_ids) -> list[int]

``only_ids=None`` moves every row of ``from_customer_id``; a list moves just those rows (unmerge).
It returns the ids it moved, which the merge record keeps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

Mover = Callable[[AsyncSession, int, int, list[int] | None], Awaitable[list[int]]]
_movers: dict[str, Mover] = {}


def register_mover(name: str, mover: Mover) -> None:
    _movers[name] = mover


def movers() -> dict[str, Mover]:
    # Import the domains that register movers, so a merge never misses one because of import order.
    import kefu.interactions.service  # noqa: F401
    import kefu.tickets.service  # noqa: F401

    return dict(_movers)
