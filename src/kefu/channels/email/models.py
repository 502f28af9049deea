"""Tables of the email channel: mailboxes (with their IMAP settings and poll cursor), every mail in or
out with its raw source, and the quarantine where a mail that could not be filed waits with its reason.

Nothing is ever lost: an inbound mail ends either as an ``EmailMessage`` on a work order or as an
``EmailQuarantine`` row; both keep the raw source byte for byte.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
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

ADDRESS_MAX = 254
MESSAGE_ID_MAX = 255
SUBJECT_MAX = 500


class MailDirection(enum.StrEnum):
    inbound = "inbound"
    outbound = "outbound"


class AutoKind(enum.StrEnum):
    """What ``parse.classify`` says a mail is (loop protection)."""

    none = "none"  # a person wrote it
    auto_reply = "auto_reply"  # vacation / out-of-office / Auto-Submitted: auto-replied
    list = "list"  # mailing-list traffic (List-Id, Precedence: list)
    bulk = "bulk"  # Precedence: bulk / junk, Auto-Submitted: auto-generated
    bounce = "bounce"  # a delivery status notification
    loop = "loop"  # X-Loop naming one of our addresses, or sent by one of our own mailboxes


class QuarantineReason(enum.StrEnum):
    too_large = "too_large"
    too_many_parts = "too_many_parts"
    too_deep = "too_deep"
    attachment_too_large = "attachment_too_large"
    malformed = "malformed"  # not a mail at all / MIME structure broken beyond use
    no_sender = "no_sender"  # no usable From (or Sender / Return-Path) address
    loop = "loop"
    bounce_unmatched = "bounce_unmatched"  # a bounce whose original is not ours
    auto_reply_unthreaded = "auto_reply_unthreaded"  # an auto-reply to nothing we sent
    error = "error"  # an unexpected error while filing (a bug): kept for a person to look at


class QuarantineResolution(enum.StrEnum):
    released = "released"
    discarded = "discarded"


class Mailbox(IdMixin, TimestampMixin, Base):
    """One address kefu receives mail for (over the SMTP receiver, IMAP polling or both)."""

    __tablename__ = "email_mailboxes"

    code: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    # The mailbox's own address, lower case: what customers write to and replies come from.
    address: Mapped[str] = mapped_column(String(ADDRESS_MAX), unique=True, nullable=False)
    display_name: Mapped[str] = mapped_column(String(128), default="", nullable=False)
    # Routing queue code new mails are queued on (None: recorded, not routed).
    queue: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    # IMAP polling (empty host: not polled). The password is write-only: never logged or shown.
    imap_host: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    imap_port: Mapped[int] = mapped_column(Integer, default=993, nullable=False)
    imap_tls: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    imap_username: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    imap_password: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    imap_folder: Mapped[str] = mapped_column(String(255), default="INBOX", nullable=False)
    poll_seconds: Mapped[int] = mapped_column(Integer, default=60, nullable=False)
    # The poll cursor: the folder's UIDVALIDITY and the last UID filed.
    imap_uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    imap_last_uid: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)

    def __repr__(self) -> str:  # never the password
        return f"Mailbox(id={self.id!r}, code={self.code!r}, address={self.address!r})"

    __table_args__ = (
        CheckConstraint("poll_seconds >= 1", name="poll_seconds"),
        CheckConstraint("imap_port >= 0 and imap_port <= 65535", name="imap_port"),
    )


class EmailMessage(IdMixin, Base):
    """One mail received or sent, as filed on a work order."""

    __tablename__ = "email_messages"

    mailbox_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("email_mailboxes.id", ondelete="RESTRICT"), nullable=False
    )
    direction: Mapped[str] = mapped_column(String(16), default=MailDirection.inbound, nullable=False)
    # Normalized Message-ID (no angle brackets; a hash for absurdly long ones; a content hash when
    # the mail had none). Unique per mailbox and direction: a mail delivered twice is stored once.
    message_id: Mapped[str] = mapped_column(String(MESSAGE_ID_MAX), nullable=False)
    in_reply_to: Mapped[str | None] = mapped_column(String(MESSAGE_ID_MAX))
    references: Mapped[list[str]] = mapped_column(JsonDoc, default=list, nullable=False)
    # The first mail of the thread (None for the first mail itself).
    thread_root_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("email_messages.id", ondelete="SET NULL"))
    work_order_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="SET NULL"))
    interaction_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("interactions.id", ondelete="SET NULL"))
    from_address: Mapped[str] = mapped_column(String(ADDRESS_MAX), default="", nullable=False)
    from_name: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    to_addresses: Mapped[list[str]] = mapped_column(JsonDoc, default=list, nullable=False)
    cc_addresses: Mapped[list[str]] = mapped_column(JsonDoc, default=list, nullable=False)
    subject: Mapped[str] = mapped_column(String(SUBJECT_MAX), default="", nullable=False)
    text_body: Mapped[str] = mapped_column(Text, default="", nullable=False)
    html_body: Mapped[str] = mapped_column(Text, default="", nullable=False)  # sanitized (allow-list)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # inbound: when kefu got it
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the Date header / when kefu sent it
    auto_kind: Mapped[str] = mapped_column(String(16), default=AutoKind.none, nullable=False)
    is_auto: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    is_bounce: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    bounce_of_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("email_messages.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(16), default="", nullable=False)  # smtp | imap | test | outbound
    raw: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    raw_size: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    raw_sha256: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    # [{"filename", "content_type", "size", "inline", "content_id", "attachment_id" (a
    #   WorkOrderAttachment id or None), "note" (why it was not stored, when it was not)}]
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JsonDoc, default=list, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (
        UniqueConstraint("mailbox_id", "message_id", "direction", name="uq_email_messages_mailbox_message_direction"),
        CheckConstraint("direction in ('inbound','outbound')", name="direction"),
        Index("ix_email_messages_message_id", "message_id"),
        Index("ix_email_messages_work_order", "work_order_id", "id"),
        Index("ix_email_messages_from_created", "from_address", "created_at"),
    )


class EmailQuarantine(IdMixin, Base):
    """A mail that could not be filed, with why; a person releases (files it anyway) or discards it."""

    __tablename__ = "email_quarantine"

    mailbox_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("email_mailboxes.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(String(32), nullable=False)
    detail: Mapped[str] = mapped_column(Text, default="", nullable=False)
    source: Mapped[str] = mapped_column(String(16), default="", nullable=False)
    message_id: Mapped[str | None] = mapped_column(String(MESSAGE_ID_MAX))
    from_address: Mapped[str] = mapped_column(String(ADDRESS_MAX), default="", nullable=False)
    subject: Mapped[str] = mapped_column(String(SUBJECT_MAX), default="", nullable=False)
    raw: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    raw_size: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    raw_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    resolution: Mapped[str | None] = mapped_column(String(16))  # released | discarded
    resolution_note: Mapped[str] = mapped_column(Text, default="", nullable=False)
    # The mail filed from it on release.
    email_message_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("email_messages.id", ondelete="SET NULL"))

    __table_args__ = (
        CheckConstraint("resolution is null or resolution in ('released','discarded')", name="resolution"),
        # The same bad mail delivered again is one row (per mailbox and content).
        UniqueConstraint("mailbox_id", "raw_sha256", name="uq_email_quarantine_mailbox_sha"),
        Index("ix_email_quarantine_open", "resolution", "received_at"),
    )
