"""REST routes of IVR flows: list, read, create, update (a new draft), publish, versions, restore, validate
and the simulator. Thin wrappers over ``ivr.service``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam
from kefu.db.session import get_db

from . import engine, service
from .schemas import (
    FlowCreate,
    FlowOut,
    FlowUpdate,
    ProblemOut,
    PublishIn,
    SimulateIn,
    SimulationOut,
    ValidateIn,
    ValidationOut,
    VersionOut,
)

router = APIRouter(prefix="/api/v1/ivr", tags=["ivr"])
Db = Annotated[AsyncSession, Depends(get_db)]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _settings(request: Request) -> object:
    return request.app.state.settings


def use_app_index(request: Request) -> None:
    """Search-query answers use the app's knowledge index (the engine keeps one per process)."""
    index = getattr(request.app.state, "kb_index", None)
    if index is not None:
        engine.use_knowledge_index(index)


@router.get("/flows")
async def list_flows(db: Db, principal: Principal = authorize("ivr_flow", "list")) -> list[FlowOut]:
    return [FlowOut.of(v) for v in await service.list_flows(db)]


@router.post("/flows", status_code=201)
async def create_flow(
    request: Request, body: FlowCreate, db: Db, principal: Principal = authorize("ivr_flow", "create")
) -> FlowOut:
    """The first version is a draft (or live at once with ``publish``). Any error in the source: 422 with
    every error in ``details.errors``, nothing saved."""
    async with db.begin():
        view = await service.create_flow(db, principal, _settings(request), body.model_dump())
    return FlowOut.of(view, full=True)


@router.post("/flows/validate")
async def validate_source(
    request: Request, body: ValidateIn, db: Db, principal: Principal = authorize("ivr_flow", "read")
) -> ValidationOut:
    """Every error and warning of a source; nothing is saved."""
    checked = await service.check_source(db, _settings(request), body.source, body.format)
    return ValidationOut(
        ok=checked.ok,
        errors=[ProblemOut(**p.as_dict()) for p in checked.errors],
        warnings=[ProblemOut(**p.as_dict()) for p in checked.warnings],
    )


@router.get("/flows/{flow_id}")
async def get_flow(
    flow_id: IdParam, db: Db, principal: Principal = authorize("ivr_flow", "read", by_id=True)
) -> FlowOut:
    return FlowOut.of(await service.get_flow(db, flow_id), full=True)


@router.patch("/flows/{flow_id}")
async def update_flow(
    request: Request, flow_id: IdParam, body: FlowUpdate, db: Db, principal: Principal = authorize("ivr_flow", "update")
) -> FlowOut:
    async with db.begin():
        changes = body.model_dump(exclude_unset=True)
        view = await service.update_flow(db, principal, _settings(request), flow_id, changes)
    return FlowOut.of(view, full=True)


@router.post("/flows/{flow_id}/publish")
async def publish_flow(
    request: Request,
    flow_id: IdParam,
    db: Db,
    body: PublishIn | None = None,
    principal: Principal = authorize("ivr_flow", "update"),
) -> FlowOut:
    """The draft becomes live; calls already in the flow keep the version they started with."""
    async with db.begin():
        view = await service.publish(
            db, principal, _settings(request), flow_id, if_version=body.if_version if body else None
        )
    return FlowOut.of(view, full=True)


@router.get("/flows/{flow_id}/versions")
async def list_versions(
    flow_id: IdParam, db: Db, principal: Principal = authorize("ivr_flow", "read", by_id=True)
) -> list[VersionOut]:
    return [VersionOut.of(v, full=False) for v in await service.versions(db, flow_id)]


@router.get("/flows/{flow_id}/versions/{number}")
async def get_version(
    flow_id: IdParam, number: VersionNumber, db: Db, principal: Principal = authorize("ivr_flow", "read", by_id=True)
) -> VersionOut:
    return VersionOut.of(await service.get_version(db, flow_id, number))


@router.post("/flows/{flow_id}/versions/{number}/restore")
async def restore_version(
    request: Request,
    flow_id: IdParam,
    number: VersionNumber,
    db: Db,
    principal: Principal = authorize("ivr_flow", "update"),
) -> FlowOut:
    """The version's source becomes the draft; publish it to make it live."""
    async with db.begin():
        view = await service.restore_version(db, principal, _settings(request), flow_id, number)
    return FlowOut.of(view, full=True)


@router.post("/flows/{flow_id}/simulate")
async def simulate_flow(
    request: Request,
    flow_id: IdParam,
    body: SimulateIn,
    db: Db,
    principal: Principal = authorize("ivr_flow", "read", by_id=True),
) -> SimulationOut:
    """What the engine would tell the PBX, step by step (plays advance by themselves). Lookups read real
    data; nothing is written: a callback only reports that it would be made."""
    use_app_index(request)
    try:
        result = await service.simulate(
            db,
            _settings(request),
            flow_id,
            caller=body.caller,
            called=body.called,
            inputs=body.inputs,
            version=body.version,
            now=body.at,
        )
    finally:
        await db.rollback()
    return SimulationOut.of(result)
