"""REST routes of interactions and contact reasons: thin wrappers over ``interactions.service``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam, IdQuery, query_text
from kefu.db.session import get_db
from kefu.interactions import service
from kefu.interactions.schemas import (
    ArticleUseIn,
    ChannelName,
    ContactReasonIn,
    ContactReasonOut,
    ContactReasonUpdate,
    EventIn,
    InteractionCreate,
    InteractionOut,
    InteractionPage,
    Moment,
    StateName,
    WrapUpIn,
)

router = APIRouter(prefix="/api/v1", tags=["interactions"])
Db = Annotated[AsyncSession, Depends(get_db)]


@router.post("/interactions", status_code=201)
async def create_interaction(
    body: InteractionCreate,
    response: Response,
    db: Db,
    principal: Principal = authorize("interaction", "create"),
) -> InteractionOut:
    """201 with the new interaction; 200 with the stored one when the channel delivers the same
    (channel, external_id) again."""
    async with db.begin():
        view, created = await service.create_interaction(db, principal, body.new())
    if not created:
        response.status_code = 200
    return InteractionOut.of(view)


@router.get("/interactions")
async def list_interactions(
    db: Db,
    principal: Principal = authorize("interaction", "list"),
    customer_id: IdQuery | None = None,
    agent_id: IdQuery | None = None,
    channel: ChannelName | None = None,
    state: StateName | None = None,
    work_order_id: IdQuery | None = None,
    since: Moment | None = None,
    cursor: query_text(80) | None = None,  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> InteractionPage:
    position = service.Cursor.decode(cursor) if cursor else None
    views = await service.list_interactions(
        db,
        principal,
        service.InteractionFilter(
            customer_id=customer_id,
            agent_id=agent_id,
            channel=channel,
            state=state,
            work_order_id=work_order_id,
            since=since,
        ),
        cursor=position,
        limit=limit,
    )
    last = views[-1].interaction if len(views) == limit else None
    return InteractionPage(
        items=[InteractionOut.of(v) for v in views],
        next_cursor=service.Cursor(last.arrived_at, last.id).encode() if last is not None else None,
    )


@router.get("/interactions/{interaction_id}")
async def get_interaction(
    interaction_id: IdParam, db: Db, principal: Principal = authorize("interaction", "read", by_id=True)
) -> InteractionOut:
    return InteractionOut.of(await service.get_interaction(db, principal, interaction_id))


@router.post("/interactions/{interaction_id}/events")
async def record_event(
    interaction_id: IdParam,
    body: EventIn,
    db: Db,
    principal: Principal = authorize("interaction", "update"),
) -> InteractionOut:
    async with db.begin():
        view, _changed = await service.record_event(
            db, principal, interaction_id, body.event, at=body.at, agent_id=body.agent_id
        )
    return InteractionOut.of(view)


@router.patch("/interactions/{interaction_id}")
async def wrap_up(
    interaction_id: IdParam,
    body: WrapUpIn,
    db: Db,
    principal: Principal = authorize("interaction", "update"),
) -> InteractionOut:
    async with db.begin():
        view = await service.update_wrap_up(db, principal, interaction_id, body.model_dump(exclude_unset=True))
    return InteractionOut.of(view)


@router.post("/interactions/{interaction_id}/articles", status_code=201)
async def use_article(
    interaction_id: IdParam,
    body: ArticleUseIn,
    response: Response,
    db: Db,
    principal: Principal = authorize("interaction", "update"),
) -> InteractionOut:
    """201 when the article is newly noted on the interaction, 200 when it already was."""
    async with db.begin():
        view, added = await service.use_article(db, principal, interaction_id, body.article_id)
    if not added:
        response.status_code = 200
    return InteractionOut.of(view)


@router.get("/contact-reasons")
async def list_contact_reasons(
    db: Db,
    principal: Principal = authorize("contact_reason", "list"),
    include_inactive: Annotated[bool, Query(alias="all")] = False,
) -> list[ContactReasonOut]:
    """The reason tree; active reasons only unless ``?all=1``."""
    return [ContactReasonOut.of(n) for n in await service.reason_tree(db, include_inactive=include_inactive)]


@router.post("/contact-reasons", status_code=201)
async def create_contact_reason(
    body: ContactReasonIn, db: Db, principal: Principal = authorize("contact_reason", "manage")
) -> ContactReasonOut:
    async with db.begin():
        node = await service.create_reason(db, principal, **body.model_dump())
    return ContactReasonOut.of(node)


@router.patch("/contact-reasons/{reason_id}")
async def update_contact_reason(
    reason_id: IdParam,
    body: ContactReasonUpdate,
    db: Db,
    principal: Principal = authorize("contact_reason", "manage"),
) -> ContactReasonOut:
    async with db.begin():
        node = await service.update_reason(db, principal, reason_id, body.model_dump(exclude_unset=True))
    return ContactReasonOut.of(node)
