"""IVR tables: flows, their versions (published ones immutable), the numbers (DNIS) bound to a flow, and
the callback requests a call made (one per call and node, so a retried step never makes a second one)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, TimestampMixin, UTCDateTime, utcnow


class FlowVersionStatus(enum.StrEnum):
    draft = "draft"  # being edited; at most one per flow
    published = "published"  # the live version; at most one per flow
    superseded = "superseded"  # was live; calls that started on it keep using it


class IvrFlow(IdMixin, TimestampMixin, Base):
    """The identity of a flow. Its content lives in versions."""

    __tablename__ = "ivr_flows"

    code: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    # Calls to a number no flow is bound to start the default flow (at most one is the default).
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    # The live version. No foreign key (versions point at flows): the service keeps it pointing at a
    # published version of this flow.
    live_version_id: Mapped[int | None] = mapped_column(BigId)
    created_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))


class IvrFlowVersion(IdMixin, Base):
    __tablename__ = "ivr_flow_versions"

    flow_id: Mapped[int] = mapped_column(BigId, ForeignKey("ivr_flows.id", ondelete="CASCADE"), nullable=False)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=FlowVersionStatus.draft, nullable=False)
    # The source as written (YAML or JSON) and the checked definition the engine walks.
    source_format: Mapped[str] = mapped_column(String(8), default="yaml", nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    definition: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    warnings: Mapped[list[Any]] = mapped_column(JsonDoc, default=list, nullable=False)
    note: Mapped[str] = mapped_column(String(500), default="", nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (
        UniqueConstraint("flow_id", "number", name="uq_ivr_flow_versions_number"),
        CheckConstraint("status IN ('draft','published','superseded')", name="known_status"),
        CheckConstraint("source_format IN ('yaml','json')", name="known_format"),
        Index("ix_ivr_flow_versions_flow_status", "flow_id", "status"),
    )


class IvrFlowNumber(IdMixin, Base):
    """A called number (DNIS) bound to a flow: one flow per number."""

    __tablename__ = "ivr_flow_numbers"

    flow_id: Mapped[int] = mapped_column(BigId, ForeignKey("ivr_flows.id", ondelete="CASCADE"), nullable=False)
    number: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)

    __table_args__ = (Index("ix_ivr_flow_numbers_flow", "flow_id"),)


class IvrCallback(IdMixin, Base):
    """A callback request made by a call at one node: the key that makes it happen once."""

    __tablename__ = "ivr_callbacks"

    call_id: Mapped[str] = mapped_column(String(128), nullable=False)
    node_id: Mapped[str] = mapped_column(String(64), nullable=False)
    flow_version_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("ivr_flow_versions.id", ondelete="SET NULL"))
    caller: Mapped[str | None] = mapped_column(String(64))
    work_order_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (UniqueConstraint("call_id", "node_id", name="uq_ivr_callbacks_call_node"),)
