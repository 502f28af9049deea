"""Points for contributions: an append-only ledger, one award per event however often it is processed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.identity.models import User
from kefu.knowledge.models import PointsEntry

# Default rules; a deployment overrides them with KEFU_KB_POINTS='{"feedback_accepted": 5, ...}'.
DEFAULT_RULES = {
    "contribution_published": 10,  # an article or experience note the member proposed is published
    "feedback_accepted": 3,  # an error report or suggestion is accepted
    "feedback_answered": 0,  # a question was answered (0: no points, but the rule exists to be set)
}


async def award(
    db: AsyncSession,
    rules: dict[str, int],
    *,
    user_id: int,
    rule: str,
    event_key: str,
    article_id: int | None = None,
    note: str = "",
) -> bool:
    """Award ``rule``'s points once per ``event_key``. Returns False when already awarded (or worth 0)."""
    points = {**DEFAULT_RULES, **rules}.get(rule, 0)
    if points == 0:
        return False
    values = {
        "user_id": user_id,
        "points": points,
        "rule": rule,
        "event_key": event_key,
        "article_id": article_id,
        "note": note[:300],
    }
    insert = pg_insert if db.bind.dialect.name == "postgresql" else sqlite_insert
    # ON CONFLICT DO NOTHING: a second delivery of the same event, even concurrent, adds nothing.
    result = await db.execute(insert(PointsEntry).values(**values).on_conflict_do_nothing(index_elements=["event_key"]))
    return bool(result.rowcount)


@dataclass(frozen=True)
class LeaderboardRow:
    user_id: int
    display_name: str
    points: int
    awards: int


async def leaderboard(
    db: AsyncSession, *, since: datetime | None = None, until: datetime | None = None, limit: int = 20
) -> list[LeaderboardRow]:
    stmt = (
        select(PointsEntry.user_id, User.display_name, func.sum(PointsEntry.points), func.count())
        .join(User, User.id == PointsEntry.user_id)
        .group_by(PointsEntry.user_id, User.display_name)
        .order_by(func.sum(PointsEntry.points).desc(), PointsEntry.user_id)
        .limit(limit)
    )
    if since is not None:
        stmt = stmt.where(PointsEntry.created_at >= since)
    if until is not None:
        stmt = stmt.where(PointsEntry.created_at < until)
    return [LeaderboardRow(int(u), name, int(p), int(n)) for u, name, p, n in (await db.execute(stmt)).all()]


async def balance(db: AsyncSession, user_id: int) -> int:
    total = await db.scalar(
        select(func.coalesce(func.sum(PointsEntry.points), 0)).where(PointsEntry.user_id == user_id)
    )
    return int(total or 0)
