"""Who is asking: resolves the principal of a request from a Bearer token or a session cookie,
and checks CSRF tokens on browser writes."""

from __future__ import annotations

from datetime import timedelta

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import joinedload, lazyload

from kefu.core.errors import ApiError
from kefu.core.policy import Principal
from kefu.core.security import constant_time_equal, hash_token, new_token
from kefu.db.base import utcnow
from kefu.identity.models import ApiToken, TeamMember, User, WebSession

SESSION_COOKIE = "kefu_session"
CSRF_COOKIE = "kefu_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
# A principal needs roles and teams only: do not load the rest of the user on every request.
PRINCIPAL_LOADS = (
    # Joined, not select-in: the whole principal comes back in the one query every request makes.
    joinedload(User.roles),
    joinedload(User.memberships).lazyload(TeamMember.user),
    lazyload(User.skills),
    lazyload(User.languages),
)
# Writing "last used" on every request would turn every read into a write.
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def _anonymous(request: Request) -> Principal:
    return Principal(ip=client_ip(request), user_agent=request.headers.get("user-agent", "")[:255])


def _principal_for(user: User, request: Request, **kw: object) -> Principal:
    return Principal(
        user_id=user.id,
        username=user.username,
        display_name=user.display_name,
        roles=user.role_names,
        team_ids=user.team_ids,
        locale=user.locale,
        time_zone=user.time_zone,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent", "")[:255],
        **kw,  # type: ignore[arg-type]
    )


async def resolve_principal(request: Request) -> Principal:
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    principal = await _resolve(request)
    request.state.principal = principal
    return principal


async def _resolve(request: Request) -> Principal:
    factory = request.app.state.session_factory
    authorization = request.headers.get("authorization", "")
    now = utcnow()
    if authorization:
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise ApiError(401, "unauthenticated", "use 'Authorization: Bearer <token>'")
        async with factory() as db, db.begin():
            token = (
                (
                    await db.execute(
                        select(ApiToken)
                        .where(ApiToken.token_hash == hash_token(credential.strip()))
                        .options(joinedload(ApiToken.user).options(*PRINCIPAL_LOADS))
                    )
                )
                .unique()
                .scalar_one_or_none()
            )
            if (
                token is None
                or token.revoked_at is not None
                or (token.expires_at is not None and token.expires_at <= now)
                or not token.user.is_active
            ):
                raise ApiError(401, "unauthenticated", "token is invalid, expired or revoked")
            if token.last_used_at is None or now - token.last_used_at > TOKEN_TOUCH_INTERVAL:
                token.last_used_at = now
            return _principal_for(token.user, request, via="token", scopes=frozenset(token.scopes))

    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        async with factory() as db:
            row = await db.execute(
                select(WebSession, User)
                .join(User, User.id == WebSession.user_id)
                .where(WebSession.id_hash == hash_token(cookie))
                .options(*PRINCIPAL_LOADS)
            )
            found = row.unique().first()
            if found is not None:
                web_session, user = found
                if (
                    web_session.expires_at > now
                    and user.is_active
                    and web_session.security_stamp == user.security_stamp
                ):
                    return _principal_for(
                        user,
                        request,
                        via="session",
                        session_id_hash=web_session.id_hash,
                        csrf_token=web_session.csrf_token,
                    )
    return _anonymous(request)


async def _submitted_csrf(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


async def verify_csrf(request: Request, principal: Principal) -> None:
    """Browser writes must echo a token an attacker's page cannot read.

    Signed in: the session's own token. Anonymous (the sign-in form): the double-submit cookie.
    Anonymous API calls carry no ambient credentials, so there is nothing to forge.
    """
    if principal.via == "session":
        expected = principal.csrf_token or ""
    elif request.url.path.startswith("/api/") and CSRF_COOKIE not in request.cookies:
        return
    else:
        expected = request.cookies.get(CSRF_COOKIE, "")
    submitted = await _submitted_csrf(request)
    if not expected or not submitted or not constant_time_equal(expected, submitted):
        raise ApiError(403, "csrf_failed", "the form has expired or was not sent by kefu; reload and retry")


def anonymous_csrf_token(request: Request) -> str:
    """The double-submit token for forms shown before sign-in (set as a cookie by the page)."""
    return request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None) or _new_csrf(request)


def _new_csrf(request: Request) -> str:
    token = new_token(24)
    request.state.new_csrf = token
    return token
