"""REST routes of the phone channel.

For the PBX (signed, no session): ``POST /api/v1/cti/events`` (one event or ``{"events": [...]}``) and
``GET /api/v1/cti/calls/{call_id}/instruction``. A request is signed with the PBX's secret:
``X-Kefu-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}." + raw body>`` (for the GET: + the path),
``X-Kefu-Timestamp: <Unix seconds>`` and, for a PBX other than "default", ``X-Kefu-Pbx: <code>``. The
same three may be given as query parameters ``sig``, ``ts``, ``pbx`` for PBXs whose HTTP client cannot
set headers (an Asterisk dialplan's CURL()). See docs/integrations/cti-api.md.

For staff: the call list and a call's events, agents' extensions, and PBXs (admins).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.cti import service
from kefu.channels.cti.schemas import (
    EVENT_TYPES,
    BatchResult,
    CallDetail,
    CallEventOut,
    CallOut,
    CallPage,
    EventBatch,
    EventIn,
    EventResult,
    ExtensionIn,
    ExtensionOut,
    Instruction,
    PbxCreate,
    PbxOut,
    PbxUpdate,
    PbxWithSecret,
)
from kefu.core.errors import Invalid
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam
from kefu.db.session import get_db

router = APIRouter(prefix="/api/v1/cti", tags=["cti"])
Db = Annotated[AsyncSession, Depends(get_db)]
CallIdParam = Annotated[str, Query(min_length=1, max_length=128)]
Limit = Annotated[int, Query(ge=1, le=200)]


def _signing(request: Request) -> dict[str, str | None]:
    headers, query = request.headers, request.query_params
    return {
        "pbx": headers.get("x-kefu-pbx") or query.get("pbx"),
        "timestamp": headers.get("x-kefu-timestamp") or query.get("ts"),
        "signature": headers.get("x-kefu-signature") or query.get("sig"),
    }


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    # Paths without the union's tag ("events.1.seq", not "events.1.call_new.seq"); an error about the
    # event as a whole has the event's path ("" or "events.1") and says what is missing.
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        path = [str(p) for p in error["loc"] if p not in EVENT_TYPES]
        details.append({"field": ".".join(path), "message": error["msg"], "type": error["type"]})
    return details


def _parse(payload: bytes) -> EventBatch | Any:
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the body is not JSON", [{"field": "", "message": "not JSON", "type": "json_invalid"}]) from None
    try:
        if isinstance(raw, dict) and "events" in raw:
            return EventBatch.model_validate(raw)
        return EventIn.validate_python(raw)
    except ValidationError as exc:
        raise Invalid("the event is not valid", _validation_details(exc)) from None


async def _result(db: AsyncSession, received: service.Received) -> EventResult:
    call = received.call
    return EventResult(
        event_id=received.event_id,
        call_id=call.call_id,
        duplicate=received.duplicate,
        waiting_for_seq=service.waiting_for(call),
        call_state=call.state,
        instruction=await service.instruction_for(db, call),
    )


@router.post(
    "/events",
    response_model=EventResult | BatchResult,
    summary="Post call events (signed by the PBX)",
)
async def post_events(request: Request, db: Db, principal: Principal = authorize("cti_event", "create")) -> Any:
    """One call event, or ``{"events": [...]}`` (up to 500, stored all or none). Events already stored are
    acknowledged again (``duplicate``) and change nothing. The answer carries the call's routing
    instruction (for a batch: each event's call)."""
    payload = await request.body()
    settings = request.app.state.settings
    async with db.begin():
        pbx = await service.verify(db, settings, payload=payload, **_signing(request))
    body = _parse(payload)
    events = body.events if isinstance(body, EventBatch) else [body]
    async with db.begin():
        received = await service.receive(db, settings, pbx, events)
        results = [await _result(db, r) for r in received]
    if isinstance(body, EventBatch):
        return BatchResult(results=results)
    return results[0]


@router.get("/calls/{call_id}/instruction", summary="The routing instruction for a call (signed by the PBX)")
async def get_instruction(
    call_id: str, request: Request, db: Db, principal: Principal = authorize("cti_instruction", "read")
) -> Instruction:
    """For PBXs that poll: what to do with the call now (signature over ``"{timestamp}." + path``)."""
    settings = request.app.state.settings
    async with db.begin():
        pbx = await service.verify(db, settings, payload=request.url.path.encode(), **_signing(request))
        call = await service.call_by_call_id(db, pbx, call_id)
        return Instruction(
            call_id=call.call_id, call_state=call.state, instruction=await service.instruction_for(db, call)
        )


# --- staff -----------------------------------------------------------------------------------------
def _call_out(view: service.CallView, cls: type[CallOut] = CallOut, **extra: Any) -> Any:
    call = view.call
    fields = {name: getattr(call, name) for name in CallOut.model_fields if hasattr(call, name)}
    fields.update(agent_name=view.agent_name, customer_id=view.customer_id, customer_name=view.customer_name)
    return cls(**fields, **extra)


@router.get("/calls")
async def list_calls(
    db: Db,
    principal: Principal = authorize("cti_call", "list"),
    state: Annotated[str | None, Query(max_length=16)] = None,
    agent_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Limit = 50,
) -> CallPage:
    views = await service.list_calls(db, principal, state=state, agent_id=agent_id, cursor=cursor, limit=limit)
    next_cursor = service.encode_cursor(views[-1].call) if len(views) == limit else None
    return CallPage(items=[_call_out(v) for v in views], next_cursor=next_cursor)


@router.get("/calls/{call_row_id}")
async def get_call(
    call_row_id: IdParam, db: Db, principal: Principal = authorize("cti_call", "read", by_id=True)
) -> CallDetail:
    view = await service.get_call(db, principal, call_row_id)
    return _call_out(
        view,
        CallDetail,
        events=[CallEventOut.model_validate(e) for e in view.events],
        instruction=await service.instruction_for(db, view.call),
    )


@router.get("/extensions")
async def list_extensions(db: Db, principal: Principal = authorize("cti_extension", "list")) -> list[ExtensionOut]:
    return [ExtensionOut.model_validate(v, from_attributes=True) for v in await service.list_extensions(db)]


@router.put("/extensions/{user_id}")
async def set_extension(
    user_id: IdParam, body: ExtensionIn, db: Db, principal: Principal = authorize("cti_extension", "update")
) -> ExtensionOut:
    async with db.begin():
        view = await service.set_extension(db, principal, user_id, body.extension)
    return ExtensionOut.model_validate(view, from_attributes=True)


@router.delete("/extensions/{user_id}", status_code=204)
async def remove_extension(
    user_id: IdParam, db: Db, principal: Principal = authorize("cti_extension", "delete")
) -> Response:
    async with db.begin():
        await service.remove_extension(db, principal, user_id)
    return Response(status_code=204)


@router.get("/pbxs")
async def list_pbxs(db: Db, principal: Principal = authorize("cti_pbx", "list")) -> list[PbxOut]:
    return [PbxOut.model_validate(p) for p in await service.list_pbxs(db)]


@router.post("/pbxs", status_code=201)
async def create_pbx(body: PbxCreate, db: Db, principal: Principal = authorize("cti_pbx", "create")) -> PbxWithSecret:
    """The secret is in this answer only; kefu never shows it again (make a new one to replace it)."""
    async with db.begin():
        pbx = await service.create_pbx(db, principal, body)
    return PbxWithSecret.model_validate(pbx)


@router.patch("/pbxs/{pbx_id}")
async def update_pbx(
    pbx_id: IdParam, body: PbxUpdate, db: Db, principal: Principal = authorize("cti_pbx", "update")
) -> PbxOut | PbxWithSecret:
    async with db.begin():
        pbx, renewed = await service.update_pbx(db, principal, pbx_id, body)
    return PbxWithSecret.model_validate(pbx) if renewed else PbxOut.model_validate(pbx)
