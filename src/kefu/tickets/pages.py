"""Work-order pages: lists with tabs, filters and saved views; creating; the work order with its replies,
notes, history, SLA, files and actions; the back-office queue and the suggestions waiting for an answer.

Thin over ``kefu.tickets.service`` (and its sla, escalation, macros and attachments modules); forms are
validated by the API's request models, so a page accepts exactly what the API accepts, and every row
the pages show went through the service's visibility rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError, NotFound
from kefu.core.i18n import Translator
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import IdParam, query_text
from kefu.db.base import utcnow
from kefu.db.session import get_db
from kefu.identity import service as identity
from kefu.tickets import attachments, escalation, macros, service, sla
from kefu.tickets.models import Priority, WorkOrder, WorkOrderStatus, WorkOrderType
from kefu.tickets.schemas import (
    AnswerIn,
    AssignIn,
    CommentIn,
    FilterIn,
    ForwardIn,
    SavedViewIn,
    StatusIn,
    TagsIn,
    WorkOrderCreate,
    WorkOrderUpdate,
)
from kefu.tickets.sla_schemas import EscalateIn, ReturnIn
from kefu.web.pages import form_data, render, run_form_action, see_other, validate

router = APIRouter(prefix="", tags=["work orders"], include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]
Cursor = Annotated[str, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")]

PAGE_SIZE = 50
TABS = ("mine", "team", "overdue", "escalated", "all-visible")
FILTER_KEYS = ("q", "status", "type", "priority", "team_id", "tag")
STATUSES = tuple(s.value for s in WorkOrderStatus)
TYPES = tuple(t.value for t in WorkOrderType)
PRIORITIES = tuple(p.value for p in Priority)
# Highlight a running due time this close as "due soon" (the default warning of an SLA policy).
WARN_WITHIN = timedelta(hours=1)
QUEUE_LIMIT = 200
# "WO00000012", "wo12" or "12": how people type a work-order number.
NUMBER = re.compile(r"(?i)^\s*(?:wo)?0*(\d{1,18})\s*$")
DONE = frozenset(
    {
        "created",
        "commented",
        "status",
        "assigned",
        "saved",
        "tagged",
        "attached",
        "escalated",
        "returned",
        "macro",
        "linked",
        "merged",
        "forwarded",
        "answered",
        "view_saved",
        "view_deleted",
    }
)


# --- helpers -------------------------------------------------------------------------------------
def _page(request: Request, name: str, principal: Principal, status_code: int = 200, **context: Any) -> Response:
    done = request.query_params.get("done")
    return render(request, name, principal, status_code=status_code, done=done if done in DONE else None, **context)


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    return value.replace("\r\n", "\n").strip() if isinstance(value, str) else ""


def _optional(value: Any) -> Any:
    # Blank means "none"; anything else goes to the request model, which refuses what is not valid.
    return None if value in (None, "") else value


def _tags(text: str) -> list[str]:
    return [tag.strip() for tag in re.split(r"[,，、;；]", text) if tag.strip()]


def _number(text: str) -> int | None:
    match = NUMBER.match(text or "")
    return int(match.group(1)) if match and 0 < int(match.group(1)) < 2**63 else None


def _due_state(work_order: WorkOrder, now: datetime) -> str | None:
    """How a list row shows its resolution due time: "overdue", "warning" (due soon) or nothing."""
    due = work_order.resolution_due_at
    if due is None or work_order.status not in sla.RUNNING or work_order.sla_paused_at is not None:
        return None
    if due <= now:
        return "overdue"
    return "warning" if due - now <= WARN_WITHIN else None


async def _end_reads(db: AsyncSession) -> None:
    """Close the transaction that reads before a write began (custom-field definitions...), so the
    write runs in its own ``db.begin()``."""
    if db.in_transaction():
        await db.commit()


async def _names(db: AsyncSession, ids: set[int | None]) -> dict[int, str]:
    return await identity.display_names(db, ids)


async def _custom_fields(db: AsyncSession, data: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """Custom-field inputs (``cf_<key>``) typed as the field's kind wants; blank clears (or, when
    creating, is left out). The service checks kinds, choices and required fields."""
    values: dict[str, Any] = {}
    for definition in await service.list_fields(db, include_inactive=False):
        name = f"cf_{definition.key}"
        if name not in data:
            continue
        raw = _text(data, name)
        if raw == "":
            if not creating:
                values[definition.key] = None
            continue
        if definition.kind == "number":
            try:
                number = float(raw.replace(",", ""))
                values[definition.key] = int(number) if number.is_integer() and abs(number) < 2**53 else number
            except ValueError:
                values[definition.key] = raw  # refused by the service with the field's name
        else:
            values[definition.key] = raw
    return values


# --- lists ---------------------------------------------------------------------------------------
@dataclass
class Row:
    wo: WorkOrder
    assignee_name: str | None
    team_name: str | None
    customer_name: str | None
    tags: list[str]
    due_state: str | None


def _filter_query(tab: str, f: dict[str, str]) -> str:
    return urlencode({"view": tab, **{k: v for k, v in f.items() if v}})


def _view_link(filters: dict[str, Any]) -> str:
    """The list address of a saved view (its filters as the list's query)."""
    flat = {
        k: (v[0] if isinstance(v, list) and v else v) for k, v in filters.items() if k == "view" or k in FILTER_KEYS
    }
    tab = flat.pop("view", "all-visible")
    # In the list's own key order, so the view in use is recognised by its address.
    return _filter_query(tab if tab in TABS else "all-visible", {k: str(flat[k]) for k in FILTER_KEYS if flat.get(k)})


def _filters(tab: str, f: dict[str, str]) -> dict[str, Any]:
    """The list's inputs shaped as the API's ``FilterIn`` (one status chosen on the page)."""
    return {
        "view": tab,
        "q": f["q"],
        "status": [f["status"]] if f["status"] else [],
        "type": _optional(f["type"]),
        "priority": _optional(f["priority"]),
        "team_id": _optional(f["team_id"]),
        "tag": _optional(f["tag"]),
    }


def _list_inputs(source: Any) -> tuple[str, dict[str, str]]:
    tab = source.get("view") or "mine"
    if tab not in TABS:
        tab = "all-visible"
    return tab, {key: str(source.get(key, ""))[:200].strip() for key in FILTER_KEYS}


async def _list_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    tab: str,
    f: dict[str, str],
    *,
    after: str = "",
    status_code: int = 200,
    errors: list[str] | None = None,
) -> Response:
    errors = list(errors or [])
    body, invalid = validate(FilterIn, _filters(tab, f))
    errors += invalid
    rows: list[Row] = []
    next_url = None
    now = utcnow()
    if body is not None:
        try:
            found, cursor = await service.list_work_orders(
                db, principal, service.WorkOrderFilter.of(body.model_dump()), after or None, PAGE_SIZE, now=now
            )
        except ApiError as exc:  # a cursor that is not one of ours
            if exc.status == 404:
                raise
            found, cursor, status_code = [], None, exc.status
            errors.append(exc.message)
        rows = [
            Row(r.work_order, r.assignee_name, r.team_name, r.customer_name, r.tags, _due_state(r.work_order, now))
            for r in found
        ]
        if cursor:
            next_url = f"/work-orders?{_filter_query(tab, f)}&{urlencode({'after': cursor})}"
    elif status_code == 200:
        status_code = 422
    can_views = allows(principal, "saved_view", "manage")
    views = []
    if can_views:
        views = [
            {"id": v.id, "name": v.name, "query": _view_link(v.filters)}
            for v in await service.list_saved_views(db, principal)
        ]
    current_query = _filter_query(tab, f)
    return _page(
        request,
        "tickets/list.html",
        principal,
        status_code=status_code,
        errors=errors,
        tab=tab,
        tabs=[(key, key) for key in TABS],
        f=f,
        rows=rows,
        next_url=next_url,
        views=views,
        current_view_id=next((v["id"] for v in views if v["query"] == current_query), None),
        statuses=STATUSES,
        types=TYPES,
        priorities=PRIORITIES,
        teams=await identity.list_teams(db, with_members=False),
        can_views=can_views,
        can_create=allows(principal, "work_order", "create"),
        can_escalations=allows(principal, "escalation", "list"),
        can_suggestions=allows(principal, "suggestion", "list"),
    )


@router.get("/work-orders")
async def work_orders_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("work_order", "list"),
    after: Cursor = "",
) -> Response:
    tab, f = _list_inputs(request.query_params)
    return await _list_page(request, db, principal, tab, f, after=after)


@router.post("/work-orders/views")
async def save_view_submit(
    request: Request, db: Db, principal: Principal = authorize("saved_view", "manage")
) -> Response:
    """Save the filters the list shows under a name (the filters come as hidden fields of the form)."""
    data = await form_data(request)
    tab, f = _list_inputs({k: v for k, v in data.items() if isinstance(v, str)})
    body, errors = validate(SavedViewIn, {"name": _text(data, "name"), "filters": _filters(tab, f)})
    if body is None:
        return await _list_page(request, db, principal, tab, f, status_code=422, errors=errors)
    stored = body.filters.model_dump(mode="json", exclude_defaults=True)
    stored["view"] = body.filters.view
    return await run_form_action(
        db,
        lambda: service.create_saved_view(db, principal, body.name, stored),
        success_url=f"/work-orders?{_filter_query(tab, f)}&done=view_saved",
        refused=lambda exc: _list_page(request, db, principal, tab, f, status_code=exc.status, errors=[exc.message]),
    )


@router.post("/work-orders/views/{view_id}/delete")
async def delete_view_submit(
    request: Request, view_id: IdParam, db: Db, principal: Principal = authorize("saved_view", "manage", by_id=True)
) -> Response:
    async with db.begin():
        await service.delete_saved_view(db, principal, view_id)
    return see_other("/work-orders?view=all-visible&done=view_deleted")


# --- creating ------------------------------------------------------------------------------------
async def _new_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    *,
    f: dict[str, Any],
    customer_q: str = "",
    status_code: int = 200,
    errors: list[str] | None = None,
) -> Response:
    from kefu.customers import service as customers

    found = []
    if customer_q:
        found = await customers.search_customers(db, principal, customer_q, limit=20)
    elif f.get("customer_id") and str(f["customer_id"]).isdigit():
        try:
            found = [await customers.get_customer(db, principal, int(f["customer_id"]))]
        except NotFound:
            found = []
    return _page(
        request,
        "tickets/new.html",
        principal,
        status_code=status_code,
        errors=errors,
        f=f,
        customer_q=customer_q,
        customers=found,
        types=TYPES,
        priorities=PRIORITIES,
        teams=[t for t in await identity.list_teams(db, with_members=False) if t.is_active],
        fields=await service.list_fields(db, include_inactive=False),
    )


@router.get("/work-orders/new")
async def new_work_order_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("work_order", "create"),
    customer_q: query_text(200) = "",  # type: ignore[valid-type]
    customer_id: Annotated[str, Query(max_length=19, pattern=r"^([1-9][0-9]*)?$")] = "",
) -> Response:
    f = {"type": "inquiry", "priority": "normal", "title": "", "description": "", "customer_id": customer_id}
    own = sorted(principal.team_ids)
    f["team_id"] = str(own[0]) if len(own) == 1 else ""
    return await _new_page(request, db, principal, f=f, customer_q=" ".join(customer_q.split())[:200])


@router.post("/work-orders")
async def create_work_order_submit(
    request: Request, db: Db, principal: Principal = authorize("work_order", "create")
) -> Response:
    data = await form_data(request)
    fields = {
        "type": data.get("type") or "inquiry",
        "priority": data.get("priority") or "normal",
        "title": _text(data, "title"),
        "description": _text(data, "description"),
        "customer_id": _optional(data.get("customer_id")),
        "team_id": _optional(data.get("team_id")),
        "assignee_id": principal.user_id if data.get("assign_to_me") == "1" else None,
        "restricted": data.get("restricted") == "1",
        "tags": _tags(_text(data, "tags")),
        "custom_fields": await _custom_fields(db, data, creating=True),
    }
    body, errors = validate(WorkOrderCreate, fields)
    if body is None:
        return await _new_page(request, db, principal, f=data, status_code=422, errors=errors)
    made: list[WorkOrder] = []
    await _end_reads(db)

    async def create() -> None:
        made.append(await service.create_work_order(db, principal, body))

    try:
        async with db.begin():
            await create()
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await _new_page(request, db, principal, f=data, status_code=exc.status, errors=[exc.message])
    return see_other(f"/work-orders/{made[0].id}?done=created")


# --- the work order ------------------------------------------------------------------------------
@dataclass
class EscalationLine:
    """One escalation as the work order's history tells it."""

    id: int
    to_team_id: int | None
    deadline_days: int | None
    due_at: datetime | None
    note: str
    state: str = "open"
    return_note: str | None = None


def _escalations(events: list[Any]) -> list[EscalationLine]:
    found: dict[int, EscalationLine] = {}
    for event in events:
        data = event.data or {}
        escalation_id = data.get("escalation_id")
        if not isinstance(escalation_id, int):
            continue
        if event.kind == "escalated":
            due = data.get("due_at")
            found[escalation_id] = EscalationLine(
                escalation_id,
                data.get("to_team_id"),
                data.get("deadline_days"),
                datetime.fromisoformat(due) if isinstance(due, str) else None,
                str(data.get("note") or ""),
            )
        elif escalation_id in found and event.kind == "escalation_returned":
            found[escalation_id].state = "returned"
            found[escalation_id].return_note = str(data.get("note") or "")
        elif escalation_id in found and event.kind == "escalation_cancelled":
            found[escalation_id].state = "cancelled"
    return list(found.values())


def _clock_state(clock: Any, warn_before: int) -> str | None:
    if clock.breached:
        return "overdue"
    if clock.remaining_seconds is not None and clock.remaining_seconds <= warn_before:
        return "warning"
    return None


async def _work_order_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    work_order_id: int,
    *,
    status_code: int = 200,
    errors: list[str] | None = None,
    form: dict[str, Any] | None = None,
) -> Response:
    from kefu.customers import service as customers

    row = await service.row_of(db, principal, work_order_id)
    wo = row.work_order
    now = utcnow()
    clocks = await sla.sla_view(db, wo, now)
    warn_before = clocks.policy.warn_before_seconds if clocks.policy is not None else int(WARN_WITHIN.total_seconds())
    by_target = {c.target: c for c in clocks.clocks}
    comments = await service.list_comments(db, principal, work_order_id)
    events = await service.history(db, principal, work_order_id)
    links = []
    for other_id, kind in await service.links_of(db, work_order_id):
        try:
            other = await service.get_work_order(db, principal, other_id)
            links.append({"other_id": other_id, "number": other.number, "title": other.title, "kind": kind})
        except NotFound:
            continue  # linked to one the viewer may not see: not even its number is shown
    customer = None
    if wo.customer_id is not None:
        try:
            customer = await customers.get_customer(db, principal, wo.customer_id)
        except NotFound:
            customer = None
    teams = await identity.list_teams(db, with_members=False)
    can_update = allows(principal, "work_order", "update")
    assignees = []
    if can_update and wo.team_id is not None:
        assignees = await identity.list_users(db, identity.UserFilter(team_id=wo.team_id, active=True), limit=200)
    if can_update and principal.user_id not in {u.id for u in assignees} and principal.user_id is not None:
        assignees.append(await identity.get_user(db, principal.user_id))
    forward_to = []
    if can_update and wo.type == "suggestion":
        for role in ("knowledge_manager", "supervisor"):
            forward_to += await identity.list_users(db, identity.UserFilter(role=role, active=True), limit=100)
    forwards = _forwards(events)
    escalation_lines = _escalations(events)
    names = await _names(
        db,
        {wo.assignee_id, wo.created_by_id}
        | {c.author_id for c, _ in comments}
        | {e.actor_id for e in events}
        | {f["to_user_id"] for f in forwards},
    )
    next_statuses = sorted(
        (s for s in service.TRANSITIONS.get(wo.status, ()) if s != WorkOrderStatus.escalated),
        key=STATUSES.index,
    )
    return _page(
        request,
        "tickets/detail.html",
        principal,
        status_code=status_code,
        errors=errors,
        form=form or {},
        wo=wo,
        tags=row.tags,
        customer=customer,
        sla={
            "first_response_state": _clock_state(by_target["first_response"], warn_before)
            if "first_response" in by_target
            else None,
            "resolution_state": _clock_state(by_target["resolution"], warn_before)
            if "resolution" in by_target
            else None,
            "breaches": [c for c in clocks.clocks if c.breached],
        },
        comments=[c for c, _ in comments],
        events=events,
        links=links,
        attachments=await attachments.list_for(db, principal, work_order_id),
        fields=await service.list_fields(db, include_inactive=False),
        escalations=escalation_lines,
        forwards=forwards,
        macros=await macros.list_macros(db, principal) if allows(principal, "macro", "list") else [],
        teams=teams,
        team_names={t.id: t.name for t in teams},
        user_names=names,
        my_team_ids=set(principal.team_ids)
        | ({e.to_team_id for e in escalation_lines} if service.sees_all(principal) else set()),
        assignees=assignees,
        forward_to=forward_to,
        next_statuses=[] if wo.merged_into_id else next_statuses,
        types=TYPES,
        priorities=PRIORITIES,
        can_update=can_update and not wo.merged_into_id,
        can_comment=allows(principal, "work_order", "comment") and not wo.merged_into_id,
        can_escalate=allows(principal, "work_order", "escalate"),
        can_merge=allows(principal, "work_order", "merge"),
    )


def _forwards(events: list[Any]) -> list[dict[str, Any]]:
    """Where this suggestion was forwarded, as its history tells it (answers come back as public replies)."""
    return [
        {"to_user_id": e.data.get("to_user_id"), "forwarded_at": e.created_at}
        for e in events
        if e.kind == "forwarded" and isinstance(e.data, dict)
    ]


@router.get("/work-orders/{work_order_id}")
async def work_order_page(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "read", by_id=True),
) -> Response:
    return await _work_order_page(request, db, principal, work_order_id)


async def _act(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    work_order_id: int,
    action: Any,
    *,
    done: str,
    form: dict[str, Any] | None = None,
) -> Response:
    """Run one action on the work order; a refusal shows the work order again with the reason."""
    await _end_reads(db)
    return await run_form_action(
        db,
        action,
        success_url=f"/work-orders/{work_order_id}?done={done}",
        refused=lambda exc: _work_order_page(
            request, db, principal, work_order_id, status_code=exc.status, errors=[exc.message], form=form
        ),
    )


async def _refused(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    work_order_id: int,
    errors: list[str],
    form: dict[str, Any] | None = None,
) -> Response:
    return await _work_order_page(request, db, principal, work_order_id, status_code=422, errors=errors, form=form)


@router.post("/work-orders/{work_order_id}/comments")
async def comment_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "comment", by_id=True),
) -> Response:
    data = await form_data(request)
    body, errors = validate(CommentIn, {"body": _text(data, "body"), "internal": data.get("visibility") != "public"})
    if body is None:
        return await _refused(request, db, principal, work_order_id, errors, data)
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: service.add_comment(db, principal, work_order_id, body.body, internal=body.internal),
        done="commented",
        form=data,
    )


@router.post("/work-orders/{work_order_id}/status")
async def status_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> Response:
    data = await form_data(request)
    body, errors = validate(StatusIn, {"status": data.get("status", ""), "reason": _text(data, "reason")})
    if body is None:
        return await _refused(request, db, principal, work_order_id, errors, data)
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: service.set_status(db, principal, work_order_id, body.status, reason=body.reason),
        done="status",
        form=data,
    )


@router.post("/work-orders/{work_order_id}/assign")
async def assign_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> Response:
    data = await form_data(request)
    body, errors = validate(
        AssignIn, {"assignee_id": _optional(data.get("assignee_id")), "team_id": _optional(data.get("team_id"))}
    )
    if body is None:
        return await _refused(request, db, principal, work_order_id, errors)
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: service.assign(db, principal, work_order_id, body.assignee_id, body.team_id),
        done="assigned",
    )


@router.post("/work-orders/{work_order_id}/fields")
async def fields_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> Response:
    data = await form_data(request)
    changes: dict[str, Any] = {k: data[k] for k in ("type", "priority", "title", "description") if k in data}
    custom = await _custom_fields(db, data, creating=False)
    if custom:
        changes["custom_fields"] = custom
    body, errors = validate(WorkOrderUpdate, changes)
    if body is None:
        return await _refused(request, db, principal, work_order_id, errors)
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: service.update_work_order(db, principal, work_order_id, body.model_dump(exclude_unset=True)),
        done="saved",
    )


@router.post("/work-orders/{work_order_id}/tags")
async def tags_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> Response:
    """The tag field holds the whole list: tags typed are added, tags deleted from it are removed."""
    data = await form_data(request)
    wanted = _tags(_text(data, "tags"))
    if wanted:
        body, errors = validate(TagsIn, {"tags": wanted})
        if body is None:
            return await _refused(request, db, principal, work_order_id, errors)

    async def save() -> None:
        current = (await service.row_of(db, principal, work_order_id)).tags
        gone = [t for t in current if t not in wanted]
        if gone:
            await service.remove_tags(db, principal, work_order_id, gone)
        if wanted:
            await service.add_tags(db, principal, work_order_id, wanted)

    return await _act(request, db, principal, work_order_id, save, done="tagged")


@router.post("/work-orders/{work_order_id}/attachments")
async def attachment_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> Response:
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str) or not upload.filename:
        message = Translator(principal.locale).gettext("Choose a file to attach.")
        return await _refused(request, db, principal, work_order_id, [message])
    limit = request.app.state.settings.kb_attachment_max_bytes
    content = await upload.read(limit + 1)  # one byte more tells "too large" without reading it all
    filename = upload.filename or ""
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: attachments.add(db, principal, work_order_id, filename=filename, data=content, max_bytes=limit),
        done="attached",
    )


@router.post("/work-orders/{work_order_id}/escalate")
async def escalate_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "escalate", by_id=True),
) -> Response:
    data = await form_data(request)
    body, errors = validate(
        EscalateIn,
        {
            "to_team_id": _optional(data.get("to_team_id")),
            "deadline_days": _optional(data.get("deadline_days")),
            "business_days": data.get("business_days") == "1",
            "note": _text(data, "note"),
        },
    )
    if body is None:
        return await _refused(request, db, principal, work_order_id, errors, data)
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: escalation.escalate(
            db, principal, work_order_id, body.to_team_id, body.deadline_days, body.business_days, body.note, utcnow()
        ),
        done="escalated",
        form=data,
    )


@router.post("/escalations/{escalation_id}/return")
async def return_submit(
    request: Request,
    escalation_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "escalate", by_id=True),
) -> Response:
    data = await form_data(request)
    back = str(data.get("work_order_id", ""))
    back_id = int(back) if back.isdigit() and 0 < int(back) < 2**63 else None
    body, errors = validate(ReturnIn, {"note": _text(data, "answer")})
    if body is None:
        if back_id is None:
            raise ApiError(422, "invalid", "; ".join(errors))
        return await _refused(request, db, principal, back_id, errors, data)
    returned: list[int] = []

    async def give_back() -> None:
        returned.append(
            (await escalation.return_escalation(db, principal, escalation_id, body.note, utcnow())).work_order_id
        )

    try:
        async with db.begin():
            await give_back()
    except ApiError as exc:
        if exc.status == 404 or back_id is None:
            raise
        return await _work_order_page(
            request, db, principal, back_id, status_code=exc.status, errors=[exc.message], form=data
        )
    target = data.get("next") if data.get("next") == "/escalations" else f"/work-orders/{returned[0]}"
    return see_other(f"{target}?done=returned")


@router.post("/work-orders/{work_order_id}/macro")
async def macro_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "comment", by_id=True),
) -> Response:
    data = await form_data(request)
    macro_id = _number(str(data.get("macro_id", "")))
    if macro_id is None:
        return await _refused(request, db, principal, work_order_id, ["macro_id"])
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: macros.apply_macro(db, principal, work_order_id, macro_id),
        done="macro",
    )


@router.post("/work-orders/{work_order_id}/links")
async def link_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "merge", by_id=True),
) -> Response:
    data = await form_data(request)
    other_id = _number(str(data.get("other_id", "")))
    if other_id is None:
        message = Translator(principal.locale).gettext("Type the number of the other work order.")
        return await _refused(request, db, principal, work_order_id, [message])
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: service.link(db, principal, work_order_id, other_id),
        done="linked",
    )


@router.post("/work-orders/{work_order_id}/merge")
async def merge_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "merge", by_id=True),
) -> Response:
    """Merge the duplicate typed in the form into this work order (the one on screen survives)."""
    data = await form_data(request)
    duplicate_id = _number(str(data.get("duplicate_id", "")))
    if duplicate_id is None:
        message = Translator(principal.locale).gettext("Type the number of the other work order.")
        return await _refused(request, db, principal, work_order_id, [message])
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: service.merge(db, principal, duplicate_id, work_order_id),
        done="merged",
    )


@router.post("/work-orders/{work_order_id}/forward")
async def forward_submit(
    request: Request,
    work_order_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "update", by_id=True),
) -> Response:
    data = await form_data(request)
    body, errors = validate(
        ForwardIn, {"to_user_id": _optional(data.get("to_user_id")), "question": _text(data, "question")}
    )
    if body is None:
        return await _refused(request, db, principal, work_order_id, errors, data)
    return await _act(
        request,
        db,
        principal,
        work_order_id,
        lambda: service.forward_suggestion(db, principal, work_order_id, body.to_user_id, body.question),
        done="forwarded",
        form=data,
    )


# --- the back-office queue and suggestions ---------------------------------------------------------
@router.get("/escalations")
async def escalations_page(
    request: Request, db: Db, principal: Principal = authorize("escalation", "list")
) -> Response:
    now = utcnow()
    found: dict[int, tuple[Any, WorkOrder]] = {}
    if principal.team_ids:
        for team_id in sorted(principal.team_ids):
            for e, w in await escalation.list_escalations(
                db, principal, now, team_id=team_id, state="open", limit=QUEUE_LIMIT
            ):
                found[e.id] = (e, w)
    elif service.sees_all(principal):
        for e, w in await escalation.list_escalations(db, principal, now, state="open", limit=QUEUE_LIMIT):
            found[e.id] = (e, w)
    # Overdue first, then by due time: what the back office must do next is on top.
    ordered = sorted(found.values(), key=lambda pair: (pair[0].due_at > now, pair[0].due_at, pair[0].id))
    rows = [
        {
            "escalation": e,
            "number": w.number,
            "title": w.title,
            "due_state": "overdue" if e.due_at <= now else ("warning" if e.due_at - now <= timedelta(days=1) else None),
        }
        for e, w in ordered
    ]
    teams = await identity.list_teams(db, with_members=False)
    return _page(request, "tickets/escalations.html", principal, rows=rows, team_names={t.id: t.name for t in teams})


@router.get("/suggestions")
async def suggestions_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("suggestion", "list"),
    answered: Annotated[str, Query(max_length=1, pattern=r"^[01]?$")] = "",
) -> Response:
    return await _suggestions_page(request, db, principal, show_answered=answered == "1")


async def _suggestions_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    *,
    show_answered: bool = False,
    status_code: int = 200,
    errors: list[str] | None = None,
    form: dict[str, Any] | None = None,
) -> Response:
    rows = await service.suggestions_for(db, principal)
    if not show_answered:
        rows = [r for r in rows if r.forward.answered_at is None]
    names = await _names(db, {r.forward.forwarded_by_id for r in rows})
    return _page(
        request,
        "tickets/suggestions.html",
        principal,
        status_code=status_code,
        errors=errors,
        form=form or {},
        rows=rows,
        user_names=names,
        show_answered=show_answered,
    )


@router.post("/suggestions/{forward_id}/answer")
async def answer_submit(
    request: Request, forward_id: IdParam, db: Db, principal: Principal = authorize("suggestion", "answer", by_id=True)
) -> Response:
    data = await form_data(request)
    body, errors = validate(AnswerIn, {"answer": _text(data, "answer")})
    if body is None:
        return await _suggestions_page(request, db, principal, status_code=422, errors=errors, form=data)
    return await run_form_action(
        db,
        lambda: service.answer_suggestion(db, principal, forward_id, body.answer),
        success_url="/suggestions?done=answered",
        refused=lambda exc: _suggestions_page(
            request, db, principal, status_code=exc.status, errors=[exc.message], form=data
        ),
    )
