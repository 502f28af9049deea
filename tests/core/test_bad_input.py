"""Bad input never causes a 5xx, always gets the one error shape, and never leaves half-written data."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select

from conftest import login, unique
from kefu.core.audit import AuditEntry
from kefu.customers.models import Customer, CustomerIdentity, CustomerNote, Organisation
from kefu.identity.models import ApiToken, Skill, Team, User
from kefu.interactions.models import ContactReason, Interaction
from kefu.routing.models import CapacityAssignment, CapacityProfile, QueueMember, QueueSkill, RoutingQueue
from kefu.tickets.models import (
    BusinessCalendar,
    Macro,
    SavedView,
    SlaPolicy,
    WorkOrder,
    WorkOrderComment,
    WorkOrderEvent,
    WorkOrderField,
)

COUNTED = (
    User,
    Team,
    Skill,
    ApiToken,
    AuditEntry,
    Customer,
    CustomerIdentity,
    CustomerNote,
    Organisation,
    Interaction,
    ContactReason,
    WorkOrder,
    WorkOrderComment,
    WorkOrderEvent,
    WorkOrderField,
    BusinessCalendar,
    SlaPolicy,
    Macro,
    SavedView,
    RoutingQueue,
    QueueSkill,
    QueueMember,
    CapacityProfile,
    CapacityAssignment,
)

# Our own list, in the spirit of the "big list of naughty strings": control characters, invalid
# Unicode, markup, injections, templates, bidi overrides, huge and empty values, CJK and emoji.
NAUGHTY = [
    "\x00",
    "nul\x00inside",
    "\ud800",  # a lone surrogate: valid JSON escape, invalid Unicode
    "\x1b[31mred\x1b[0m",
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'; DROP TABLE users; --",
    "{{7*7}}${jndi:ldap://x/a}",
    "\u202egnp.exe",
    "   ",
    "",
    "x" * 10_000,
    "客服中心 🎧 ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ",
    "Z̴̡̪̫͖̥̔̿̃̈̏̎͠͝á̶̡̙̬͓͆l̸",
    "null",
    "\ufeffbom",
]


def ids(values: list[str]) -> list[str]:
    return [json.dumps(v)[:24] for v in values]


@pytest.fixture(scope="module")
async def admin_client(app) -> AsyncIterator[httpx.AsyncClient]:  # noqa: ANN001
    from conftest import Factory

    make = Factory(app)
    admin = await make.user("admin")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    await login(client, admin)
    client.extra = {  # type: ignore[attr-defined]
        "team_id": await make.team(),
        "skill_id": await make.skill(),
        "user_id": (await make.user("agent")).id,
    }
    customer = await client.post("/api/v1/customers", json={"display_name": "坏输入客户"})
    work_order = await client.post("/api/v1/work-orders", json={"title": "坏输入工单"})
    interaction = await client.post("/api/v1/interactions", json={"channel": "phone"})
    for made in (customer, work_order, interaction):
        assert made.status_code in (200, 201), made.text
    client.extra |= {  # type: ignore[attr-defined]
        "customer_id": customer.json()["id"],
        "work_order_id": work_order.json()["id"],
        "interaction_id": interaction.json()["id"],
    }
    yield client
    await client.aclose()


async def counts(app) -> dict[str, int]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        return {model.__tablename__: await db.scalar(select(func.count()).select_from(model)) for model in COUNTED}


def assert_error_shape(response: httpx.Response) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "details"} <= set(body["error"]), body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"]


# (method, path, valid body, text fields to spoil). Paths may use {team_id}, {skill_id}, {user_id},
# {customer_id}, {work_order_id}, {interaction_id}.
TEXT_FIELDS = [
    (
        "POST",
        "/api/v1/users",
        lambda: {
            "username": unique("nu"),
            "display_name": "N",
            "roles": ["agent"],
            "password": "long-enough-pass",
            "email": f"{unique()}@x.test",
        },
        ["username", "display_name", "email", "password"],
    ),
    ("PATCH", "/api/v1/users/{user_id}", lambda: {"display_name": "N"}, ["display_name", "email", "time_zone"]),
    ("PATCH", "/api/v1/me", lambda: {"display_name": "Admin"}, ["display_name", "time_zone"]),
    ("POST", "/api/v1/teams", lambda: {"name": unique("t"), "description": "d"}, ["name", "description"]),
    ("PATCH", "/api/v1/teams/{team_id}", lambda: {"description": "d"}, ["name", "description"]),
    ("POST", "/api/v1/skills", lambda: {"name": unique("s"), "description": "d"}, ["name", "description"]),
    ("PATCH", "/api/v1/skills/{skill_id}", lambda: {"description": "d"}, ["name", "description"]),
    ("POST", "/api/v1/me/tokens", lambda: {"name": "t", "scopes": ["team:read"]}, ["name"]),
    ("PUT", "/api/v1/users/{user_id}/skills", lambda: {"skills": [], "languages": ["zh-CN"]}, []),
    ("POST", "/api/v1/auth/password-reset", lambda: {"login": "nobody"}, ["login"]),
    (
        "POST",
        "/api/v1/auth/password-reset/confirm",
        lambda: {"token": "t", "new_password": "long-enough-pass"},
        ["token", "new_password"],
    ),
]
WEEKDAYS = {str(day): [["09:00", "18:00"]] for day in range(5)}
TEXT_FIELDS += [  # the service desk
    ("POST", "/api/v1/customers", lambda: {"display_name": "客户"}, ["display_name", "external_id", "language"]),
    ("PATCH", "/api/v1/customers/{customer_id}", lambda: {"display_name": "客户"}, ["display_name"]),
    ("POST", "/api/v1/customers/{customer_id}/notes", lambda: {"body": "备注"}, ["body"]),
    (
        "POST",
        "/api/v1/customers/{customer_id}/identities",
        lambda: {"kind": "email", "value": f"{unique()}@x.test"},
        ["value", "label"],
    ),
    ("POST", "/api/v1/organisations", lambda: {"name": unique("org")}, ["name", "external_id"]),
    ("POST", "/api/v1/work-orders", lambda: {"title": "工单"}, ["title", "description"]),
    ("PATCH", "/api/v1/work-orders/{work_order_id}", lambda: {"title": "工单"}, ["title", "description"]),
    ("POST", "/api/v1/work-orders/{work_order_id}/comments", lambda: {"body": "回复"}, ["body"]),
    ("POST", "/api/v1/interactions", lambda: {"channel": "chat"}, ["subject", "external_id", "queue"]),
    ("PATCH", "/api/v1/interactions/{interaction_id}", lambda: {"summary": "小结"}, ["summary", "subject"]),
    ("POST", "/api/v1/contact-reasons", lambda: {"code": unique("r"), "name": "原因"}, ["code", "name"]),
    (
        "POST",
        "/api/v1/business-calendars",
        lambda: {"name": unique("cal"), "time_zone": "Asia/Shanghai", "weekly_hours": WEEKDAYS},
        ["name", "time_zone"],
    ),
    (  # inactive: a policy for every work order would change other tests' clocks (one database per session)
        "POST",
        "/api/v1/sla-policies",
        lambda: {"name": unique("sla"), "first_response_seconds": 3600, "active": False},
        ["name"],
    ),
    ("POST", "/api/v1/macros", lambda: {"name": unique("m"), "body": "您好"}, ["name", "body"]),
    ("POST", "/api/v1/saved-views", lambda: {"name": unique("v")}, ["name"]),
    ("POST", "/api/v1/work-order-fields", lambda: {"key": unique("f"), "label": "字段"}, ["key", "label"]),
]
TEXT_FIELDS += [  # routing
    (
        "POST",
        "/api/v1/routing/queues",
        lambda: {"code": unique("rq"), "name": "队列", "channel": "chat"},
        ["code", "name"],
    ),
    ("POST", "/api/v1/routing/capacity-profiles", lambda: {"name": unique("cap")}, ["name"]),
]
CASES = [(m, p, body, field) for m, p, body, fields in TEXT_FIELDS for field in fields]


@pytest.mark.parametrize("naughty", NAUGHTY, ids=ids(NAUGHTY))
@pytest.mark.parametrize(("method", "path", "body", "field"), CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES])
async def test_naughty_strings_in_every_text_field(app, admin_client, method, path, body, field, naughty) -> None:
    before = await counts(app)
    payload = {**body(), field: naughty}
    url = path.format(**admin_client.extra)
    response = await admin_client.request(
        method, url, content=json.dumps(payload), headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert_error_shape(response)
        after = await counts(app)
        # A refused request writes nothing at all, audit entries included.
        assert after == before, f"{method} {path} {field}: refused but wrote {before} -> {after}"
    elif method in ("POST", "PATCH") and "password" not in field and field != "email" and naughty.strip():
        stored = response.json()
        if field in stored:  # accepted text is stored exactly, not mangled
            assert stored[field] == naughty


async def test_accepted_markup_is_escaped_on_pages(app, admin_client) -> None:
    name = "<script>alert('x')</script>"
    created = await admin_client.post("/api/v1/teams", json={"name": unique("t") + name})
    assert created.status_code == 201
    page = await admin_client.get("/admin/teams", headers={"accept": "text/html"})
    assert "<script>alert('x')</script>" not in page.text
    assert "&lt;script&gt;alert(" in page.text


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", "malformed_json"),
        (b'{"name": "x",}', "malformed_json"),
        (b'{"name": "\xff\xfe"}', "malformed_json"),  # invalid UTF-8
        (b"\xef\xbb\xbf", "malformed_json"),
        (b"[]", "invalid"),
        (b"null", "invalid"),
        (b'"a string"', "invalid"),
        (b'{"name": 5}', "invalid"),
        (b'{"name": "ok", "unknown": 1}', "invalid"),
        (b'{"name": {"$gt": ""}}', "invalid"),
    ],
)
async def test_malformed_bodies(app, admin_client, raw: bytes, code: str) -> None:
    before = await counts(app)
    response = await admin_client.post("/api/v1/teams", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert_error_shape(response)
    assert response.json()["error"]["code"] == code
    assert await counts(app) == before


async def test_unknown_fields_are_named_in_the_error(admin_client) -> None:
    response = await admin_client.post("/api/v1/skills", json={"name": unique("s"), "colour": "red"})
    assert response.status_code == 422
    assert any(d["loc"][-1] == "colour" for d in response.json()["error"]["details"])


async def test_oversize_body_is_refused_with_413(app, admin_client) -> None:
    limit = app.state.settings.max_body_bytes
    before = await counts(app)
    big = json.dumps({"name": "t", "description": "x" * (limit + 10)})
    response = await admin_client.post("/api/v1/teams", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert_error_shape(response)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"name": "t", "description": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    streamed = await admin_client.post("/api/v1/teams", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert await counts(app) == before


async def test_bad_query_and_path_parameters(admin_client) -> None:
    for url in (
        "/api/v1/users?limit=0",
        "/api/v1/users?limit=abc",
        "/api/v1/users/abc",
        "/api/v1/users?after_id=-1",
        "/api/v1/users/99999999999999999999999",
        "/api/v1/users?role=emperor",
        "/api/v1/audit?before_id=0",
    ):
        response = await admin_client.get(url)
        assert 400 <= response.status_code < 500, url
        assert_error_shape(response)
    assert (await admin_client.get("/api/v1/users?q=%FF%FE")).status_code < 500
    assert (await admin_client.get("/api/v1/users/1%00")).status_code < 500
    # NUL and control characters in free-text query parameters: refused before any database sees them.
    for url in (
        "/api/v1/users?q=a%00b",
        "/api/v1/audit?action=%00",
        "/api/v1/kb/articles?title=%00",
        "/api/v1/kb/search?q=%00",
        "/api/v1/kb/articles?language=x%1b",
        "/api/v1/kb/search?q=a&tag=%00",
    ):
        response = await admin_client.get(url)
        assert response.status_code == 422, url
        assert_error_shape(response)


async def test_wrong_content_type_and_method(admin_client) -> None:
    form = await admin_client.post("/api/v1/teams", data={"name": "x"})
    assert form.status_code in (400, 415, 422)
    assert_error_shape(form)
    wrong_method = await admin_client.put("/api/v1/teams")
    assert wrong_method.status_code == 405
    assert_error_shape(wrong_method)
    missing = await admin_client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert_error_shape(missing)


async def test_invalid_utf8_in_forms_is_refused_cleanly(app, admin_client) -> None:
    before = await counts(app)
    response = await admin_client.post(
        "/admin/skills",
        content=b"name=%FF%FEbad&description=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code < 500
    raw = await admin_client.post(
        "/admin/skills",
        content=b"name=\xff\xfe&description=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert raw.status_code < 500
    if response.status_code >= 400 and raw.status_code >= 400:
        assert await counts(app) == before


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("POST", "/api/v1/routing/queues", {"code": "rq-bad", "name": "q", "channel": "chat", "priority": 2**70}),
        ("POST", "/api/v1/routing/queues", {"code": "rq-bad", "name": "q", "channel": "chat", "bullseye": {"$gt": 1}}),
        ("POST", "/api/v1/routing/queues", {"code": "rq-bad", "name": "q", "channel": "chat", "team_id": 2**63}),
        ("POST", "/api/v1/routing/queues", {"code": "rq-bad", "name": "q", "channel": "chat", "skills": [{}]}),
        ("POST", "/api/v1/routing/capacity-profiles", {"name": "c", "chat": -1}),
        ("PUT", "/api/v1/routing/capacity-assignments", {"user_id": "{user_id}", "profile_id": 2**63}),
        ("PUT", "/api/v1/routing/agents/{user_id}/queues", {"add": [0]}),
        ("PUT", "/api/v1/routing/presence/me", {"presence": "asleep"}),
        ("POST", "/api/v1/routing/entries/{interaction_id}/move", {"queue_id": "one"}),
        ("PATCH", "/api/v1/routing/entries/{interaction_id}", {"priority": 1e9}),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("/") else None,
)
async def test_routing_bad_values(app, admin_client, method: str, path: str, payload: dict) -> None:
    before = await counts(app)
    body = json.loads(json.dumps(payload).replace('"{user_id}"', str(admin_client.extra["user_id"])))
    response = await admin_client.request(method, path.format(**admin_client.extra), json=body)
    assert 400 <= response.status_code < 500, response.text[:500]
    assert_error_shape(response)
    assert await counts(app) == before


async def test_routing_bad_query_and_path_parameters(admin_client) -> None:
    for url in (
        "/api/v1/routing/entries?state=lost",
        "/api/v1/routing/entries?queue_id=0",
        "/api/v1/routing/entries?limit=1000",
        "/api/v1/routing/queues/abc",
        "/api/v1/routing/agents/99999999999999999999999/state-changes",
        "/api/v1/routing/entries/-1/position",
    ):
        response = await admin_client.get(url)
        assert 400 <= response.status_code < 500, url
        assert_error_shape(response)
