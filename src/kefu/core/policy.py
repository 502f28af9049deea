"""The one permission layer. Every route, list, search and export asks it.

The rules live in ``access_matrix.csv`` (object x action x role -> allow/deny). A route declares
what it does with ``Depends(authorize(object, action))``; a test fails for any route without such
a declaration or whose declaration has no row in the matrix, and tests generated from the matrix
check every cell against the running app.

Denials answer 401 to strangers, 404 to by-id reads (so ids of hidden objects are not confirmed)
and 403 otherwise. API tokens act for their user but only within their scopes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from fastapi import Depends, Request

from kefu.core.errors import ApiError, NotFound

MATRIX_PATH = Path(__file__).with_name("access_matrix.csv")
ANONYMOUS = "anonymous"
ROLE_COLUMNS = ("anonymous", "customer", "agent", "knowledge_manager", "supervisor", "admin")
READ_ACTIONS = frozenset({"read", "list", "search", "export", "subscribe"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@lru_cache
def access_matrix() -> dict[tuple[str, str], frozenset[str]]:
    """(object, action) -> the roles allowed. Loaded once; a malformed file fails at start-up."""
    rules: dict[tuple[str, str], frozenset[str]] = {}
    with MATRIX_PATH.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != ("object", "action", *ROLE_COLUMNS):
            raise ValueError(f"{MATRIX_PATH}: unexpected header {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            key = (row["object"], row["action"])
            if key in rules:
                raise ValueError(f"{MATRIX_PATH}:{line}: duplicate row {key}")
            cells = {role: row[role] for role in ROLE_COLUMNS}
            if set(cells.values()) - {"allow", "deny"}:
                raise ValueError(f"{MATRIX_PATH}:{line}: cells must be allow or deny")
            rules[key] = frozenset(role for role, cell in cells.items() if cell == "allow")
    return rules


def scope_for(obj: str, action: str) -> str:
    """The API-token scope an action needs: ``user:read`` for reads, ``user:write`` otherwise."""
    return f"{obj}:{'read' if action in READ_ACTIONS else 'write'}"


@dataclass(frozen=True)
class Principal:
    """Who is asking. ``via`` says how they proved it: "session", "token" or "anonymous"."""

    user_id: int | None = None
    username: str = ""
    display_name: str = ""
    roles: frozenset[str] = frozenset()
    team_ids: frozenset[int] = frozenset()
    via: str = "anonymous"
    scopes: frozenset[str] = frozenset()
    session_id_hash: str | None = None
    csrf_token: str | None = None
    locale: str = "zh_CN"
    time_zone: str = "Asia/Shanghai"
    ip: str = ""
    user_agent: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_authenticated(self) -> bool:
        return self.user_id is not None

    def has_role(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))


def allows(principal: Principal, obj: str, action: str) -> bool:
    try:
        allowed_roles = access_matrix()[(obj, action)]
    except KeyError:
        return False  # no row, no access: a forgotten rule never opens a door
    holder_roles = principal.roles if principal.is_authenticated else frozenset({ANONYMOUS})
    if not allowed_roles.intersection(holder_roles):
        return False
    if principal.via == "token":
        return "*" in principal.scopes or scope_for(obj, action) in principal.scopes
    return True


def check(principal: Principal, obj: str, action: str, *, by_id: bool = False) -> None:
    """Raise the right denial unless ``principal`` may do ``action`` on ``obj``."""
    if allows(principal, obj, action):
        return
    if not principal.is_authenticated:
        raise ApiError(401, "unauthenticated", "sign in first", headers={"WWW-Authenticate": "Bearer"})
    if by_id and action in READ_ACTIONS:
        raise NotFound(obj)
    raise ApiError(403, "forbidden", f"not allowed to {action} {obj}")


@dataclass(frozen=True)
class Authorize:
    """Route dependency: resolves the principal, checks CSRF for browser writes, applies the matrix."""

    obj: str
    action: str
    by_id: bool = False

    async def __call__(self, request: Request) -> Principal:
        from kefu.core.auth import resolve_principal, verify_csrf

        principal = await resolve_principal(request)
        if request.method in UNSAFE_METHODS and principal.via != "token":
            await verify_csrf(request, principal)
        check(principal, self.obj, self.action, by_id=self.by_id)
        if principal.user_id is not None:
            from kefu.core import idempotency

            if idempotency.applies_to(request):
                await idempotency.prepare(request, principal.user_id)
        return principal


def authorize(obj: str, action: str, *, by_id: bool = False) -> Principal:
    """``principal = authorize("user", "read", by_id=True)`` as a parameter default."""
    if (obj, action) not in access_matrix():
        raise ValueError(f"no access-matrix row for ({obj!r}, {action!r})")
    return Depends(Authorize(obj, action, by_id))
