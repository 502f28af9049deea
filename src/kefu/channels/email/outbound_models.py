"""Tables of the email transport: the idempotency record of each outbound mail, the record that
allows one automatic reply per sender, thread and day, and the IMAP poll lease of each mailbox."""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import CheckConstraint, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, UTCDateTime, utcnow


class OutboundState(enum.StrEnum):
    queued = "queued"  # waiting for its job (first attempt or a retry after a temporary failure)
    sending = "sending"  # an attempt is talking to the SMTP server (or crashed while it did)
    sent = "sent"  # the server accepted it: never sent again
    failed = "failed"  # refused for good (5xx) or out of attempts: kept for a person to look at


class OutboundKind(enum.StrEnum):
    reply = "reply"  # an agent's reply
    auto_reply = "auto_reply"  # the automatic acknowledgement of a customer's mail
    notice = "notice"  # other automatic mail (Auto-Submitted: auto-generated)


class OutboundMail(IdMixin, Base):
    """One mail kefu sends: its Message-ID and exact bytes are fixed before the first attempt (the
    raw source is the ``EmailMessage`` row it points at), so every attempt sends the same mail."""

    __tablename__ = "email_outbound"

    mailbox_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("email_mailboxes.id", ondelete="RESTRICT"), nullable=False
    )
    email_message_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("email_messages.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    work_order_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="SET NULL"))
    # The public comment this mail carries (at most one mail per comment).
    comment_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("work_order_comments.id", ondelete="SET NULL"), unique=True
    )
    kind: Mapped[str] = mapped_column(String(16), default=OutboundKind.reply, nullable=False)
    # Normalized (no angle brackets), like EmailMessage.message_id.
    message_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    envelope_from: Mapped[str] = mapped_column(String(254), default="", nullable=False)
    recipients: Mapped[list[str]] = mapped_column(JsonDoc, default=list, nullable=False)  # To + Cc
    state: Mapped[str] = mapped_column(String(16), default=OutboundState.queued, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    job_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("jobs.id", ondelete="SET NULL"))
    last_error: Mapped[str | None] = mapped_column(Text)
    # What the server said: recipients it refused while accepting the others, or why it refused all.
    smtp_response: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("state in ('queued','sending','sent','failed')", name="state"),
        CheckConstraint("kind in ('reply','auto_reply','notice')", name="kind"),
        Index("ix_email_outbound_work_order", "work_order_id", "id"),
        Index("ix_email_outbound_state", "state", "created_at"),
    )


class AutoReplyRecord(IdMixin, Base):
    """At most one automatic reply per mailbox, sender, thread and (local) day: the unique key makes
    the rule hold when two mails from the same sender are filed at the same moment."""

    __tablename__ = "email_auto_replies"

    mailbox_id: Mapped[int] = mapped_column(BigId, ForeignKey("email_mailboxes.id", ondelete="CASCADE"), nullable=False)
    sender: Mapped[str] = mapped_column(String(254), nullable=False)
    # "wo:<work order id>" or "msg:<thread root email message id>".
    thread_key: Mapped[str] = mapped_column(String(64), nullable=False)
    day: Mapped[date] = mapped_column(Date, nullable=False)
    email_message_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("email_messages.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (
        UniqueConstraint("mailbox_id", "sender", "thread_key", "day", name="uq_email_auto_replies_once_a_day"),
    )


class ImapLease(Base):
    """Which process polls a mailbox now: only the holder of an unexpired lease polls it."""

    __tablename__ = "email_imap_leases"

    mailbox_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("email_mailboxes.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    holder: Mapped[str] = mapped_column(String(128), nullable=False)
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # The last poll's outcome, for the admin pages: when it ended and what went wrong (no secrets).
    last_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
