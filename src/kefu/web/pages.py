"""HTML pages: sign-in, home by role, profile, language switch, password reset and the admin pages.

Pages use the same services and the same permission layer as the API; forms are validated by the
API's request models so both paths accept exactly the same input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.auth import CSRF_COOKIE, SESSION_COOKIE, anonymous_csrf_token, resolve_principal
from kefu.core.errors import ApiError
from kefu.core.i18n import LANG_COOKIE, SUPPORTED_LOCALES, Translator, request_locale
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import MAX_ID, IdParam, IdQuery
from kefu.db.session import get_db
from kefu.identity import service
from kefu.identity.api import set_session_cookie
from kefu.identity.models import Role
from kefu.identity.schemas import (
    AgentSkillsUpdate,
    PasswordResetConfirm,
    ProfileUpdate,
    SkillCreate,
    TeamCreate,
    TeamUpdate,
    UserCreate,
    UserUpdate,
)
from kefu.identity.service import actor_of
from kefu.web import TEMPLATES_DIR

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.autoescape = True
# Audit details and other JSON shown on pages keep Chinese readable (tojson still escapes < > & ').
templates.env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}

TIME_ZONES = (
    "Asia/Shanghai",
    "Asia/Hong_Kong",
    "Asia/Taipei",
    "Asia/Singapore",
    "Asia/Tokyo",
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
)


# --- rendering -----------------------------------------------------------------------------------
USERS_PAGE = 200
NAV = (
    # (path, label, object, action): an entry shows only to those the matrix lets in.
    ("/", "Home", "dashboard", "read"),
    ("/desk", "Desk", "desk", "read"),
    ("/routing/live", "Live view", "routing_live", "read"),  # supervisors and admins
    ("/routing/queues", "Queues", "routing_queue", "update"),  # routing configuration: supervisors and admins
    ("/work-orders", "Work orders", "work_order", "list"),
    ("/customers", "Customers", "customer", "list"),
    ("/kb", "Knowledge", "article", "create"),  # the staff knowledge desk (customers get the help centre)
    ("/kb/review", "Review queue", "article", "review"),
    ("/kb/board", "Updates", "announcement", "list"),
    ("/kb/feedback", "Feedback", "feedback", "list"),
    ("/cti/calls", "Calls", "cti_call", "list"),
    ("/cti/extensions", "Extensions", "cti_extension", "list"),
    ("/email/mailboxes", "Mailboxes", "email_mailbox", "list"),
    ("/email/quarantine", "Mail quarantine", "email_quarantine", "list"),
    ("/ivr/flows", "IVR flows", "ivr_flow", "list"),
    ("/webhooks", "Webhooks", "webhook_endpoint", "list"),
    ("/admin/users", "Users", "user", "list"),
    ("/admin/teams", "Teams", "team", "list"),
    ("/admin/skills", "Skills", "skill", "list"),
    ("/admin/audit", "Audit log", "audit_log", "list"),
    ("/api/docs", "API", "public", "read"),
)


def user_zone(principal: Principal) -> ZoneInfo:
    try:
        return ZoneInfo(principal.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def time_formatter(principal: Principal) -> Callable[[datetime | None], str]:
    """Times are stored in UTC and shown in the user's zone."""
    zone = user_zone(principal)

    def fmt(value: datetime | None) -> str:
        if value is None:
            return ""
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M")

    return fmt


def render(request: Request, name: str, principal: Principal, status_code: int = 200, **context: Any) -> HTMLResponse:
    settings = request.app.state.settings
    locale = request_locale(request, principal.locale if principal.is_authenticated else None, settings.locale)
    translator = Translator(locale)
    csrf = principal.csrf_token if principal.via == "session" else anonymous_csrf_token(request)
    nav = [
        (path, label)
        for path, label, obj, action in NAV
        if principal.is_authenticated and allows(principal, obj, action)
    ]
    response = templates.TemplateResponse(
        request,
        name,
        {
            "principal": principal,
            "csrf_token": csrf,
            "nav": nav,
            "locale": locale,
            "html_lang": "zh-CN" if locale == "zh_CN" else "en",
            "locales": SUPPORTED_LOCALES,
            "when": time_formatter(principal),
            "time_zone": user_zone(principal).key,
            # Per-request translation in the context, never on the shared environment: two requests in
            # different languages can never see each other's catalogue.
            "_": translator.format,
            **context,
        },
        status_code=status_code,
    )
    new_csrf = getattr(request.state, "new_csrf", None)
    if new_csrf:
        response.set_cookie(
            CSRF_COOKIE, new_csrf, httponly=True, samesite="strict", secure=settings.secure_cookies, path="/"
        )
    return response


def render_error_page(request: Request, status: int, code: str, message: str) -> Response:
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
    principal = getattr(request.state, "principal", None) or Principal()
    return render(request, "error.html", principal, status_code=status, status=status, code=code, message=message)


async def run_form_action(
    db: AsyncSession,
    action: Callable[[], Awaitable[object]],
    *,
    success_url: str,
    refused: Callable[[ApiError], Awaitable[Response]],
) -> Response:
    """One form submission: ``action`` in a transaction, then a redirect to ``success_url``; a refusal
    (any ApiError but 404, which stays an error page) is shown by ``refused`` with nothing written."""
    try:
        async with db.begin():
            await action()
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await refused(exc)
    return see_other(success_url)


def _safe_next(target: str | None) -> str:
    # Only same-site paths: an open redirect after sign-in would help phishing.
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def form_data(request: Request) -> dict[str, Any]:
    form = await request.form()
    data: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key == "csrf_token" or not isinstance(value, str):
            continue
        if key.endswith("[]"):
            data.setdefault(key[:-2], []).append(value)
        else:
            data[key] = value
    return data


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: dict[str, Any]) -> tuple[M | None, list[str]]:
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]


def _blank_to_none(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        if data.get(key) == "":
            data[key] = None
    return data


# --- sign-in and self-service ------------------------------------------------------------------
@router.get("/login")
async def login_page(request: Request, next: str = "/", principal: Principal = authorize("public", "read")) -> Response:
    if principal.is_authenticated:
        return see_other(_safe_next(next))
    return render(request, "login.html", principal, next=_safe_next(next), error=None)


@router.post("/login")
async def login_submit(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("session", "create")
) -> Response:
    data = await form_data(request)
    settings = request.app.state.settings
    target = _safe_next(data.get("next"))
    async with db.begin():
        outcome = await service.sign_in(
            db,
            settings,
            login=str(data.get("login", ""))[:254],
            password=str(data.get("password", ""))[:256],
            ip=principal.ip,
            user_agent=principal.user_agent,
        )
    if isinstance(outcome, ApiError):
        return render(request, "login.html", principal, status_code=outcome.status, next=target, error=outcome.code)
    response = see_other(target)
    set_session_cookie(response, settings, outcome.cookie_value)
    return response


@router.post("/logout")
async def logout_submit(
    db: AsyncSession = Depends(get_db), principal: Principal = authorize("session", "delete")
) -> Response:
    async with db.begin():
        await service.sign_out(db, principal)
    response = see_other("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/language")
async def switch_language(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("language", "update")
) -> Response:
    data = await form_data(request)
    locale = data.get("locale")
    if locale not in SUPPORTED_LOCALES:
        raise ApiError(422, "invalid", "unsupported language")
    if principal.is_authenticated:
        async with db.begin():
            user = await service.get_user(db, principal.user_id)  # type: ignore[arg-type]
            await service.update_user(db, actor_of(principal), user, locale=locale)
    response = see_other(_safe_next(data.get("next")))
    response.set_cookie(LANG_COOKIE, locale, max_age=365 * 86400, samesite="lax", path="/")
    return response


@router.get("/")
async def home(request: Request, principal: Principal = authorize("dashboard", "read")) -> Response:
    return render(request, "home.html", principal)


@router.get("/profile")
async def profile_page(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("profile", "read")
) -> Response:
    user = await service.get_user(db, principal.user_id)  # type: ignore[arg-type]
    return render(request, "profile.html", principal, user=user, time_zones=TIME_ZONES, errors=[], saved=False)


@router.post("/profile")
async def profile_submit(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("profile", "update")
) -> Response:
    body, errors = validate(ProfileUpdate, await form_data(request))
    async with db.begin():
        user = await service.get_user(db, principal.user_id)  # type: ignore[arg-type]
        if body is not None:
            await service.update_user(db, actor_of(principal), user, **body.model_dump(exclude_unset=True))
    if errors:
        return render(
            request,
            "profile.html",
            principal,
            status_code=422,
            user=user,
            time_zones=TIME_ZONES,
            errors=errors,
            saved=False,
        )
    response = see_other("/profile?saved=1")
    if body is not None and body.locale:
        response.set_cookie(LANG_COOKIE, body.locale, max_age=365 * 86400, samesite="lax", path="/")
    return response


@router.get("/password-reset")
async def reset_page(request: Request, principal: Principal = authorize("public", "read")) -> Response:
    return render(request, "password_reset.html", principal, sent=False)


@router.post("/password-reset")
async def reset_submit(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("password_reset", "request")
) -> Response:
    login = str((await form_data(request)).get("login", "")).strip()[:254]
    if login:
        async with db.begin():
            await service.request_password_reset(db, request.app.state.settings, login=login, ip=principal.ip)
    return render(request, "password_reset.html", principal, sent=True)


@router.get("/password-reset/confirm")
async def reset_confirm_page(
    request: Request, token: str = "", principal: Principal = authorize("public", "read")
) -> Response:
    return render(request, "password_reset_confirm.html", principal, token=token[:200], errors=[])


@router.post("/password-reset/confirm")
async def reset_confirm_submit(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("password_reset", "confirm")
) -> Response:
    data = await form_data(request)
    body, errors = validate(PasswordResetConfirm, data)
    if body is not None:
        try:
            async with db.begin():
                await service.confirm_password_reset(
                    db, token=body.token, new_password=body.new_password, ip=principal.ip
                )
        except ApiError as exc:
            errors = [exc.message]
    if errors:
        return render(
            request,
            "password_reset_confirm.html",
            principal,
            status_code=400,
            token=str(data.get("token", ""))[:200],
            errors=errors,
        )
    return see_other("/login?reset=1")


# --- admin: users --------------------------------------------------------------------------------
ROLE_CHOICES = [r.value for r in Role]


@router.get("/admin/users")
async def users_page(
    request: Request,
    q: str = "",
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    db: AsyncSession = Depends(get_db),
    principal: Principal = authorize("user", "list"),
) -> Response:
    users = await service.list_users(db, service.UserFilter(query=q[:100]), after_id=after_id, limit=USERS_PAGE + 1)
    more = len(users) > USERS_PAGE
    users = users[:USERS_PAGE]
    return render(
        request,
        "admin/users.html",
        principal,
        users=users,
        q=q[:100],
        next_url=f"/admin/users?{urlencode({'q': q[:100], 'after_id': users[-1].id})}" if more else None,
        teams={t.id: t.name for t in await service.list_teams(db, with_members=False)},
    )


@router.get("/admin/users/new")
async def user_new_page(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("user", "create")
) -> Response:
    return render(
        request,
        "admin/user_form.html",
        principal,
        user=None,
        roles=ROLE_CHOICES,
        teams=await service.list_teams(db),
        time_zones=TIME_ZONES,
        skills=[],
        errors=[],
    )


@router.post("/admin/users")
async def user_create_submit(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("user", "create")
) -> Response:
    data = _blank_to_none(await form_data(request), "email", "password")
    data["team_ids"] = [int(t) for t in data.get("team_ids", []) if str(t).isdigit()]
    body, errors = validate(UserCreate, data)
    if body is not None:
        try:
            async with db.begin():
                user = await service.create_user(db, actor_of(principal), **body.model_dump())
            return see_other(f"/admin/users/{user.id}?saved=1")
        except ApiError as exc:
            errors = [exc.message]
    return render(
        request,
        "admin/user_form.html",
        principal,
        status_code=422,
        user=None,
        roles=ROLE_CHOICES,
        teams=await service.list_teams(db),
        time_zones=TIME_ZONES,
        skills=[],
        errors=errors,
        form=data,
    )


@router.get("/admin/users/{user_id}")
async def user_edit_page(
    request: Request,
    user_id: IdParam,
    db: AsyncSession = Depends(get_db),
    principal: Principal = authorize("user", "read", by_id=True),
) -> Response:
    user = await service.get_user(db, user_id)
    return render(
        request,
        "admin/user_form.html",
        principal,
        user=user,
        roles=ROLE_CHOICES,
        teams=await service.list_teams(db),
        time_zones=TIME_ZONES,
        skills=await service.list_skills(db),
        errors=[],
        can_edit=allows(principal, "user", "update"),
        can_set_skills=allows(principal, "agent_skill", "update"),
    )


@router.post("/admin/users/{user_id}")
async def user_update_submit(
    request: Request,
    user_id: IdParam,
    db: AsyncSession = Depends(get_db),
    principal: Principal = authorize("user", "update", by_id=True),
) -> Response:
    data = _blank_to_none(await form_data(request), "email")
    data["team_ids"] = [int(t) for t in data.get("team_ids", []) if str(t).isdigit()]
    data.pop("is_active", None)
    body, errors = validate(UserUpdate, data)
    if body is not None:
        try:
            async with db.begin():
                user = await service.get_user(db, user_id)
                await service.update_user(db, actor_of(principal), user, **body.model_dump(exclude_unset=True))
            return see_other(f"/admin/users/{user_id}?saved=1")
        except ApiError as exc:
            errors = [exc.message]
    user = await service.get_user(db, user_id)
    return render(
        request,
        "admin/user_form.html",
        principal,
        status_code=422,
        user=user,
        roles=ROLE_CHOICES,
        teams=await service.list_teams(db),
        time_zones=TIME_ZONES,
        skills=await service.list_skills(db),
        errors=errors,
        can_edit=True,
        can_set_skills=allows(principal, "agent_skill", "update"),
    )


@router.post("/admin/users/{user_id}/active")
async def user_active_submit(
    request: Request,
    user_id: IdParam,
    db: AsyncSession = Depends(get_db),
    principal: Principal = authorize("user", "disable", by_id=True),
) -> Response:
    active = (await form_data(request)).get("active") == "1"
    async with db.begin():
        user = await service.get_user(db, user_id)
        await service.set_active(db, actor_of(principal), user, active)
    return see_other(f"/admin/users/{user_id}?saved=1")


@router.post("/admin/users/{user_id}/skills")
async def user_skills_submit(
    request: Request,
    user_id: IdParam,
    db: AsyncSession = Depends(get_db),
    principal: Principal = authorize("agent_skill", "update", by_id=True),
) -> Response:
    form = await form_data(request)
    skills = [
        {"skill_id": int(key.removeprefix("skill_")), "proficiency": value}
        for key, value in form.items()
        if key.startswith("skill_") and key.removeprefix("skill_").isdigit() and value not in ("", "0")
    ]
    languages = [lang.strip() for lang in str(form.get("languages", "")).replace("，", ",").split(",") if lang.strip()]
    body, errors = validate(AgentSkillsUpdate, {"skills": skills, "languages": languages})
    if body is None:
        raise ApiError(422, "invalid", "; ".join(errors))
    async with db.begin():
        user = await service.get_user(db, user_id)
        await service.set_agent_skills(
            db,
            actor_of(principal),
            user,
            skills={s.skill_id: s.proficiency for s in body.skills},
            languages=body.languages,
        )
    return see_other(f"/admin/users/{user_id}?saved=1")


# --- admin: teams and skills --------------------------------------------------------------------
@router.get("/admin/teams")
async def teams_page(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("team", "list")
) -> Response:
    return render(
        request,
        "admin/teams.html",
        principal,
        teams=await service.list_teams(db),
        errors=[],
        can_create=allows(principal, "team", "create"),
    )


@router.post("/admin/teams")
async def team_create_submit(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("team", "create")
) -> Response:
    body, errors = validate(TeamCreate, await form_data(request))
    if body is not None:
        try:
            async with db.begin():
                team = await service.create_team(db, actor_of(principal), name=body.name, description=body.description)
            return see_other(f"/admin/teams/{team.id}?saved=1")
        except ApiError as exc:
            errors = [exc.message]
    return render(
        request,
        "admin/teams.html",
        principal,
        status_code=422,
        teams=await service.list_teams(db),
        errors=errors,
        can_create=True,
    )


async def _all_users(db: AsyncSession) -> list:
    users: list = []
    while batch := await service.list_users(db, service.UserFilter(), after_id=users[-1].id if users else 0, limit=500):
        users.extend(batch)
    return users


@router.get("/admin/teams/{team_id}")
async def team_page(
    request: Request,
    team_id: IdParam,
    db: AsyncSession = Depends(get_db),
    principal: Principal = authorize("team", "read", by_id=True),
) -> Response:
    team = await service.get_team(db, team_id)
    # Everyone, disabled users included: saving replaces the member list, so a member missing from
    # the form would be dropped silently.
    users = await _all_users(db)
    return render(
        request,
        "admin/team_form.html",
        principal,
        team=team,
        users=users,
        errors=[],
        can_edit=allows(principal, "team", "update"),
    )


@router.post("/admin/teams/{team_id}")
async def team_update_submit(
    request: Request,
    team_id: IdParam,
    db: AsyncSession = Depends(get_db),
    principal: Principal = authorize("team", "update", by_id=True),
) -> Response:
    data = await form_data(request)
    data["member_ids"] = [int(u) for u in data.get("member_ids", []) if str(u).isdigit()]
    data["lead_ids"] = [int(u) for u in data.get("lead_ids", []) if str(u).isdigit()]
    # A lead is a member: ticking "lead" alone must not be ignored.
    data["member_ids"] = sorted(set(data["member_ids"]) | set(data["lead_ids"]))
    data["is_active"] = data.get("is_active") == "1"
    body, errors = validate(TeamUpdate, data)
    if body is not None:
        try:
            async with db.begin():
                team = await service.get_team(db, team_id)
                await service.update_team(db, actor_of(principal), team, **body.model_dump(exclude_unset=True))
            return see_other(f"/admin/teams/{team_id}?saved=1")
        except ApiError as exc:
            errors = [exc.message]
    team = await service.get_team(db, team_id)
    # Everyone, disabled users included: saving replaces the member list, so a member missing from
    # the form would be dropped silently.
    users = await _all_users(db)
    return render(
        request,
        "admin/team_form.html",
        principal,
        status_code=422,
        team=team,
        users=users,
        errors=errors,
        can_edit=True,
    )


@router.get("/admin/skills")
async def skills_page(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("skill", "list")
) -> Response:
    return render(
        request,
        "admin/skills.html",
        principal,
        skills=await service.list_skills(db),
        errors=[],
        can_create=allows(principal, "skill", "create"),
    )


@router.post("/admin/skills")
async def skill_create_submit(
    request: Request, db: AsyncSession = Depends(get_db), principal: Principal = authorize("skill", "create")
) -> Response:
    body, errors = validate(SkillCreate, await form_data(request))
    if body is not None:
        try:
            async with db.begin():
                await service.create_skill(db, actor_of(principal), name=body.name, description=body.description)
            return see_other("/admin/skills?saved=1")
        except ApiError as exc:
            errors = [exc.message]
    return render(
        request,
        "admin/skills.html",
        principal,
        status_code=422,
        skills=await service.list_skills(db),
        errors=errors,
        can_create=True,
    )


@router.get("/admin/audit")
async def audit_page(
    request: Request,
    before_id: IdQuery | None = None,
    db: AsyncSession = Depends(get_db),
    principal: Principal = authorize("audit_log", "list"),
) -> Response:
    entries = await audit.list_entries(db, before_id=before_id, limit=100)
    return render(
        request,
        "admin/audit.html",
        principal,
        entries=entries,
        next_before=entries[-1].id if len(entries) == 100 else None,
    )


def install_pages(app: FastAPI) -> None:
    app.include_router(router)
    app.state.render_error_page = render_error_page


__all__ = ["install_pages", "resolve_principal"]
