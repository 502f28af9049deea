"""REST routes of the identity domain: thin wrappers over ``identity.service``."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Generic, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.auth import SESSION_COOKIE
from kefu.core.errors import ApiError
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import MAX_ID, IdParam, IdQuery, query_text
from kefu.core.security import verify_password
from kefu.db.session import get_db
from kefu.identity import service
from kefu.identity.schemas import (
    AgentSkillsUpdate,
    ApiTokenCreate,
    ApiTokenCreated,
    ApiTokenOut,
    AuditOut,
    LoginIn,
    PasswordChange,
    PasswordResetConfirm,
    PasswordResetRequest,
    ProfileUpdate,
    RoleName,
    SkillCreate,
    SkillOut,
    SkillUpdate,
    TeamCreate,
    TeamOut,
    TeamUpdate,
    UserCreate,
    UserOut,
    UserUpdate,
)
from kefu.identity.service import actor_of
from kefu.settings import Settings

router = APIRouter(prefix="/api/v1")
Db = Annotated[AsyncSession, Depends(get_db)]
Limit = Annotated[int, Query(ge=1, le=500)]


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_after_id: int | None


def set_session_cookie(response: Response, settings: Settings, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=settings.session_hours * 3600,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies,
        path="/",
    )


# --- sign-in -------------------------------------------------------------------------------------
class LoginOut(BaseModel):
    user: UserOut
    csrf_token: str


@router.post("/auth/login", tags=["auth"])
async def login(
    body: LoginIn, request: Request, response: Response, db: Db, principal: Principal = authorize("session", "create")
) -> LoginOut:
    settings = settings_of(request)
    async with db.begin():
        outcome = await service.sign_in(
            db,
            settings,
            login=body.login,
            password=body.password,
            ip=principal.ip,
            user_agent=principal.user_agent,
        )
    if isinstance(outcome, ApiError):
        raise outcome
    set_session_cookie(response, settings, outcome.cookie_value)
    return LoginOut(user=UserOut.of(outcome.user), csrf_token=outcome.session.csrf_token)


@router.post("/auth/logout", status_code=204, tags=["auth"])
async def logout(response: Response, db: Db, principal: Principal = authorize("session", "delete")) -> Response:
    async with db.begin():
        await service.sign_out(db, principal)
    response.status_code = 204
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/auth/password-reset", status_code=202, tags=["auth"])
async def password_reset_request(
    body: PasswordResetRequest,
    request: Request,
    db: Db,
    principal: Principal = authorize("password_reset", "request"),
) -> dict[str, str]:
    async with db.begin():
        await service.request_password_reset(db, settings_of(request), login=body.login, ip=principal.ip)
    # The same answer whether or not the account exists.
    return {"status": "if the account exists and has an email address, a reset link has been sent"}


@router.post("/auth/password-reset/confirm", tags=["auth"])
async def password_reset_confirm(
    body: PasswordResetConfirm, db: Db, principal: Principal = authorize("password_reset", "confirm")
) -> dict[str, str]:
    async with db.begin():
        await service.confirm_password_reset(db, token=body.token, new_password=body.new_password, ip=principal.ip)
    return {"status": "password changed; sign in with the new password"}


# --- me ------------------------------------------------------------------------------------------
@router.get("/me", tags=["me"])
async def me(db: Db, principal: Principal = authorize("profile", "read")) -> UserOut:
    return UserOut.of(await service.get_user(db, principal.user_id))  # type: ignore[arg-type]


@router.patch("/me", tags=["me"])
async def update_me(body: ProfileUpdate, db: Db, principal: Principal = authorize("profile", "update")) -> UserOut:
    async with db.begin():
        user = await service.get_user(db, principal.user_id)  # type: ignore[arg-type]
        await service.update_user(db, actor_of(principal), user, **body.model_dump(exclude_unset=True))
    return UserOut.of(user)


@router.post("/me/password", status_code=204, tags=["me"])
async def change_my_password(
    body: PasswordChange, db: Db, principal: Principal = authorize("profile", "update")
) -> Response:
    async with db.begin():
        user = await service.get_user(db, principal.user_id)  # type: ignore[arg-type]
        if not verify_password(user.password_hash, body.current_password):
            raise ApiError(400, "wrong_password", "the current password is wrong")
        await service.set_password(db, actor_of(principal), user, body.new_password)
    return Response(status_code=204)


@router.get("/me/tokens", tags=["me"])
async def my_tokens(db: Db, principal: Principal = authorize("api_token", "list")) -> list[ApiTokenOut]:
    return [ApiTokenOut.model_validate(t) for t in await service.list_api_tokens(db, principal)]


@router.post("/me/tokens", status_code=201, tags=["me"])
async def create_token(
    body: ApiTokenCreate, db: Db, principal: Principal = authorize("api_token", "create")
) -> ApiTokenCreated:
    async with db.begin():
        plain, token = await service.create_api_token(
            db, principal, name=body.name, scopes=body.scopes, expires_in_days=body.expires_in_days
        )
    return ApiTokenCreated(token=plain, **ApiTokenOut.model_validate(token).model_dump())


@router.delete("/me/tokens/{token_id}", tags=["me"])
async def revoke_token(
    token_id: IdParam, db: Db, principal: Principal = authorize("api_token", "revoke", by_id=True)
) -> ApiTokenOut:
    async with db.begin():
        token = await service.revoke_api_token(db, principal, token_id)
    return ApiTokenOut.model_validate(token)


# --- users ---------------------------------------------------------------------------------------
@router.get("/users", tags=["users"])
async def list_users(
    db: Db,
    principal: Principal = authorize("user", "list"),
    q: query_text(100) = "",  # type: ignore[valid-type]
    role: RoleName | None = None,
    team_id: IdQuery | None = None,
    active: bool | None = None,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Limit = 50,
) -> Page[UserOut]:
    users = await service.list_users(
        db, service.UserFilter(query=q, role=role, team_id=team_id, active=active), after_id=after_id, limit=limit
    )
    return Page[UserOut](
        items=[UserOut.of(u) for u in users], next_after_id=users[-1].id if len(users) == limit else None
    )


@router.get("/users/export", tags=["users"])
async def export_users(db: Db, principal: Principal = authorize("user", "export")) -> StreamingResponse:
    users: list = []
    after = 0
    # One transaction: a consistent snapshot, and the audit entry lands with the read.
    async with db.begin():
        while batch := await service.list_users(db, service.UserFilter(), after_id=after, limit=500):
            users.extend(batch)
            after = batch[-1].id
        await audit.record(db, actor_of(principal), "user.export", object_type="user", details={"rows": len(users)})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "username", "display_name", "email", "roles", "team_ids", "is_active"])
    for u in users:
        # A leading = + - @ would run as a formula in a spreadsheet: neutralize it.
        cells = [
            u.id,
            u.username,
            u.display_name,
            u.email or "",
            " ".join(sorted(u.role_names)),
            " ".join(map(str, sorted(u.team_ids))),
            u.is_active,
        ]
        writer.writerow([f"'{c}" if isinstance(c, str) and c[:1] in "=+-@" else c for c in cells])
    return StreamingResponse(
        iter([out.getvalue()]),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="users.csv"'},
    )


@router.post("/users", status_code=201, tags=["users"])
async def create_user(body: UserCreate, db: Db, principal: Principal = authorize("user", "create")) -> UserOut:
    async with db.begin():
        user = await service.create_user(db, actor_of(principal), **body.model_dump())
    return UserOut.of(user)


@router.get("/users/{user_id}", tags=["users"])
async def get_user(user_id: IdParam, db: Db, principal: Principal = authorize("user", "read", by_id=True)) -> UserOut:
    return UserOut.of(await service.get_user(db, user_id))


@router.patch("/users/{user_id}", tags=["users"])
async def update_user(
    user_id: IdParam, body: UserUpdate, db: Db, principal: Principal = authorize("user", "update", by_id=True)
) -> UserOut:
    changes = body.model_dump(exclude_unset=True)
    active = changes.pop("is_active", None)
    async with db.begin():
        user = await service.get_user(db, user_id)
        await service.update_user(db, actor_of(principal), user, **changes)
        if active is not None:
            await service.set_active(db, actor_of(principal), user, active)
    return UserOut.of(user)


@router.post("/users/{user_id}/disable", tags=["users"])
async def disable_user(
    user_id: IdParam, db: Db, principal: Principal = authorize("user", "disable", by_id=True)
) -> UserOut:
    async with db.begin():
        user = await service.get_user(db, user_id)
        await service.set_active(db, actor_of(principal), user, False)
    return UserOut.of(user)


@router.put("/users/{user_id}/skills", tags=["users"])
async def set_user_skills(
    user_id: IdParam,
    body: AgentSkillsUpdate,
    db: Db,
    principal: Principal = authorize("agent_skill", "update", by_id=True),
) -> UserOut:
    async with db.begin():
        user = await service.get_user(db, user_id)
        await service.set_agent_skills(
            db,
            actor_of(principal),
            user,
            skills={s.skill_id: s.proficiency for s in body.skills},
            languages=body.languages,
        )
    return UserOut.of(user)


# --- teams ---------------------------------------------------------------------------------------
@router.get("/teams", tags=["teams"])
async def list_teams(db: Db, principal: Principal = authorize("team", "list")) -> list[TeamOut]:
    return [TeamOut.of(t) for t in await service.list_teams(db)]


@router.post("/teams", status_code=201, tags=["teams"])
async def create_team(body: TeamCreate, db: Db, principal: Principal = authorize("team", "create")) -> TeamOut:
    async with db.begin():
        team = await service.create_team(db, actor_of(principal), name=body.name, description=body.description)
        await db.refresh(team, ["members"])
    return TeamOut.of(team)


@router.get("/teams/{team_id}", tags=["teams"])
async def get_team(team_id: IdParam, db: Db, principal: Principal = authorize("team", "read", by_id=True)) -> TeamOut:
    return TeamOut.of(await service.get_team(db, team_id))


@router.patch("/teams/{team_id}", tags=["teams"])
async def update_team(
    team_id: IdParam, body: TeamUpdate, db: Db, principal: Principal = authorize("team", "update", by_id=True)
) -> TeamOut:
    async with db.begin():
        team = await service.get_team(db, team_id)
        await service.update_team(db, actor_of(principal), team, **body.model_dump(exclude_unset=True))
    return TeamOut.of(team)


# --- skills --------------------------------------------------------------------------------------
@router.get("/skills", tags=["skills"])
async def list_skills(db: Db, principal: Principal = authorize("skill", "list")) -> list[SkillOut]:
    return [SkillOut.model_validate(s) for s in await service.list_skills(db)]


@router.post("/skills", status_code=201, tags=["skills"])
async def create_skill(body: SkillCreate, db: Db, principal: Principal = authorize("skill", "create")) -> SkillOut:
    async with db.begin():
        skill = await service.create_skill(db, actor_of(principal), name=body.name, description=body.description)
    return SkillOut.model_validate(skill)


@router.get("/skills/{skill_id}", tags=["skills"])
async def get_skill(
    skill_id: IdParam, db: Db, principal: Principal = authorize("skill", "read", by_id=True)
) -> SkillOut:
    return SkillOut.model_validate(await service.get_skill(db, skill_id))


@router.patch("/skills/{skill_id}", tags=["skills"])
async def update_skill(
    skill_id: IdParam, body: SkillUpdate, db: Db, principal: Principal = authorize("skill", "update", by_id=True)
) -> SkillOut:
    async with db.begin():
        skill = await service.get_skill(db, skill_id)
        await service.update_skill(db, actor_of(principal), skill, **body.model_dump(exclude_unset=True))
    return SkillOut.model_validate(skill)


# --- audit ---------------------------------------------------------------------------------------
@router.get("/audit", tags=["audit"])
async def list_audit(
    db: Db,
    principal: Principal = authorize("audit_log", "list"),
    action: query_text(64) | None = None,  # type: ignore[valid-type]
    object_type: query_text(64) | None = None,  # type: ignore[valid-type]
    actor_user_id: IdQuery | None = None,
    before_id: IdQuery | None = None,
    limit: Limit = 50,
) -> list[AuditOut]:
    entries = await audit.list_entries(
        db, action=action, object_type=object_type, actor_user_id=actor_user_id, before_id=before_id, limit=limit
    )
    return [AuditOut.model_validate(e) for e in entries]
