"""What the agent desktop and the customer 360 page show and do, composed from the other domains' services.

Nothing here reads or writes another domain's tables: customers, interactions, work orders and the
knowledge base are reached through their services only, so their row-level rules (restricted work
orders, hidden interactions, article visibility) apply here exactly as in their APIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import Invalid, NotFound
from kefu.core.policy import Principal, allows
from kefu.customers import service as customers
from kefu.customers.models import Customer, CustomerIdentity, CustomerNote
from kefu.db.base import utcnow
from kefu.interactions import service as interactions
from kefu.interactions.models import Interaction
from kefu.knowledge import service as knowledge
from kefu.knowledge.content import plain_text
from kefu.knowledge.index import KnowledgeIndex
from kefu.routing import live as routing_live
from kefu.tickets import service as tickets
from kefu.tickets.models import OPEN_STATUSES, WorkOrder, WorkOrderComment, WorkOrderStatus, WorkOrderType

RECENT_CONTACTS = 5
TIMELINE_PAGE = 25
WORK_ORDERS_ON_360 = 100
NOTES_ON_360 = 50
KB_HITS = 6
ANSWER_CHARS = 4000  # an answer longer than this is cut for the reply box; the article link has it all
# Contacts that reached an agent but were not yet offered through routing (posted by the API with an
# agent): they are in the agent's hands too.
WORK_ORDER_TYPES = tuple(t.value for t in WorkOrderType)
RESOLVABLE = tuple(
    s.value for s in (WorkOrderStatus.new, WorkOrderStatus.open, WorkOrderStatus.pending, WorkOrderStatus.reopened)
)


# --- reading ---------------------------------------------------------------------------------------
@dataclass
class ContactLine:
    interaction: Interaction
    customer_name: str | None = None
    reason: str | None = None
    agent_name: str | None = None


@dataclass(frozen=True)
class ReasonOption:
    id: int
    name: str
    depth: int

    @property
    def label(self) -> str:
        # Indented with no-break spaces: a <select> shows the tree without collapsing them.
        return "\u00a0\u00a0\u00a0" * self.depth + self.name


@dataclass(frozen=True)
class ArticleRef:
    id: int
    title: str


@dataclass
class Pop:
    """The screen pop: the contact in hand and who is behind it."""

    interaction: Interaction
    customer: Customer | None
    identities: list[CustomerIdentity]
    organisation_name: str | None
    open_work_orders: list[WorkOrder]
    recent: list[ContactLine]
    last_reason: str | None
    reason: str | None
    work_order: WorkOrder | None
    replies: list[WorkOrderComment]
    articles_used: list[ArticleRef]
    reasons: list[ReasonOption]
    now: datetime
    dispositions: tuple[str, ...] = interactions.DISPOSITIONS
    work_order_types: tuple[str, ...] = WORK_ORDER_TYPES
    resolvable_statuses: tuple[str, ...] = RESOLVABLE


@dataclass
class Customer360:
    customer: Customer
    identities: list[CustomerIdentity]
    organisation_name: str | None
    attributes: list[tuple[str, str]]
    open_work_orders: list[WorkOrder]
    past_work_orders: list[WorkOrder]
    timeline: list[ContactLine]
    next_before: str | None
    paged: bool
    notes: list[CustomerNote]
    names: dict[int, str]
    now: datetime = field(default_factory=utcnow)


@dataclass
class KbAnswer:
    id: int
    title_html: str
    snippet_html: str
    answer: str
    used: bool = False


def _line(view: interactions.InteractionView) -> ContactLine:
    return ContactLine(view.interaction, view.customer_name, view.reason_name, view.agent_name)


async def contacts_in_hand(db: AsyncSession, principal: Principal) -> list[ContactLine]:
    """The agent's current contacts, newest first: offered, answered, in wrap-up, and those given to
    them directly that routing has not offered yet."""
    if principal.user_id is None:
        return []
    views = await interactions.current_for_agent(db, principal.user_id)
    ordered = sorted(views, key=lambda v: (v.interaction.arrived_at, v.interaction.id), reverse=True)
    return [_line(v) for v in ordered]


async def presence(db: AsyncSession, principal: Principal) -> routing_live.AgentPresence | None:
    """The agent's routing presence for the desk's status control (None for those who cannot set one)."""
    if principal.user_id is None or not allows(principal, "routing_presence", "update"):
        return None
    return await routing_live.presence_of(db, principal.user_id)


async def reason_options(db: AsyncSession) -> list[ReasonOption]:
    options: list[ReasonOption] = []

    def walk(nodes: list[interactions.ReasonNode], depth: int) -> None:
        for node in nodes:
            options.append(ReasonOption(node.reason.id, node.reason.name, depth))
            walk(node.children, depth + 1)

    walk(await interactions.reason_tree(db), 0)
    return options


async def _organisation_name(db: AsyncSession, principal: Principal, organisation_id: int | None) -> str | None:
    if organisation_id is None:
        return None
    found = await customers.list_organisations(db, principal, after_id=organisation_id - 1, limit=1)
    return found[0].name if found and found[0].id == organisation_id else None


async def _articles(db: AsyncSession, principal: Principal, article_ids: list[int]) -> list[ArticleRef]:
    refs = []
    for article_id in article_ids:
        try:
            view = await knowledge.get_article(db, principal, article_id)
        except NotFound:
            continue
        refs.append(ArticleRef(article_id, view.current.title))
    return refs


async def screen_pop(db: AsyncSession, principal: Principal, interaction_id: int) -> Pop:
    view = await interactions.get_interaction(db, principal, interaction_id)
    interaction = view.interaction
    customer: Customer | None = None
    open_work_orders: list[WorkOrder] = []
    recent: list[ContactLine] = []
    organisation_name = None
    if interaction.customer_id is not None:
        customer = await _survivor(db, principal, interaction.customer_id)
        organisation_name = await _organisation_name(db, principal, customer.organisation_id)
        rows = await tickets.work_orders_for_customer(db, principal, customer.id, limit=WORK_ORDERS_ON_360)
        open_work_orders = [r.work_order for r in rows if r.work_order.status in OPEN_STATUSES]
        earlier = await interactions.timeline_for_customer(db, principal, customer.id, limit=RECENT_CONTACTS + 1)
        recent = [_line(v) for v in earlier if v.interaction.id != interaction.id][:RECENT_CONTACTS]
    work_order = None
    replies: list[WorkOrderComment] = []
    if interaction.work_order_id is not None:
        try:
            work_order = await tickets.get_work_order(db, principal, interaction.work_order_id)
            replies = [c for c, _author in await tickets.list_comments(db, principal, work_order.id) if not c.internal]
        except NotFound:
            work_order = None
    return Pop(
        interaction=interaction,
        customer=customer,
        identities=list(customer.identities) if customer is not None else [],
        organisation_name=organisation_name,
        open_work_orders=open_work_orders,
        recent=recent,
        last_reason=next((r.reason for r in recent if r.reason), None),
        reason=view.reason_name,
        work_order=work_order,
        replies=replies,
        articles_used=await _articles(db, principal, view.article_ids or []),
        reasons=await reason_options(db),
        now=utcnow(),
    )


async def customer_360(
    db: AsyncSession, principal: Principal, customer_id: int, before: str | None = None
) -> Customer360:
    """The 360 page of a customer that was not merged (the caller redirects merged ones to the survivor)."""
    customer = await customers.get_customer(db, principal, customer_id)
    cursor = interactions.Cursor.decode(before) if before else None
    page = await interactions.timeline_for_customer(db, principal, customer.id, limit=TIMELINE_PAGE + 1, before=cursor)
    next_before = None
    if len(page) > TIMELINE_PAGE:
        last = page[TIMELINE_PAGE - 1].interaction
        next_before = interactions.Cursor(last.arrived_at, last.id).encode()
    rows = await tickets.work_orders_for_customer(db, principal, customer.id, limit=WORK_ORDERS_ON_360)
    notes, names = await customers.list_notes(db, principal, customer.id, limit=NOTES_ON_360)
    attributes = sorted((str(k), _show(v)) for k, v in (customer.attributes or {}).items())
    return Customer360(
        customer=customer,
        identities=list(customer.identities),
        organisation_name=await _organisation_name(db, principal, customer.organisation_id),
        attributes=attributes,
        open_work_orders=[r.work_order for r in rows if r.work_order.status in OPEN_STATUSES],
        past_work_orders=[r.work_order for r in rows if r.work_order.status not in OPEN_STATUSES],
        timeline=[_line(v) for v in page[:TIMELINE_PAGE]],
        next_before=next_before,
        paged=cursor is not None,
        notes=notes,
        names=names,
    )


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_show(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_show(v)}" for k, v in value.items())
    return "" if value is None else str(value)


async def kb_answers(
    db: AsyncSession, index: KnowledgeIndex, principal: Principal, query: str, interaction_id: int | None = None
) -> list[KbAnswer]:
    """Published answers for what the agent typed, each with its text to insert into the reply."""
    # Not written to the search log: this runs as the agent types, and every prefix of a question would
    # count as a search (and as a gap) in the knowledge reports.
    hits = index.search(principal, query, limit=KB_HITS)
    used: set[int] = set()
    if interaction_id is not None:
        try:
            used = set((await interactions.get_interaction(db, principal, interaction_id)).article_ids or [])
        except NotFound:
            used = set()
    answers = []
    for hit in hits:
        try:
            view = await knowledge.get_article(db, principal, int(hit.id))
        except NotFound:
            continue
        version = view.live or view.current
        text = plain_text(version.body_html).strip() if version.body_html else version.body_markdown.strip()
        answers.append(KbAnswer(int(hit.id), hit.title, hit.snippet, text[:ANSWER_CHARS], used=int(hit.id) in used))
    return answers


# --- doing -----------------------------------------------------------------------------------------
async def _handling(db: AsyncSession, principal: Principal, interaction_id: int) -> Interaction:
    """The agent is working this contact: record it as answered if nobody did (a contact given to the
    agent directly, without routing). Abandoned or finished contacts stay as they are."""
    view = await interactions.get_interaction(db, principal, interaction_id)
    interaction = view.interaction
    if interaction.answered_at is None and interaction.abandoned_at is None and interaction.ended_at is None:
        agent_id = None if interaction.agent_id is not None else principal.user_id
        view, _ = await interactions.record_event(db, principal, interaction.id, "answered", agent_id=agent_id)
        interaction = view.interaction
    return interaction


async def reply(
    db: AsyncSession,
    principal: Principal,
    interaction_id: int,
    body: str,
    *,
    work_order_id: int | None = None,
    new_work_order: Any = None,
) -> WorkOrder:
    """A public reply to the customer, on a work order of the contact. A contact without one gets one
    first: the customer's open work order ``work_order_id``, or ``new_work_order`` (a
    ``tickets.schemas.WorkOrderCreate``) made for the contact's customer."""
    interaction = await _handling(db, principal, interaction_id)
    target = interaction.work_order_id
    if target is None:
        if work_order_id is not None:
            work_order = await tickets.get_work_order(db, principal, work_order_id)
            if interaction.customer_id is not None and work_order.customer_id not in (None, interaction.customer_id):
                customer = await _survivor(db, principal, interaction.customer_id)
                if work_order.customer_id != customer.id:
                    raise Invalid("that work order belongs to another customer", {"field": "work_order_id"})
        elif new_work_order is not None:
            if not allows(principal, "work_order", "create"):
                raise Invalid("you may not create work orders", {"field": "work_order_id"})
            if interaction.customer_id is not None:
                customer = await _survivor(db, principal, interaction.customer_id)
                new_work_order = new_work_order.model_copy(update={"customer_id": customer.id})
            work_order = await tickets.create_work_order(db, principal, new_work_order)
        else:
            raise Invalid("choose the work order to reply on", {"field": "work_order_id"})
        await interactions.update_wrap_up(db, principal, interaction.id, {"work_order_id": work_order.id})
        target = work_order.id
    await tickets.add_comment(db, principal, target, body, internal=False)
    return await tickets.get_work_order(db, principal, target)


async def _survivor(db: AsyncSession, principal: Principal, customer_id: int) -> Customer:
    return await customers.survivor_of(db, await customers.get_customer(db, principal, customer_id))


async def wrap_up(
    db: AsyncSession,
    principal: Principal,
    interaction_id: int,
    *,
    contact_reason_id: int,
    disposition: str | None,
    resolved_first_contact: bool,
    resolve_work_order: bool,
) -> Interaction:
    """End the contact, record its reason and outcome, end wrap-up, and resolve its work order if asked."""
    interaction = await _handling(db, principal, interaction_id)
    if interaction.abandoned_at is None and interaction.ended_at is None:
        await interactions.record_event(db, principal, interaction.id, "ended")
    changes: dict[str, Any] = {
        "contact_reason_id": contact_reason_id,
        "disposition": disposition,
        "resolved_first_contact": resolved_first_contact,
    }
    view = await interactions.update_wrap_up(db, principal, interaction.id, changes)
    if view.interaction.ended_at is not None and view.interaction.wrap_up_ended_at is None:
        view, _ = await interactions.record_event(db, principal, interaction.id, "wrap_up_ended")
    if resolve_work_order:
        if view.interaction.work_order_id is None:
            raise Invalid("this contact has no work order to resolve")
        if not allows(principal, "work_order", "update"):
            raise Invalid("you may not change work orders")
        work_order = await tickets.get_work_order(db, principal, view.interaction.work_order_id)
        if work_order.status != WorkOrderStatus.resolved:
            await tickets.set_status(
                db, principal, work_order.id, WorkOrderStatus.resolved, reason="resolved at wrap-up"
            )
    return view.interaction


async def use_article(db: AsyncSession, principal: Principal, interaction_id: int, article_id: int) -> bool:
    _, added = await interactions.use_article(db, principal, interaction_id, article_id)
    return added


async def add_note(db: AsyncSession, principal: Principal, customer_id: int, body: str) -> CustomerNote:
    return await customers.add_note(db, principal, customer_id, body)
