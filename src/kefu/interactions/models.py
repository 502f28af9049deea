"""Interaction tables: contacts with their timeline, contact reasons, and the articles used.

DESIGN.md "Data every later capability depends on": each timestamp is written once, when the fact
happens, and never overwritten, so service level, ASA, abandonment and handle times can be computed
exactly later.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, TimestampMixin, UTCDateTime, utcnow


class Channel(enum.StrEnum):
    phone = "phone"
    email = "email"
    chat = "chat"
    sms = "sms"
    social = "social"
    web_form = "web_form"
    walk_in = "walk_in"


class Direction(enum.StrEnum):
    inbound = "inbound"
    outbound = "outbound"


class InteractionState(enum.StrEnum):
    arrived = "arrived"
    queued = "queued"
    offered = "offered"
    answered = "answered"  # the agent is handling it
    wrap_up = "wrap_up"  # ended, agent doing after-contact work
    done = "done"  # wrap-up ended
    abandoned = "abandoned"  # the customer left before an agent answered


class ContactReason(IdMixin, TimestampMixin, Base):
    """Hierarchical reason codes (e.g. 账单 > 扣费异议), configured by supervisors."""

    __tablename__ = "contact_reasons"

    parent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("contact_reasons.id", ondelete="RESTRICT"))
    code: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    position: Mapped[int] = mapped_column(Integer, default=0, nullable=False)


class Interaction(IdMixin, Base):
    __tablename__ = "interactions"

    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    direction: Mapped[str] = mapped_column(String(16), default=Direction.inbound, nullable=False)
    # The channel's own id (call id, Message-ID, chat id): the same contact delivered twice is one row.
    external_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default=InteractionState.arrived, nullable=False)
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))
    # The address the contact came from or went to (caller number, mail address...), normalized.
    identity_kind: Mapped[str | None] = mapped_column(String(16))
    identity_value: Mapped[str | None] = mapped_column(String(254))
    queue: Mapped[str | None] = mapped_column(String(64))
    team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("teams.id", ondelete="SET NULL"))
    agent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    work_order_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="SET NULL"))
    subject: Mapped[str | None] = mapped_column(String(300))
    summary: Mapped[str | None] = mapped_column(Text)
    contact_reason_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("contact_reasons.id", ondelete="SET NULL"))
    disposition: Mapped[str | None] = mapped_column(String(32))
    resolved_first_contact: Mapped[bool | None] = mapped_column(Boolean)
    attributes: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)

    # The timeline. Written once each, never overwritten.
    arrived_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    offered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    abandoned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    wrap_up_ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (
        UniqueConstraint("channel", "external_id", name="uq_interactions_channel_external_id"),
        Index("ix_interactions_customer_arrived", "customer_id", "arrived_at"),
        Index("ix_interactions_agent_state", "agent_id", "state"),
        Index("ix_interactions_work_order", "work_order_id"),
        Index("ix_interactions_arrived", "arrived_at"),
    )


class InteractionArticle(Base):
    """A knowledge article used while handling an interaction (opened, inserted into a reply)."""

    __tablename__ = "interaction_articles"

    interaction_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True
    )
    article_id: Mapped[int] = mapped_column(BigId, ForeignKey("kb_articles.id", ondelete="CASCADE"), primary_key=True)
    used_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
