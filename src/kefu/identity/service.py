"""Identity rules: the only place that writes users, teams, skills, sessions and tokens.

Every function takes the caller's session and runs inside the caller's transaction; each
security-relevant change adds its audit entry in that same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import raiseload

from kefu.core import audit
from kefu.core.audit import Actor
from kefu.core.errors import ApiError, Conflict, Invalid, NotFound
from kefu.core.jobs import enqueue
from kefu.core.policy import Principal
from kefu.core.security import hash_password, hash_token, new_token, password_problem, verify_password
from kefu.db.base import utcnow
from kefu.identity.models import (
    AgentLanguage,
    AgentSkill,
    ApiToken,
    LoginThrottle,
    PasswordResetToken,
    Role,
    Skill,
    Team,
    TeamMember,
    User,
    UserRole,
    WebSession,
)
from kefu.settings import Settings

# A contact centre signs in from behind one NAT address: the per-address limit is far higher
# than the per-username one so one agent's typos never lock out the floor.
IP_FAILURE_FACTOR = 10
MAX_BACKOFF_SECONDS = 3600


def actor_of(principal: Principal) -> Actor:
    return Actor(
        user_id=principal.user_id,
        name=principal.username or "anonymous",
        ip=principal.ip,
        user_agent=principal.user_agent,
    )


# --- users ---------------------------------------------------------------------------------------
async def display_names(db: AsyncSession, user_ids: Iterable[int | None]) -> dict[int, str]:
    """id -> display name for the given users, in one query (pages naming authors, assignees...)."""
    wanted = sorted({i for i in user_ids if i})
    if not wanted:
        return {}
    rows = await db.execute(select(User.id, User.display_name).where(User.id.in_(wanted)))
    return {user_id: name for user_id, name in rows.all()}


async def get_user(db: AsyncSession, user_id: int) -> User:
    user = await db.get(User, user_id)
    if user is None:
        raise NotFound("user")
    return user


async def find_user_by_login(db: AsyncSession, login: str) -> User | None:
    login = login.strip()
    return await db.scalar(
        select(User).where(or_(func.lower(User.username) == login.lower(), func.lower(User.email) == login.lower()))
    )


async def _ensure_unique(db: AsyncSession, username: str, email: str | None, exclude_id: int | None = None) -> None:
    clauses = [func.lower(User.username) == username.lower()]
    if email:
        clauses.append(func.lower(User.email) == email.lower())
    stmt = select(User.id).where(or_(*clauses))
    if exclude_id is not None:
        stmt = stmt.where(User.id != exclude_id)
    if await db.scalar(stmt.limit(1)) is not None:
        raise Conflict("username or email already in use")


def _check_password(password: str) -> None:
    problem = password_problem(password)
    if problem:
        raise Invalid(problem, [{"loc": ["password"], "msg": problem}])


async def create_user(
    db: AsyncSession,
    actor: Actor,
    *,
    username: str,
    display_name: str,
    roles: Iterable[str],
    password: str | None = None,
    email: str | None = None,
    locale: str = "zh_CN",
    time_zone: str = "Asia/Shanghai",
    team_ids: Iterable[int] = (),
) -> User:
    await _ensure_unique(db, username, email)
    if password is not None:
        _check_password(password)
    user = User(
        username=username,
        display_name=display_name,
        email=email,
        locale=locale,
        time_zone=time_zone,
        password_hash=hash_password(password) if password is not None else None,
        roles=[UserRole(role=Role(r).value) for r in sorted(set(roles))],
    )
    db.add(user)
    await db.flush()
    for team_id in set(team_ids):
        await _get_team(db, team_id)
        db.add(TeamMember(team_id=team_id, user_id=user.id))
    await audit.record(
        db,
        actor,
        "user.create",
        object_type="user",
        object_id=user.id,
        details={"username": username, "roles": sorted(set(roles))},
    )
    await db.flush()
    await db.refresh(user)
    return user


async def update_user(
    db: AsyncSession,
    actor: Actor,
    user: User,
    *,
    display_name: str | None = None,
    email: str | None = None,
    roles: Iterable[str] | None = None,
    locale: str | None = None,
    time_zone: str | None = None,
    team_ids: Iterable[int] | None = None,
) -> User:
    changes: dict[str, object] = {}
    if email is not None and email != user.email:
        await _ensure_unique(db, user.username, email, exclude_id=user.id)
        user.email, changes["email"] = email, email
    if display_name is not None and display_name != user.display_name:
        user.display_name, changes["display_name"] = display_name, display_name
    if locale is not None:
        user.locale = locale
    if time_zone is not None:
        user.time_zone = time_zone
    if roles is not None:
        wanted = {Role(r).value for r in roles}
        if wanted != set(user.role_names):
            if user.id == actor.user_id and Role.admin.value not in wanted:
                raise Invalid("you cannot remove your own admin role")
            user.roles = [r for r in user.roles if r.role in wanted] + [
                UserRole(role=r) for r in sorted(wanted - set(user.role_names))
            ]
            changes["roles"] = sorted(wanted)
    if team_ids is not None:
        wanted_teams = set(team_ids)
        for team_id in wanted_teams - set(user.team_ids):
            await _get_team(db, team_id)
        user.memberships = [m for m in user.memberships if m.team_id in wanted_teams] + [
            TeamMember(team_id=t, user_id=user.id) for t in sorted(wanted_teams - set(user.team_ids))
        ]
        changes["team_ids"] = sorted(wanted_teams)
    if changes:
        await audit.record(db, actor, "user.update", object_type="user", object_id=user.id, details=changes)
    await db.flush()
    if "team_ids" in changes:
        await _routing_sees_teams_changed(db, [user.id])
    return user


async def _routing_sees_teams_changed(db: AsyncSession, user_ids: Sequence[int]) -> None:
    """Team capacity profiles follow membership: routing takes the new limits and runs again."""
    from kefu.routing import service as routing

    await routing.refresh_capacity(db, user_ids)
    for user_id in user_ids:
        await routing.agent_changed(db, user_id)


async def set_active(db: AsyncSession, actor: Actor, user: User, active: bool) -> User:
    if user.id == actor.user_id and not active:
        raise Invalid("you cannot disable yourself")
    if user.is_active == active:
        return user
    user.is_active = active
    # Disabling ends every session and reset link of the user at once, in every process.
    user.security_stamp += 1
    await audit.record(db, actor, "user.enable" if active else "user.disable", object_type="user", object_id=user.id)
    await db.flush()
    return user


async def set_password(db: AsyncSession, actor: Actor, user: User, password: str) -> None:
    _check_password(password)
    user.password_hash = hash_password(password)
    user.security_stamp += 1
    await audit.record(db, actor, "user.password_set", object_type="user", object_id=user.id)
    await db.flush()


@dataclass(frozen=True)
class UserFilter:
    query: str = ""
    role: str | None = None
    team_id: int | None = None
    active: bool | None = None


async def list_users(db: AsyncSession, flt: UserFilter, *, after_id: int = 0, limit: int = 50) -> list[User]:
    stmt = select(User).where(User.id > after_id).order_by(User.id).limit(limit)
    if flt.query:
        like = f"%{flt.query.lower()}%"
        stmt = stmt.where(
            or_(
                func.lower(User.username).like(like),
                func.lower(User.display_name).like(like),
                func.lower(User.email).like(like),
            )
        )
    if flt.role:
        stmt = stmt.where(User.id.in_(select(UserRole.user_id).where(UserRole.role == flt.role)))
    if flt.team_id is not None:
        stmt = stmt.where(User.id.in_(select(TeamMember.user_id).where(TeamMember.team_id == flt.team_id)))
    if flt.active is not None:
        stmt = stmt.where(User.is_active == flt.active)
    return list((await db.scalars(stmt)).all())


# --- teams and skills ----------------------------------------------------------------------------
async def _get_team(db: AsyncSession, team_id: int) -> Team:
    team = await db.get(Team, team_id)
    if team is None:
        raise Invalid(f"team {team_id} does not exist")
    return team


async def get_team(db: AsyncSession, team_id: int) -> Team:
    team = await db.get(Team, team_id)
    if team is None:
        raise NotFound("team")
    return team


async def list_teams(db: AsyncSession, *, with_members: bool = True) -> list[Team]:
    """All teams by name. ``with_members=False`` for pick lists: members (and through them every member's
    roles, skills and languages) are then not loaded at all, and touching them raises."""
    stmt = select(Team).order_by(Team.name)
    if not with_members:
        stmt = stmt.options(raiseload(Team.members))
    return list((await db.scalars(stmt)).all())


async def create_team(db: AsyncSession, actor: Actor, *, name: str, description: str = "") -> Team:
    if await db.scalar(select(Team.id).where(func.lower(Team.name) == name.lower())) is not None:
        raise Conflict("a team with this name exists")
    team = Team(name=name, description=description)
    db.add(team)
    await db.flush()
    await audit.record(db, actor, "team.create", object_type="team", object_id=team.id, details={"name": name})
    return team


async def update_team(
    db: AsyncSession,
    actor: Actor,
    team: Team,
    *,
    name: str | None = None,
    description: str | None = None,
    is_active: bool | None = None,
    member_ids: Sequence[int] | None = None,
    lead_ids: Sequence[int] = (),
) -> Team:
    changes: dict[str, object] = {}
    if name is not None and name != team.name:
        taken = await db.scalar(select(Team.id).where(func.lower(Team.name) == name.lower(), Team.id != team.id))
        if taken is not None:
            raise Conflict("a team with this name exists")
        team.name, changes["name"] = name, name
    if description is not None:
        team.description = description
    if is_active is not None and is_active != team.is_active:
        team.is_active, changes["is_active"] = is_active, is_active
    moved: set[int] = set()
    if member_ids is not None:
        wanted = set(member_ids)
        if missing := wanted - set((await db.scalars(select(User.id).where(User.id.in_(wanted)))).all()):
            raise Invalid("unknown users", {"user_ids": sorted(missing)})
        had = set((await db.scalars(select(TeamMember.user_id).where(TeamMember.team_id == team.id))).all())
        moved = had ^ wanted
        await db.execute(delete(TeamMember).where(TeamMember.team_id == team.id))
        db.expire(team, ["members"])
        for user_id in sorted(wanted):
            db.add(TeamMember(team_id=team.id, user_id=user_id, is_lead=user_id in set(lead_ids)))
        changes["member_ids"] = sorted(wanted)
    if changes:
        await audit.record(db, actor, "team.update", object_type="team", object_id=team.id, details=changes)
    await db.flush()
    await db.refresh(team, ["members"])
    if moved:
        await _routing_sees_teams_changed(db, sorted(moved))
    return team


async def get_skill(db: AsyncSession, skill_id: int) -> Skill:
    skill = await db.get(Skill, skill_id)
    if skill is None:
        raise NotFound("skill")
    return skill


async def list_skills(db: AsyncSession) -> list[Skill]:
    return list((await db.scalars(select(Skill).order_by(Skill.name))).all())


async def create_skill(db: AsyncSession, actor: Actor, *, name: str, description: str = "") -> Skill:
    if await db.scalar(select(Skill.id).where(func.lower(Skill.name) == name.lower())) is not None:
        raise Conflict("a skill with this name exists")
    skill = Skill(name=name, description=description)
    db.add(skill)
    await db.flush()
    await audit.record(db, actor, "skill.create", object_type="skill", object_id=skill.id, details={"name": name})
    return skill


async def update_skill(
    db: AsyncSession, actor: Actor, skill: Skill, *, name: str | None = None, description: str | None = None
) -> Skill:
    if name is not None and name != skill.name:
        taken = await db.scalar(select(Skill.id).where(func.lower(Skill.name) == name.lower(), Skill.id != skill.id))
        if taken is not None:
            raise Conflict("a skill with this name exists")
        skill.name = name
    if description is not None:
        skill.description = description
    await audit.record(db, actor, "skill.update", object_type="skill", object_id=skill.id)
    await db.flush()
    return skill


async def set_agent_skills(
    db: AsyncSession,
    actor: Actor,
    user: User,
    *,
    skills: dict[int, int],
    languages: Sequence[str] | None = None,
) -> User:
    """Replace an agent's skills (skill id -> proficiency 1-5) and, if given, languages."""
    if bad := {sid: p for sid, p in skills.items() if not 1 <= p <= 5}:
        raise Invalid("proficiency must be 1 to 5", {"skills": bad})
    known = set((await db.scalars(select(Skill.id).where(Skill.id.in_(skills)))).all())
    if missing := set(skills) - known:
        raise Invalid("unknown skills", {"skill_ids": sorted(missing)})
    # The agent's row locked first: a membership being added meanwhile (its foreign key check shares
    # this row) then waits for these skills, or these skills for it, and either way the membership's
    # rank (routing.refresh_member_ranks below) is computed from the skills that stay.
    await db.execute(select(User.id).where(User.id == user.id).with_for_update())
    user.skills = [AgentSkill(skill_id=sid, proficiency=p) for sid, p in sorted(skills.items())]
    details: dict[str, object] = {"skills": {str(k): v for k, v in sorted(skills.items())}}
    if languages is not None:
        user.languages = [AgentLanguage(language=lang) for lang in sorted(set(languages))]
        details["languages"] = sorted(set(languages))
    await audit.record(db, actor, "user.skills_set", object_type="user", object_id=user.id, details=details)
    await db.flush()
    await db.refresh(user, ["skills", "languages"])
    # A skill or language change can make the agent the one a waiting contact needs: route again
    # (from every place skills are set: the API, the admin pages, imports).
    from kefu.routing import service as routing

    await routing.refresh_member_ranks(db, user_ids=[user.id])
    await routing.agent_changed(db, user.id)
    return user


# --- sign-in, sessions, throttling ----------------------------------------------------------------
async def _throttle_row(db: AsyncSession, key: str) -> LoginThrottle:
    row = await db.get(LoginThrottle, key)
    if row is None:
        row = LoginThrottle(key=key, failures=0)
        db.add(row)
    return row


async def _locked_for(db: AsyncSession, keys: Sequence[str]) -> int:
    now = utcnow()
    rows = (await db.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(keys)))).all()
    waits = [int((r.locked_until - now).total_seconds()) + 1 for r in rows if r.locked_until and r.locked_until > now]
    return max(waits, default=0)


async def _register_failure(db: AsyncSession, key: str, threshold: int, backoff: int) -> None:
    row = await _throttle_row(db, key)
    row.failures += 1
    row.updated_at = utcnow()
    if row.failures >= threshold:
        # Doubles with each failure past the threshold: 60 s, 120 s, 240 s ... capped at an hour.
        seconds = min(MAX_BACKOFF_SECONDS, backoff * 2 ** (row.failures - threshold))
        row.locked_until = utcnow() + timedelta(seconds=seconds)


@dataclass(frozen=True)
class SignIn:
    user: User
    cookie_value: str
    session: WebSession


async def sign_in(
    db: AsyncSession, settings: Settings, *, login: str, password: str, ip: str, user_agent: str
) -> SignIn | ApiError:
    """Check the password; on success open a server-side session.

    A failure is counted and audited and *returned*, not raised: the caller commits first and then
    raises it, so a rollback can never forget a failed attempt.
    """
    user_key, ip_key = f"user:{login.strip().lower()[:150]}", f"ip:{ip}"
    wait = await _locked_for(db, [user_key, ip_key])
    if wait:
        raise ApiError(
            429,
            "too_many_attempts",
            "too many failed sign-ins; wait and retry",
            {"retry_after_seconds": wait},
            headers={"Retry-After": str(wait)},
        )
    user = await find_user_by_login(db, login)
    ok = verify_password(user.password_hash if user else None, password)
    actor = Actor(user_id=user.id if user else None, name=login.strip()[:128], ip=ip, user_agent=user_agent)
    if not ok or user is None or not user.is_active:
        await _register_failure(db, user_key, settings.login_max_failures, settings.login_backoff_seconds)
        await _register_failure(
            db, ip_key, settings.login_max_failures * IP_FAILURE_FACTOR, settings.login_backoff_seconds
        )
        await audit.record(db, actor, "auth.login_failed", object_type="user", object_id=user.id if user else "")
        return ApiError(401, "invalid_credentials", "wrong username or password, or the account is disabled")
    await db.execute(delete(LoginThrottle).where(LoginThrottle.key == user_key))
    cookie_value = new_token(32)
    web_session = WebSession(
        id_hash=hash_token(cookie_value),
        user_id=user.id,
        csrf_token=new_token(24),
        security_stamp=user.security_stamp,
        expires_at=utcnow() + timedelta(hours=settings.session_hours),
        ip=ip[:64],
        user_agent=user_agent[:255],
    )
    db.add(web_session)
    await audit.record(db, actor, "auth.login", object_type="user", object_id=user.id)
    await db.flush()
    return SignIn(user=user, cookie_value=cookie_value, session=web_session)


async def sign_out(db: AsyncSession, principal: Principal) -> None:
    if principal.session_id_hash:
        await db.execute(delete(WebSession).where(WebSession.id_hash == principal.session_id_hash))
        await audit.record(
            db, actor_of(principal), "auth.logout", object_type="user", object_id=principal.user_id or ""
        )


async def purge_expired_sessions(db: AsyncSession) -> int:
    result = await db.execute(delete(WebSession).where(WebSession.expires_at < utcnow()))
    return result.rowcount or 0


# --- password reset ------------------------------------------------------------------------------
async def request_password_reset(db: AsyncSession, settings: Settings, *, login: str, ip: str) -> str | None:
    """Create a single-use reset token and queue its mail. Returns the token (for the mail job only).

    The caller answers the same whether or not the account exists, so the form cannot be used to
    find out who has an account.
    """
    user = await find_user_by_login(db, login)
    if user is None or not user.is_active or not user.email:
        return None
    token = new_token(32)
    db.add(
        PasswordResetToken(
            user_id=user.id,
            token_hash=hash_token(token),
            security_stamp=user.security_stamp,
            expires_at=utcnow() + timedelta(minutes=settings.password_reset_minutes),
        )
    )
    await audit.record(
        db,
        Actor(user_id=None, name=login[:128], ip=ip),
        "auth.password_reset_requested",
        object_type="user",
        object_id=user.id,
    )
    link = f"{settings.base_url}/password-reset/confirm?token={token}"
    # The link goes to the mail job, never into a log line.
    await enqueue(db, "mail.password_reset", {"user_id": user.id, "to": user.email, "link": link})
    return token


async def confirm_password_reset(db: AsyncSession, *, token: str, new_password: str, ip: str) -> User:
    _check_password(new_password)
    row = await db.scalar(select(PasswordResetToken).where(PasswordResetToken.token_hash == hash_token(token)))
    invalid = ApiError(400, "invalid_token", "the reset link is invalid, used or expired")
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise invalid
    user = await db.get(User, row.user_id)
    if user is None or not user.is_active or user.security_stamp != row.security_stamp:
        raise invalid
    row.used_at = utcnow()
    await set_password(db, Actor(user_id=user.id, name=user.username, ip=ip), user, new_password)
    return user


# --- API tokens ----------------------------------------------------------------------------------
TOKEN_PREFIX = "kefu_"


async def create_api_token(
    db: AsyncSession, principal: Principal, *, name: str, scopes: Sequence[str], expires_in_days: int | None
) -> tuple[str, ApiToken]:
    """Returns the plain token once; only its hash is kept."""
    if principal.user_id is None:
        raise ApiError(401, "unauthenticated", "sign in first")
    plain = TOKEN_PREFIX + new_token(32)
    token = ApiToken(
        user_id=principal.user_id,
        name=name,
        prefix=plain[: len(TOKEN_PREFIX) + 6],
        token_hash=hash_token(plain),
        scopes=sorted(set(scopes)),
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    db.add(token)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "api_token.create",
        object_type="api_token",
        object_id=token.id,
        details={"name": name, "scopes": token.scopes},
    )
    return plain, token


async def list_api_tokens(db: AsyncSession, principal: Principal) -> list[ApiToken]:
    stmt = select(ApiToken).where(ApiToken.user_id == principal.user_id).order_by(ApiToken.id.desc())
    return list((await db.scalars(stmt)).all())


async def revoke_api_token(db: AsyncSession, principal: Principal, token_id: int) -> ApiToken:
    token = await db.get(ApiToken, token_id)
    # Someone else's token is "not found", not "forbidden": ids of others' tokens stay unconfirmed.
    if token is None or token.user_id != principal.user_id:
        raise NotFound("api_token")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        await audit.record(db, actor_of(principal), "api_token.revoke", object_type="api_token", object_id=token.id)
    await db.flush()
    return token
