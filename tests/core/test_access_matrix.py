"""The access matrix is the contract: every route declares (object, action), every declaration has a row,
and tests generated from the matrix check every (route, role) cell against the running app."""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute, Mount, Route

from conftest import TEST_PASSWORD, login, unique
from kefu.app import create_app
from kefu.core.policy import READ_ACTIONS, ROLE_COLUMNS, Authorize, access_matrix
from kefu.settings import Settings

# Framework routes that carry no dependency: the OpenAPI document (public, like /api/docs).
FRAMEWORK_PUBLIC = {"/api/openapi.json"}


def _authorize_of(route: APIRoute | APIWebSocketRoute) -> Authorize | None:
    declared = getattr(route.endpoint, "__kefu_permission__", None)
    if declared is not None:
        return declared
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Authorize):
            return dep.call
        stack.extend(dep.dependencies)
    return None


@functools.cache
def all_routes() -> list[tuple[BaseRoute, str]]:
    """Every route of the app with its full path, included routers flattened. Built once: FastAPI works
    out every route's dependencies when its contexts are listed (about half a second per listing)."""
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", secret_key="x"))
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazily included routers: app.routes is already flat
        return [(r, getattr(r, "path", "")) for r in app.routes]
    return [(rc.route, rc.path) for rc in iter_route_contexts(app.routes)]


@functools.cache
def declared_routes() -> dict[tuple[str, str], Authorize]:
    found: dict[tuple[str, str], Authorize] = {}
    for route, path in all_routes():
        if isinstance(route, APIRoute | APIWebSocketRoute):
            auth = _authorize_of(route)
            assert auth is not None, f"{path} declares no permission"
            for method in getattr(route, "methods", None) or {"WS"}:
                found[(method, path)] = auth
    return found


def test_every_route_declares_a_permission_with_a_matrix_row() -> None:
    missing = []
    for route, path in all_routes():
        if isinstance(route, APIRoute | APIWebSocketRoute):
            auth = _authorize_of(route)
            if auth is None or (auth.obj, auth.action) not in access_matrix():
                missing.append(path)
        elif isinstance(route, Mount):
            assert path == "/static", f"unexpected mount {path}"
        elif isinstance(route, Route) and path not in FRAMEWORK_PUBLIC:
            missing.append(path)
    assert len(all_routes()) > 40
    assert not missing, f"routes without an access-matrix row: {missing}"


def test_every_matrix_row_is_used_by_a_route() -> None:
    used = {(a.obj, a.action) for a in declared_routes().values()}
    assert set(access_matrix()) - used == set(), "matrix rows no route uses (stale rules)"


# --- generated cell tests -----------------------------------------------------------------------------
@dataclass
class Ctx:
    victim_id: int
    login_username: str  # never disabled by another cell, unlike the victim
    team_id: int
    skill_id: int
    own_token_id: int | None
    article_id: int = 0  # a public, published article; or, for ARTICLE_STATE routes, one made for the cell
    category_id: int = 0
    search_id: int = 999_999  # the caller's own search, for routes that act on one
    thread_id: int = 999_999  # a feedback thread made for the cell (see FEEDBACK_AUTHOR)
    announcement_id: int = 999_999  # addressed to every staff role
    collection_id: int = 999_999  # a training collection
    attachment_id: int = 999_999  # a file on ``article_id``
    ids: dict[str, int] = field(default_factory=dict)  # objects made by the domain modules (see below)


Request = Callable[[Ctx], dict[str, Any]]

# How to call each route with valid input. A route missing here fails test_every_route_has_an_example.
EXAMPLES: dict[tuple[str, str], Request] = {
    ("GET", "/healthz"): lambda c: {},
    ("GET", "/readyz"): lambda c: {},
    ("GET", "/metrics"): lambda c: {},
    ("GET", "/api/docs"): lambda c: {},
    ("GET", "/api/v1/jobs"): lambda c: {},
    ("POST", "/api/v1/auth/login"): lambda c: {"json": {"login": c.login_username, "password": TEST_PASSWORD}},
    ("POST", "/api/v1/auth/logout"): lambda c: {},
    ("POST", "/api/v1/auth/password-reset"): lambda c: {"json": {"login": "nobody-" + unique()}},
    ("POST", "/api/v1/auth/password-reset/confirm"): lambda c: {
        "json": {"token": "not-a-token", "new_password": "a-new-long-password"}
    },
    ("GET", "/api/v1/me"): lambda c: {},
    ("PATCH", "/api/v1/me"): lambda c: {"json": {"time_zone": "Asia/Shanghai"}},
    ("POST", "/api/v1/me/password"): lambda c: {
        "json": {"current_password": "wrong-password!", "new_password": "a-new-long-password"}
    },
    ("GET", "/api/v1/me/tokens"): lambda c: {},
    ("POST", "/api/v1/me/tokens"): lambda c: {"json": {"name": "t", "scopes": ["user:read"]}},
    ("DELETE", "/api/v1/me/tokens/{token_id}"): lambda c: {"path": {"token_id": c.own_token_id}},
    ("GET", "/api/v1/users"): lambda c: {},
    ("GET", "/api/v1/users/export"): lambda c: {},
    ("POST", "/api/v1/users"): lambda c: {"json": {"username": unique("n"), "display_name": "New", "roles": ["agent"]}},
    ("GET", "/api/v1/users/{user_id}"): lambda c: {"path": {"user_id": c.victim_id}},
    ("PATCH", "/api/v1/users/{user_id}"): lambda c: {
        "path": {"user_id": c.victim_id},
        "json": {"display_name": "Renamed"},
    },
    ("POST", "/api/v1/users/{user_id}/disable"): lambda c: {"path": {"user_id": c.victim_id}},
    ("PUT", "/api/v1/users/{user_id}/skills"): lambda c: {
        "path": {"user_id": c.victim_id},
        "json": {"skills": [{"skill_id": c.skill_id, "proficiency": 3}]},
    },
    ("GET", "/api/v1/teams"): lambda c: {},
    ("POST", "/api/v1/teams"): lambda c: {"json": {"name": unique("team")}},
    ("GET", "/api/v1/teams/{team_id}"): lambda c: {"path": {"team_id": c.team_id}},
    ("PATCH", "/api/v1/teams/{team_id}"): lambda c: {"path": {"team_id": c.team_id}, "json": {"description": "d"}},
    ("GET", "/api/v1/skills"): lambda c: {},
    ("POST", "/api/v1/skills"): lambda c: {"json": {"name": unique("skill")}},
    ("GET", "/api/v1/skills/{skill_id}"): lambda c: {"path": {"skill_id": c.skill_id}},
    ("PATCH", "/api/v1/skills/{skill_id}"): lambda c: {"path": {"skill_id": c.skill_id}, "json": {"description": "d"}},
    ("GET", "/api/v1/audit"): lambda c: {},
    # pages
    ("GET", "/login"): lambda c: {},
    ("POST", "/login"): lambda c: {"data": {"login": c.login_username, "password": TEST_PASSWORD}},
    ("POST", "/logout"): lambda c: {},
    ("POST", "/language"): lambda c: {"data": {"locale": "en"}},
    ("GET", "/"): lambda c: {},
    ("GET", "/profile"): lambda c: {},
    ("POST", "/profile"): lambda c: {"data": {"time_zone": "Asia/Shanghai"}},
    ("GET", "/password-reset"): lambda c: {},
    ("POST", "/password-reset"): lambda c: {"data": {"login": "nobody"}},
    ("GET", "/password-reset/confirm"): lambda c: {},
    ("POST", "/password-reset/confirm"): lambda c: {"data": {"token": "bad", "new_password": "a-new-long-password"}},
    ("GET", "/admin/users"): lambda c: {},
    ("GET", "/admin/users/new"): lambda c: {},
    ("POST", "/admin/users"): lambda c: {"data": {"username": unique("p"), "display_name": "P", "roles[]": "agent"}},
    ("GET", "/admin/users/{user_id}"): lambda c: {"path": {"user_id": c.victim_id}},
    ("POST", "/admin/users/{user_id}"): lambda c: {
        "path": {"user_id": c.victim_id},
        "data": {"display_name": "Renamed", "roles[]": "agent"},
    },
    ("POST", "/admin/users/{user_id}/active"): lambda c: {"path": {"user_id": c.victim_id}, "data": {"active": "1"}},
    ("POST", "/admin/users/{user_id}/skills"): lambda c: {
        "path": {"user_id": c.victim_id},
        "data": {f"skill_{c.skill_id}": "4", "languages": "zh-CN"},
    },
    ("GET", "/admin/teams"): lambda c: {},
    ("POST", "/admin/teams"): lambda c: {"data": {"name": unique("team")}},
    ("GET", "/admin/teams/{team_id}"): lambda c: {"path": {"team_id": c.team_id}},
    ("POST", "/admin/teams/{team_id}"): lambda c: {"path": {"team_id": c.team_id}, "data": {"name": unique("team")}},
    ("GET", "/admin/skills"): lambda c: {},
    ("POST", "/admin/skills"): lambda c: {"data": {"name": unique("skill")}},
    ("GET", "/admin/audit"): lambda c: {},
}
KB = "/api/v1/kb/articles/{article_id}"
ARTICLE_BODY = {"title": "矩阵测试 matrix article", "body_markdown": "内容"}
EXAMPLES.update(
    {
        ("GET", "/api/v1/kb/articles"): lambda c: {},
        ("POST", "/api/v1/kb/articles"): lambda c: {"json": ARTICLE_BODY},
        ("GET", KB): lambda c: {"path": {"article_id": c.article_id}},
        ("PUT", KB + "/draft"): lambda c: {"path": {"article_id": c.article_id}, "json": ARTICLE_BODY},
        ("PATCH", KB): lambda c: {"path": {"article_id": c.article_id}, "json": {"verify_interval_days": 90}},
        ("POST", KB + "/submit"): lambda c: {
            "path": {"article_id": c.article_id},
            "json": {"reviewer_id": c.victim_id},
        },
        ("POST", KB + "/withdraw"): lambda c: {"path": {"article_id": c.article_id}},
        ("POST", KB + "/review"): lambda c: {"path": {"article_id": c.article_id}, "json": {"approve": True}},
        ("POST", KB + "/publish"): lambda c: {"path": {"article_id": c.article_id}, "json": {}},
        ("POST", KB + "/archive"): lambda c: {"path": {"article_id": c.article_id}},
        ("POST", KB + "/unarchive"): lambda c: {"path": {"article_id": c.article_id}},
        ("POST", KB + "/verify"): lambda c: {"path": {"article_id": c.article_id}},
        ("GET", KB + "/versions"): lambda c: {"path": {"article_id": c.article_id}},
        ("GET", KB + "/versions/{number}"): lambda c: {"path": {"article_id": c.article_id, "number": 1}},
        ("GET", KB + "/diff"): lambda c: {"path": {"article_id": c.article_id}, "params": {"from": 1, "to": 1}},
        ("POST", KB + "/versions/{number}/restore"): lambda c: {"path": {"article_id": c.article_id, "number": 1}},
        ("GET", "/api/v1/kb/verification-due"): lambda c: {},
        ("GET", "/api/v1/kb/reviewers"): lambda c: {},
        ("GET", "/api/v1/kb/categories"): lambda c: {},
        ("GET", "/api/v1/kb/search"): lambda c: {"params": {"q": "信用卡"}},
        ("POST", "/api/v1/kb/search/{search_id}/outcome"): lambda c: {
            "path": {"search_id": c.search_id},
            "json": {"article_id": c.article_id, "solved": True},
        },
        ("GET", "/api/v1/kb/suggest"): lambda c: {"params": {"q": "信"}},
        ("GET", "/api/v1/kb/search-gaps"): lambda c: {},
        ("POST", "/api/v1/kb/categories"): lambda c: {"json": {"name": unique("cat")}},
    }
)
FB = "/api/v1/kb/feedback/{thread_id}"
ANN = "/api/v1/kb/announcements/{announcement_id}"
TRAINING = "/api/v1/kb/training/{collection_id}"
EXAMPLES.update(
    {
        ("POST", KB + "/feedback"): lambda c: {
            "path": {"article_id": c.article_id},
            "json": {"kind": "question", "subject": "矩阵反馈", "body": "问题"},
        },
        ("GET", "/api/v1/kb/feedback"): lambda c: {"params": {"status": "open"}},
        ("GET", FB): lambda c: {"path": {"thread_id": c.thread_id}},
        ("POST", FB + "/replies"): lambda c: {"path": {"thread_id": c.thread_id}, "json": {"body": "回复"}},
        ("POST", FB + "/accept"): lambda c: {"path": {"thread_id": c.thread_id}, "json": {"reason": "采纳"}},
        ("POST", FB + "/reject"): lambda c: {"path": {"thread_id": c.thread_id}, "json": {"reason": "不采纳"}},
        ("GET", "/api/v1/kb/board"): lambda c: {"params": {"since_days": 7}},
        ("POST", "/api/v1/kb/announcements"): lambda c: {"json": {"title": "矩阵公告", "requires_ack": True}},
        ("POST", ANN + "/ack"): lambda c: {"path": {"announcement_id": c.announcement_id}},
        ("GET", ANN + "/unread"): lambda c: {"path": {"announcement_id": c.announcement_id}},
        ("GET", "/api/v1/kb/points/leaderboard"): lambda c: {"params": {"period": "week"}},
        ("GET", "/api/v1/kb/points/me"): lambda c: {},
        ("GET", "/api/v1/kb/training"): lambda c: {},
        ("POST", "/api/v1/kb/training"): lambda c: {"json": {"name": unique("培训")}},
        ("GET", TRAINING): lambda c: {"path": {"collection_id": c.collection_id}},
        ("PATCH", TRAINING): lambda c: {"path": {"collection_id": c.collection_id}, "json": {"description": "d"}},
        ("PUT", TRAINING + "/items"): lambda c: {
            "path": {"collection_id": c.collection_id},
            "json": {"article_ids": []},
        },
    }
)
# Feedback routes act on a thread made for the cell: read/reply on one the caller wrote (only participants
# see a thread); accept/reject on one another agent (the signer) wrote, as nobody earns points accepting
# their own. Roles that may not give feedback get the signer's thread (they are denied before lookup).
FEEDBACK_AUTHOR = {
    ("GET", FB): "caller",
    ("POST", FB + "/replies"): "caller",
    ("POST", FB + "/accept"): "signer",
    ("POST", FB + "/reject"): "signer",
}


# Knowledge pages: feedback threads, board and announcements, points, training, search gaps
# (kefu.knowledge.board_pages). Same rows as the REST routes doing the same thing.
PAGE_FB = "/kb/feedback/{thread_id}"
PAGE_ANN = "/kb/announcements/{announcement_id}"
PAGE_TRAINING = "/kb/training/{collection_id}"
EXAMPLES.update(
    {
        ("POST", "/kb/articles/{article_id}/feedback"): lambda c: {
            "path": {"article_id": c.article_id},
            "data": {"kind": "question", "subject": "矩阵反馈", "body": "问题"},
        },
        ("GET", "/kb/feedback"): lambda c: {"params": {"status": "open"}},
        ("GET", PAGE_FB): lambda c: {"path": {"thread_id": c.thread_id}},
        ("POST", PAGE_FB + "/reply"): lambda c: {"path": {"thread_id": c.thread_id}, "data": {"body": "回复"}},
        ("POST", PAGE_FB + "/accept"): lambda c: {"path": {"thread_id": c.thread_id}, "data": {"reason": "采纳"}},
        ("POST", PAGE_FB + "/reject"): lambda c: {"path": {"thread_id": c.thread_id}, "data": {"reason": "不采纳"}},
        ("GET", "/kb/board"): lambda c: {"params": {"since_days": 7}},
        ("POST", PAGE_ANN + "/ack"): lambda c: {"path": {"announcement_id": c.announcement_id}},
        ("GET", "/kb/announcements/new"): lambda c: {},
        ("POST", "/kb/announcements"): lambda c: {"data": {"title": "矩阵公告", "requires_ack": "1"}},
        ("GET", PAGE_ANN + "/unread"): lambda c: {"path": {"announcement_id": c.announcement_id}},
        ("GET", "/kb/points"): lambda c: {"params": {"period": "week"}},
        ("GET", "/kb/training"): lambda c: {},
        ("POST", "/kb/training"): lambda c: {"data": {"name": unique("培训")}},
        ("GET", PAGE_TRAINING): lambda c: {"path": {"collection_id": c.collection_id}},
        ("POST", PAGE_TRAINING): lambda c: {
            "path": {"collection_id": c.collection_id},
            "data": {"name": unique("培训"), "description": "d"},
        },
        ("POST", PAGE_TRAINING + "/items"): lambda c: {
            "path": {"collection_id": c.collection_id},
            "data": {"article_ids": ""},
        },
        ("GET", "/kb/gaps"): lambda c: {"params": {"days": 7}},
    }
)
# After the FEEDBACK_AUTHOR dict:
FEEDBACK_AUTHOR.update(
    {
        ("GET", PAGE_FB): "caller",
        ("POST", PAGE_FB + "/reply"): "caller",
        ("POST", PAGE_FB + "/accept"): "signer",
        ("POST", PAGE_FB + "/reject"): "signer",
    }
)


async def thread_for(app, author, article_id: int) -> int:  # noqa: ANN001
    from kefu.core.policy import Principal
    from kefu.knowledge import feedback

    principal = Principal(user_id=author.id, username=author.username, roles=author.role_names, via="session")
    async with app.state.session_factory() as db, db.begin():
        view = await feedback.open_thread(
            db, principal, app.state.settings, article_id, "suggestion", "矩阵 " + unique(), "建议"
        )
    return view.thread.id


async def kb_board_world(app, world) -> None:  # noqa: ANN001
    """An announcement to every staff role and a training collection, made by the knowledge manager."""
    from kefu.core.policy import Principal
    from kefu.knowledge import board

    km = world["users"]["knowledge_manager"]
    principal = Principal(user_id=km.id, username=km.username, roles=km.role_names, via="session")
    async with app.state.session_factory() as db, db.begin():
        world["announcement_id"] = (
            await board.create_announcement(db, principal, title="矩阵公告", requires_ack=True)
        ).id
        world["collection_id"] = (await board.create_collection(db, principal, name=unique("矩阵培训"))).collection.id


ATT = KB + "/attachments"
EXAMPLES.update(
    {
        ("GET", ATT): lambda c: {"path": {"article_id": c.article_id}},
        ("POST", ATT): lambda c: {"path": {"article_id": c.article_id}, "files": {"file": ("a.txt", b"matrix")}},
        ("GET", ATT + "/{attachment_id}"): lambda c: {
            "path": {"article_id": c.article_id, "attachment_id": c.attachment_id}
        },
        ("DELETE", ATT + "/{attachment_id}"): lambda c: {
            "path": {"article_id": c.article_id, "attachment_id": c.attachment_id}
        },
        ("POST", "/kb/articles/{article_id}/attachments"): lambda c: {
            "path": {"article_id": c.article_id},
            "files": {"file": ("p.txt", b"page")},
        },
        ("POST", "/kb/articles/{article_id}/attachments/{attachment_id}/remove"): lambda c: {
            "path": {"article_id": c.article_id, "attachment_id": c.attachment_id}
        },
    }
)


async def attachment_on(app, article_id: int, km) -> int:  # noqa: ANN001
    from kefu.core.policy import Principal
    from kefu.knowledge import attachments

    principal = Principal(user_id=km.id, username=km.username, roles=km.role_names, via="session")
    async with app.state.session_factory() as db, db.begin():
        made = await attachments.add(db, principal, article_id, filename="m.txt", data=b"m", max_bytes=1000)
    return made.id


# Routes whose row-level rules need an article in a given state, owned or reviewed by the caller.
ARTICLE_STATE = {
    ("PUT", KB + "/draft"): "draft",
    ("POST", KB + "/submit"): "draft",
    ("POST", KB + "/withdraw"): "in_review",
    ("POST", KB + "/review"): "in_review",
    ("POST", KB + "/publish"): "draft",
    ("POST", KB + "/archive"): "published",
    ("POST", KB + "/unarchive"): "published",
    ("POST", KB + "/versions/{number}/restore"): "published",
    ("POST", ATT): "draft",
    ("DELETE", ATT + "/{attachment_id}"): "draft",
    ("POST", "/kb/articles/{article_id}/attachments"): "draft",
    ("POST", "/kb/articles/{article_id}/attachments/{attachment_id}/remove"): "draft",
}


KBP = "/kb/articles/{article_id}"
PAGE_BODY = {"title": "矩阵页面 matrix page", "body_markdown": "内容"}
EXAMPLES.update(
    {
        ("GET", "/kb"): lambda c: {"params": {"q": "信用卡"}},
        ("GET", "/kb/suggest"): lambda c: {"params": {"q": "信"}},
        ("GET", "/kb/review"): lambda c: {},
        ("GET", "/kb/articles/new"): lambda c: {},
        ("POST", "/kb/articles"): lambda c: {"data": PAGE_BODY},
        ("GET", KBP): lambda c: {"path": {"article_id": c.article_id}},
        ("GET", KBP + "/edit"): lambda c: {"path": {"article_id": c.article_id}},
        ("POST", KBP + "/edit"): lambda c: {"path": {"article_id": c.article_id}, "data": PAGE_BODY},
        ("POST", KBP + "/submit"): lambda c: {
            "path": {"article_id": c.article_id},
            "data": {"reviewer_id": c.victim_id},
        },
        ("POST", KBP + "/withdraw"): lambda c: {"path": {"article_id": c.article_id}},
        ("POST", KBP + "/review"): lambda c: {"path": {"article_id": c.article_id}, "data": {"decision": "approve"}},
        ("POST", KBP + "/publish"): lambda c: {"path": {"article_id": c.article_id}, "data": {"when": "now"}},
        ("POST", KBP + "/archive"): lambda c: {"path": {"article_id": c.article_id}},
        ("POST", KBP + "/unarchive"): lambda c: {"path": {"article_id": c.article_id}},
        ("POST", KBP + "/verify"): lambda c: {"path": {"article_id": c.article_id}},
        ("GET", KBP + "/history"): lambda c: {"path": {"article_id": c.article_id}},
        ("GET", KBP + "/diff"): lambda c: {"path": {"article_id": c.article_id}, "params": {"from": 1, "to": 1}},
        ("POST", KBP + "/versions/{number}/restore"): lambda c: {"path": {"article_id": c.article_id, "number": 1}},
    }
)


async def article_for(app, user, state: str, reviewer) -> int:  # noqa: ANN001
    """An article by ``user`` (when they may write; else by a knowledge manager) in ``state``."""
    from kefu.core.policy import Principal, allows
    from kefu.knowledge import service

    def principal_of(u) -> Principal:  # noqa: ANN001
        return Principal(user_id=u.id, username=u.username, roles=u.role_names, via="session")

    author = (
        principal_of(user)
        if user is not None and allows(principal_of(user), "article", "create")
        else principal_of(reviewer)
    )
    async with app.state.session_factory() as db, db.begin():
        view = await service.create_article(
            db, author, service.Content(title="矩阵 " + unique()), service.Placement(audience="public")
        )
        aid = view.article.id
        if state == "in_review":
            may_review = user is not None and allows(principal_of(user), "article", "review")
            await service.submit_for_review(db, author, aid, (user if may_review else reviewer).id)
        elif state == "published":
            await service.publish(db, principal_of(reviewer), app.state.settings, aid)
    return aid


ARTICLE_STATE.update(
    {
        ("GET", KBP + "/edit"): "draft",
        ("POST", KBP + "/edit"): "draft",
        ("POST", KBP + "/submit"): "draft",
        ("POST", KBP + "/withdraw"): "in_review",
        ("POST", KBP + "/review"): "in_review",
        ("POST", KBP + "/publish"): "draft",
        ("POST", KBP + "/archive"): "published",
        ("POST", KBP + "/unarchive"): "published",
        ("POST", KBP + "/versions/{number}/restore"): "published",
    }
)


# Each domain keeps its own examples beside its tests, in ``tests/<domain>/[<sub>/]<name>_matrix.py``:
#   EXAMPLES   {(method, path): lambda c: {...}}  using ``c.ids[...]`` for objects it made
#   prepare    async (app, world) -> dict[str, int]: objects made once for the whole matrix run
#   PER_CELL   {(method, path): async (app, world, role) -> dict[str, int]}: objects made for one cell
#              (a merge, a delete: something a cell uses up)
def _domain_modules() -> list[Any]:
    import importlib.util
    from pathlib import Path

    modules = []
    for path in sorted(Path(__file__).resolve().parent.parent.glob("**/*_matrix.py")):
        if path.name.startswith("test_"):
            continue
        spec = importlib.util.spec_from_file_location(f"kefu_matrix_{path.parent.name}_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


DOMAIN_MODULES = _domain_modules()
PER_CELL: dict[tuple[str, str], Callable[..., Any]] = {}
for _module in DOMAIN_MODULES:
    assert not set(_module.EXAMPLES) & set(EXAMPLES), f"{_module.__name__} repeats examples"
    EXAMPLES.update(_module.EXAMPLES)
    PER_CELL.update(getattr(_module, "PER_CELL", {}))

# The WebSocket route's cells are checked in tests/core/test_realtime.py against a live server.
NOT_HTTP = {
    ("WS", "/ws"),
    # The chat sockets' cells are checked in tests/channels/chat/test_chat_sockets.py.
    ("WS", "/chat/ws/{public_id}"),
    ("WS", "/chat/agent/ws"),
}


def test_every_route_has_an_example() -> None:
    routes = set(declared_routes()) - NOT_HTTP
    assert routes - set(EXAMPLES) == set(), "add an example request for these routes"
    assert set(EXAMPLES) - routes == set(), "examples for routes that no longer exist"


CASES = sorted(
    itertools.product(sorted(set(EXAMPLES)), ROLE_COLUMNS), key=lambda case: (case[0][1], case[0][0], case[1])
)


@pytest.fixture(scope="module")
async def matrix_world(app) -> AsyncIterator[dict[str, Any]]:  # noqa: ANN001
    from conftest import Factory

    make = Factory(app)
    victim = await make.user("agent")
    world = {
        "make": make,
        "victim": victim,
        "signer": await make.user("agent"),
        "team_id": await make.team(),
        "skill_id": await make.skill(),
        "users": {role: await make.user(role) for role in ROLE_COLUMNS if role != "anonymous"},
    }
    world["article_id"] = await article_for(
        app, world["users"]["knowledge_manager"], "published", world["users"]["knowledge_manager"]
    )
    await kb_board_world(app, world)
    world["attachment_id"] = await attachment_on(app, world["article_id"], world["users"]["knowledge_manager"])
    world["ids"] = {}
    for module in DOMAIN_MODULES:
        if hasattr(module, "prepare"):
            world["ids"].update(await module.prepare(app, world))
    yield world
    for client in world.get("clients", {}).values():
        await client.aclose()


async def _client_for(app, role: str, world: dict[str, Any]) -> httpx.AsyncClient:  # noqa: ANN001
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50001))
    client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    if role == "anonymous":
        # The double-submit CSRF pair a browser gets from any page before signing in.
        client.cookies.set("kefu_csrf", "anon-csrf-token-value")
        client.headers["X-CSRF-Token"] = "anon-csrf-token-value"
    else:
        await login(client, world["users"][role])
    return client


@pytest.mark.parametrize(("route", "role"), CASES, ids=[f"{m} {p} as {r}" for (m, p), r in CASES])
async def test_matrix_cell(app, matrix_world, route: tuple[str, str], role: str) -> None:  # noqa: ANN001
    method, template = route
    auth = declared_routes()[route]
    allowed = role in access_matrix()[(auth.obj, auth.action)]
    # Signing in costs an argon2 hash: reuse one client per role, except where the cell itself signs
    # in or out (that would change the client's session).
    fresh = auth.obj == "session"
    cache = matrix_world.setdefault("clients", {})
    if fresh:
        client = await _client_for(app, role, matrix_world)
    else:
        if role not in cache:
            cache[role] = await _client_for(app, role, matrix_world)
        client = cache[role]
    try:
        own_token_id = None
        if role != "anonymous" and template.startswith("/api/v1/me/tokens/"):
            made = await client.post("/api/v1/me/tokens", json={"name": "mine", "scopes": ["user:read"]})
            own_token_id = made.json()["id"] if made.status_code == 201 else 999_999
        ctx = Ctx(
            victim_id=matrix_world["victim"].id,
            login_username=matrix_world["signer"].username,
            team_id=matrix_world["team_id"],
            skill_id=matrix_world["skill_id"],
            own_token_id=own_token_id or 999_999,
            article_id=matrix_world["article_id"],
        )
        ctx.announcement_id = matrix_world["announcement_id"]
        ctx.collection_id = matrix_world["collection_id"]
        if route in FEEDBACK_AUTHOR:
            caller = matrix_world["users"].get(role)
            writes = FEEDBACK_AUTHOR[route] == "caller" and role not in ("anonymous", "customer")
            ctx.thread_id = await thread_for(app, caller if writes else matrix_world["signer"], ctx.article_id)
        ctx.attachment_id = matrix_world["attachment_id"]
        if "{search_id}" in template and role != "anonymous":
            searched = await client.get("/api/v1/kb/search", params={"q": "矩阵"})
            if searched.status_code == 200:
                ctx.search_id = searched.json()["search_id"]
        if route in ARTICLE_STATE:
            ctx.article_id = await article_for(
                app, matrix_world["users"].get(role), ARTICLE_STATE[route], matrix_world["users"]["knowledge_manager"]
            )
        if route in (
            ("DELETE", ATT + "/{attachment_id}"),
            ("POST", "/kb/articles/{article_id}/attachments/{attachment_id}/remove"),
        ):
            ctx.attachment_id = await attachment_on(app, ctx.article_id, matrix_world["users"]["knowledge_manager"])
        ctx.ids = dict(matrix_world["ids"])
        if route in PER_CELL:
            ctx.ids.update(await PER_CELL[route](app, matrix_world, role))
        example = EXAMPLES[route](ctx)
        path = template.format(**example.get("path", {}))
        response = await client.request(
            method,
            path,
            json=example.get("json"),
            data=example.get("data"),
            params=example.get("params"),
            files=example.get("files"),
        )
    finally:
        if fresh:
            await client.aclose()

    status = response.status_code
    assert status < 500, response.text
    if allowed:
        assert status not in (401, 403), f"{role} should be allowed: {status} {response.text[:300]}"
        if "{" in template:
            assert status != 404, f"{role} should see the object: {response.text[:300]}"
    elif role == "anonymous":
        assert status == 401, response.text[:300]
    elif auth.by_id and auth.action in READ_ACTIONS:
        assert status == 404, "denied by-id reads answer 404"
    else:
        assert status == 403, response.text[:300]
