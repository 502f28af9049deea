"""Phone channel tables: the PBXs allowed to post events, every event as delivered (once), the call
each event belongs to with the state derived from its events, and the agents' extensions.

The call row is a projection: ``service.project`` recomputes it from the call's stored events whenever
one arrives, so events delivered twice or out of order end in the same row. Side effects (IVR steps,
queueing, the interaction timeline, screen pops) run once per event, in the PBX's order (``seq``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, TimestampMixin, UTCDateTime, utcnow


class CallState:
    new = "new"  # known, nothing decided yet
    ivr = "ivr"  # in the IVR (kefu's or the PBX's)
    queued = "queued"  # waiting in a queue
    ringing = "ringing"  # ringing at an agent's extension
    talking = "talking"  # answered, connected to an agent
    held = "held"  # answered, on hold
    ended = "ended"  # hung up


class Pbx(IdMixin, TimestampMixin, Base):
    """A telephone system allowed to post call events, with its signing secret."""

    __tablename__ = "cti_pbxs"

    code: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    # HMAC key shared with the PBX (or its adapter); shown once when made, never logged.
    secret: Mapped[str] = mapped_column(String(128), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)


class Call(IdMixin, Base):
    __tablename__ = "cti_calls"

    pbx: Mapped[str] = mapped_column(String(64), nullable=False)
    call_id: Mapped[str] = mapped_column(String(128), nullable=False)
    state: Mapped[str] = mapped_column(String(16), default=CallState.new, nullable=False)
    direction: Mapped[str | None] = mapped_column(String(16))
    caller: Mapped[str | None] = mapped_column(String(64))
    called: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(16))
    queue: Mapped[str | None] = mapped_column(String(64))
    extension: Mapped[str | None] = mapped_column(String(32))  # where it rings / is connected now
    agent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    answered_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    interaction_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("interactions.id", ondelete="SET NULL"))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ringing_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    hangup_cause: Mapped[str | None] = mapped_column(String(64))
    hangup_by: Mapped[str | None] = mapped_column(String(16))
    held_seconds: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    transfers: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    digits: Mapped[str | None] = mapped_column(String(255))  # every IVR input, comma-separated
    recording_url: Mapped[str | None] = mapped_column(Text)  # http(s) only; never fetched by kefu
    recording_path: Mapped[str | None] = mapped_column(Text)  # a file path on the PBX, shown as text
    recording_seconds: Mapped[int | None] = mapped_column(Integer)
    # The IVR's state between steps and the last instruction it gave (kefu's IVR only).
    ivr_state: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    ivr_instruction: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    ivr_done: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    # Side effects ran for the events with seq <= applied_seq; events past a gap wait for it to fill
    # (``gap_since``: when the first of them arrived) up to the gap timeout.
    applied_seq: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    gap_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    event_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (
        UniqueConstraint("pbx", "call_id", name="uq_cti_calls_pbx_call_id"),
        Index("ix_cti_calls_started", "started_at"),
        Index("ix_cti_calls_agent", "agent_id"),
        Index("ix_cti_calls_interaction", "interaction_id"),
        Index("ix_cti_calls_gap", "gap_since"),
    )


class CallEvent(IdMixin, Base):
    """One event as the PBX sent it, stored once per (pbx, event_id)."""

    __tablename__ = "cti_call_events"

    pbx: Mapped[str] = mapped_column(String(64), nullable=False)
    event_id: Mapped[str] = mapped_column(String(128), nullable=False)
    call_row_id: Mapped[int] = mapped_column(BigId, ForeignKey("cti_calls.id", ondelete="CASCADE"), nullable=False)
    seq: Mapped[int | None] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    deliveries: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    # What applying it did ("applied", "late": arrived after its gap was skipped, "no_seq").
    outcome: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        UniqueConstraint("pbx", "event_id", name="uq_cti_call_events_pbx_event_id"),
        UniqueConstraint("call_row_id", "seq", name="uq_cti_call_events_call_row_id_seq"),
    )


class Extension(Base):
    """Which agent answers at which PBX extension (one each)."""

    __tablename__ = "cti_extensions"

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    extension: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False)
