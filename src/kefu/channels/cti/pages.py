"""Phone channel pages: recent calls (state, caller, agent, recording) with each call's event timeline, and
the agents' extensions (who answers at which PBX extension)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.cti import service
from kefu.channels.cti.schemas import ExtensionIn
from kefu.core.errors import ApiError
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import IdParam
from kefu.db.session import get_db
from kefu.web.pages import form_data, render, see_other, validate

router = APIRouter(tags=["cti"], include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]
PAGE_SIZE = 50
STATES = ("new", "ivr", "queued", "ringing", "talking", "held", "ended")


def _seconds(call: object) -> int | None:
    started = getattr(call, "started_at", None)
    ended = getattr(call, "ended_at", None)
    if started is None or ended is None:
        return None
    return max(0, int((ended - started).total_seconds()))


def duration(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@router.get("/cti/calls")
async def calls_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("cti_call", "list"),
    state: Annotated[str | None, Query(max_length=16)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    chosen = state if state in STATES else None
    views = await service.list_calls(db, principal, state=chosen, cursor=cursor, limit=PAGE_SIZE)
    next_cursor = service.encode_cursor(views[-1].call) if len(views) == PAGE_SIZE else None
    return render(
        request,
        "cti/calls.html",
        principal,
        views=views,
        states=STATES,
        state=chosen,
        next_cursor=next_cursor,
        call_seconds=_seconds,
        duration=duration,
    )


@router.get("/cti/calls/{call_row_id}")
async def call_page(
    call_row_id: IdParam, request: Request, db: Db, principal: Principal = authorize("cti_call", "read", by_id=True)
) -> Response:
    view = await service.get_call(db, principal, call_row_id)
    return render(
        request,
        "cti/call.html",
        principal,
        view=view,
        instruction=await service.instruction_for(db, view.call),
        call_seconds=_seconds,
        duration=duration,
        can_see_customer=allows(principal, "customer", "read"),
    )


async def _extensions_page(
    request: Request, db: AsyncSession, principal: Principal, *, errors: list[str], status_code: int = 200
) -> Response:
    return render(
        request,
        "cti/extensions.html",
        principal,
        status_code=status_code,
        extensions=await service.list_extensions(db),
        staff=await service.staff_choices(db),
        errors=errors,
        can_edit=allows(principal, "cti_extension", "update"),
        can_remove=allows(principal, "cti_extension", "delete"),
    )


@router.get("/cti/extensions")
async def extensions_page(
    request: Request, db: Db, principal: Principal = authorize("cti_extension", "list")
) -> Response:
    return await _extensions_page(request, db, principal, errors=[])


@router.post("/cti/extensions")
async def extension_submit(
    request: Request, db: Db, principal: Principal = authorize("cti_extension", "update")
) -> Response:
    data = await form_data(request)
    body, errors = validate(ExtensionIn, {"extension": data.get("extension", "")})
    user_id = data.get("user_id", "")
    if not user_id.isdigit():
        errors.append("user_id: choose an agent")
    if body is not None and not errors:
        try:
            async with db.begin():
                await service.set_extension(db, principal, int(user_id), body.extension)
            return see_other("/cti/extensions?saved=1")
        except ApiError as exc:
            errors = [exc.message]
    return await _extensions_page(request, db, principal, errors=errors, status_code=422)


@router.post("/cti/extensions/{user_id}/remove")
async def extension_remove(
    user_id: IdParam, request: Request, db: Db, principal: Principal = authorize("cti_extension", "delete")
) -> Response:
    async with db.begin():
        await service.remove_extension(db, principal, user_id)
    return see_other("/cti/extensions?saved=1")
