"""Web chat tables: conversations, their sequence-numbered messages and the files sent in them.

The rules that make delivery exact live in the shape of these tables:
- ``chat_conversations.last_seq`` is the per-conversation counter. A message takes the next number with
  ``UPDATE ... SET last_seq = last_seq + 1 ... RETURNING``, which holds the conversation's row lock until
  the writer commits, so numbers are handed out and become visible in order, with no gaps.
- ``(conversation_id, seq)`` is unique, and so is ``(conversation_id, client_msg_id)``: a client re-sending
  a message after a reconnect stores it once.
- A socket remembers the last number it delivered and reads ``seq > N`` from the database when an event
  names a number past it (a short message rides whole in its event: when it is exactly the next number it
  is sent without a read); a lost event delays a message but never loses it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, deferred, mapped_column

from kefu.db.base import Base, BigId, IdMixin, TimestampMixin, UTCDateTime, utcnow


class ConversationStatus:
    waiting = "waiting"  # in the queue, no agent yet
    active = "active"  # an agent has it
    closed = "closed"  # ended, or turned into a work order; no more live messages
    ALL = ("waiting", "active", "closed")
    OPEN = ("waiting", "active")


class Sender:
    visitor = "visitor"
    agent = "agent"
    system = "system"
    ALL = ("visitor", "agent", "system")


class ChatConversation(IdMixin, TimestampMixin, Base):
    __tablename__ = "chat_conversations"

    # Names the chat in URLs and is the intake's external id; random, but the token is the secret.
    public_id: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    # SHA-256 of the visitor's token (the token itself is only ever in the visitor's browser).
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    widget: Mapped[str] = mapped_column(String(64), nullable=False)
    queue_code: Mapped[str] = mapped_column(String(64), nullable=False)
    # The current contact of the chat; a chat sent back to its queue gets a new contact (a new segment).
    interaction_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("interactions.id", ondelete="RESTRICT"), unique=True, nullable=False
    )
    segment: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=ConversationStatus.waiting, nullable=False)
    closed_reason: Mapped[str | None] = mapped_column(String(32))
    visitor_name: Mapped[str] = mapped_column(String(128), nullable=False)
    visitor_email: Mapped[str | None] = mapped_column(String(254))
    visitor_phone: Mapped[str | None] = mapped_column(String(32))
    locale: Mapped[str] = mapped_column(String(8), default="zh_CN", nullable=False)
    origin: Mapped[str | None] = mapped_column(String(255))
    last_seq: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    agent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    # The agent's chat connection proves they are there by moving this forward (see runtime.py).
    agent_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_chat_conversations_status_seen", "status", "agent_seen_at"),
        Index("ix_chat_conversations_agent_status", "agent_id", "status"),
    )


class ChatAttachment(IdMixin, Base):
    """A file sent in a chat; served only as a download (``kefu.core.files``)."""

    __tablename__ = "chat_attachments"

    conversation_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("chat_conversations.id", ondelete="CASCADE"), nullable=False
    )
    filename: Mapped[str] = mapped_column(String(200), nullable=False)
    content_type: Mapped[str] = mapped_column(String(128), nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    content: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (Index("ix_chat_attachments_conversation", "conversation_id"),)


class ChatMessage(IdMixin, Base):
    __tablename__ = "chat_messages"

    conversation_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("chat_conversations.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    sender: Mapped[str] = mapped_column(String(16), nullable=False)
    author_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    author_name: Mapped[str | None] = mapped_column(String(128))
    # Plain text as typed; every page and the widget show it as text (never as HTML).
    body: Mapped[str] = mapped_column(Text, default="", nullable=False)
    client_msg_id: Mapped[str | None] = mapped_column(String(64))
    # System messages: what happened (agent_joined, requeued, work_order, ended...).
    code: Mapped[str | None] = mapped_column(String(32))
    attachment_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("chat_attachments.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (
        UniqueConstraint("conversation_id", "seq", name="uq_chat_messages_conversation_seq"),
        UniqueConstraint("conversation_id", "client_msg_id", name="uq_chat_messages_conversation_client_msg"),
    )


__all__ = ["ChatAttachment", "ChatConversation", "ChatMessage", "ConversationStatus", "Sender"]
