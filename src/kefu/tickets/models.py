"""Work-order tables: work orders with their history, comments, tags, links and attachments; business
calendars and SLA policies with recorded warnings and breaches; back-office escalations; suggestion
forwards; macros and saved views."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, deferred, mapped_column

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, TimestampMixin, UTCDateTime, utcnow


class WorkOrderType(enum.StrEnum):
    inquiry = "inquiry"
    complaint = "complaint"
    suggestion = "suggestion"
    fault = "fault"
    request = "request"


class WorkOrderStatus(enum.StrEnum):
    new = "new"
    open = "open"
    pending = "pending"  # waiting on the customer or a third party: the SLA clock pauses
    escalated = "escalated"  # with a back-office team
    resolved = "resolved"
    closed = "closed"
    reopened = "reopened"


class Priority(enum.StrEnum):
    low = "low"
    normal = "normal"
    high = "high"
    urgent = "urgent"


OPEN_STATUSES = frozenset(
    {
        WorkOrderStatus.new,
        WorkOrderStatus.open,
        WorkOrderStatus.pending,
        WorkOrderStatus.escalated,
        WorkOrderStatus.reopened,
    }
)


class WorkOrder(IdMixin, TimestampMixin, Base):
    __tablename__ = "work_orders"

    type: Mapped[str] = mapped_column(String(16), default=WorkOrderType.inquiry, nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=WorkOrderStatus.new, nullable=False)
    priority: Mapped[str] = mapped_column(String(16), default=Priority.normal, nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))
    team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("teams.id", ondelete="SET NULL"))
    assignee_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    # Restricted work orders (complaints about staff, VIP matters...) are seen only by their team,
    # their assignee, a back-office team working them, supervisors and admins.
    restricted: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    # A duplicate merged into another work order keeps its row, closed, pointing at the survivor.
    merged_into_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="SET NULL"))

    # SLA clocks (see tickets/sla.py). Due times move forward while the work order is pending.
    sla_policy_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("sla_policies.id", ondelete="SET NULL"))
    first_response_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolution_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_responded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sla_paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def number(self) -> str:
        """What people read out on the phone."""
        return f"WO{self.id:08d}"

    __table_args__ = (
        CheckConstraint("status in ('new','open','pending','escalated','resolved','closed','reopened')", name="status"),
        CheckConstraint("priority in ('low','normal','high','urgent')", name="priority"),
        CheckConstraint("type in ('inquiry','complaint','suggestion','fault','request')", name="type"),
        # The list pages: by team or assignee and status, newest activity first; by customer for 360.
        Index("ix_work_orders_team_status_updated", "team_id", "status", "updated_at"),
        Index("ix_work_orders_assignee_status_updated", "assignee_id", "status", "updated_at"),
        Index("ix_work_orders_customer_created", "customer_id", "created_at"),
        Index("ix_work_orders_resolution_due", "resolution_due_at"),
        Index("ix_work_orders_updated", "updated_at"),
    )


class WorkOrderEvent(IdMixin, Base):
    """The full history of a work order, appended, never edited: created, status, assigned, field
    changed, comment, escalated, returned, merged, linked..."""

    __tablename__ = "work_order_events"

    work_order_id: Mapped[int] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="CASCADE"), nullable=False)
    actor_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (Index("ix_work_order_events_work_order", "work_order_id", "id"),)


class WorkOrderComment(IdMixin, Base):
    """A reply to the customer (public) or an internal note (internal)."""

    __tablename__ = "work_order_comments"

    work_order_id: Mapped[int] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="CASCADE"), nullable=False)
    author_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    internal: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (Index("ix_work_order_comments_work_order", "work_order_id", "id"),)


class WorkOrderTag(Base):
    __tablename__ = "work_order_tags"

    work_order_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("work_orders.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_work_order_tags_tag", "tag"),)


class WorkOrderLink(IdMixin, Base):
    """Related work orders. Stored once per pair with the smaller id first."""

    __tablename__ = "work_order_links"

    from_id: Mapped[int] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="CASCADE"), nullable=False)
    to_id: Mapped[int] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), default="related", nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (
        UniqueConstraint("from_id", "to_id", name="uq_work_order_links_pair"),
        CheckConstraint("from_id < to_id", name="ordered"),
        Index("ix_work_order_links_to", "to_id"),
    )


class WorkOrderAttachment(IdMixin, Base):
    __tablename__ = "work_order_attachments"

    work_order_id: Mapped[int] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="CASCADE"), nullable=False)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    content_type: Mapped[str] = mapped_column(String(127), nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    content: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    uploaded_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (Index("ix_work_order_attachments_work_order", "work_order_id"),)


class WorkOrderField(IdMixin, TimestampMixin, Base):
    """An administrator-defined custom field; values live in ``WorkOrder.custom_fields``."""

    __tablename__ = "work_order_fields"

    key: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    label: Mapped[str] = mapped_column(String(128), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), default="text", nullable=False)  # text|number|date|choice
    choices: Mapped[list[str]] = mapped_column(JsonDoc, default=list, nullable=False)
    required: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)


class BusinessCalendar(IdMixin, TimestampMixin, Base):
    """Working hours per weekday in a time zone, with holidays and make-up working days (调休)."""

    __tablename__ = "business_calendars"

    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    time_zone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai", nullable=False)
    # {"0": [["09:00", "18:00"]], ...}: ISO weekday - 1 (Monday 0) -> working intervals, local time.
    weekly_hours: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)


class CalendarDay(IdMixin, Base):
    """An exception to the weekly hours: a holiday (no work) or a working day with its own hours."""

    __tablename__ = "calendar_days"

    calendar_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("business_calendars.id", ondelete="CASCADE"), nullable=False
    )
    day: Mapped[date] = mapped_column(Date, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # holiday | workday
    name: Mapped[str] = mapped_column(String(128), default="", nullable=False)
    # For a workday: its intervals; empty means the normal hours of a Monday.
    hours: Mapped[list[Any]] = mapped_column(JsonDoc, default=list, nullable=False)

    __table_args__ = (UniqueConstraint("calendar_id", "day", name="uq_calendar_days_calendar_day"),)


class SlaPolicy(IdMixin, TimestampMixin, Base):
    """Targets for work orders matching type/priority/team (empty = any); the most specific wins."""

    __tablename__ = "sla_policies"

    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    work_order_type: Mapped[str | None] = mapped_column(String(16))
    priority: Mapped[str | None] = mapped_column(String(16))
    team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("teams.id", ondelete="CASCADE"))
    calendar_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("business_calendars.id", ondelete="RESTRICT"))
    first_response_seconds: Mapped[int | None] = mapped_column(Integer)  # business seconds
    resolution_seconds: Mapped[int | None] = mapped_column(Integer)  # business seconds
    warn_before_seconds: Mapped[int] = mapped_column(Integer, default=3600, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)


class SlaEvent(IdMixin, Base):
    """A warning sent or a breach recorded, once per work order, target and due time."""

    __tablename__ = "sla_events"

    work_order_id: Mapped[int] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="CASCADE"), nullable=False)
    target: Mapped[str] = mapped_column(String(16), nullable=False)  # first_response | resolution
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # warning | breach
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (
        UniqueConstraint("work_order_id", "target", "kind", "due_at", name="uq_sla_events_once"),
        Index("ix_sla_events_kind_recorded", "kind", "recorded_at"),
    )


class EscalationState(enum.StrEnum):
    open = "open"  # with the back-office team
    returned = "returned"  # the back-office team sent it back with its answer
    cancelled = "cancelled"


class Escalation(IdMixin, Base):
    """后送: a work order sent to a back-office team with an N-day deadline."""

    __tablename__ = "escalations"

    work_order_id: Mapped[int] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="CASCADE"), nullable=False)
    from_team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("teams.id", ondelete="SET NULL"))
    to_team_id: Mapped[int] = mapped_column(BigId, ForeignKey("teams.id", ondelete="RESTRICT"), nullable=False)
    deadline_days: Mapped[int] = mapped_column(Integer, nullable=False)
    business_days: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    state: Mapped[str] = mapped_column(String(16), default=EscalationState.open, nullable=False)
    note: Mapped[str] = mapped_column(Text, default="", nullable=False)
    sent_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    returned_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    returned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    return_note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_escalations_to_team_state", "to_team_id", "state", "due_at"),
        Index("ix_escalations_to_team_sent", "to_team_id", "sent_at"),
        Index("ix_escalations_work_order", "work_order_id"),
    )


class SuggestionForward(IdMixin, Base):
    """A customer suggestion forwarded to a knowledge manager or product owner; the answer goes back
    to the customer as a public reply on the work order."""

    __tablename__ = "suggestion_forwards"

    work_order_id: Mapped[int] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="CASCADE"), nullable=False)
    to_user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="RESTRICT"), nullable=False)
    question: Mapped[str] = mapped_column(Text, default="", nullable=False)
    forwarded_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    forwarded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    answer: Mapped[str | None] = mapped_column(Text)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_suggestion_forwards_to_user", "to_user_id", "answered_at"),
        Index("ix_suggestion_forwards_work_order", "work_order_id"),
    )


class Macro(IdMixin, TimestampMixin, Base):
    """A canned reply with variables ({{customer.name}}, {{work_order.number}}, {{agent.name}}...) and
    optional actions (status, priority, tags) applied with it."""

    __tablename__ = "macros"

    name: Mapped[str] = mapped_column(String(128), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    scope: Mapped[str] = mapped_column(String(16), default="shared", nullable=False)  # personal|team|shared
    owner_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("teams.id", ondelete="CASCADE"))
    actions: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)


class SavedView(IdMixin, TimestampMixin, Base):
    """A user's named work-order list filter."""

    __tablename__ = "saved_views"

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    filters: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)

    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_saved_views_user_name"),)
