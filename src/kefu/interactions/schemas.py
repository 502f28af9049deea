"""API shapes of interactions and contact reasons."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, StringConstraints

from kefu.core.schemas import DbId, Name, RequestModel, ResponseModel, multi_line, single_line
from kefu.interactions import service
from kefu.interactions.models import Channel, Direction, InteractionState

ChannelName = Literal[tuple(c.value for c in Channel)]  # type: ignore[valid-type]
DirectionName = Literal[tuple(d.value for d in Direction)]  # type: ignore[valid-type]
StateName = Literal[tuple(s.value for s in InteractionState)]  # type: ignore[valid-type]
EventName = Literal[tuple(service.EVENT_FIELDS)]  # type: ignore[valid-type]
DispositionName = Literal[tuple(service.DISPOSITIONS)]  # type: ignore[valid-type]
IdentityKindName = Literal[tuple(service.IDENTITY_KINDS)]  # type: ignore[valid-type]


def _utc(value: datetime) -> datetime:
    # Far-off years overflow when moved to UTC; nothing real happened before 2000 or after 2200 anyway.
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range") from None
    if not 2000 <= value.year <= 2200:
        raise ValueError("time out of range (years 2000-2200)")
    return value


Moment = Annotated[AwareDatetime, AfterValidator(_utc)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(single_line)]
QueueName = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(single_line)]
Subject = Annotated[str, StringConstraints(max_length=300), AfterValidator(single_line)]
Summary = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(multi_line)]
IdentityValue = Annotated[str, StringConstraints(min_length=1, max_length=254), AfterValidator(single_line)]
ReasonCode = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Position = Annotated[int, Field(ge=-1_000_000, le=1_000_000)]


class IdentityIn(RequestModel):
    kind: IdentityKindName
    value: IdentityValue


class InteractionCreate(RequestModel):
    channel: ChannelName
    direction: DirectionName = "inbound"
    external_id: ExternalId | None = None
    identity: IdentityIn | None = None
    create_customer: bool = False
    customer_id: DbId | None = None
    # A routing queue's code: the contact is queued there and routed to the best agent.
    queue: QueueName | None = None
    # Added to the queue's priority while routing (higher is served first).
    priority: int = Field(default=0, ge=-100, le=100)
    team_id: DbId | None = None
    agent_id: DbId | None = None
    subject: Subject | None = None
    work_order_id: DbId | None = None
    arrived_at: Moment | None = None

    def new(self) -> service.NewInteraction:
        return service.NewInteraction(
            channel=self.channel,
            direction=self.direction,
            external_id=self.external_id,
            identity_kind=self.identity.kind if self.identity else None,
            identity_value=self.identity.value if self.identity else None,
            create_customer=self.create_customer,
            customer_id=self.customer_id,
            queue=self.queue,
            priority=self.priority,
            team_id=self.team_id,
            agent_id=self.agent_id,
            subject=self.subject,
            work_order_id=self.work_order_id,
            arrived_at=self.arrived_at,
        )


class EventIn(RequestModel):
    event: EventName
    at: Moment | None = None
    agent_id: DbId | None = None


class WrapUpIn(RequestModel):
    """Only the fields sent are changed; null clears one."""

    contact_reason_id: DbId | None = None
    disposition: DispositionName | None = None
    resolved_first_contact: bool | None = None
    summary: Summary | None = None
    work_order_id: DbId | None = None
    subject: Subject | None = None


class ArticleUseIn(RequestModel):
    article_id: DbId


class IdentityOut(BaseModel):
    kind: str
    value: str


class InteractionOut(ResponseModel):
    id: int
    channel: str
    direction: str
    external_id: str | None
    state: str
    customer_id: int | None
    customer_name: str | None
    identity: IdentityOut | None
    queue: str | None
    team_id: int | None
    agent_id: int | None
    agent_name: str | None
    work_order_id: int | None
    subject: str | None
    summary: str | None
    contact_reason_id: int | None
    contact_reason_name: str | None
    disposition: str | None
    resolved_first_contact: bool | None
    arrived_at: datetime
    queued_at: datetime | None
    offered_at: datetime | None
    answered_at: datetime | None
    abandoned_at: datetime | None
    ended_at: datetime | None
    wrap_up_ended_at: datetime | None
    created_by_id: int | None
    # Only on single reads (GET by id and writes): the knowledge articles used, in the order used.
    article_ids: list[int] | None = None

    @classmethod
    def of(cls, view: service.InteractionView) -> InteractionOut:
        i = view.interaction
        identity = (
            IdentityOut(kind=i.identity_kind, value=i.identity_value)
            if i.identity_kind is not None and i.identity_value is not None
            else None
        )
        return cls(
            id=i.id,
            channel=i.channel,
            direction=i.direction,
            external_id=i.external_id,
            state=i.state,
            customer_id=i.customer_id,
            customer_name=view.customer_name,
            identity=identity,
            queue=i.queue,
            team_id=i.team_id,
            agent_id=i.agent_id,
            agent_name=view.agent_name,
            work_order_id=i.work_order_id,
            subject=i.subject,
            summary=i.summary,
            contact_reason_id=i.contact_reason_id,
            contact_reason_name=view.reason_name,
            disposition=i.disposition,
            resolved_first_contact=i.resolved_first_contact,
            arrived_at=i.arrived_at,
            queued_at=i.queued_at,
            offered_at=i.offered_at,
            answered_at=i.answered_at,
            abandoned_at=i.abandoned_at,
            ended_at=i.ended_at,
            wrap_up_ended_at=i.wrap_up_ended_at,
            created_by_id=i.created_by_id,
            article_ids=view.article_ids,
        )


class InteractionPage(BaseModel):
    items: list[InteractionOut]
    # Pass as ``cursor`` for the next (older) page; None on the last page.
    next_cursor: str | None


class ContactReasonIn(RequestModel):
    code: ReasonCode
    name: Name
    parent_id: DbId | None = None
    position: Position = 0
    active: bool = True


class ContactReasonUpdate(RequestModel):
    """Only the fields sent are changed. ``parent_id: null`` moves the reason to the top level."""

    code: ReasonCode | None = None
    name: Name | None = None
    parent_id: DbId | None = None
    position: Position | None = None
    active: bool | None = None


class ContactReasonOut(ResponseModel):
    id: int
    parent_id: int | None
    code: str
    name: str
    active: bool
    position: int
    children: list[ContactReasonOut] = Field(default_factory=list)

    @classmethod
    def of(cls, node: service.ReasonNode) -> ContactReasonOut:
        r = node.reason
        return cls(
            id=r.id,
            parent_id=r.parent_id,
            code=r.code,
            name=r.name,
            active=r.active,
            position=r.position,
            children=[cls.of(child) for child in node.children],
        )
