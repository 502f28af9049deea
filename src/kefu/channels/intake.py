"""One path for every channel's inbound contact: identity -> customer -> interaction -> case -> queue.

Why one path: a customer who mails, then chats, then calls must land on the same open case whichever
channel comes first, and every channel must be idempotent by its own message/call id in the same way.

The case is the customer's open work order (new, open, pending, escalated or reopened) updated most
recently; a contact that carries its case (a mail reply token, a chat already linked) names it instead.
When the customer has no open case, one is opened, so the next contact on any channel finds it.

Channels act as ``CHANNEL_PRINCIPAL``: the system, not a signed-in user. Their own endpoints prove who
is calling (HMAC signatures, tokens) before calling in here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.policy import Principal
from kefu.interactions import service as interactions
from kefu.interactions.models import Direction, Interaction
from kefu.tickets.models import WorkOrder, WorkOrderStatus

CHANNEL_PRINCIPAL = Principal(user_id=None, username="channels", roles=frozenset({"admin"}), via="system")
OPEN_CASE_STATUSES = (
    WorkOrderStatus.new,
    WorkOrderStatus.open,
    WorkOrderStatus.pending,
    WorkOrderStatus.escalated,
    WorkOrderStatus.reopened,
)
CASE_TITLE_MAX = 200


@dataclass
class InboundContact:
    channel: str  # kefu.interactions.models.Channel
    external_id: str | None  # the channel's own id: Message-ID, chat id, call id, webhook message id
    identity_kind: str | None = None  # kefu.customers.models.IdentityKind
    identity_value: str | None = None
    display_name: str | None = None  # for a customer created from this contact
    # Further identities the contact gave (a pre-chat form's email and phone): the first one already
    # known decides the customer; the unknown ones are added to that customer, unverified.
    other_identities: list[tuple[str, str]] = field(default_factory=list)
    subject: str | None = None
    queue: str | None = None  # routing queue code; None: recorded, not routed
    priority: int = 0
    work_order_id: int | None = None  # the case the contact names itself (reply token, thread)
    open_case: bool = True  # attach to the customer's open case, opening one when there is none
    case_title: str | None = None  # for a new case; defaults to the subject
    case_description: str = ""
    case_type: str = "inquiry"
    arrived_at: datetime | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class IntakeResult:
    interaction: Interaction
    created: bool  # False: this channel id was delivered before; nothing changed
    customer_id: int | None
    work_order_id: int | None
    case_created: bool = False


async def open_case_of(db: AsyncSession, customer_id: int) -> WorkOrder | None:
    """The customer's open case: the open work order touched most recently (merged ones excluded)."""
    return await db.scalar(
        select(WorkOrder)
        .where(
            WorkOrder.customer_id == customer_id,
            WorkOrder.status.in_(OPEN_CASE_STATUSES),
            WorkOrder.merged_into_id.is_(None),
        )
        .order_by(WorkOrder.updated_at.desc(), WorkOrder.id.desc())
        .limit(1)
    )


async def _case_named(db: AsyncSession, work_order_id: int) -> WorkOrder | None:
    """A case a contact names, followed through merges to the one that holds everything now."""
    seen: set[int] = set()
    work_order = await db.get(WorkOrder, work_order_id)
    while work_order is not None and work_order.merged_into_id is not None and work_order.id not in seen:
        seen.add(work_order.id)
        work_order = await db.get(WorkOrder, work_order.merged_into_id)
    return work_order


async def _open_case(db: AsyncSession, contact: InboundContact, customer_id: int | None) -> WorkOrder:
    from kefu.tickets import service as tickets
    from kefu.tickets.schemas import WorkOrderCreate

    title = " ".join((contact.case_title or contact.subject or "").split())[:CASE_TITLE_MAX]
    if not title:
        title = f"{contact.channel}: {contact.display_name or contact.identity_value or contact.external_id or ''}"
        title = title.strip().rstrip(":")[:CASE_TITLE_MAX] or contact.channel
    data = WorkOrderCreate(
        type=contact.case_type,
        priority="normal",
        title=title,
        description=contact.case_description[:100_000],
        customer_id=customer_id,
        tags=[f"channel:{contact.channel}"],
    )
    return await tickets.create_work_order(db, CHANNEL_PRINCIPAL, data)


async def case_for(db: AsyncSession, contact: InboundContact, customer_id: int | None) -> tuple[WorkOrder | None, bool]:
    """The case a contact belongs to and whether it was opened now (see the module docstring)."""
    if contact.work_order_id is not None:
        named = await _case_named(db, contact.work_order_id)
        if named is not None:
            return named, False
    if not contact.open_case:
        return None, False
    if customer_id is not None:
        existing = await open_case_of(db, customer_id)
        if existing is not None:
            return existing, False
    return await _open_case(db, contact, customer_id), True


def _normalized(kind: str, value: str) -> str | None:
    from kefu.core.errors import Invalid
    from kefu.customers.identities import normalize_identity

    try:
        return normalize_identity(kind, value)
    except Invalid:
        return None


async def _known_customer(db: AsyncSession, identities: list[tuple[str, str]]) -> int | None:
    from kefu.customers import service as customers

    for kind, value in identities:
        customer = await customers.find_by_identity(db, kind, value)
        if customer is not None:
            return customer.id
    return None


async def _add_unknown_identities(db: AsyncSession, customer_id: int, identities: list[tuple[str, str]]) -> None:
    from kefu.core.errors import Conflict
    from kefu.customers import service as customers

    for kind, value in identities:
        try:
            await customers.add_identity(db, CHANNEL_PRINCIPAL, customer_id, kind, value)
        except Conflict:
            # Someone else's: an unverified form entry never moves an identity; a person merges if needed.
            continue


async def receive_contact(db: AsyncSession, contact: InboundContact) -> IntakeResult:
    """Record an inbound contact in the caller's transaction. The same (channel, external_id) again
    returns the stored contact with ``created=False`` and changes nothing (channels retry)."""
    others = [
        (kind, normalized)
        for kind, value in contact.other_identities
        if value and (normalized := _normalized(kind, value)) is not None
    ]
    known_customer_id = None
    if others:
        primary = (
            [(contact.identity_kind, contact.identity_value)]
            if contact.identity_kind and contact.identity_value
            else []
        )
        known_customer_id = await _known_customer(db, primary + others)
    new = interactions.NewInteraction(
        channel=contact.channel,
        direction=Direction.inbound,
        external_id=contact.external_id,
        identity_kind=contact.identity_kind if contact.identity_value else None,
        identity_value=contact.identity_value or None,
        create_customer=known_customer_id is None and bool(contact.identity_kind and contact.identity_value),
        customer_id=known_customer_id,
        queue=contact.queue,
        priority=contact.priority,
        subject=contact.subject[:300] if contact.subject else None,
        arrived_at=contact.arrived_at,
        attributes=dict(contact.attributes),
        display_name=contact.display_name,
    )
    view, created = await interactions.create_interaction(db, CHANNEL_PRINCIPAL, new)
    interaction = view.interaction
    if not created:
        return IntakeResult(interaction, False, interaction.customer_id, interaction.work_order_id)
    if others and interaction.customer_id is not None:
        await _add_unknown_identities(db, interaction.customer_id, others)
    case, case_created = await case_for(db, contact, interaction.customer_id)
    if case is not None:
        await interactions.link_work_order(db, interaction.id, case.id)
        interaction.work_order_id = case.id
    return IntakeResult(interaction, True, interaction.customer_id, case.id if case else None, case_created)
