"""Customer tables: people, organisations, their identities on every channel, notes and merges."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, TimestampMixin, UTCDateTime, utcnow


class IdentityKind(enum.StrEnum):
    phone = "phone"  # E.164, e.g. +8613812345678 or +862088776655
    email = "email"  # lower-cased address
    chat = "chat"  # web-chat visitor id
    social = "social"  # "<network>:<handle>", e.g. "wechat:wxid_abc"
    sms = "sms"  # an SMS gateway's handle when it is not a phone number
    crm = "crm"  # "<system>:<id>" in an external CRM


class Organisation(IdMixin, TimestampMixin, Base):
    __tablename__ = "organisations"

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)


class Customer(IdMixin, TimestampMixin, Base):
    __tablename__ = "customers"

    display_name: Mapped[str] = mapped_column(String(200), nullable=False)
    # Stable id from an import source or CRM: importing the same file twice updates, never duplicates.
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    organisation_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("organisations.id", ondelete="SET NULL"))
    language: Mapped[str | None] = mapped_column(String(16))
    preferred_channel: Mapped[str | None] = mapped_column(String(16))
    # Products, contract numbers, membership level...: free attributes shown on the 360 page.
    attributes: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    # A customer merged into another keeps its row (for unmerge and old links) but is hidden.
    merged_into_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))

    identities: Mapped[list[CustomerIdentity]] = relationship(
        back_populates="customer", lazy="selectin", order_by="CustomerIdentity.id"
    )

    __table_args__ = (
        Index("ix_customers_organisation", "organisation_id"),
        Index("ix_customers_display_name", "display_name"),
    )


class CustomerIdentity(IdMixin, Base):
    """One way to reach or recognise a customer. (kind, value) is unique: one number, one customer."""

    __tablename__ = "customer_identities"

    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    value: Mapped[str] = mapped_column(String(254), nullable=False)  # normalized
    label: Mapped[str | None] = mapped_column(String(64))  # "mobile", "office", "billing"...
    verified: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    customer: Mapped[Customer] = relationship(back_populates="identities")

    __table_args__ = (
        UniqueConstraint("kind", "value", name="uq_customer_identities_kind_value"),
        Index("ix_customer_identities_customer", "customer_id"),
    )


class CustomerNote(IdMixin, Base):
    __tablename__ = "customer_notes"

    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False)
    author_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (Index("ix_customer_notes_customer", "customer_id", "created_at"),)


class CustomerMerge(IdMixin, Base):
    """What a merge moved, exactly, so it can be undone: ids of identities, interactions, work orders
    and notes that belonged to the merged customer. Referenced from the audit entry of the merge."""

    __tablename__ = "customer_merges"

    survivor_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False)
    merged_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False)
    moved: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    merged_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    merged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    unmerged_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    unmerged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_customer_merges_survivor", "survivor_id"),
        Index("ix_customer_merges_merged", "merged_id"),
    )
