"""Interactions: the rules, and the only place that writes them."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.customers.owners import register_mover
from kefu.interactions.models import Interaction


async def _move_interactions(
    db: AsyncSession, from_customer_id: int, to_customer_id: int, only_ids: list[int] | None
) -> list[int]:
    stmt = select(Interaction.id).where(Interaction.customer_id == from_customer_id)
    if only_ids is not None:
        stmt = stmt.where(Interaction.id.in_(only_ids))
    ids = list((await db.scalars(stmt)).all())
    if ids:
        await db.execute(update(Interaction).where(Interaction.id.in_(ids)).values(customer_id=to_customer_id))
    return ids


register_mover("interactions", _move_interactions)
