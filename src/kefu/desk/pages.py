"""The agent desktop and customer 360 pages.

``/desk`` is the agent's one screen: their routing status (presence, time in it), the contacts ringing
for them (accept / reject, through the routing API), the contacts in hand, the screen pop of the chosen
one (customer summary, reply, wrap-up) and a knowledge panel searching as the agent types. The partials under
``/desk/...`` serve htmx and desk.js; every form also works as a plain form post (redirect after it).
``/customers/{id}`` is the customer 360 page. Forms are validated by the API's request models, so a
page accepts exactly what the API accepts.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError, NotFound
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import IdParam, IdQuery, query_text, single_line
from kefu.customers import service as customers
from kefu.customers.schemas import NoteIn
from kefu.db.session import get_db
from kefu.desk import service
from kefu.interactions.schemas import ArticleUseIn, WrapUpIn
from kefu.routing.pages import duration
from kefu.tickets.schemas import CommentIn, WorkOrderCreate
from kefu.web.pages import form_data, render, see_other, validate

router = APIRouter(prefix="", tags=["desk"], include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]
# Outcomes announced in the pop panel after a form (?done=...); anything else is ignored.
DONE = frozenset({"replied", "wrapped_up"})


def _htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


async def _pop_or_none(db: AsyncSession, principal: Principal, interaction_id: int | None) -> service.Pop | None:
    if interaction_id is None:
        return None
    try:
        return await service.screen_pop(db, principal, interaction_id)
    except NotFound:
        return None


async def _desk_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    interaction_id: int | None,
    *,
    status_code: int = 200,
    notice: str | None = None,
    pop_errors: list[str] | None = None,
    reply_text: str = "",
    reply_target: str = "",
) -> Response:
    contacts = await service.contacts_in_hand(db, principal)
    if interaction_id is None and contacts:
        interaction_id = contacts[0].interaction.id
    return render(
        request,
        "desk/desk.html",
        principal,
        status_code=status_code,
        contacts=contacts,
        presence=await service.presence(db, principal),
        duration=duration,
        pop=await _pop_or_none(db, principal, interaction_id),
        notice=notice,
        pop_errors=pop_errors or [],
        reply_text=reply_text,
        reply_target=reply_target,
    )


async def _pop_response(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    interaction_id: int,
    *,
    done: str | None = None,
    errors: list[str] | None = None,
    reply_text: str = "",
    reply_target: str = "",
) -> Response:
    """After a desk form: htmx gets the pop panel again (with the outcome or the refusal); a plain form
    post is redirected to the desk on success, or sees the desk with the refusal."""
    status_code = 422 if errors else 200
    if _htmx(request):
        pop = await service.screen_pop(db, principal, interaction_id)
        return render(
            request,
            "desk/_pop.html",
            principal,
            status_code=status_code,
            pop=pop,
            notice=done,
            pop_errors=errors or [],
            reply_text=reply_text,
            reply_target=reply_target,
        )
    if not errors:
        return see_other(f"/desk?interaction={interaction_id}&done={done}")
    return await _desk_page(
        request,
        db,
        principal,
        interaction_id,
        status_code=status_code,
        pop_errors=errors,
        reply_text=reply_text,
        reply_target=reply_target,
    )


async def _attempt(db: AsyncSession, action: Any) -> list[str]:
    """``action`` in one transaction; a refusal (not a 404) comes back as messages, nothing written."""
    try:
        async with db.begin():
            await action()
    except ApiError as exc:
        if exc.status == 404:
            raise
        return [exc.message]
    return []


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    return value.replace("\r\n", "\n") if isinstance(value, str) else ""


# --- the desk --------------------------------------------------------------------------------------
@router.get("/desk")
async def desk_page(
    request: Request,
    db: Db,
    interaction: IdQuery | None = None,
    done: query_text(32) = "",  # type: ignore[valid-type]
    principal: Principal = authorize("desk", "read"),
) -> Response:
    return await _desk_page(request, db, principal, interaction, notice=done if done in DONE else None)


@router.get("/desk/pop/{interaction_id}")
async def desk_pop(
    request: Request, interaction_id: IdParam, db: Db, principal: Principal = authorize("desk", "read", by_id=True)
) -> Response:
    """The screen pop of one contact, for the pop panel (loaded on a "desk.pop" event or a click)."""
    return render(request, "desk/_pop.html", principal, pop=await service.screen_pop(db, principal, interaction_id))


@router.get("/desk/kb")
async def desk_kb(
    request: Request,
    db: Db,
    q: str = "",
    interaction_id: str = "",
    principal: Principal = authorize("desk", "read"),
) -> Response:
    """Answers for the knowledge panel. Always 200: it runs as the agent types, and an over-long or odd
    query simply finds nothing."""
    typed = q.strip()
    answers: list[service.KbAnswer] = []
    if typed and len(typed) <= 200:
        try:
            single_line(typed)
        except ValueError:
            typed = ""
        if typed:
            current = int(interaction_id) if interaction_id.isdigit() and len(interaction_id) <= 18 else None
            answers = await service.kb_answers(db, request.app.state.kb_index, principal, typed, current)
    return render(request, "desk/_kb.html", principal, q=typed, hits=answers)


@router.post("/desk/interactions/{interaction_id}/reply")
async def desk_reply(
    request: Request,
    interaction_id: IdParam,
    db: Db,
    principal: Principal = authorize("work_order", "comment", by_id=True),
) -> Response:
    """A public reply on the contact's work order. A contact without one replies on the work order chosen
    (``work_order_id``: one of the customer's open ones, or "new" with ``type`` and ``title``, which needs
    the right to create work orders as well)."""
    data = await form_data(request)
    text = _text(data, "body")
    comment, errors = validate(CommentIn, {"body": text, "internal": False})
    target = str(data.get("work_order_id") or "")
    existing: int | None = None
    new_order = None
    if target == "new":
        new_order, order_errors = validate(
            WorkOrderCreate, {"type": data.get("type") or "inquiry", "title": _text(data, "title")}
        )
        errors += order_errors
    elif target:
        if not target.isdigit() or len(target) > 18:
            errors.append("work_order_id: not a work order")
        else:
            existing = int(target)
    if comment is not None and not errors:
        errors = await _attempt(
            db,
            lambda: service.reply(
                db, principal, interaction_id, comment.body, work_order_id=existing, new_work_order=new_order
            ),
        )
    return await _pop_response(
        request,
        db,
        principal,
        interaction_id,
        done="replied",
        errors=errors,
        reply_text=text if errors else "",
        reply_target=target if errors and (target == "new" or target.isdigit()) else "",
    )


@router.post("/desk/interactions/{interaction_id}/wrap-up")
async def desk_wrap_up(
    request: Request,
    interaction_id: IdParam,
    db: Db,
    principal: Principal = authorize("interaction", "update", by_id=True),
) -> Response:
    data = await form_data(request)
    fields = {
        "contact_reason_id": data.get("contact_reason_id") or None,
        "disposition": data.get("disposition") or None,
        "resolved_first_contact": data.get("resolved_first_contact") == "1",
    }
    body, errors = validate(WrapUpIn, fields)
    if body is not None and body.contact_reason_id is None:
        errors = ["choose a contact reason"]
    if body is not None and body.contact_reason_id is not None:
        errors = await _attempt(
            db,
            lambda: service.wrap_up(
                db,
                principal,
                interaction_id,
                contact_reason_id=body.contact_reason_id,  # type: ignore[arg-type]
                disposition=body.disposition,
                resolved_first_contact=bool(body.resolved_first_contact),
                resolve_work_order=data.get("resolve_work_order") == "1",
            ),
        )
    return await _pop_response(request, db, principal, interaction_id, done="wrapped_up", errors=errors)


@router.post("/desk/interactions/{interaction_id}/articles")
async def desk_use_article(
    request: Request,
    interaction_id: IdParam,
    db: Db,
    principal: Principal = authorize("interaction", "update", by_id=True),
) -> Response:
    """An answer inserted into the reply: the article is recorded as used for the contact (desk.js)."""
    body, errors = validate(ArticleUseIn, await form_data(request))
    if body is None:
        raise ApiError(422, "invalid", "; ".join(errors))
    async with db.begin():
        await service.use_article(db, principal, interaction_id, body.article_id)
    return Response(status_code=204)


# --- customer 360 ----------------------------------------------------------------------------------
async def _customer_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    customer_id: int,
    before: str = "",
    *,
    status_code: int = 200,
    errors: list[str] | None = None,
    note_body: str = "",
) -> Response:
    customer = await customers.get_customer(db, principal, customer_id)
    if customer.merged_into_id is not None:
        survivor = await customers.survivor_of(db, customer)
        return see_other(f"/customers/{survivor.id}")
    view = await service.customer_360(db, principal, customer.id, before or None)
    done = request.query_params.get("done")
    return render(
        request,
        "desk/customer360.html",
        principal,
        status_code=status_code,
        view=view,
        can_note=allows(principal, "customer", "update"),
        done=done if done == "noted" else None,
        errors=errors or [],
        note_body=note_body,
    )


@router.get("/customers/{customer_id}")
async def customer_page(
    request: Request,
    customer_id: IdParam,
    db: Db,
    before: query_text(80) = "",  # type: ignore[valid-type]
    principal: Principal = authorize("customer", "read", by_id=True),
) -> Response:
    return await _customer_page(request, db, principal, customer_id, before)


@router.post("/customers/{customer_id}/notes")
async def customer_note_submit(
    request: Request,
    customer_id: IdParam,
    db: Db,
    principal: Principal = authorize("customer", "update", by_id=True),
) -> Response:
    text = _text(await form_data(request), "body")
    body, errors = validate(NoteIn, {"body": text})
    if body is not None:
        errors = await _attempt(db, lambda: service.add_note(db, principal, customer_id, body.body))
    if not errors:
        return see_other(f"/customers/{customer_id}?done=noted")
    return await _customer_page(request, db, principal, customer_id, status_code=422, errors=errors, note_body=text)
