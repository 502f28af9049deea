"""IVR flows: the rules, and the only place that writes them.

A flow has versions. Saving a source makes (or replaces) the flow's one draft; publishing the draft makes
it the live version and the previous live one superseded; published versions never change again, and a
call keeps the version it started with (its state holds the version id). Restoring an old version copies
its source into the draft. Every save checks the source completely (``flows.check``): a source with any
error is refused with every error listed (422, ``details.errors``) and nothing is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.errors import Conflict, Invalid, NotFound
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity.service import actor_of

from . import engine, flows
from .models import FlowVersionStatus, IvrFlow, IvrFlowNumber, IvrFlowVersion

V = FlowVersionStatus
CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_NUMBERS = 50
MAX_SIMULATION_STEPS = 100


@dataclass
class FlowView:
    flow: IvrFlow
    live: IvrFlowVersion | None
    draft: IvrFlowVersion | None
    numbers: list[str] = field(default_factory=list)

    @property
    def latest(self) -> IvrFlowVersion | None:
        return self.draft or self.live


def _limits(settings: Any) -> dict[str, int]:
    return {
        "max_bytes": int(getattr(settings, "ivr_flow_max_bytes", flows.MAX_SOURCE_BYTES)),
        "max_nodes": int(getattr(settings, "ivr_flow_max_nodes", flows.MAX_NODES)),
    }


def refusal(checked: flows.Checked) -> Invalid:
    count = len(checked.errors)
    first = str(checked.errors[0]) if checked.errors else ""
    message = f"the flow has {count} error{'s' if count != 1 else ''}: {first}"
    return Invalid(
        message,
        {
            "field": "source",
            "errors": [p.as_dict() for p in checked.errors],
            "warnings": [p.as_dict() for p in checked.warnings],
        },
    )


async def check_source(db: AsyncSession, settings: Any, source: str, fmt: str = "auto") -> flows.Checked:
    """Every problem of a source, writing nothing."""
    return await flows.check(db, source, fmt, **_limits(settings))


async def _checked(db: AsyncSession, settings: Any, source: str, fmt: str) -> tuple[flows.Checked, str]:
    checked = await check_source(db, settings, source, fmt)
    if not checked.ok or checked.definition is None:
        raise refusal(checked)
    return checked, fmt if fmt != "auto" else flows.detect_format(source)


# --- reading -------------------------------------------------------------------------------------
async def _views(db: AsyncSession, found: Sequence[IvrFlow]) -> list[FlowView]:
    ids = [f.id for f in found]
    if not ids:
        return []
    wanted = select(IvrFlowVersion).where(
        IvrFlowVersion.flow_id.in_(ids), IvrFlowVersion.status.in_((V.draft, V.published))
    )
    versions = (await db.scalars(wanted)).all()
    live = {v.flow_id: v for v in versions if v.status == V.published}
    draft = {v.flow_id: v for v in versions if v.status == V.draft}
    numbers: dict[int, list[str]] = {i: [] for i in ids}
    for row in (await db.scalars(select(IvrFlowNumber).where(IvrFlowNumber.flow_id.in_(ids)))).all():
        numbers[row.flow_id].append(row.number)
    return [FlowView(f, live.get(f.id), draft.get(f.id), sorted(numbers[f.id])) for f in found]


async def list_flows(db: AsyncSession) -> list[FlowView]:
    return await _views(db, (await db.scalars(select(IvrFlow).order_by(IvrFlow.code))).all())


async def _flow(db: AsyncSession, flow_id: int, *, for_update: bool = False) -> IvrFlow:
    stmt = select(IvrFlow).where(IvrFlow.id == flow_id)
    if for_update:
        stmt = stmt.with_for_update()
    found = await db.scalar(stmt)
    if found is None:
        raise NotFound("ivr flow")
    return found


async def get_flow(db: AsyncSession, flow_id: int) -> FlowView:
    return (await _views(db, [await _flow(db, flow_id)]))[0]


async def versions(db: AsyncSession, flow_id: int) -> list[IvrFlowVersion]:
    await _flow(db, flow_id)
    stmt = select(IvrFlowVersion).where(IvrFlowVersion.flow_id == flow_id).order_by(IvrFlowVersion.number.desc())
    return list((await db.scalars(stmt)).all())


async def get_version(db: AsyncSession, flow_id: int, number: int) -> IvrFlowVersion:
    found = await db.scalar(
        select(IvrFlowVersion).where(IvrFlowVersion.flow_id == flow_id, IvrFlowVersion.number == number)
    )
    if found is None:
        raise NotFound("ivr flow version")
    return found


# --- writing -------------------------------------------------------------------------------------
def _clean_numbers(raw: Any) -> list[str]:
    if not isinstance(raw, list) or len(raw) > MAX_NUMBERS:
        raise Invalid(f"numbers is a list of at most {MAX_NUMBERS} called numbers", {"field": "numbers"})
    cleaned: list[str] = []
    for value in raw:
        number = engine.normalize_number(value if isinstance(value, str) else "")
        if len(number.lstrip("+")) < 3:
            raise Invalid(f"{value!r} is not a phone number", {"field": "numbers", "number": str(value)[:64]})
        if number not in cleaned:
            cleaned.append(number)
    return cleaned


async def _set_numbers(db: AsyncSession, flow: IvrFlow, numbers: list[str]) -> None:
    if numbers:
        taken = (
            await db.execute(
                select(IvrFlowNumber.number, IvrFlow.code)
                .join(IvrFlow, IvrFlow.id == IvrFlowNumber.flow_id)
                .where(IvrFlowNumber.number.in_(numbers), IvrFlowNumber.flow_id != flow.id)
            )
        ).all()
        if taken:
            number, code = taken[0]
            raise Conflict(
                f"the number {number} is already bound to the flow {code}", {"field": "numbers", "number": number}
            )
    existing = {r.number: r for r in (await db.scalars(select(IvrFlowNumber).where(IvrFlowNumber.flow_id == flow.id)))}
    for number, row in existing.items():
        if number not in numbers:
            await db.delete(row)
    for number in numbers:
        if number not in existing:
            db.add(IvrFlowNumber(flow_id=flow.id, number=number))
    await db.flush()


async def _make_default(db: AsyncSession, flow: IvrFlow) -> None:
    await db.execute(
        update(IvrFlow).where(IvrFlow.id != flow.id, IvrFlow.is_default.is_(True)).values(is_default=False)
    )
    flow.is_default = True


def _text(value: Any, field_name: str, max_length: int, *, required: bool = True) -> str:
    text = " ".join(value.split()) if isinstance(value, str) else ""
    if required and not text:
        raise Invalid(f"{field_name} must not be empty", {"field": field_name})
    if len(text) > max_length:
        raise Invalid(f"{field_name} is longer than {max_length} characters", {"field": field_name})
    return text


async def _write_draft(
    db: AsyncSession,
    principal: Principal,
    flow: IvrFlow,
    checked: flows.Checked,
    source: str,
    fmt: str,
    note: str,
) -> IvrFlowVersion:
    now = utcnow()
    draft = await db.scalar(
        select(IvrFlowVersion).where(IvrFlowVersion.flow_id == flow.id, IvrFlowVersion.status == V.draft)
    )
    if draft is None:
        last = await db.scalar(select(func.max(IvrFlowVersion.number)).where(IvrFlowVersion.flow_id == flow.id))
        draft = IvrFlowVersion(
            flow_id=flow.id, number=(last or 0) + 1, status=V.draft, created_by_id=principal.user_id, created_at=now
        )
        db.add(draft)
    draft.source = source
    draft.source_format = fmt
    draft.definition = checked.definition or {}
    draft.warnings = [p.as_dict() for p in checked.warnings]
    draft.note = note
    draft.updated_at = now
    flow.updated_at = now
    await db.flush()
    return draft


async def create_flow(db: AsyncSession, principal: Principal, settings: Any, data: dict[str, Any]) -> FlowView:
    code = data.get("code")
    if not isinstance(code, str) or not CODE.match(code):
        raise Invalid("code: letters, digits, dot, underscore or hyphen (at most 64)", {"field": "code"})
    name = _text(data.get("name"), "name", 128)
    numbers = _clean_numbers(data.get("numbers") or [])
    checked, fmt = await _checked(db, settings, data.get("source") or "", data.get("format") or "auto")
    if await db.scalar(select(IvrFlow.id).where(IvrFlow.code == code)) is not None:
        raise Conflict("another flow already has this code", {"field": "code"})
    flow = IvrFlow(code=code, name=name, active=bool(data.get("active", True)), created_by_id=principal.user_id)
    db.add(flow)
    await db.flush()
    await _set_numbers(db, flow, numbers)
    if data.get("is_default"):
        await _make_default(db, flow)
    note = _text(data.get("note") or "", "note", 500, required=False)
    draft = await _write_draft(db, principal, flow, checked, data["source"], fmt, note)
    await audit.record(
        db, actor_of(principal), "ivr_flow.created", object_type="ivr_flow", object_id=flow.id, details={"code": code}
    )
    if data.get("publish"):
        await _publish(db, principal, flow, draft)
    return await get_flow(db, flow.id)


def _check_seen(view: FlowView, if_version: int | None) -> None:
    latest = view.latest.number if view.latest is not None else None
    if if_version is not None and if_version != latest:
        raise Conflict(
            "the flow changed since you opened it: reload it and apply your change again",
            {"field": "if_version", "latest": latest},
        )


async def update_flow(
    db: AsyncSession, principal: Principal, settings: Any, flow_id: int, changes: dict[str, Any]
) -> FlowView:
    """Only the keys given change. A ``source`` becomes the draft (checked first; nothing is written when
    it has errors); ``if_version`` (the version the editor opened) refuses a change made on a stale copy."""
    flow = await _flow(db, flow_id, for_update=True)
    view = (await _views(db, [flow]))[0]
    _check_seen(view, changes.get("if_version"))
    checked = None
    if changes.get("source") is not None:
        checked, fmt = await _checked(db, settings, changes["source"], changes.get("format") or "auto")
    changed: list[str] = []
    if "name" in changes and changes["name"] is not None:
        flow.name = _text(changes["name"], "name", 128)
        changed.append("name")
    if changes.get("numbers") is not None:
        await _set_numbers(db, flow, _clean_numbers(changes["numbers"]))
        changed.append("numbers")
    if changes.get("is_default") is not None:
        if changes["is_default"]:
            await _make_default(db, flow)
        else:
            flow.is_default = False
        changed.append("is_default")
    if changes.get("active") is not None:
        flow.active = bool(changes["active"])
        changed.append("active")
    if checked is not None:
        note = _text(changes.get("note") or "", "note", 500, required=False)
        await _write_draft(db, principal, flow, checked, changes["source"], fmt, note)
        changed.append("source")
    flow.updated_at = utcnow()
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "ivr_flow.updated",
        object_type="ivr_flow",
        object_id=flow.id,
        details={"changed": changed},
    )
    return await get_flow(db, flow.id)


async def _publish(db: AsyncSession, principal: Principal, flow: IvrFlow, draft: IvrFlowVersion) -> None:
    now = utcnow()
    await db.execute(
        update(IvrFlowVersion)
        .where(IvrFlowVersion.flow_id == flow.id, IvrFlowVersion.status == V.published)
        .values(status=V.superseded)
    )
    draft.status = V.published
    draft.published_at = now
    draft.published_by_id = principal.user_id
    flow.live_version_id = draft.id
    flow.updated_at = now
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "ivr_flow.published",
        object_type="ivr_flow",
        object_id=flow.id,
        details={"version": draft.number},
    )


async def publish(
    db: AsyncSession, principal: Principal, settings: Any, flow_id: int, *, if_version: int | None = None
) -> FlowView:
    """The draft becomes live. Its source is checked again (a queue or article it names may be gone)."""
    flow = await _flow(db, flow_id, for_update=True)
    view = (await _views(db, [flow]))[0]
    _check_seen(view, if_version)
    if view.draft is None:
        raise Conflict("there is no draft to publish", {"field": "draft"})
    checked, _fmt = await _checked(db, settings, view.draft.source, view.draft.source_format)
    view.draft.definition = checked.definition or {}
    view.draft.warnings = [p.as_dict() for p in checked.warnings]
    await _publish(db, principal, flow, view.draft)
    return await get_flow(db, flow.id)


async def restore_version(db: AsyncSession, principal: Principal, settings: Any, flow_id: int, number: int) -> FlowView:
    """An earlier version's source becomes the draft (checked like any save); publish it to go live."""
    flow = await _flow(db, flow_id, for_update=True)
    old = await get_version(db, flow_id, number)
    checked, fmt = await _checked(db, settings, old.source, old.source_format)
    await _write_draft(db, principal, flow, checked, old.source, fmt, f"restored from version {number}")
    await audit.record(
        db,
        actor_of(principal),
        "ivr_flow.restored",
        object_type="ivr_flow",
        object_id=flow.id,
        details={"from_version": number},
    )
    return await get_flow(db, flow.id)


# --- the simulator -------------------------------------------------------------------------------
@dataclass
class Simulation:
    version: int
    version_status: str
    steps: list[dict[str, Any]]
    waiting_for_input: bool
    unused_inputs: int


async def simulate(
    db: AsyncSession,
    settings: Any,
    flow_id: int,
    *,
    caller: str | None,
    called: str | None = None,
    inputs: Sequence[str | None] = (),
    version: str | int = "draft",
    now: datetime | None = None,
) -> Simulation:
    """What the engine would tell the PBX, step by step, for a caller typing ``inputs`` (None: a
    timeout). Play steps advance by themselves, as the PBX does. Lookups read real data; nothing is
    written (a callback reports that it would be made). Run it in a transaction that is rolled back."""
    view = await get_flow(db, flow_id)
    if version == "draft":
        chosen = view.draft or view.live
    elif version == "live":
        chosen = view.live
    elif isinstance(version, int):
        chosen = await get_version(db, flow_id, version)
    else:
        raise Invalid("version: draft, live or a version number", {"field": "version"})
    if chosen is None:
        raise Invalid("the flow has no such version to simulate", {"field": "version"})
    call = engine.CallContext(
        call_id=f"simulation-{flow_id}", caller=caller or None, called=called or None, now=now or utcnow()
    )
    step = await engine.start_version(db, settings, view.flow, chosen, call, simulate=True)
    steps = [_step_out("start", None, step)]
    used = 0
    while not step.done and len(steps) < MAX_SIMULATION_STEPS:
        auto = step.instruction.get("action") == "play"
        if auto:
            digits = None
        elif used < len(inputs):
            digits = inputs[used]
            used += 1
        else:
            break
        step = await engine.advance(db, settings, call, step.state, digits, simulate=True)
        steps.append(_step_out("auto" if auto else "input", digits, step))
    return Simulation(chosen.number, chosen.status, steps, not step.done, len(inputs) - used)


def _step_out(kind: str, digits: str | None, step: engine.IvrStep) -> dict[str, Any]:
    """``kind``: start, auto (after a play) or input (``digits``; None = a timeout)."""
    return {
        "kind": kind,
        "input": digits,
        "node": step.state.get("node"),
        "instruction": step.instruction,
        "done": step.done,
        "queue": step.queue,
        "callback": step.callback,
        "variables": dict(step.state.get("vars") or {}),
    }
