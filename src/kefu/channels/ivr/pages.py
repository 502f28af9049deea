"""IVR flow pages for supervisors and admins: the list, and one flow's editor (source with line numbers,
validate, save draft, publish, settings, version history with restore) with a simulator.

Plain HTML forms posted with the CSRF field. A refused source is shown again exactly as typed, with
every error (path, line, message) and nothing saved. The simulator runs the engine on the draft (or
the live version) in a transaction that is rolled back, so nothing it does is kept.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import IdParam
from kefu.db.session import get_db
from kefu.web.pages import form_data, render, see_other, user_zone

from . import flows, service
from .api import use_app_index

router = APIRouter(include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]
MAX_INPUTS = 50
DTMF = re.compile(r"^[0-9*#]{1,64}$")

STARTER = """\
# An IVR flow: see the field reference below the editor.
language: zh-CN
start: main
nodes:
  main:
    type: menu
    prompt: "您好，欢迎致电。继续请按1。"
    options:
      "1": thanks
    max_retries: 2
    fallback: thanks
  thanks:
    type: hangup
    text: "感谢您的来电，再见。"
"""


def _(message: str) -> str:
    """Marks a msgid for the catalogue; the template translates it."""
    return message


def _problems(exc: ApiError) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    details = exc.details if isinstance(exc.details, dict) else {}
    errors = details.get("errors")
    if not isinstance(errors, list):
        errors = [{"path": details.get("field") or "", "message": exc.message, "line": None}]
    return errors, list(details.get("warnings") or [])


def _text(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    return value[:limit] if isinstance(value, str) else ""


def _numbers(text: str) -> list[str]:
    """One number a line (or separated by commas); spaces inside a number are fine."""
    return [n.strip() for n in re.split(r"[\r\n,;，；]+", text) if n.strip()][: service.MAX_NUMBERS + 1]


def _inputs(text: str) -> tuple[list[str | None], str | None]:
    """``1, 2, 12345#, -``: what the caller types at each prompt, in order; ``-`` (or nothing between two
    commas) is a timeout."""
    inputs: list[str | None] = []
    if not text.strip():
        return inputs, None
    for part in text.split(","):
        typed = part.strip()
        if typed in ("", "-"):
            inputs.append(None)
        elif DTMF.match(typed):
            inputs.append(typed)
        else:
            return inputs, typed
    return inputs[:MAX_INPUTS], None


# --- the list ------------------------------------------------------------------------------------
async def _list_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    *,
    typed: dict[str, Any] | None = None,
    problems: list[dict[str, Any]] | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "ivr/flows.html",
        principal,
        status_code=status_code,
        views=await service.list_flows(db),
        can_create=allows(principal, "ivr_flow", "create"),
        typed=typed or {"code": "", "name": "", "source": STARTER},
        problems=problems or [],
        errors=[],
    )


@router.get("/ivr/flows")
async def flows_page(request: Request, db: Db, principal: Principal = authorize("ivr_flow", "list")) -> Response:
    return await _list_page(request, db, principal)


@router.post("/ivr/flows")
async def flow_create_submit(
    request: Request, db: Db, principal: Principal = authorize("ivr_flow", "create")
) -> Response:
    data = await form_data(request)
    typed = {
        "code": _text(data, "code", 64).strip(),
        "name": _text(data, "name", 128).strip(),
        "source": _text(data, "source", 1_048_576) or STARTER,
    }
    try:
        async with db.begin():
            view = await service.create_flow(db, principal, request.app.state.settings, typed)
    except ApiError as exc:
        if exc.status == 404:
            raise
        errors, _warnings = _problems(exc)
        return await _list_page(request, db, principal, typed=typed, problems=errors, status_code=exc.status)
    return see_other(f"/ivr/flows/{view.flow.id}?saved=1")


# --- one flow ------------------------------------------------------------------------------------
async def _flow_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    flow_id: int,
    *,
    source: str | None = None,
    problems: list[dict[str, Any]] | None = None,
    warnings: list[dict[str, Any]] | None = None,
    checked: bool = False,
    settings_typed: dict[str, Any] | None = None,
    settings_error: str | None = None,
    simulation: service.Simulation | None = None,
    simulation_typed: dict[str, Any] | None = None,
    simulation_error: str | None = None,
    status_code: int = 200,
) -> Response:
    view = await service.get_flow(db, flow_id)
    history = await service.versions(db, flow_id)
    shown = view.latest
    if source is None:
        source = shown.source if shown is not None else STARTER
    if warnings is None and not checked and shown is not None:
        warnings = list(shown.warnings or [])
    return render(
        request,
        "ivr/flow.html",
        principal,
        status_code=status_code,
        view=view,
        history=history,
        source=source,
        source_lines=max(source.count("\n") + 1, 20),
        if_version=shown.number if shown is not None else "",
        problems=problems or [],
        warnings=warnings or [],
        checked=checked,
        can_update=allows(principal, "ivr_flow", "update"),
        settings_typed=settings_typed
        or {
            "name": view.flow.name,
            "numbers": "\n".join(view.numbers),
            "is_default": view.flow.is_default,
            "active": view.flow.active,
        },
        settings_error=settings_error,
        simulation=simulation,
        simulation_typed=simulation_typed or {"caller": "", "called": "", "inputs": "", "version": "draft", "at": ""},
        simulation_error=simulation_error,
        node_types=list(flows.NODE_FIELDS.items()),
        errors=[],
    )


@router.get("/ivr/flows/{flow_id}")
async def flow_page(
    request: Request, flow_id: IdParam, db: Db, principal: Principal = authorize("ivr_flow", "read", by_id=True)
) -> Response:
    return await _flow_page(request, db, principal, flow_id)


@router.post("/ivr/flows/{flow_id}/source")
async def flow_source_submit(
    request: Request, flow_id: IdParam, db: Db, principal: Principal = authorize("ivr_flow", "update")
) -> Response:
    """``action``: validate (nothing saved), save (the draft) or publish (save, then make it live)."""
    data = await form_data(request)
    source = _text(data, "source", 1_048_576)
    action = data.get("action")
    settings = request.app.state.settings
    if action == "validate":
        result = await service.check_source(db, settings, source)
        await db.rollback()
        return await _flow_page(
            request,
            db,
            principal,
            flow_id,
            source=source,
            problems=[p.as_dict() for p in result.errors],
            warnings=[p.as_dict() for p in result.warnings],
            checked=True,
        )
    if_version = _text(data, "if_version", 12)
    changes: dict[str, Any] = {
        "source": source,
        "note": " ".join(_text(data, "note", 500).split()),
        "if_version": int(if_version) if if_version.isdigit() else None,
    }
    try:
        async with db.begin():
            await service.update_flow(db, principal, settings, flow_id, changes)
            if action == "publish":
                await service.publish(db, principal, settings, flow_id)
    except ApiError as exc:
        if exc.status == 404:
            raise
        errors, warnings = _problems(exc)
        return await _flow_page(
            request,
            db,
            principal,
            flow_id,
            source=source,
            problems=errors,
            warnings=warnings,
            checked=True,
            status_code=exc.status,
        )
    return see_other(f"/ivr/flows/{flow_id}?saved=1")


@router.post("/ivr/flows/{flow_id}/settings")
async def flow_settings_submit(
    request: Request, flow_id: IdParam, db: Db, principal: Principal = authorize("ivr_flow", "update")
) -> Response:
    data = await form_data(request)
    typed = {
        "name": _text(data, "name", 128).strip(),
        "numbers": _text(data, "numbers", 4000),
        "is_default": data.get("is_default") == "1",
        "active": data.get("active") == "1",
    }
    changes = {**typed, "numbers": _numbers(typed["numbers"])}
    try:
        async with db.begin():
            await service.update_flow(db, principal, request.app.state.settings, flow_id, changes)
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await _flow_page(
            request, db, principal, flow_id, settings_typed=typed, settings_error=exc.message, status_code=exc.status
        )
    return see_other(f"/ivr/flows/{flow_id}?saved=1")


@router.post("/ivr/flows/{flow_id}/publish")
async def flow_publish_submit(
    request: Request, flow_id: IdParam, db: Db, principal: Principal = authorize("ivr_flow", "update")
) -> Response:
    data = await form_data(request)
    if_version = _text(data, "if_version", 12)
    try:
        async with db.begin():
            await service.publish(
                db,
                principal,
                request.app.state.settings,
                flow_id,
                if_version=int(if_version) if if_version.isdigit() else None,
            )
    except ApiError as exc:
        if exc.status == 404:
            raise
        errors, warnings = _problems(exc)
        return await _flow_page(
            request, db, principal, flow_id, problems=errors, warnings=warnings, checked=True, status_code=exc.status
        )
    return see_other(f"/ivr/flows/{flow_id}?saved=1")


@router.post("/ivr/flows/{flow_id}/versions/{number}/restore")
async def flow_restore_submit(
    request: Request,
    flow_id: IdParam,
    number: VersionNumber,
    db: Db,
    principal: Principal = authorize("ivr_flow", "update"),
) -> Response:
    try:
        async with db.begin():
            await service.restore_version(db, principal, request.app.state.settings, flow_id, number)
    except ApiError as exc:
        if exc.status == 404:
            raise
        errors, warnings = _problems(exc)
        return await _flow_page(
            request, db, principal, flow_id, problems=errors, warnings=warnings, checked=True, status_code=exc.status
        )
    return see_other(f"/ivr/flows/{flow_id}?saved=1")


def _moment(text: str, principal: Principal) -> datetime | None:
    """A local ``YYYY-MM-DDTHH:MM`` (datetime-local input) in the user's zone, as UTC."""
    try:
        local = datetime.fromisoformat(text)
    except ValueError:
        return None
    if local.tzinfo is None:
        local = local.replace(tzinfo=user_zone(principal))
    return local.astimezone(UTC)


@router.post("/ivr/flows/{flow_id}/simulate")
async def flow_simulate_submit(
    request: Request, flow_id: IdParam, db: Db, principal: Principal = authorize("ivr_flow", "read", by_id=True)
) -> Response:
    data = await form_data(request)
    typed = {
        "caller": _text(data, "caller", 40).strip(),
        "called": _text(data, "called", 40).strip(),
        "inputs": _text(data, "inputs", 2000),
        "version": "live" if data.get("version") == "live" else "draft",
        "at": _text(data, "at", 40).strip(),
    }
    inputs, bad = _inputs(typed["inputs"])
    now = _moment(typed["at"], principal) if typed["at"] else None
    error = None
    result = None
    if bad is not None:
        error = f"{bad!r}: digits 0-9, * and # only; - for a timeout"
    elif typed["at"] and now is None:
        error = f"{typed['at']!r} is not a date and time"
    else:
        use_app_index(request)
        try:
            result = await service.simulate(
                db,
                request.app.state.settings,
                flow_id,
                caller=typed["caller"] or None,
                called=typed["called"] or None,
                inputs=inputs,
                version=typed["version"],
                now=now,
            )
        except ApiError as exc:
            if exc.status == 404:
                raise
            error = exc.message
        finally:
            await db.rollback()
    return await _flow_page(
        request,
        db,
        principal,
        flow_id,
        simulation=result,
        simulation_typed=typed,
        simulation_error=error,
        status_code=422 if error else 200,
    )
