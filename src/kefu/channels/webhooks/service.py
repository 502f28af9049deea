"""Webhook channels: the rules and the only writer.

Inbound (SMS, social, any gateway): a configured channel receives signed messages. Each message is
stored once per ``(channel, message_id)`` (a unique constraint decides, also between concurrent
deliveries). Messages of one sender belong to a *conversation* whose key comes from the message alone:
the gateway's ``conversation_id`` when it sends one, else the sender and the fixed time window
(``conversation_window_seconds``, aligned to the local day in ``KEFU_TIME_ZONE``) its ``sent_at`` falls
in. A conversation is one interaction, recorded through ``kefu.channels.intake`` (which finds or opens
the customer's case); every message is appended to that case as a customer comment. Nothing depends on
the order messages arrive in, so any number of replays in any order leave the state one in-order
delivery leaves; lists order messages by ``(sent_at, message_id)`` and number them from that.

Outbound: events (see ``EVENT_TYPES``) are posted to the subscriptions that want them, and agents'
public replies on a case that came in over a channel with an ``outbound_url`` are posted there. Each
post is a ``WebhookDelivery`` attempted by durable jobs (``kefu.core.jobs``), enqueued in the same
transaction as the change, signed like inbound requests (``kefu.core.signing``), retried with backoff on
network errors, 408/425/429 and 5xx, dead after ``KEFU_WEBHOOKS_MAX_ATTEMPTS``; other 4xx answers are
final. ``X-Kefu-Delivery-Id`` is the same on every attempt, so receivers can drop repeats.

Events published with ``kefu.core.events.publish_on_commit`` (the work orders' ``notify``) are picked
up when their transaction commits (``_bridge_events``), so no other domain needs a line for them; for
anything else call ``enqueue_deliveries`` in the transaction of the change.

Web form: the help centre's contact form (and its JSON twin) becomes a case through the same intake,
idempotent by the form's submission id, rate limited per client address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from html import unescape
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import nh3
from pydantic import ValidationError
from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from kefu.channels import intake
from kefu.channels.webhooks.models import (
    ChannelKind,
    DeliveryStatus,
    MessageDirection,
    WebFormThrottle,
    WebhookChannel,
    WebhookDelivery,
    WebhookMessage,
    WebhookSubscription,
)
from kefu.channels.webhooks.schemas import (
    EVENT_TYPES,
    ChannelCreate,
    InboundMessageIn,
    SubscriptionCreate,
    WebFormIn,
)
from kefu.core import audit, jobs, signing
from kefu.core import events as core_events
from kefu.core.errors import ApiError, Conflict, Invalid, NotFound
from kefu.core.policy import Principal
from kefu.db.base import dialect_insert, utcnow
from kefu.settings import Settings

log = logging.getLogger(__name__)

DELIVER_JOB = "webhooks.deliver"
REPLY_EVENT = "channel.reply"
USER_AGENT = "kefu-webhooks/1"
DEFAULT_IDENTITY_KIND = {ChannelKind.sms: "phone", ChannelKind.social: "social", ChannelKind.other: "sms"}
# The interactions' channel for each kind of webhook channel.
INTERACTION_CHANNEL = {ChannelKind.sms: "sms", ChannelKind.social: "social", ChannelKind.other: "social"}
# Events other domains publish with publish_on_commit that subscriptions may receive.
BRIDGED_EVENTS = frozenset(t for t in EVENT_TYPES if t.startswith("work_order."))
RETRYABLE_STATUSES = frozenset({408, 425, 429})
ERROR_MAX = 2000
DELIVERY_PAGE = 100


def _actor(principal: Principal) -> audit.Actor:
    return audit.Actor(
        user_id=principal.user_id, name=principal.username or "system", ip=principal.ip, user_agent=principal.user_agent
    )


def plain_text(text: str) -> str:
    """Text as people see it: markup from outside is removed (never rendered), line ends unified."""
    if "<" in text or "&" in text:
        text = unescape(nh3.clean(text, tags=set()))
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def work_order_number(work_order_id: int | None) -> str | None:
    from kefu.tickets.models import WorkOrder

    return None if work_order_id is None else WorkOrder(id=work_order_id).number


# --- inbound channels: configuration ----------------------------------------------------------------------
def endpoint_path(channel: WebhookChannel) -> str:
    return f"/api/v1/channels/{channel.code}/messages"


async def _check_queue(db: AsyncSession, code: str | None) -> None:
    if code:
        from kefu.routing import service as routing

        await routing.queue_by_code(db, code)


def _check_identity(kind: str, prefix: str | None) -> None:
    if prefix and kind != "social":
        raise Invalid("identity_prefix is for social identities only", {"field": "identity_prefix"})


async def list_channels(db: AsyncSession) -> list[WebhookChannel]:
    return list((await db.scalars(select(WebhookChannel).order_by(WebhookChannel.code))).all())


async def get_channel(db: AsyncSession, channel_id: int, *, for_update: bool = False) -> WebhookChannel:
    stmt = select(WebhookChannel).where(WebhookChannel.id == channel_id)
    if for_update:
        stmt = stmt.with_for_update()
    channel = await db.scalar(stmt)
    if channel is None:
        raise NotFound("webhook channel")
    return channel


async def channel_by_code(db: AsyncSession, code: str) -> WebhookChannel:
    """The active channel a gateway posts to (404 for unknown and switched-off ones alike)."""
    channel = await db.scalar(select(WebhookChannel).where(WebhookChannel.code == code[:64]))
    if channel is None or not channel.active:
        raise NotFound("channel")
    return channel


async def create_channel(db: AsyncSession, principal: Principal, data: ChannelCreate) -> WebhookChannel:
    if await db.scalar(select(WebhookChannel.id).where(WebhookChannel.code == data.code)) is not None:
        raise Conflict("a channel with this code exists", {"field": "code"})
    identity_kind = data.identity_kind or DEFAULT_IDENTITY_KIND[ChannelKind(data.kind)]
    _check_identity(identity_kind, data.identity_prefix)
    await _check_queue(db, data.queue)
    channel = WebhookChannel(
        code=data.code,
        kind=data.kind,
        name=data.name,
        secret=data.secret,
        queue=data.queue or None,
        identity_kind=identity_kind,
        identity_prefix=data.identity_prefix,
        outbound_url=data.outbound_url,
        conversation_window_seconds=data.conversation_window_seconds,
        active=data.active,
    )
    db.add(channel)
    await db.flush()
    await audit.record(
        db,
        _actor(principal),
        "webhook_channel.created",
        object_type="webhook_channel",
        object_id=channel.id,
        details={"code": channel.code, "kind": channel.kind},
    )
    return channel


CHANNEL_FIELDS = (
    "name",
    "queue",
    "identity_kind",
    "identity_prefix",
    "outbound_url",
    "conversation_window_seconds",
    "active",
)


async def update_channel(
    db: AsyncSession, principal: Principal, channel_id: int, changes: dict[str, Any]
) -> WebhookChannel:
    """``changes``: the fields sent (``ChannelUpdate.model_dump(exclude_unset=True)``); a missing or
    empty secret keeps the current one."""
    channel = await get_channel(db, channel_id, for_update=True)
    secret = changes.pop("secret", None)
    changed = []
    for name in CHANNEL_FIELDS:
        if name not in changes:
            continue
        value = changes[name]
        if name in ("name", "identity_kind", "conversation_window_seconds", "active") and value is None:
            raise Invalid(f"{name} cannot be empty", {"field": name})
        if name == "queue":
            value = value or None
            await _check_queue(db, value)
        if getattr(channel, name) != value:
            setattr(channel, name, value)
            changed.append(name)
    _check_identity(channel.identity_kind, channel.identity_prefix)
    if secret:
        channel.secret = secret
        changed.append("secret")  # that it changed, never what to
    await _record_changes(db, principal, channel, "webhook_channel", changed)
    return channel


async def _record_changes(
    db: AsyncSession, principal: Principal, row: Any, object_type: str, changed: list[str]
) -> None:
    """Stamps and audits an edit of a channel or subscription (the names of the fields changed, never a
    secret's value)."""
    if changed:
        row.updated_at = utcnow()
        await audit.record(
            db,
            _actor(principal),
            f"{object_type}.updated",
            object_type=object_type,
            object_id=row.id,
            details={"fields": changed},
        )
    await db.flush()


# --- inbound messages ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedMessage:
    """A validated inbound message with what is derived from it alone."""

    message: InboundMessageIn
    customer_address: str  # the normalized identity value
    conversation_key: str
    text: str  # plain text


@dataclass
class ReceivedMessage:
    message_id: str
    status: str  # "created" or "duplicate"
    conversation: str
    interaction_id: int | None
    work_order_id: int | None

    @property
    def work_order_number(self) -> str | None:
        return work_order_number(self.work_order_id)


def _zone(settings: Settings) -> ZoneInfo:
    try:
        return ZoneInfo(settings.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def customer_address(channel: WebhookChannel, raw: str) -> str:
    from kefu.customers.identities import normalize_identity

    value = f"{channel.identity_prefix}:{raw}" if channel.identity_prefix else raw
    return normalize_identity(channel.identity_kind, value)


def conversation_key(channel: WebhookChannel, message: InboundMessageIn, address: str, zone: ZoneInfo) -> str:
    """The conversation a message belongs to, from the message alone (never from arrival order)."""
    if message.conversation_id:
        key = f"c:{message.conversation_id}"
    else:
        offset = message.sent_at.astimezone(zone).utcoffset() or timedelta(0)
        local_seconds = message.sent_at.timestamp() + offset.total_seconds()
        key = f"s:{address}:{int(local_seconds // channel.conversation_window_seconds)}"
    if len(key) > 200:
        key = "h:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def _problem(index: int, field_name: str | None, message: str) -> dict[str, Any]:
    return {"index": index, "field": field_name, "message": message}


def prepare_batch(channel: WebhookChannel, body: bytes, settings: Settings) -> list[PreparedMessage]:
    """Parse and validate a request body (one message or a list). Every problem is reported with the
    message's index and field; one bad message refuses the whole request, so nothing half-lands."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "request body is not valid JSON") from None
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise Invalid("the request holds no message", {"field": None})
    if len(items) > settings.webhooks_max_batch:
        raise Invalid(f"at most {settings.webhooks_max_batch} messages per request", {"field": None})
    zone = _zone(settings)
    latest = utcnow() + timedelta(seconds=settings.webhooks_signature_tolerance_seconds)
    problems: list[dict[str, Any]] = []
    prepared: dict[str, PreparedMessage] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(_problem(index, None, "a message must be a JSON object"))
            continue
        try:
            message = InboundMessageIn.model_validate(item)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"]) or None
                problems.append(_problem(index, where, error["msg"]))
            continue
        if message.sent_at > latest:
            problems.append(_problem(index, "sent_at", "sent_at is in the future"))
            continue
        try:
            address = customer_address(channel, message.sender)
        except Invalid as exc:
            problems.append(_problem(index, "from", exc.message))
            continue
        # The same message twice in one batch is one message.
        prepared.setdefault(
            message.message_id,
            PreparedMessage(
                message, address, conversation_key(channel, message, address, zone), plain_text(message.text)
            ),
        )
    if problems:
        first = problems[0]
        raise Invalid(
            f"message {first['index']} is invalid: {first['field'] or 'body'}: {first['message']}",
            {"index": first["index"], "field": first["field"], "errors": problems[:200]},
        )
    # A fixed order: two concurrent batches lock the same rows in the same order (no deadlock).
    return sorted(prepared.values(), key=lambda p: (p.message.sent_at, p.message.message_id))


def _external_id(channel: WebhookChannel, key: str) -> str:
    external = f"{channel.code}:{key}"
    return external if len(external) <= 255 else f"{channel.code}:h:{hashlib.sha256(key.encode()).hexdigest()}"


def _comment_body(channel: WebhookChannel, prepared: PreparedMessage) -> str:
    message = prepared.message
    sent = message.sent_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"[{channel.name} · {message.sender} · {sent}]"]
    if prepared.text:
        lines.append(prepared.text)
    for attachment in message.attachments:
        lines.append(f"📎 {attachment.name} <{attachment.url}>")
    return "\n".join(lines)


async def _existing_message(db: AsyncSession, channel_id: int, message_id: str) -> WebhookMessage | None:
    return await db.scalar(
        select(WebhookMessage).where(WebhookMessage.channel_id == channel_id, WebhookMessage.message_id == message_id)
    )


async def receive_message(
    db: AsyncSession, settings: Settings, channel: WebhookChannel, prepared: PreparedMessage
) -> ReceivedMessage:
    """Store one inbound message once, in the caller's transaction; a repeat changes nothing."""
    from kefu.tickets import service as tickets

    message = prepared.message
    values = {
        "channel_id": channel.id,
        "message_id": message.message_id,
        "direction": MessageDirection.inbound,
        "customer_address": prepared.customer_address,
        "customer_raw": message.sender,
        "channel_address": message.to,
        "text": prepared.text,
        "attachments": [a.model_dump() for a in message.attachments],
        "external_conversation_id": message.conversation_id,
        "conversation_key": prepared.conversation_key,
        "sent_at": message.sent_at,
        "received_at": utcnow(),
    }
    # The claim comes first: a concurrent delivery of the same message waits here for ours to commit
    # (PostgreSQL) or for the single writer (SQLite), then inserts nothing and reports a duplicate.
    inserted = await db.scalar(
        dialect_insert(db)(WebhookMessage)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["channel_id", "message_id"])
        .returning(WebhookMessage.id)
    )
    if inserted is None:
        existing = await _existing_message(db, channel.id, message.message_id)
        assert existing is not None  # the conflict proves it is there
        return ReceivedMessage(
            message.message_id, "duplicate", existing.conversation_key, existing.interaction_id, existing.work_order_id
        )
    interaction_channel = INTERACTION_CHANNEL[ChannelKind(channel.kind)]
    contact = intake.InboundContact(
        channel=interaction_channel,
        external_id=_external_id(channel, prepared.conversation_key),
        identity_kind=channel.identity_kind,
        identity_value=prepared.customer_address,
        display_name=message.sender,
        # Everything here comes from what the whole conversation shares, never from the message that
        # happened to arrive first: any delivery order gives the same interaction and case.
        subject=channel.name,
        case_title=f"{channel.name}: {message.sender}",
        queue=channel.queue,
        attributes={"webhook_channel": channel.code, "conversation": prepared.conversation_key},
    )
    result = await intake.receive_contact(db, contact)
    work_order_id = result.work_order_id
    if work_order_id is not None and not result.created:
        # A later message of the conversation: its case, followed through merges.
        named = intake.InboundContact(channel=interaction_channel, external_id=None, work_order_id=work_order_id)
        case, _ = await intake.case_for(db, named, result.customer_id)
        work_order_id = case.id if case is not None else work_order_id
    comment_id = None
    if work_order_id is not None:
        comment = await tickets.add_comment(
            db, intake.CHANNEL_PRINCIPAL, work_order_id, _comment_body(channel, prepared), internal=False
        )
        comment_id = comment.id
    row = await db.get(WebhookMessage, inserted)
    assert row is not None
    row.customer_id = result.customer_id
    row.interaction_id = result.interaction.id
    row.work_order_id = work_order_id
    row.comment_id = comment_id
    await db.flush()
    data = {
        "channel": channel.code,
        "message_id": message.message_id,
        "from": message.sender,
        "to": message.to,
        "text": prepared.text,
        "sent_at": message.sent_at.isoformat(),
        "conversation": prepared.conversation_key,
        "interaction_id": result.interaction.id,
        "work_order_id": work_order_id,
        "customer_id": result.customer_id,
    }
    await enqueue_deliveries(db, f"{interaction_channel}.message", data, key=f"message:{inserted}")
    if result.created:
        await enqueue_deliveries(
            db,
            "interaction.created",
            {
                "interaction_id": result.interaction.id,
                "channel": interaction_channel,
                "customer_id": result.customer_id,
                "work_order_id": work_order_id,
            },
            key=f"interaction:{result.interaction.id}",
        )
    return ReceivedMessage(
        message.message_id, "created", prepared.conversation_key, result.interaction.id, work_order_id
    )


async def receive_batch(
    db: AsyncSession, settings: Settings, channel: WebhookChannel, batch: list[PreparedMessage]
) -> list[ReceivedMessage]:
    return [await receive_message(db, settings, channel, prepared) for prepared in batch]


@dataclass
class ShownMessage:
    """A message as lists show it: ``seq`` numbers the conversation by (sent_at, message_id)."""

    seq: int
    message: WebhookMessage


async def list_messages(
    db: AsyncSession,
    *,
    channel_id: int | None = None,
    work_order_id: int | None = None,
    conversation: str | None = None,
    limit: int = 500,
) -> list[ShownMessage]:
    """Messages in conversation order: ``(sent_at, message_id)``, whatever order they arrived in."""
    stmt = select(WebhookMessage)
    if channel_id is not None:
        stmt = stmt.where(WebhookMessage.channel_id == channel_id)
    if work_order_id is not None:
        stmt = stmt.where(WebhookMessage.work_order_id == work_order_id)
    if conversation is not None:
        stmt = stmt.where(WebhookMessage.conversation_key == conversation)
    stmt = stmt.order_by(WebhookMessage.sent_at, WebhookMessage.message_id, WebhookMessage.id).limit(limit)
    rows = (await db.scalars(stmt)).all()
    return [ShownMessage(seq, row) for seq, row in enumerate(rows, start=1)]


# --- outbound: subscriptions ----------------------------------------------------------------------------
def _wants(subscription: WebhookSubscription, event_type: str) -> bool:
    return subscription.active and ("*" in subscription.event_types or event_type in subscription.event_types)


async def list_subscriptions(db: AsyncSession) -> list[WebhookSubscription]:
    return list((await db.scalars(select(WebhookSubscription).order_by(WebhookSubscription.id))).all())


async def get_subscription(db: AsyncSession, subscription_id: int, *, for_update: bool = False) -> WebhookSubscription:
    stmt = select(WebhookSubscription).where(WebhookSubscription.id == subscription_id)
    if for_update:
        stmt = stmt.with_for_update()
    subscription = await db.scalar(stmt)
    if subscription is None:
        raise NotFound("webhook subscription")
    return subscription


async def create_subscription(db: AsyncSession, principal: Principal, data: SubscriptionCreate) -> WebhookSubscription:
    subscription = WebhookSubscription(
        name=data.name, url=data.url, secret=data.secret, event_types=list(data.event_types), active=data.active
    )
    db.add(subscription)
    await db.flush()
    await audit.record(
        db,
        _actor(principal),
        "webhook_subscription.created",
        object_type="webhook_subscription",
        object_id=subscription.id,
        details={"url": subscription.url, "event_types": subscription.event_types},
    )
    return subscription


async def update_subscription(
    db: AsyncSession, principal: Principal, subscription_id: int, changes: dict[str, Any]
) -> WebhookSubscription:
    subscription = await get_subscription(db, subscription_id, for_update=True)
    secret = changes.pop("secret", None)
    changed = []
    for name in ("name", "url", "event_types", "active"):
        if name not in changes:
            continue
        if changes[name] is None:
            raise Invalid(f"{name} cannot be empty", {"field": name})
        if getattr(subscription, name) != changes[name]:
            setattr(subscription, name, changes[name])
            changed.append(name)
    if secret:
        subscription.secret = secret
        changed.append("secret")
    await _record_changes(db, principal, subscription, "webhook_subscription", changed)
    return subscription


# --- outbound: deliveries ---------------------------------------------------------------------------------
def _delivery_id(subscription_id: int, event_type: str, key: str | None) -> str:
    if key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{subscription_id}\x00{event_type}\x00{key}".encode()).hexdigest()[:32]


def _envelope(delivery_id: str, event_type: str, data: dict[str, Any], at: str) -> dict[str, Any]:
    return {"id": delivery_id, "type": event_type, "occurred_at": at, "data": data}


async def enqueue_deliveries(
    db: AsyncSession, event_type: str, payload: dict[str, Any], *, key: str | None = None
) -> list[str]:
    """Queue ``payload`` for every active subscription that wants ``event_type``, in the caller's
    transaction (it is sent only if the change commits). With ``key`` (what the event is about, e.g.
    ``"interaction:42"``) the same event queued twice is delivered once. Returns the delivery ids."""
    subscriptions = [s for s in (await db.scalars(select(WebhookSubscription))).all() if _wants(s, event_type)]
    created: list[str] = []
    at = utcnow().isoformat()
    for subscription in subscriptions:
        delivery_id = _delivery_id(subscription.id, event_type, key)
        inserted = await db.scalar(
            dialect_insert(db)(WebhookDelivery)
            .values(
                delivery_id=delivery_id,
                subscription_id=subscription.id,
                event_type=event_type,
                payload=_envelope(delivery_id, event_type, payload, at),
                status=DeliveryStatus.pending,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["delivery_id"])
            .returning(WebhookDelivery.id)
        )
        if inserted is not None:
            await jobs.enqueue(db, DELIVER_JOB, {"delivery_id": delivery_id}, max_attempts=JOB_ATTEMPTS)
            created.append(delivery_id)
    return created


# A job failing (the database, not the receiver: receivers' failures are the delivery's own retries).
JOB_ATTEMPTS = 8


def _add_delivery_sync(session: Session, **values: Any) -> None:
    now = utcnow()
    session.add(WebhookDelivery(status=DeliveryStatus.pending, created_at=now, updated_at=now, **values))
    session.add(
        jobs.Job(
            kind=DELIVER_JOB,
            payload={"delivery_id": values["delivery_id"]},
            max_attempts=JOB_ATTEMPTS,
            run_at=now,
            created_at=now,
        )
    )


def _reply_sync(session: Session, event: core_events.Event) -> None:
    """An agent's public reply on a case that came in over a channel with an outbound URL goes out there."""
    from kefu.tickets.models import WorkOrderComment

    comment = session.get(WorkOrderComment, event.data.get("comment_id"))
    if comment is None or comment.internal or comment.author_id is None:
        return  # notes stay inside; customers' own messages (no author) are not echoed back
    row = session.execute(
        select(WebhookMessage, WebhookChannel)
        .join(WebhookChannel, WebhookChannel.id == WebhookMessage.channel_id)
        .where(
            WebhookMessage.work_order_id == comment.work_order_id,
            WebhookMessage.direction == MessageDirection.inbound,
        )
        .order_by(WebhookMessage.sent_at.desc(), WebhookMessage.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return
    last, channel = row
    if not channel.active or not channel.outbound_url:
        return
    now = utcnow()
    delivery_id = uuid.uuid4().hex
    message_id = f"kefu-{delivery_id}"
    text = comment.body
    session.add(
        WebhookMessage(
            channel_id=channel.id,
            message_id=message_id,
            direction=MessageDirection.outbound,
            customer_address=last.customer_address,
            customer_raw=last.customer_raw,
            channel_address=last.channel_address,
            text=text,
            attachments=[],
            external_conversation_id=last.external_conversation_id,
            conversation_key=last.conversation_key,
            sent_at=now,
            received_at=now,
            customer_id=last.customer_id,
            interaction_id=last.interaction_id,
            work_order_id=comment.work_order_id,
            comment_id=comment.id,
            delivery_id=delivery_id,
        )
    )
    data = {
        "message_id": message_id,
        "channel": channel.code,
        "to": last.customer_raw,
        "from": last.channel_address,
        "text": text,
        "sent_at": now.isoformat(),
        "conversation_id": last.external_conversation_id,
        "in_reply_to": last.message_id,
        "work_order": work_order_number(comment.work_order_id),
    }
    _add_delivery_sync(
        session,
        delivery_id=delivery_id,
        channel_id=channel.id,
        event_type=REPLY_EVENT,
        payload=_envelope(delivery_id, REPLY_EVENT, data, now.isoformat()),
    )


def _bridge(session: Session, events: list[core_events.Event]) -> None:
    subscriptions = session.execute(select(WebhookSubscription).where(WebhookSubscription.active)).scalars().all()
    for event in events:
        for subscription in subscriptions:
            if _wants(subscription, event.type):
                delivery_id = uuid.uuid4().hex
                _add_delivery_sync(
                    session,
                    delivery_id=delivery_id,
                    subscription_id=subscription.id,
                    event_type=event.type,
                    payload=_envelope(delivery_id, event.type, dict(event.data), event.at),
                )
        if event.type == "work_order.commented" and not event.data.get("internal"):
            _reply_sync(session, event)


@sa_event.listens_for(Session, "before_commit")
def _bridge_events(session: Session) -> None:
    """When a transaction commits, the events it queued with ``publish_on_commit`` that subscriptions
    may want become deliveries in that same transaction: both land, or neither does."""
    if session.get_nested_transaction() is not None:
        return  # a savepoint is released: the real commit comes later
    wanted = [event for event in core_events.queued_events(session) if event.type in BRIDGED_EVENTS]
    if wanted:
        _bridge(session, wanted)


async def list_deliveries(
    db: AsyncSession,
    *,
    status: str | None = None,
    subscription_id: int | None = None,
    channel_id: int | None = None,
    before_id: int | None = None,
    limit: int = DELIVERY_PAGE,
) -> list[WebhookDelivery]:
    stmt = select(WebhookDelivery)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    if subscription_id is not None:
        stmt = stmt.where(WebhookDelivery.subscription_id == subscription_id)
    if channel_id is not None:
        stmt = stmt.where(WebhookDelivery.channel_id == channel_id)
    if before_id is not None:
        stmt = stmt.where(WebhookDelivery.id < before_id)
    return list((await db.scalars(stmt.order_by(WebhookDelivery.id.desc()).limit(limit))).all())


async def get_delivery(db: AsyncSession, delivery_pk: int, *, for_update: bool = False) -> WebhookDelivery:
    stmt = select(WebhookDelivery).where(WebhookDelivery.id == delivery_pk)
    if for_update:
        stmt = stmt.with_for_update()
    delivery = await db.scalar(stmt)
    if delivery is None:
        raise NotFound("webhook delivery")
    return delivery


async def retry_delivery(db: AsyncSession, principal: Principal, delivery_pk: int) -> WebhookDelivery:
    """Send a dead delivery again (same delivery id): a fresh round of attempts."""
    delivery = await get_delivery(db, delivery_pk, for_update=True)
    if delivery.status != DeliveryStatus.dead:
        raise Conflict("only a dead delivery can be retried", {"status": delivery.status})
    delivery.status = DeliveryStatus.pending
    delivery.attempts = 0
    delivery.next_attempt_at = utcnow()
    delivery.updated_at = utcnow()
    await jobs.enqueue(db, DELIVER_JOB, {"delivery_id": delivery.delivery_id}, max_attempts=JOB_ATTEMPTS)
    await audit.record(
        db,
        _actor(principal),
        "webhook_delivery.retried",
        object_type="webhook_delivery",
        object_id=delivery.id,
        details={"delivery_id": delivery.delivery_id},
    )
    await db.flush()
    return delivery


def retry_delay(settings: Settings, attempts: int) -> int:
    """base, 2 x base, 4 x base ... capped at an hour."""
    return int(min(3600, settings.webhooks_retry_base_seconds * 2 ** max(0, attempts - 1)))


async def _target(db: AsyncSession, delivery: WebhookDelivery) -> tuple[str, str] | str:
    """(url, secret) to post to, or why there is none now."""
    if delivery.subscription_id is not None:
        subscription = await db.get(WebhookSubscription, delivery.subscription_id)
        if subscription is None:
            return "the subscription was deleted"
        if not subscription.active:
            return "the subscription is switched off"
        return subscription.url, subscription.secret
    if delivery.channel_id is not None:
        channel = await db.get(WebhookChannel, delivery.channel_id)
        if channel is None or not channel.outbound_url:
            return "the channel has no outbound URL"
        if not channel.active:
            return "the channel is switched off"
        return channel.outbound_url, channel.secret
    return "the delivery has no receiver"


@dataclass
class Outcome:
    delivered: bool
    retry: bool
    status: int | None = None
    error: str | None = None


async def refused_target(settings: Settings, url: str) -> str | None:
    """Why ``url`` may not receive deliveries (its host resolves into ``webhooks_refused_networks``: a
    request forged to reach kefu's own machine or a metadata service), or None. Checked before every
    attempt, so a name that later resolves elsewhere is caught then too."""
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.webhooks_refused_networks]
    if not networks:
        return None
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return None  # unresolvable now: the attempt fails like any connection error and is retried
    for *_rest, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if any(address in network for network in networks):
            return f"the receiver's address {address} is in a refused network (KEFU_WEBHOOKS_REFUSED_NETWORKS)"
    return None


async def _post(settings: Settings, url: str, secret: str, delivery: WebhookDelivery) -> Outcome:
    refused = await refused_target(settings, url)
    if refused is not None:
        return Outcome(False, False, None, refused)
    body = json.dumps(delivery.payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        signing.DELIVERY_HEADER: delivery.delivery_id,
        signing.EVENT_HEADER: delivery.event_type,
        **signing.signed_headers(secret, body),
    }
    try:
        async with httpx.AsyncClient(timeout=settings.webhooks_timeout_seconds, follow_redirects=False) as client:
            response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(False, True, None, f"{type(exc).__name__}: {exc}"[:ERROR_MAX])
    if 200 <= response.status_code < 300:
        return Outcome(True, False, response.status_code)
    detail = f"HTTP {response.status_code}: {response.text[:500]}"
    retry = response.status_code >= 500 or response.status_code in RETRYABLE_STATUSES
    return Outcome(False, retry, response.status_code, detail[:ERROR_MAX])


async def attempt_delivery(db: AsyncSession, settings: Settings, delivery_id: str) -> WebhookDelivery | None:
    """One attempt, in the caller's (the job's) transaction: delivered, retried later, or dead."""
    delivery = await db.scalar(select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id))
    if delivery is None or delivery.status != DeliveryStatus.pending:
        return delivery  # delivered or given up meanwhile: nothing to do
    now = utcnow()
    delivery.attempts += 1
    delivery.max_attempts = settings.webhooks_max_attempts
    delivery.updated_at = now
    target = await _target(db, delivery)
    if isinstance(target, str):
        outcome = Outcome(False, False, None, target)
    else:
        outcome = await _post(settings, target[0], target[1], delivery)
    delivery.last_status = outcome.status
    if outcome.delivered:
        delivery.status = DeliveryStatus.delivered
        delivery.delivered_at = utcnow()
        delivery.next_attempt_at = None
        delivery.last_error = None
    elif outcome.retry and delivery.attempts < settings.webhooks_max_attempts:
        delivery.last_error = outcome.error
        delivery.next_attempt_at = utcnow() + timedelta(seconds=retry_delay(settings, delivery.attempts))
        await jobs.enqueue(
            db,
            DELIVER_JOB,
            {"delivery_id": delivery.delivery_id},
            run_at=delivery.next_attempt_at,
            max_attempts=JOB_ATTEMPTS,
        )
    else:
        delivery.status = DeliveryStatus.dead
        delivery.last_error = outcome.error
        delivery.next_attempt_at = None
        log.warning(
            "webhook delivery is dead",
            extra={"delivery_id": delivery.delivery_id, "event_type": delivery.event_type, "status": outcome.status},
        )
    await db.flush()
    return delivery


@jobs.job_handler(DELIVER_JOB)
async def _deliver_job(db: AsyncSession, job: jobs.Job, settings: Settings) -> None:
    await attempt_delivery(db, settings, str(job.payload.get("delivery_id", "")))


# --- the help-centre web form ----------------------------------------------------------------------------
async def check_form_rate(db: AsyncSession, settings: Settings, client_address: str) -> None:
    """Count a submission from ``client_address``; 429 once the window's allowance is used up. Run it in
    a transaction of its own, so the count stays whatever happens to the submission."""
    key = f"ip:{client_address}"[:160]
    now = utcnow()
    await db.execute(
        dialect_insert(db)(WebFormThrottle)
        .values(key=key, window_start=now, count=0)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    row = await db.scalar(
        select(WebFormThrottle)
        .where(WebFormThrottle.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert row is not None
    window = timedelta(seconds=settings.webhooks_form_rate_window_seconds)
    if now - row.window_start >= window:
        row.window_start, row.count = now, 0
    if row.count >= settings.webhooks_form_rate_limit:
        wait = max(1, int((row.window_start + window - now).total_seconds()) + 1)
        raise ApiError(
            429,
            "too_many_requests",
            "too many forms sent from this address; wait and retry",
            {"retry_after_seconds": wait},
            headers={"Retry-After": str(wait)},
        )
    row.count += 1
    await db.flush()


@dataclass
class FormAttachment:
    filename: str
    data: bytes = field(repr=False)


@dataclass
class FormResult:
    submission_id: str
    work_order_id: int | None
    created: bool

    @property
    def case_number(self) -> str | None:
        return work_order_number(self.work_order_id)


def decode_attachment(name: str, content_base64: str) -> FormAttachment:
    try:
        data = base64.b64decode(content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("the attachment is not valid base64", {"field": "attachment.content_base64"}) from None
    return FormAttachment(name, data)


async def submit_web_form(
    db: AsyncSession, settings: Settings, form: WebFormIn, attachment: FormAttachment | None = None
) -> FormResult:
    """A help-centre contact form becomes a case (or a message on the customer's open case), once per
    submission id. A filled honeypot is answered like a success, and nothing is stored."""
    from kefu.core import files
    from kefu.customers.identities import normalize_identity
    from kefu.tickets import attachments as ticket_attachments
    from kefu.tickets import service as tickets

    submission_id = form.submission_id or uuid.uuid4().hex
    if form.website:
        log.info("web form honeypot filled; dropped")
        return FormResult(submission_id, None, False)
    phone = None
    if form.phone:
        try:
            phone = normalize_identity("phone", form.phone)
        except Invalid as exc:
            raise Invalid(exc.message, {"field": "phone"}) from None
    if attachment is not None:
        try:
            files.check_size(attachment.data, settings.webhooks_form_attachment_max_bytes)
        except ApiError as exc:
            exc.details = {"field": "attachment"}
            raise
    subject = plain_text(form.subject) or form.subject
    message = plain_text(form.message)
    if not message:
        raise Invalid("the message is empty", {"field": "message"})
    contact = intake.InboundContact(
        channel="web_form",
        external_id=f"form:{submission_id}",
        identity_kind="email",
        identity_value=form.email,
        display_name=form.name,
        subject=subject,
        queue=settings.webhooks_form_queue or None,
        case_title=subject,
        case_description=message,
        attributes={"form": "help_contact", "name": form.name, "phone": phone},
    )
    if phone and hasattr(contact, "other_identities"):
        contact.other_identities = [("phone", phone)]
    result = await intake.receive_contact(db, contact)
    work_order_id = result.work_order_id
    if result.created and work_order_id is not None:
        if not result.case_created:
            # The customer's open case already exists: the form is a new message on it.
            await tickets.add_comment(
                db, intake.CHANNEL_PRINCIPAL, work_order_id, f"[{subject}]\n{message}", internal=False
            )
        if attachment is not None:
            await ticket_attachments.add(
                db,
                intake.CHANNEL_PRINCIPAL,
                work_order_id,
                filename=attachment.filename,
                data=attachment.data,
                max_bytes=settings.webhooks_form_attachment_max_bytes,
            )
        await enqueue_deliveries(
            db,
            "web_form.submitted",
            {
                "submission_id": submission_id,
                "interaction_id": result.interaction.id,
                "work_order_id": work_order_id,
                "customer_id": result.customer_id,
                "subject": subject,
            },
            key=f"web_form:{submission_id}",
        )
        await enqueue_deliveries(
            db,
            "interaction.created",
            {
                "interaction_id": result.interaction.id,
                "channel": "web_form",
                "customer_id": result.customer_id,
                "work_order_id": work_order_id,
            },
            key=f"interaction:{result.interaction.id}",
        )
    return FormResult(submission_id, work_order_id, result.created)
