"""Routing configuration pages for supervisors: queues (every setting, skill requirements, bullseye steps,
members) and capacity profiles with the teams and agents they apply to.

Plain HTML forms posted with the CSRF field; Alpine only reveals spare rows and filters the agent list.
A form becomes the values ``routing.queues`` takes and every check is the service's: what is not a whole
number goes to the service as typed (a malformed id as 0, which names nothing), so the refusal names its
field. A refusal is shown next to that field (``details.field``), with everything the user typed kept, and
nothing is written. These pages are for those who may change routing (``routing_queue``/``routing_capacity``
update/create/list): agents, who may read queues through the API, do not get them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import MAX_ID, IdParam
from kefu.db.session import get_db
from kefu.identity import service as identity
from kefu.routing import queues
from kefu.routing.models import MaxWaitAction
from kefu.routing.policy import CHANNEL_CLASS
from kefu.tickets import sla
from kefu.web.pages import form_data, render, see_other

router = APIRouter(include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]

# A message shown on a page: a catalogue msgid and the values it is filled with.
Message = tuple[str, dict[str, Any]]


def _(message: str) -> str:
    """Marks a msgid for the catalogue (scripts/i18n.sh extracts ``_("...")``); the template translates it."""
    return message


NUMBER_FIELDS = (
    "priority",
    "sl_target_percent",
    "sl_threshold_seconds",
    "sticky_seconds",
    "offer_timeout_seconds",
    "after_contact_seconds",
    "expected_handle_seconds",
    "overflow_after_seconds",
    "max_wait_seconds",
)
ID_FIELDS = ("overflow_queue_id", "calendar_id", "team_id")
TEXT_FIELDS = ("code", "name", "channel", "language", "max_wait_action", "closed_action")
QUEUE_FORM_FIELDS = frozenset({*TEXT_FIELDS, *NUMBER_FIELDS, *ID_FIELDS, "active", "skills", "bullseye", "user_ids"})
PROFILE_FORM_FIELDS = frozenset({*queues.PROFILE_FIELDS, "team_id", "user_id", "profile_id"})
ROW_FIELD = re.compile(r"^(skills|bullseye)\[\d+\](\.\w+)?$")
# Rows a form may post: more than the service allows, so the service is the one refusing too many.
MAX_FORM_ROWS = max(queues.MAX_QUEUE_SKILLS, queues.BULLSEYE_MAX_STEPS) + 10
SPARE_SKILL_ROWS = 3
SPARE_STEP_ROWS = 2
INTEGER = re.compile(r"^[+-]?\d{1,18}$")
STAFF_PAGE = 500


# --- form values ---------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    text = value.strip() if isinstance(value, str) else ""
    return text or None


def _number(value: Any) -> Any:
    """A whole number as typed; blank is None; anything else goes to the service as text, which refuses
    it naming the field."""
    text = _text(value)
    if text is None:
        return None
    return int(text) if INTEGER.match(text) else text


def _id(value: Any) -> int | None:
    """An id from a select; blank is None; a malformed one is 0, which the service refuses as naming nothing."""
    text = _text(value)
    if text is None:
        return None
    return int(text) if text.isdigit() and len(text) <= 19 and 0 < int(text) <= MAX_ID else 0


def _flag(value: Any) -> bool:
    # Checkboxes follow a hidden "0" of the same name: the last value sent wins (see form_data).
    return value == "1"


def _row_count(data: dict[str, Any], key: str) -> int:
    text = str(data.get(key, ""))
    return min(int(text), MAX_FORM_ROWS) if text.isdigit() and len(text) <= 4 else 0


@dataclass
class QueueForm:
    """A posted queue form: ``values`` for the service, and what was typed to show again."""

    values: dict[str, Any] = field(default_factory=dict)
    typed: dict[str, Any] = field(default_factory=dict)
    skill_rows: list[dict[str, str]] | None = None
    step_rows: list[dict[str, Any]] | None = None


def _queue_form(data: dict[str, Any]) -> QueueForm:
    """Only the fields the form sent: an edit changes those, a new queue takes the defaults for the rest.
    Rows removed or left blank are dropped, so the service's row numbers are the rows shown again."""
    form = QueueForm()
    for name in TEXT_FIELDS:
        if name in data:
            form.typed[name] = str(data[name])
            form.values[name] = _text(data[name])
    for name in NUMBER_FIELDS:
        if name in data:
            form.typed[name] = str(data[name])
            form.values[name] = _number(data[name])
    for name in ID_FIELDS:
        if name in data:
            form.typed[name] = str(data[name])
            form.values[name] = _id(data[name])
    if "active" in data:
        form.typed["active"] = form.values["active"] = _flag(data["active"])
    if "skills-rows" in data:
        form.skill_rows, skills = [], []
        for i in range(_row_count(data, "skills-rows")):
            skill_id = str(data.get(f"skills-{i}-skill_id", "")).strip()
            level = str(data.get(f"skills-{i}-min_proficiency", "")).strip()
            if _flag(data.get(f"skills-{i}-remove")) or not skill_id:
                continue
            form.skill_rows.append({"skill_id": skill_id, "min_proficiency": level})
            need: dict[str, Any] = {"skill_id": _id(skill_id)}
            if level:
                need["min_proficiency"] = _number(level)
            skills.append(need)
        form.values["skills"] = skills
    if "bullseye-rows" in data:
        form.step_rows, steps = [], []
        for i in range(_row_count(data, "bullseye-rows")):
            after = str(data.get(f"bullseye-{i}-after_seconds", "")).strip()
            drop = str(data.get(f"bullseye-{i}-proficiency_drop", "")).strip()
            any_member = _flag(data.get(f"bullseye-{i}-any_member"))
            # A spare row keeps its drop's preset: only a wait or "any member" makes it a step.
            if _flag(data.get(f"bullseye-{i}-remove")) or not (after or any_member):
                continue
            form.step_rows.append({"after_seconds": after, "proficiency_drop": drop, "any_member": any_member})
            step: dict[str, Any] = {"after_seconds": _number(after), "any_member": any_member}
            if drop:
                step["proficiency_drop"] = _number(drop)
            steps.append(step)
        form.values["bullseye"] = steps
    return form


def _typed_of(view: queues.QueueView | None) -> QueueForm:
    """The form as a stored queue (or a new one, with the service's defaults) fills it."""
    source = {**queues.QUEUE_DEFAULTS, "code": "", "name": "", "channel": "phone"}
    skills: list[Any] = []
    if view is not None:
        source = {f: getattr(view.queue, f) for f in queues.QUEUE_FIELDS}
        skills = view.skills
    typed: dict[str, Any] = {
        k: ("" if v is None else str(v)) for k, v in source.items() if k not in ("bullseye", "active")
    }
    typed["active"] = bool(source["active"])
    return QueueForm(
        typed=typed,
        skill_rows=[{"skill_id": str(s.skill_id), "min_proficiency": str(s.min_proficiency)} for s in skills],
        step_rows=[
            {
                "after_seconds": str(step["after_seconds"]),
                "proficiency_drop": str(step["proficiency_drop"]),
                "any_member": bool(step["any_member"]),
            }
            for step in source["bullseye"] or []
        ],
    )


# --- refusals ------------------------------------------------------------------------------------
def _message(exc: ApiError) -> Message:
    """The refusal in the user's words where the page knows the kind, else the service's own message."""
    details = exc.details if isinstance(exc.details, dict) else {}
    where = details.get("field")
    if "min" in details and "max" in details:
        return _("Enter a whole number from %(low)s to %(high)s."), {"low": details["min"], "high": details["max"]}
    if exc.message.endswith("cannot be null"):
        return _("Fill this in."), {}
    if "pattern" in details and where == "code":
        return _("Use letters, digits, dot, underscore or hyphen, starting with a letter or digit."), {}
    if "pattern" in details and where == "language":
        return _("Use a language tag such as zh-CN or en."), {}
    if exc.status == 409 and where == "code":
        return _("Another queue already has this code."), {}
    if exc.status == 409 and where == "name" and exc.message.startswith("a capacity profile"):
        return _("Another capacity profile already has this name."), {}
    if where in ("user_ids", "user_id") and isinstance(details.get("user_ids"), list):
        return _("Not an active agent, supervisor or administrator: %(ids)s"), {
            "ids": ", ".join(str(i) for i in details["user_ids"])
        }
    return exc.message, {}


def _placed(exc: ApiError, shown: frozenset[str]) -> dict[str, Message]:
    """{field: message} for the field the refusal names when the form shows it, else {"_form": message}."""
    where = exc.details.get("field") if isinstance(exc.details, dict) else None
    if isinstance(where, str) and (where in shown or ROW_FIELD.match(where)):
        return {where: _message(exc)}
    return {"_form": _message(exc)}


# --- shared reads --------------------------------------------------------------------------------
@dataclass
class StaffMember:
    id: int
    display_name: str
    username: str


async def _staff(db: AsyncSession) -> list[StaffMember]:
    """Active users in the roles that take contacts (those a queue or an agent capacity may name)."""
    found: dict[int, StaffMember] = {}
    for role in queues.CONTACT_ROLES:
        after = 0
        while batch := await identity.list_users(
            db, identity.UserFilter(role=role, active=True), after_id=after, limit=STAFF_PAGE
        ):
            for user in batch:
                found[user.id] = StaffMember(user.id, user.display_name, user.username)
            after = batch[-1].id
    return sorted(found.values(), key=lambda s: (s.display_name.lower(), s.id))


async def _queue_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    *,
    view: queues.QueueView | None,
    form: QueueForm,
    field_errors: dict[str, Message] | None = None,
    status_code: int = 200,
) -> Response:
    """The queue form: a new queue (``view`` None) or a stored one with its members."""
    members: list[queues.Member] = []
    candidates: list[StaffMember] = []
    if view is not None:
        members = await queues.list_members(db, view.queue.id)
        member_ids = {m.user_id for m in members}
        candidates = [s for s in await _staff(db) if s.id not in member_ids]
    skill_rows = form.skill_rows or []
    step_rows = form.step_rows or []
    return render(
        request,
        "routing/queue_form.html",
        principal,
        status_code=status_code,
        view=view,
        f=form.typed,
        skill_rows=skill_rows,
        skill_spares=SPARE_SKILL_ROWS,
        step_rows=step_rows,
        step_spares=max(0, min(SPARE_STEP_ROWS, queues.BULLSEYE_MAX_STEPS - len(step_rows))),
        field_errors=field_errors or {},
        skills=await identity.list_skills(db),
        teams=await identity.list_teams(db, with_members=False),
        calendars=[c.calendar for c in await sla.list_calendars(db)],
        other_queues=[v.queue for v in await queues.list_queues(db) if view is None or v.queue.id != view.queue.id],
        channels=sorted(CHANNEL_CLASS),
        actions=MaxWaitAction.ALL,
        proficiencies=range(queues.PROFICIENCY[0], queues.PROFICIENCY[1] + 1),
        drops=range(queues.BULLSEYE_DROP[0], queues.BULLSEYE_DROP[1] + 1),
        ranges=queues.RANGES,
        members=members,
        candidates=candidates,
        errors=[],
    )


# --- queues --------------------------------------------------------------------------------------
@router.get("/routing/queues")
async def queues_page(
    request: Request, db: Db, principal: Principal = authorize("routing_queue", "update")
) -> Response:
    return render(
        request,
        "routing/queues.html",
        principal,
        views=await queues.list_queues(db),
        channels=sorted(CHANNEL_CLASS),
        can_create=allows(principal, "routing_queue", "create"),
        can_capacity=allows(principal, "routing_capacity", "list"),
        errors=[],
    )


async def _refused_queue_form(
    request: Request, db: AsyncSession, principal: Principal, view: Any, form: Any, exc: ApiError
) -> Response:
    """The queue form again, as the user typed it, with the service's refusal placed on its fields."""
    shown = _typed_of(view)
    shown.typed.update(form.typed)
    if form.skill_rows is not None:
        shown.skill_rows = form.skill_rows
    if form.step_rows is not None:
        shown.step_rows = form.step_rows
    return await _queue_page(
        request,
        db,
        principal,
        view=view,
        form=shown,
        field_errors=_placed(exc, QUEUE_FORM_FIELDS),
        status_code=exc.status,
    )


@router.get("/routing/queues/new")
async def queue_new_page(
    request: Request, db: Db, principal: Principal = authorize("routing_queue", "create")
) -> Response:
    return await _queue_page(request, db, principal, view=None, form=_typed_of(None))


@router.post("/routing/queues")
async def queue_create_submit(
    request: Request, db: Db, principal: Principal = authorize("routing_queue", "create")
) -> Response:
    form = _queue_form(await form_data(request))
    try:
        async with db.begin():
            view = await queues.create_queue(db, principal, form.values)
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await _refused_queue_form(request, db, principal, None, form, exc)
    return see_other(f"/routing/queues/{view.queue.id}?saved=1")


@router.get("/routing/queues/{queue_id}")
async def queue_edit_page(
    request: Request, queue_id: IdParam, db: Db, principal: Principal = authorize("routing_queue", "update")
) -> Response:
    view = await queues.get_queue(db, queue_id)
    return await _queue_page(request, db, principal, view=view, form=_typed_of(view))


@router.post("/routing/queues/{queue_id}")
async def queue_update_submit(
    request: Request, queue_id: IdParam, db: Db, principal: Principal = authorize("routing_queue", "update")
) -> Response:
    form = _queue_form(await form_data(request))
    try:
        async with db.begin():
            await queues.update_queue(db, principal, queue_id, form.values)
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await _refused_queue_form(request, db, principal, await queues.get_queue(db, queue_id), form, exc)
    return see_other(f"/routing/queues/{queue_id}?saved=1")


async def _members_submit(
    request: Request, db: AsyncSession, principal: Principal, queue_id: int, add: bool
) -> Response:
    data = await form_data(request)
    raw = data.get("user_ids", [])
    user_ids = [_id(u) or 0 for u in (raw if isinstance(raw, list) else [raw])]
    try:
        async with db.begin():
            change = queues.add_members if add else queues.remove_members
            await change(db, principal, queue_id, user_ids)
    except ApiError as exc:
        if exc.status == 404:
            raise
        view = await queues.get_queue(db, queue_id)
        return await _queue_page(
            request,
            db,
            principal,
            view=view,
            form=_typed_of(view),
            field_errors={"user_ids": _message(exc)},
            status_code=exc.status,
        )
    return see_other(f"/routing/queues/{queue_id}?saved=1#members")


@router.post("/routing/queues/{queue_id}/members/add")
async def members_add_submit(
    request: Request, queue_id: IdParam, db: Db, principal: Principal = authorize("routing_queue", "update")
) -> Response:
    return await _members_submit(request, db, principal, queue_id, add=True)


@router.post("/routing/queues/{queue_id}/members/remove")
async def members_remove_submit(
    request: Request, queue_id: IdParam, db: Db, principal: Principal = authorize("routing_queue", "update")
) -> Response:
    return await _members_submit(request, db, principal, queue_id, add=False)


# --- capacity profiles ---------------------------------------------------------------------------
def _profile_values(data: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "name" in data:
        values["name"] = _text(data["name"])
    for cls in queues.CAPACITY_LIMITS:
        if cls in data:
            values[cls] = _number(data[cls])
    for flag in ("voice_blocks_others", "others_block_voice"):
        if flag in data:
            values[flag] = _flag(data[flag])
    return values


async def _capacity_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    *,
    form_key: str | None = None,
    typed: dict[str, Any] | None = None,
    field_errors: dict[str, Message] | None = None,
    status_code: int = 200,
) -> Response:
    """The profiles, each an edit form, the new-profile form and the assignments. ``form_key`` names the
    form a refusal belongs to ("new", "profile-<id>", "assign-team", "assign-user"); it shows ``typed``."""
    views = await queues.list_profiles(db)
    teams = await identity.list_teams(db, with_members=False)
    staff = await _staff(db)
    assigned_users = sorted({u for v in views for u in v.user_ids})
    names = await identity.display_names(db, assigned_users)
    return render(
        request,
        "routing/capacity.html",
        principal,
        status_code=status_code,
        views=views,
        teams=teams,
        team_names={t.id: t.name for t in teams},
        staff=staff,
        user_names=names,
        team_profile={t: v.profile for v in views for t in v.team_ids},
        user_profile={u: v.profile for v in views for u in v.user_ids},
        limits=queues.CAPACITY_LIMITS,
        defaults=queues.PROFILE_DEFAULTS,
        form_key=form_key,
        typed=typed or {},
        field_errors=field_errors or {},
        can_create=allows(principal, "routing_capacity", "create"),
        can_update=allows(principal, "routing_capacity", "update"),
        errors=[],
    )


@router.get("/routing/capacity")
async def capacity_page(
    request: Request, db: Db, principal: Principal = authorize("routing_capacity", "list")
) -> Response:
    return await _capacity_page(request, db, principal)


@router.post("/routing/capacity")
async def profile_create_submit(
    request: Request, db: Db, principal: Principal = authorize("routing_capacity", "create")
) -> Response:
    data = await form_data(request)
    try:
        async with db.begin():
            await queues.create_profile(db, principal, _profile_values(data))
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await _capacity_page(
            request,
            db,
            principal,
            form_key="new",
            typed=data,
            field_errors=_placed(exc, PROFILE_FORM_FIELDS),
            status_code=exc.status,
        )
    return see_other("/routing/capacity?saved=1")


@router.post("/routing/capacity/assignments")
async def assignment_submit(
    request: Request, db: Db, principal: Principal = authorize("routing_capacity", "update")
) -> Response:
    """One team's or one agent's profile; no profile removes the assignment."""
    data = await form_data(request)
    team_id, user_id = _id(data.get("team_id")), _id(data.get("user_id"))
    try:
        async with db.begin():
            await queues.assign_profile(
                db, principal, team_id=team_id, user_id=user_id, profile_id=_id(data.get("profile_id"))
            )
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await _capacity_page(
            request,
            db,
            principal,
            form_key="assign-user" if "user_id" in data else "assign-team",
            typed=data,
            field_errors=_placed(exc, PROFILE_FORM_FIELDS),
            status_code=exc.status,
        )
    return see_other("/routing/capacity?saved=1#assignments")


@router.post("/routing/capacity/{profile_id}")
async def profile_update_submit(
    request: Request, profile_id: IdParam, db: Db, principal: Principal = authorize("routing_capacity", "update")
) -> Response:
    data = await form_data(request)
    try:
        async with db.begin():
            await queues.update_profile(db, principal, profile_id, _profile_values(data))
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await _capacity_page(
            request,
            db,
            principal,
            form_key=f"profile-{profile_id}",
            typed=data,
            field_errors=_placed(exc, PROFILE_FORM_FIELDS),
            status_code=exc.status,
        )
    return see_other(f"/routing/capacity?saved=1#profile-{profile_id}")
