"""Append-only audit log of security-relevant and administrative actions.

Rows are only ever inserted: the migration installs triggers on both SQLite and PostgreSQL that
refuse UPDATE and DELETE, so not even a bug in kefu can rewrite history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, UTCDateTime, utcnow


class AuditEntry(IdMixin, Base):
    __tablename__ = "audit_log"

    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    actor_user_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    # Kept as text too: the record must still say who acted after the user is gone.
    actor_name: Mapped[str] = mapped_column(String(128), default="", nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    object_type: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    object_id: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    ip: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    user_agent: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)

    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_object", "object_type", "object_id"),
        Index("ix_audit_log_actor", "actor_user_id"),
    )


@dataclass(frozen=True)
class Actor:
    """Who acts, and from where: the identity half of every audit record."""

    user_id: int | None
    name: str
    ip: str = ""
    user_agent: str = ""

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(user_id=None, name=name)


async def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    *,
    object_type: str = "",
    object_id: str | int = "",
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add an audit entry in the caller's transaction, so it lands exactly when the change does."""
    entry = AuditEntry(
        actor_user_id=actor.user_id,
        actor_name=actor.name[:128],
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        ip=actor.ip[:64],
        user_agent=actor.user_agent[:255],
        details=details or {},
    )
    session.add(entry)
    return entry


async def list_entries(
    session: AsyncSession,
    *,
    action: str | None = None,
    object_type: str | None = None,
    actor_user_id: int | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[AuditEntry]:
    """Newest first, keyset-paginated by id (stable while new entries arrive)."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if action:
        stmt = stmt.where(AuditEntry.action == action)
    if object_type:
        stmt = stmt.where(AuditEntry.object_type == object_type)
    if actor_user_id is not None:
        stmt = stmt.where(AuditEntry.actor_user_id == actor_user_id)
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    return list((await session.scalars(stmt)).all())
