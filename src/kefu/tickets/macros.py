"""Macros: canned replies with variables and optional actions (status, priority, tags).

Variables are looked up, never evaluated: ``{{customer.name}}``, ``{{work_order.number}}``,
``{{work_order.title}}``, ``{{agent.name}}``. Anything else between double braces is left as it is and
reported, so an agent sees the mistake before sending. No template engine ever runs on user text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError, Invalid, NotFound
from kefu.core.policy import Principal
from kefu.tickets import service
from kefu.tickets.models import Macro, WorkOrder, WorkOrderComment

SCOPES = ("personal", "team", "shared")
VARIABLES = ("customer.name", "work_order.number", "work_order.title", "agent.name")
_PLACEHOLDER = re.compile(r"\{\{(.{0,100}?)\}\}", re.DOTALL)
MANAGES_SHARED = ("supervisor", "admin")


@dataclass
class Rendered:
    text: str
    unknown_variables: list[str]


def render_text(template: str, values: dict[str, str]) -> Rendered:
    """Replace the known ``{{ variable }}`` placeholders by ``values``; keep and report the rest."""
    unknown: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name in values:
            return values[name]
        if name not in unknown:
            unknown.append(name)
        return match.group(0)

    return Rendered(_PLACEHOLDER.sub(substitute, template), unknown)


def _visible(principal: Principal) -> Any:
    return or_(
        Macro.scope == "shared",
        (Macro.scope == "team") & Macro.team_id.in_(sorted(principal.team_ids)),
        (Macro.scope == "personal") & (Macro.owner_id == principal.user_id),
    )


def may_manage(principal: Principal, macro: Macro) -> bool:
    if principal.has_role(*MANAGES_SHARED):
        return True
    if macro.scope == "personal":
        return macro.owner_id == principal.user_id
    if macro.scope == "team":
        return macro.team_id in principal.team_ids
    return False


def _check_actions(actions: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in actions.items() if v not in (None, [], "")}
    if kept.get("status") is not None and kept["status"] not in service.TRANSITIONS:
        raise Invalid(f"unknown status {kept['status']!r}")
    return kept


async def list_macros(db: AsyncSession, principal: Principal) -> list[Macro]:
    """Shared macros, the principal's teams' and their own."""
    stmt = select(Macro).where(_visible(principal)).order_by(Macro.scope, Macro.name, Macro.id)
    return list((await db.scalars(stmt)).all())


async def get_macro(db: AsyncSession, principal: Principal, macro_id: int) -> Macro:
    found = await db.scalar(select(Macro).where(Macro.id == macro_id, _visible(principal)))
    if found is None:
        raise NotFound("macro")
    return found


async def create_macro(
    db: AsyncSession,
    principal: Principal,
    *,
    name: str,
    body: str,
    scope: str,
    team_id: int | None,
    actions: dict[str, Any],
) -> Macro:
    if scope not in SCOPES:
        raise Invalid(f"unknown scope {scope!r}")
    if scope == "team":
        if team_id is None:
            raise Invalid("a team macro needs team_id")
        if team_id not in principal.team_ids and not principal.has_role(*MANAGES_SHARED):
            raise ApiError(403, "forbidden", "only members of the team (or supervisors) make its macros")
    elif team_id is not None:
        raise Invalid("only team macros have a team_id")
    if scope == "shared" and not principal.has_role(*MANAGES_SHARED):
        raise ApiError(403, "forbidden", "only supervisors and admins make shared macros")
    macro = Macro(
        name=name,
        body=body,
        scope=scope,
        owner_id=principal.user_id,
        team_id=team_id,
        actions=_check_actions(actions),
        active=True,
    )
    db.add(macro)
    await db.flush()
    return macro


async def update_macro(db: AsyncSession, principal: Principal, macro_id: int, changes: dict[str, Any]) -> Macro:
    macro = await get_macro(db, principal, macro_id)
    if not may_manage(principal, macro):
        raise ApiError(403, "forbidden", "not allowed to change this macro")
    for name in ("name", "body", "active"):
        if changes.get(name) is not None:
            setattr(macro, name, changes[name])
    if changes.get("actions") is not None:
        macro.actions = _check_actions(changes["actions"])
    return macro


async def delete_macro(db: AsyncSession, principal: Principal, macro_id: int) -> None:
    macro = await get_macro(db, principal, macro_id)
    if not may_manage(principal, macro):
        raise ApiError(403, "forbidden", "not allowed to delete this macro")
    await db.delete(macro)


async def _values(db: AsyncSession, principal: Principal, work_order: WorkOrder) -> dict[str, str]:
    row = await service.row_of(db, principal, work_order.id)
    return {
        "customer.name": row.customer_name or "",
        "work_order.number": work_order.number,
        "work_order.title": work_order.title,
        "agent.name": principal.display_name or principal.username,
    }


async def render(db: AsyncSession, principal: Principal, macro_id: int, work_order_id: int) -> Rendered:
    macro = await get_macro(db, principal, macro_id)
    work_order = await service.get_work_order(db, principal, work_order_id)
    return render_text(macro.body, await _values(db, principal, work_order))


@dataclass
class Applied:
    work_order: WorkOrder
    comment: WorkOrderComment | None
    unknown_variables: list[str]


async def apply_macro(db: AsyncSession, principal: Principal, work_order_id: int, macro_id: int) -> Applied:
    """Add the rendered text as a public reply, then apply the macro's actions."""
    macro = await get_macro(db, principal, macro_id)
    if not macro.active:
        raise Invalid("this macro is switched off")
    work_order = await service.get_work_order(db, principal, work_order_id, for_update=True)
    rendered = render_text(macro.body, await _values(db, principal, work_order))
    comment = None
    if rendered.text.strip():
        comment = await service.add_comment(db, principal, work_order_id, rendered.text, internal=False)
    actions = macro.actions or {}
    if actions.get("priority"):
        await service.update_work_order(db, principal, work_order_id, {"priority": actions["priority"]})
    if actions.get("add_tags"):
        await service.add_tags(db, principal, work_order_id, list(actions["add_tags"]))
    if actions.get("remove_tags"):
        await service.remove_tags(db, principal, work_order_id, list(actions["remove_tags"]))
    if actions.get("status"):
        await service.set_status(db, principal, work_order_id, actions["status"], reason=f"macro {macro.name}")
    await service.record_event(db, work_order, principal.user_id, "macro_applied", macro_id=macro.id)
    return Applied(work_order, comment, rendered.unknown_variables)
