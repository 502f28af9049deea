"""Tables of the webhook channels: inbound channels (SMS, social), their messages, outbound webhook
subscriptions and deliveries, and the web form's per-address throttle."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, TimestampMixin, UTCDateTime, utcnow


class ChannelKind(enum.StrEnum):
    sms = "sms"
    social = "social"
    other = "other"


class MessageDirection(enum.StrEnum):
    inbound = "inbound"
    outbound = "outbound"


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its (next) attempt
    delivered = "delivered"  # the receiver answered 2xx
    dead = "dead"  # gave up (attempts used up, or refused for good); an admin may retry it


class WebhookChannel(IdMixin, TimestampMixin, Base):
    """A configured inbound channel: a gateway posts signed messages to /api/v1/channels/{code}/messages."""

    __tablename__ = "webhook_channels"

    code: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    # Write-only: used to check inbound signatures and sign replies; never returned, shown or logged.
    secret: Mapped[str] = mapped_column(String(256), nullable=False)
    # Routing queue code new conversations go to (None: recorded on the case, not routed).
    queue: Mapped[str | None] = mapped_column(String(64))
    # How the sender is known as a customer identity (kefu.customers.models.IdentityKind).
    identity_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # For social identities: the network written before the handle ("wechat" -> "wechat:<from>").
    identity_prefix: Mapped[str | None] = mapped_column(String(32))
    # Where agents' replies on cases from this channel are posted (signed with the same secret).
    outbound_url: Mapped[str | None] = mapped_column(String(2000))
    conversation_window_seconds: Mapped[int] = mapped_column(Integer, default=86400, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)


class WebhookMessage(IdMixin, Base):
    """One message on a webhook channel, either way. ``(channel_id, message_id)`` is unique: a message
    delivered any number of times, concurrently or not, is stored once."""

    __tablename__ = "webhook_messages"

    channel_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_channels.id", ondelete="CASCADE"), nullable=False
    )
    message_id: Mapped[str] = mapped_column(String(200), nullable=False)
    direction: Mapped[str] = mapped_column(String(16), nullable=False)
    # The customer's side: the normalized identity value and what the gateway wrote.
    customer_address: Mapped[str] = mapped_column(String(254), nullable=False)
    customer_raw: Mapped[str] = mapped_column(String(254), nullable=False)
    # Our side: the number or account the customer wrote to.
    channel_address: Mapped[str] = mapped_column(String(254), default="", nullable=False)
    text: Mapped[str] = mapped_column(Text, default="", nullable=False)
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JsonDoc, default=list, nullable=False)
    external_conversation_id: Mapped[str | None] = mapped_column(String(128))
    # Derived from the message alone (never from arrival order): see service.conversation_key.
    conversation_key: Mapped[str] = mapped_column(String(255), nullable=False)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    customer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("customers.id", ondelete="SET NULL"))
    interaction_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("interactions.id", ondelete="SET NULL"))
    work_order_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("work_orders.id", ondelete="SET NULL"))
    comment_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("work_order_comments.id", ondelete="SET NULL"))
    # Outbound messages: the delivery that carries them.
    delivery_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("channel_id", "message_id", name="uq_webhook_messages_channel_message"),
        Index("ix_webhook_messages_work_order", "work_order_id", "sent_at"),
        Index("ix_webhook_messages_conversation", "channel_id", "conversation_key", "sent_at"),
    )


class WebhookSubscription(IdMixin, TimestampMixin, Base):
    """An outbound webhook: events of the chosen types are posted, signed, to ``url``."""

    __tablename__ = "webhook_subscriptions"

    name: Mapped[str] = mapped_column(String(128), nullable=False)
    url: Mapped[str] = mapped_column(String(2000), nullable=False)
    secret: Mapped[str] = mapped_column(String(256), nullable=False)  # write-only, like the channels'
    event_types: Mapped[list[str]] = mapped_column(JsonDoc, default=list, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)


class WebhookDelivery(IdMixin, Base):
    """One event (or channel reply) to post to one receiver; attempts run as durable jobs.

    ``delivery_id`` goes out as ``X-Kefu-Delivery-Id`` and is the same on every attempt, so a receiver
    that saw it before (our attempt timed out after it had answered) can drop the repeat."""

    __tablename__ = "webhook_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    subscription_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("webhook_subscriptions.id", ondelete="CASCADE")
    )
    channel_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("webhook_channels.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8, nullable=False)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_webhook_deliveries_status", "status", "id"),
        Index("ix_webhook_deliveries_subscription", "subscription_id", "id"),
    )


class WebFormThrottle(Base):
    """Web form submissions per client address in the current window (shared by every process)."""

    __tablename__ = "web_form_throttle"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
