"""REST routes of work orders: lifecycle, comments, tags, links, merges, attachments, macros, views,
custom fields and suggestion forwards. Thin wrappers over ``tickets.service`` and its helpers."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.errors import Invalid
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam, IdQuery, query_text, single_line
from kefu.db.base import utcnow
from kefu.db.session import get_db
from kefu.identity.service import actor_of
from kefu.tickets import attachments, export, macros, service
from kefu.tickets.models import WorkOrder, WorkOrderComment
from kefu.tickets.schemas import (
    AnswerIn,
    ApplyMacroIn,
    ApplyMacroOut,
    AssignIn,
    AttachmentOut,
    CommentIn,
    CommentOut,
    EventOut,
    FieldCreate,
    FieldOut,
    FieldUpdate,
    ForwardIn,
    ForwardOut,
    LinkIn,
    LinkOut,
    MacroCreate,
    MacroOut,
    MacroUpdate,
    MergeIn,
    PriorityName,
    RenderIn,
    RenderOut,
    SavedViewIn,
    SavedViewOut,
    StatusIn,
    StatusName,
    TagsIn,
    TypeName,
    ViewName,
    WorkOrderCreate,
    WorkOrderItem,
    WorkOrderOut,
    WorkOrderPage,
    WorkOrderUpdate,
)

router = APIRouter(prefix="/api/v1", tags=["work orders"])
Db = Annotated[AsyncSession, Depends(get_db)]
TagParam = Annotated[str, Path(min_length=1, max_length=64), AfterValidator(single_line)]
Cursor = Annotated[str, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")]


# --- shapes ------------------------------------------------------------------------------------------
def item_of(row: service.WorkOrderRow) -> WorkOrderItem:
    wo = row.work_order
    return WorkOrderItem(
        id=wo.id,
        number=wo.number,
        type=wo.type,
        status=wo.status,
        priority=wo.priority,
        title=wo.title,
        customer_id=wo.customer_id,
        customer_name=row.customer_name,
        team_id=wo.team_id,
        team_name=row.team_name,
        assignee_id=wo.assignee_id,
        assignee_name=row.assignee_name,
        restricted=wo.restricted,
        tags=row.tags,
        resolution_due_at=wo.resolution_due_at,
        created_at=wo.created_at,
        updated_at=wo.updated_at,
    )


def out_of(row: service.WorkOrderRow) -> WorkOrderOut:
    out = WorkOrderOut.model_validate(row.work_order)
    return out.model_copy(
        update={
            "customer_name": row.customer_name,
            "team_name": row.team_name,
            "assignee_name": row.assignee_name,
            "tags": row.tags,
        }
    )


async def _answer(db: AsyncSession, principal: Principal, work_order: WorkOrder) -> WorkOrderOut:
    """The work order as it now is. Read with the system's eyes: the caller may just have handed a
    restricted work order to another team, and the answer to a successful write is still due."""
    row = await service.row_of(db, Principal(user_id=principal.user_id, roles=frozenset({"admin"})), work_order.id)
    return out_of(row)


def comment_out(comment: WorkOrderComment, author_name: str | None = None) -> CommentOut:
    return CommentOut.model_validate(comment).model_copy(update={"author_name": author_name})


def filter_of(
    view: ViewName = "all-visible",
    status: Annotated[list[StatusName] | None, Query(max_length=7)] = None,
    type: TypeName | None = None,  # noqa: A002 - the field's name in the API
    priority: PriorityName | None = None,
    team_id: IdQuery | None = None,
    assignee_id: IdQuery | None = None,
    customer_id: IdQuery | None = None,
    tag: query_text(64) | None = None,  # type: ignore[valid-type]
    q: query_text(200) = "",  # type: ignore[valid-type]
    created_from: date | None = None,
    created_to: date | None = None,
) -> service.WorkOrderFilter:
    return service.WorkOrderFilter(
        view=view,
        status=list(status or []),
        type=type,
        priority=priority,
        team_id=team_id,
        assignee_id=assignee_id,
        customer_id=customer_id,
        tag=tag,
        q=q,
        created_from=created_from,
        created_to=created_to,
    )


Filter = Annotated[service.WorkOrderFilter, Depends(filter_of)]


# --- lists and export --------------------------------------------------------------------------------
@router.get("/work-orders")
async def list_work_orders(
    db: Db,
    flt: Filter,
    principal: Principal = authorize("work_order", "list"),
    cursor: Cursor = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> WorkOrderPage:
    rows, next_cursor = await service.list_work_orders(db, principal, flt, cursor or None, limit)
    return WorkOrderPage(items=[item_of(r) for r in rows], next_cursor=next_cursor)


@router.get("/work-orders/export")
async def export_work_orders(
    request: Request, db: Db, flt: Filter, principal: Principal = authorize("work_order", "export")
) -> StreamingResponse:
    service.filter_clauses(principal, flt, utcnow())  # a bad filter fails before the stream starts
    async with db.begin():
        await audit.record(
            db,
            actor_of(principal),
            "work_order.export",
            object_type="work_order",
            details={"view": flt.view, "status": flt.status, "q": flt.q[:200]},
        )
    return StreamingResponse(
        export.csv_chunks(request.app.state.session_factory, principal, flt),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="work-orders.csv"', "X-Content-Type-Options": "nosniff"},
    )


@router.get("/work-orders/search")
async def search_work_orders(
    db: Db,
    q: query_text(200, min_length=1),  # type: ignore[valid-type]
    principal: Principal = authorize("work_order", "search"),
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> list[WorkOrderItem]:
    """Quick look-up for the desktop's search box: a number (WO00000123 or 123) or words of the title."""
    rows, _ = await service.list_work_orders(db, principal, service.WorkOrderFilter(q=q), None, limit)
    return [item_of(r) for r in rows]


# --- one work order ----------------------------------------------------------------------------------
@router.post("/work-orders", status_code=201)
async def create_work_order(
    body: WorkOrderCreate, db: Db, principal: Principal = authorize("work_order", "create")
) -> WorkOrderOut:
    async with db.begin():
        work_order = await service.create_work_order(db, principal, body)
        return await _answer(db, principal, work_order)


@router.get("/work-orders/{work_order_id}")
async def get_work_order(
    work_order_id: IdParam, db: Db, principal: Principal = authorize("work_order", "read", by_id=True)
) -> WorkOrderOut:
    return out_of(await service.row_of(db, principal, work_order_id))


@router.patch("/work-orders/{work_order_id}")
async def update_work_order(
    work_order_id: IdParam,
    body: WorkOrderUpdate,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> WorkOrderOut:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise Invalid("nothing to change")
    async with db.begin():
        work_order = await service.update_work_order(db, principal, work_order_id, changes)
        return await _answer(db, principal, work_order)


@router.post("/work-orders/{work_order_id}/status")
async def change_status(
    work_order_id: IdParam,
    body: StatusIn,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> WorkOrderOut:
    async with db.begin():
        work_order = await service.set_status(db, principal, work_order_id, body.status, body.reason)
        return await _answer(db, principal, work_order)


@router.post("/work-orders/{work_order_id}/assign")
async def assign(
    work_order_id: IdParam,
    body: AssignIn,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> WorkOrderOut:
    async with db.begin():
        work_order = await service.assign(db, principal, work_order_id, body.assignee_id, body.team_id)
        return await _answer(db, principal, work_order)


@router.get("/work-orders/{work_order_id}/comments")
async def list_comments(
    work_order_id: IdParam, db: Db, principal: Principal = authorize("work_order", "read", by_id=True)
) -> list[CommentOut]:
    return [comment_out(c, name) for c, name in await service.list_comments(db, principal, work_order_id)]


@router.post("/work-orders/{work_order_id}/comments", status_code=201)
async def add_comment(
    work_order_id: IdParam,
    body: CommentIn,
    db: Db,
    principal: Principal = authorize("work_order", "comment", by_id=True),
) -> CommentOut:
    async with db.begin():
        comment = await service.add_comment(db, principal, work_order_id, body.body, internal=body.internal)
    return comment_out(comment, principal.display_name or principal.username)


@router.get("/work-orders/{work_order_id}/history")
async def history(
    work_order_id: IdParam, db: Db, principal: Principal = authorize("work_order", "read", by_id=True)
) -> list[EventOut]:
    return [EventOut.model_validate(e) for e in await service.history(db, principal, work_order_id)]


@router.post("/work-orders/{work_order_id}/tags")
async def add_tags(
    work_order_id: IdParam,
    body: TagsIn,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> list[str]:
    async with db.begin():
        return await service.add_tags(db, principal, work_order_id, body.tags)


@router.delete("/work-orders/{work_order_id}/tags/{tag}")
async def remove_tag(
    work_order_id: IdParam,
    tag: TagParam,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> list[str]:
    async with db.begin():
        return await service.remove_tag(db, principal, work_order_id, tag)


@router.post("/work-orders/{work_order_id}/links")
async def add_link(
    work_order_id: IdParam,
    body: LinkIn,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> list[LinkOut]:
    async with db.begin():
        links = await service.link(db, principal, work_order_id, body.other_id)
    return [LinkOut(other_id=other, kind=kind) for other, kind in links]


@router.delete("/work-orders/{work_order_id}/links/{other_id}", status_code=204)
async def remove_link(
    work_order_id: IdParam,
    other_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> Response:
    async with db.begin():
        await service.unlink(db, principal, work_order_id, other_id)
    return Response(status_code=204)


@router.post("/work-orders/{work_order_id}/merge")
async def merge(
    work_order_id: IdParam,
    body: MergeIn,
    db: Db,
    principal: Principal = authorize("work_order", "merge", by_id=True),
) -> WorkOrderOut:
    """Close this work order as a duplicate of ``into_id``; answers the surviving work order."""
    async with db.begin():
        target = await service.merge(db, principal, work_order_id, body.into_id)
        return await _answer(db, principal, target)


# --- attachments -------------------------------------------------------------------------------------
@router.get("/work-orders/{work_order_id}/attachments")
async def list_attachments(
    work_order_id: IdParam, db: Db, principal: Principal = authorize("work_order", "read", by_id=True)
) -> list[AttachmentOut]:
    return [AttachmentOut.model_validate(a) for a in await attachments.list_for(db, principal, work_order_id)]


@router.post("/work-orders/{work_order_id}/attachments", status_code=201)
async def add_attachment(
    work_order_id: IdParam,
    file: UploadFile,
    request: Request,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> AttachmentOut:
    # The knowledge base's cap for now: one upload limit for the whole app (see RequestLimitsMiddleware).
    limit = request.app.state.settings.kb_attachment_max_bytes
    data = await file.read(limit + 1)  # one byte more tells "too large" without reading it all
    async with db.begin():
        attachment = await attachments.add(
            db, principal, work_order_id, filename=file.filename or "", data=data, max_bytes=limit
        )
    return AttachmentOut.model_validate(attachment)


@router.get("/work-orders/{work_order_id}/attachments/{attachment_id}")
async def download_attachment(
    work_order_id: IdParam,
    attachment_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "read", by_id=True),
) -> Response:
    attachment = await attachments.get(db, principal, work_order_id, attachment_id, with_content=True)
    return Response(
        attachment.content, media_type=attachment.content_type, headers=attachments.download_headers(attachment)
    )


@router.delete("/work-orders/{work_order_id}/attachments/{attachment_id}", status_code=204)
async def remove_attachment(
    work_order_id: IdParam,
    attachment_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> Response:
    async with db.begin():
        await attachments.remove(db, principal, work_order_id, attachment_id)
    return Response(status_code=204)


# --- suggestions -------------------------------------------------------------------------------------
def forward_out(row: service.ForwardRow) -> ForwardOut:
    return ForwardOut.model_validate(row.forward).model_copy(
        update={
            "work_order_number": row.number,
            "work_order_title": row.title,
            "work_order_description": row.description,
        }
    )


@router.post("/work-orders/{work_order_id}/forward", status_code=201)
async def forward_suggestion(
    work_order_id: IdParam,
    body: ForwardIn,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> ForwardOut:
    async with db.begin():
        forward = await service.forward_suggestion(db, principal, work_order_id, body.to_user_id, body.question)
    return ForwardOut.model_validate(forward)


@router.get("/suggestions")
async def list_suggestions(
    db: Db,
    principal: Principal = authorize("suggestion", "list"),
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ForwardOut]:
    return [forward_out(r) for r in await service.suggestions_for(db, principal, limit)]


@router.post("/suggestions/{forward_id}/answer")
async def answer_suggestion(
    forward_id: IdParam,
    body: AnswerIn,
    db: Db,
    principal: Principal = authorize("suggestion", "answer", by_id=True),
) -> ForwardOut:
    async with db.begin():
        forward = await service.answer_suggestion(db, principal, forward_id, body.answer)
    return ForwardOut.model_validate(forward)


# --- macros ------------------------------------------------------------------------------------------
@router.get("/macros")
async def list_macros(db: Db, principal: Principal = authorize("macro", "list")) -> list[MacroOut]:
    return [MacroOut.model_validate(m) for m in await macros.list_macros(db, principal)]


@router.post("/macros", status_code=201)
async def create_macro(body: MacroCreate, db: Db, principal: Principal = authorize("macro", "manage")) -> MacroOut:
    async with db.begin():
        macro = await macros.create_macro(
            db,
            principal,
            name=body.name,
            body=body.body,
            scope=body.scope,
            team_id=body.team_id,
            actions=body.actions.model_dump(),
        )
    return MacroOut.model_validate(macro)


@router.patch("/macros/{macro_id}")
async def update_macro(
    macro_id: IdParam, body: MacroUpdate, db: Db, principal: Principal = authorize("macro", "manage", by_id=True)
) -> MacroOut:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise Invalid("nothing to change")
    async with db.begin():
        macro = await macros.update_macro(db, principal, macro_id, changes)
    return MacroOut.model_validate(macro)


@router.delete("/macros/{macro_id}", status_code=204)
async def delete_macro(
    macro_id: IdParam, db: Db, principal: Principal = authorize("macro", "manage", by_id=True)
) -> Response:
    async with db.begin():
        await macros.delete_macro(db, principal, macro_id)
    return Response(status_code=204)


@router.post("/macros/{macro_id}/render")
async def render_macro(
    macro_id: IdParam, body: RenderIn, db: Db, principal: Principal = authorize("macro", "list")
) -> RenderOut:
    rendered = await macros.render(db, principal, macro_id, body.work_order_id)
    return RenderOut(text=rendered.text, unknown_variables=rendered.unknown_variables)


@router.post("/work-orders/{work_order_id}/apply-macro")
async def apply_macro(
    work_order_id: IdParam,
    body: ApplyMacroIn,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> ApplyMacroOut:
    async with db.begin():
        applied = await macros.apply_macro(db, principal, work_order_id, body.macro_id)
        work_order = await _answer(db, principal, applied.work_order)
    comment = comment_out(applied.comment, principal.display_name or None) if applied.comment else None
    return ApplyMacroOut(work_order=work_order, comment=comment, unknown_variables=applied.unknown_variables)


# --- custom fields -----------------------------------------------------------------------------------
@router.get("/work-order-fields")
async def list_fields(db: Db, principal: Principal = authorize("work_order_field", "list")) -> list[FieldOut]:
    return [FieldOut.model_validate(f) for f in await service.list_fields(db)]


@router.post("/work-order-fields", status_code=201)
async def create_field(
    body: FieldCreate, db: Db, principal: Principal = authorize("work_order_field", "manage")
) -> FieldOut:
    async with db.begin():
        definition = await service.create_field(db, principal, **body.model_dump())
    return FieldOut.model_validate(definition)


@router.patch("/work-order-fields/{field_id}")
async def update_field(
    field_id: IdParam, body: FieldUpdate, db: Db, principal: Principal = authorize("work_order_field", "manage")
) -> FieldOut:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise Invalid("nothing to change")
    async with db.begin():
        definition = await service.update_field(db, principal, field_id, **changes)
    return FieldOut.model_validate(definition)


# --- saved views -------------------------------------------------------------------------------------
@router.get("/saved-views")
async def list_saved_views(db: Db, principal: Principal = authorize("saved_view", "manage")) -> list[SavedViewOut]:
    return [SavedViewOut.model_validate(v) for v in await service.list_saved_views(db, principal)]


@router.post("/saved-views", status_code=201)
async def create_saved_view(
    body: SavedViewIn, db: Db, principal: Principal = authorize("saved_view", "manage")
) -> SavedViewOut:
    filters = body.filters.model_dump(mode="json", exclude_defaults=True)
    async with db.begin():
        view = await service.create_saved_view(db, principal, body.name, filters)
    return SavedViewOut.model_validate(view)


@router.delete("/saved-views/{view_id}", status_code=204)
async def delete_saved_view(
    view_id: IdParam, db: Db, principal: Principal = authorize("saved_view", "manage")
) -> Response:
    async with db.begin():
        await service.delete_saved_view(db, principal, view_id)
    return Response(status_code=204)
