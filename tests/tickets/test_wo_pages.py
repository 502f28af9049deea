"""The work-order pages, used the way a browser uses them: HTML, forms posted with the page's CSRF token,
redirects after each step.

Two teams: an agent of team A never sees team B's restricted work order, in any tab, filter or by id.
Along the way: creating through the form (customer found by phone), replies and notes, status changes,
escalating to the back office and returning with an answer, saved views, keyset pages, merging and
linking, suggestions forwarded and answered, files, refusals that re-show the form and CSRF.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from wo_support import principal_with_teams

from conftest import Factory, login, unique
from kefu.customers.models import Customer, CustomerIdentity
from kefu.identity.models import User
from kefu.tickets import service
from kefu.tickets.schemas import WorkOrderCreate


@dataclass
class Person:
    user: User
    client: httpx.AsyncClient
    csrf: str = ""

    async def page(self, url: str, expect: int = 200, **params: object) -> str:
        response = await self.client.get(url, params=params or None)
        assert response.status_code == expect, f"{url}: {response.status_code} {response.text[:800]}"
        return response.text

    async def post(self, url: str, data: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        """A form post as the page sends it: the session's token in the form's csrf_token field."""
        return await self.client.post(url, data={"csrf_token": self.csrf, **(data or {})}, **kw)


def csrf_of(page: str) -> str:
    match = re.search(r'<input type="hidden" name="csrf_token" value="([^"]+)">', page)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def text_of(page: str) -> str:
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def section(page: str, element_id: str) -> str:
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}".*?</\1>', page, re.S)
    assert match, f"no #{element_id} on the page"
    return match.group(0)


async def listed(person: Person, **params: object) -> str:
    """The rows of a work-order list (not the filters, which echo what was typed)."""
    return section(await person.page("/work-orders", **params), "wo-list")


def redirected_id(response: httpx.Response, done: str) -> int:
    assert response.status_code == 303, response.text[:800]
    match = re.match(rf"^/work-orders/(\d+)\?done={done}$", response.headers["location"])
    assert match, response.headers["location"]
    return int(match.group(1))


@dataclass
class World:
    team_a: int
    team_b: int
    agent_a: Person
    agent_a2: Person
    agent_b: Person
    supervisor: Person
    km: Person
    customer_id: int
    phone: str


@pytest.fixture(scope="module")
async def world(app) -> AsyncIterator[World]:  # noqa: ANN001
    make = Factory(app)
    team_a, team_b = await make.team(), await make.team()
    users = {
        "agent_a": await make.user("agent", team_ids=(team_a,)),
        "agent_a2": await make.user("agent", team_ids=(team_a,)),
        "agent_b": await make.user("agent", team_ids=(team_b,)),
        "supervisor": await make.user("supervisor"),
        "km": await make.user("knowledge_manager"),
    }
    people: dict[str, Person] = {}
    for key, user in users.items():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50003))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver", headers={"Accept": "text/html"})
        await login(client, user)
        client.headers.pop("X-CSRF-Token")  # pages send the token in the form, like a browser
        people[key] = Person(user, client)
        people[key].csrf = csrf_of(await people[key].page("/profile"))
    phone = f"+86139{unique('')[-8:].rjust(8, '0')}"
    phone = "+86139" + "".join(c for c in unique("") if c.isdigit())[-8:].rjust(8, "1")
    async with app.state.session_factory() as db, db.begin():
        customer = Customer(display_name="李四 " + unique())
        db.add(customer)
        await db.flush()
        db.add(CustomerIdentity(customer_id=customer.id, kind="phone", value=phone))
        customer_id = customer.id
    yield World(team_a, team_b, customer_id=customer_id, phone=phone, **people)
    for person in people.values():
        await person.client.aclose()


async def make_work_order(app, person: Person, **fields: Any) -> int:  # noqa: ANN001
    body = WorkOrderCreate(**{"title": "工单 " + unique(), **fields})
    async with app.state.session_factory() as db, db.begin():
        return (await service.create_work_order(db, principal_with_teams(person.user), body)).id


# --- lists -----------------------------------------------------------------------------------------
async def test_lists_never_show_another_teams_restricted_work_order(app, world: World) -> None:  # noqa: ANN001
    secret_title = "B组机密投诉 " + unique()
    secret = await make_work_order(app, world.agent_b, title=secret_title, team_id=world.team_b, restricted=True)
    open_b_title = "B组普通 " + unique()
    await make_work_order(app, world.agent_b, title=open_b_title, team_id=world.team_b, tags=["账单"])
    mine_title = "A组我的 " + unique()
    await make_work_order(
        app, world.agent_a, title=mine_title, team_id=world.team_a, assignee_id=world.agent_a.user.id, priority="high"
    )
    agent = world.agent_a
    for view in ("mine", "team", "overdue", "escalated", "all-visible"):
        page = await agent.page("/work-orders", view=view)
        assert secret_title not in page, view
    everything = await agent.page("/work-orders", view="all-visible")
    assert open_b_title in everything and mine_title in everything
    assert mine_title in await agent.page("/work-orders", view="mine")
    assert open_b_title not in await agent.page("/work-orders", view="mine")
    team = await agent.page("/work-orders", view="team")
    assert mine_title in team and open_b_title not in team
    # Filters: by text (the secret's own words), by team, by tag, by status and priority.
    assert secret_title not in await listed(agent, view="all-visible", q=secret_title)
    assert 'colspan="9" class="muted"' in await listed(agent, view="all-visible", q=secret_title)  # "nothing here"
    by_team_b = await listed(agent, view="all-visible", team_id=world.team_b)
    assert secret_title not in by_team_b
    assert open_b_title in by_team_b and mine_title not in by_team_b
    tagged = await listed(agent, view="all-visible", tag="账单")
    assert open_b_title in tagged and mine_title not in tagged
    urgent = await listed(agent, view="all-visible", priority="high", status="new")
    assert mine_title in urgent and open_b_title not in urgent
    # By id: the same 404 as an id that does not exist.
    await agent.page(f"/work-orders/{secret}", expect=404)
    # Team B and the supervisor do see it.
    assert secret_title in await world.agent_b.page("/work-orders", view="team")
    assert secret_title in await listed(world.supervisor, view="all-visible", q=secret_title)
    # The page carries the keyboard shortcuts script and rows to move through.
    assert "/static/js/worklist.js" in everything and 'class="wo-row' in everything


async def test_bad_filters_are_shown_not_crashed(world: World) -> None:
    page = await world.agent_a.page("/work-orders", expect=422, view="all-visible", priority="extreme")
    assert 'class="errors"' in page
    await world.agent_a.page("/work-orders", expect=422, view="all-visible", after="bm90LWEtY3Vyc29y")
    await world.agent_a.page("/work-orders", expect=422, view="all-visible", team_id="abc")


async def test_next_page_is_a_keyset_cursor(app, world: World) -> None:  # noqa: ANN001
    marker = "翻页 " + unique()
    for n in range(52):
        await make_work_order(app, world.agent_a, title=f"{marker} {n:02d}", team_id=world.team_a)
    first = await world.agent_a.page("/work-orders", view="all-visible", q=marker)
    assert section(first, "wo-list").count(marker) == 50
    match = re.search(r'id="wo-next"', first)
    assert match
    next_url = html_lib.unescape(re.search(r'href="([^"]+)" id="wo-next"', first).group(1))
    second = await world.agent_a.page(next_url)
    assert section(second, "wo-list").count(marker) == 2 and 'id="wo-next"' not in second


async def test_saved_views_save_pick_delete(world: World) -> None:
    agent = world.agent_a
    name = "我的紧急 " + unique()
    response = await agent.post(
        "/work-orders/views",
        {
            "name": name,
            "view": "team",
            "priority": "urgent",
            "q": "宽带",
            "status": "open",
            "type": "",
            "team_id": "",
            "tag": "发票",
        },
    )
    assert response.status_code == 303, response.text[:500]
    page = await agent.page(response.headers["location"])
    views = section(page, "wo-views")
    assert name in views
    link = html_lib.unescape(re.search(rf'<a href="([^"]+)"[^>]*>{re.escape(name)}</a>', views).group(1))
    assert "priority=urgent" in link and "view=team" in link and "status=open" in link and "type=" not in link
    picked = await agent.page(link)
    assert 'aria-current="true">' + name in picked
    # The same name again is refused on the list, which stays usable.
    again = await agent.post("/work-orders/views", {"name": name, "view": "team", "priority": "urgent"})
    assert again.status_code == 409 and 'class="errors"' in again.text
    # Nameless: refused.
    assert (await agent.post("/work-orders/views", {"name": "", "view": "team"})).status_code == 422
    view_id = int(re.search(r'action="/work-orders/views/(\d+)/delete"', views).group(1))
    # Another user cannot delete it (not theirs: 404).
    assert (await world.agent_b.post(f"/work-orders/views/{view_id}/delete")).status_code == 404
    deleted = await agent.post(f"/work-orders/views/{view_id}/delete")
    assert deleted.status_code == 303
    assert name not in section(await agent.page("/work-orders"), "wo-views")


# --- creating ----------------------------------------------------------------------------------------
async def test_create_through_the_form_with_a_customer_found_by_phone(world: World) -> None:
    agent = world.agent_a
    national = world.phone.removeprefix("+86")
    typed = f"{national[:3]}-{national[3:7]} {national[7:]}"
    form = await agent.page("/work-orders/new", customer_q=typed)
    choices = section(form, "wo-customer-choices")
    assert f'value="{world.customer_id}"' in choices
    title = "宽带无法连接 " + unique()
    response = await agent.post(
        "/work-orders",
        {
            "customer_id": world.customer_id,
            "title": title,
            "description": "客户说<b>灯</b>不亮",
            "type": "fault",
            "priority": "high",
            "team_id": world.team_a,
            "assign_to_me": "1",
            "tags": "宽带，故障",
        },
    )
    work_order_id = redirected_id(response, "created")
    page = await agent.page(f"/work-orders/{work_order_id}?done=created")
    assert title in page and "&lt;b&gt;灯&lt;/b&gt;" in page  # what users typed is escaped
    assert "宽带" in section(page, "wo-tags") and "故障" in section(page, "wo-tags")
    assert agent.user.display_name in section(page, "wo-assignee")
    assert f'href="/customers/{world.customer_id}"' in page
    assert title in await agent.page("/work-orders", view="mine")


async def test_bad_input_reshows_the_form_with_what_was_typed(world: World) -> None:
    agent = world.agent_a
    response = await agent.post("/work-orders", {"title": "", "description": "保留这段描述", "type": "fault"})
    assert response.status_code == 422
    assert 'class="errors"' in response.text and "保留这段描述" in response.text
    bad_type = await agent.post("/work-orders", {"title": "x", "type": "nonsense"})
    assert bad_type.status_code == 422 and 'id="wo-create-form"' in bad_type.text
    no_customer = await agent.post("/work-orders", {"title": "x", "customer_id": "999999999"})
    assert no_customer.status_code == 422 and 'class="errors"' in no_customer.text


async def test_writes_without_the_csrf_token_are_refused(app, world: World) -> None:  # noqa: ANN001
    agent = world.agent_a
    work_order_id = await make_work_order(app, agent, team_id=world.team_a)
    for url, data in (
        ("/work-orders", {"title": "无令牌"}),
        (f"/work-orders/{work_order_id}/comments", {"body": "x", "visibility": "internal"}),
        (f"/work-orders/{work_order_id}/status", {"status": "open"}),
        ("/work-orders/views", {"name": "x"}),
    ):
        response = await agent.client.post(url, data=data)
        assert response.status_code == 403, url
        wrong = await agent.client.post(url, data={**data, "csrf_token": "forged"})
        assert wrong.status_code == 403, url
    assert "无令牌" not in await listed(agent, view="all-visible")
    assert "wo-comment-internal" not in section(await agent.page(f"/work-orders/{work_order_id}"), "wo-conversation")


# --- working the work order --------------------------------------------------------------------------
async def test_replies_notes_and_status_changes(app, world: World) -> None:  # noqa: ANN001
    agent = world.agent_a
    work_order_id = await make_work_order(app, agent, team_id=world.team_a)
    url = f"/work-orders/{work_order_id}"
    note = await agent.post(f"{url}/comments", {"body": "内部备注：先查账单", "visibility": "internal"})
    assert redirected_id(note, "commented") == work_order_id
    reply = await agent.post(f"{url}/comments", {"body": "您好，已为您处理", "visibility": "public"})
    assert reply.status_code == 303
    page = await agent.page(url)
    conversation = section(page, "wo-conversation")
    assert "内部备注：先查账单" in conversation and "您好，已为您处理" in conversation
    assert conversation.count("wo-comment-internal") == 1
    empty = await agent.post(f"{url}/comments", {"body": "  ", "visibility": "public"})
    assert empty.status_code == 422 and 'class="errors"' in empty.text

    assert (await agent.post(f"{url}/status", {"status": "pending", "reason": "等客户回复"})).status_code == 303
    page = await agent.page(url)
    assert "wo-status-pending" in section(page, "wo")
    # A transition the state machine refuses: the page again, with the reason, nothing changed.
    refused = await agent.post(f"{url}/status", {"status": "reopened"})
    assert refused.status_code == 422 and 'class="errors"' in refused.text
    unknown = await agent.post(f"{url}/status", {"status": "vanished"})
    assert unknown.status_code == 422
    assert (await agent.post(f"{url}/status", {"status": "resolved"})).status_code == 303
    history = section(await agent.page(url), "wo-history")
    assert history.count("<tr>") >= 4  # created, two comments, two status changes (+ header row)

    # Fields and assignment.
    saved = await agent.post(f"{url}/fields", {"type": "complaint", "priority": "urgent"})
    assert saved.status_code == 303
    assigned = await agent.post(f"{url}/assign", {"team_id": world.team_a, "assignee_id": world.agent_a2.user.id})
    assert assigned.status_code == 303
    page = await agent.page(url)
    assert world.agent_a2.user.display_name in section(page, "wo-assignee")
    bad_assignee = await agent.post(f"{url}/assign", {"team_id": "", "assignee_id": "99999999"})
    assert bad_assignee.status_code == 422


async def test_tags_files_links_and_merges(app, world: World) -> None:  # noqa: ANN001
    agent = world.agent_a
    survivor = await make_work_order(app, agent, team_id=world.team_a)
    duplicate = await make_work_order(app, agent, team_id=world.team_a)
    related = await make_work_order(app, agent, team_id=world.team_a)
    url = f"/work-orders/{survivor}"
    assert (await agent.post(f"{url}/tags", {"tags": "发票, 退款"})).status_code == 303
    assert (await agent.post(f"{url}/tags", {"tags": "退款"})).status_code == 303
    tags = section(await agent.page(url), "wo-tags")
    assert "退款" in tags and "发票" not in tags

    uploaded = await agent.post(f"{url}/attachments", files={"file": ("发票.pdf", b"%PDF-1.4 test", "application/pdf")})
    assert uploaded.status_code == 303, uploaded.text[:500]
    files = section(await agent.page(url), "wo-attachments")
    attachment_id = int(re.search(rf"/api/v1/work-orders/{survivor}/attachments/(\d+)", files).group(1))
    download = await agent.client.get(f"/api/v1/work-orders/{survivor}/attachments/{attachment_id}")
    assert download.status_code == 200 and download.content == b"%PDF-1.4 test"
    assert "attachment" in download.headers["content-disposition"]
    nothing = await agent.post(f"{url}/attachments")
    assert nothing.status_code == 422

    assert (await agent.post(f"{url}/links", {"other_id": f"WO{related:08d}"})).status_code == 303
    links = section(await agent.page(url), "wo-links")
    assert f"/work-orders/{related}" in links
    assert (await agent.post(f"{url}/links", {"other_id": "abc"})).status_code == 422

    merged = await agent.post(f"{url}/merge", {"duplicate_id": str(duplicate)})
    assert redirected_id(merged, "merged") == survivor
    gone = await agent.page(f"/work-orders/{duplicate}")
    assert 'id="wo-merged-into"' in gone and f'href="/work-orders/{survivor}"' in gone
    again = await agent.post(f"{url}/merge", {"duplicate_id": str(duplicate)})
    assert again.status_code == 422 and 'class="errors"' in again.text
    # A restricted work order of another team cannot be linked or merged by id: it is not found.
    secret = await make_work_order(app, world.agent_b, team_id=world.team_b, restricted=True)
    assert (await agent.post(f"{url}/links", {"other_id": str(secret)})).status_code == 404


async def test_escalate_to_the_back_office_and_return_with_the_answer(app, world: World) -> None:  # noqa: ANN001
    agent, back_office = world.agent_a, world.agent_b
    work_order_id = await make_work_order(app, agent, team_id=world.team_a, title="需要后台核实 " + unique())
    url = f"/work-orders/{work_order_id}"
    bad = await agent.post(f"{url}/escalate", {"to_team_id": world.team_b, "deadline_days": "0", "note": "太短"})
    assert bad.status_code == 422 and "太短" in bad.text  # re-shown with what was typed
    own_team = await agent.post(f"{url}/escalate", {"to_team_id": world.team_a, "deadline_days": "2"})
    assert own_team.status_code == 422 and 'class="errors"' in own_team.text
    sent = await agent.post(
        f"{url}/escalate",
        {"to_team_id": world.team_b, "deadline_days": "2", "business_days": "1", "note": "请核实账单"},
    )
    assert redirected_id(sent, "escalated") == work_order_id
    page = await agent.page(url)
    assert "wo-status-escalated" in section(page, "wo") and "请核实账单" in section(page, "wo-escalations")
    assert "wo-return-form" not in page  # the front line does not return its own escalation
    assert "需要后台核实" in await agent.page("/work-orders", view="escalated")

    queue = await back_office.page("/escalations")
    assert f"/work-orders/{work_order_id}" in section(queue, "wo-escalation-list")
    assert f"/work-orders/{work_order_id}" not in await agent.page("/escalations")
    back_page = await back_office.page(url)
    escalation_id = int(re.search(r'action="/escalations/(\d+)/return"', back_page).group(1))
    empty = await back_office.post(
        f"/escalations/{escalation_id}/return", {"answer": "", "work_order_id": work_order_id}
    )
    assert empty.status_code == 422
    # The front-line agent may not return it: refused on the work order page.
    refused = await agent.post(
        f"/escalations/{escalation_id}/return", {"answer": "自己退回", "work_order_id": work_order_id}
    )
    assert refused.status_code == 403 and 'class="errors"' in refused.text
    returned = await back_office.post(
        f"/escalations/{escalation_id}/return", {"answer": "账单无误，已说明", "work_order_id": work_order_id}
    )
    assert redirected_id(returned, "returned") == work_order_id
    page = await agent.page(url)
    assert "wo-status-open" in section(page, "wo") and "账单无误，已说明" in section(page, "wo-escalations")
    assert f"/work-orders/{work_order_id}" not in await back_office.page("/escalations")


async def test_suggestions_are_forwarded_and_answered(app, world: World) -> None:  # noqa: ANN001
    agent, km = world.agent_a, world.km
    work_order_id = await make_work_order(app, agent, team_id=world.team_a, type="suggestion", title="建议增加夜间客服")
    url = f"/work-orders/{work_order_id}"
    page = await agent.page(url)
    assert f'value="{km.user.id}"' in section(page, "wo-forward-form")
    forwarded = await agent.post(f"{url}/forward", {"to_user_id": km.user.id, "question": "可行吗？"})
    assert redirected_id(forwarded, "forwarded") == work_order_id
    assert km.user.display_name in section(await agent.page(url), "wo-forwards")

    inbox = await km.page("/suggestions")
    assert "建议增加夜间客服" in inbox and "可行吗？" in inbox
    forward_id = int(re.search(r'action="/suggestions/(\d+)/answer"', inbox).group(1))
    empty = await km.post(f"/suggestions/{forward_id}/answer", {"answer": "", "forward_id": forward_id})
    assert empty.status_code == 422 and 'class="errors"' in empty.text
    # Someone else's forward: not found.
    assert (await agent.post(f"/suggestions/{forward_id}/answer", {"answer": "我来答"})).status_code == 404
    answered = await km.post(f"/suggestions/{forward_id}/answer", {"answer": "下季度上线夜间客服"})
    assert answered.status_code == 303 and answered.headers["location"] == "/suggestions?done=answered"
    assert "建议增加夜间客服" not in await km.page("/suggestions")
    assert "下季度上线夜间客服" in await km.page("/suggestions", answered="1")
    # The answer went back to the customer as a public reply.
    conversation = section(await agent.page(url), "wo-conversation")
    assert "下季度上线夜间客服" in conversation
    twice = await km.post(f"/suggestions/{forward_id}/answer", {"answer": "再答一次"})
    assert twice.status_code == 409


async def test_macros_apply_as_a_reply(app, world: World) -> None:  # noqa: ANN001
    from kefu.tickets import macros

    agent = world.agent_a
    work_order_id = await make_work_order(app, agent, team_id=world.team_a)
    async with app.state.session_factory() as db, db.begin():
        macro = await macros.create_macro(
            db,
            principal_with_teams(agent.user),
            name="致歉 " + unique(),
            body="您好，工单 {{work_order.number}} 已受理。",
            scope="personal",
            team_id=None,
            actions={"add_tags": ["已致歉"]},
        )
    url = f"/work-orders/{work_order_id}"
    assert f'value="{macro.id}"' in section(await agent.page(url), "wo-macro-form")
    applied = await agent.post(f"{url}/macro", {"macro_id": macro.id})
    assert redirected_id(applied, "macro") == work_order_id
    page = await agent.page(url)
    assert f"WO{work_order_id:08d} 已受理" in section(page, "wo-conversation") and "已致歉" in section(page, "wo-tags")
    # Another agent's personal macro is not theirs to apply.
    other = await world.agent_a2.post(f"{url}/macro", {"macro_id": macro.id})
    assert other.status_code == 404


async def test_customers_cannot_use_the_work_order_pages(app, world: World) -> None:  # noqa: ANN001
    make = Factory(app)
    customer = await make.user("customer")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers={"Accept": "text/html"}
    ) as client:
        await login(client, customer)
        assert (await client.get("/work-orders")).status_code == 403
        assert (await client.get("/escalations")).status_code == 403
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as anonymous:
        response = await anonymous.get("/work-orders", headers={"Accept": "text/html"})
        assert response.status_code == 303 and response.headers["location"].startswith("/login")


async def test_due_times_are_highlighted_in_the_users_zone(app, world: World) -> None:  # noqa: ANN001
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from kefu.db.base import utcnow
    from kefu.tickets.models import WorkOrder

    agent = world.agent_a
    late_id = await make_work_order(app, agent, team_id=world.team_a, title="逾期 " + unique())
    soon_id = await make_work_order(app, agent, team_id=world.team_a, title="将到期 " + unique())
    now = utcnow().replace(second=0, microsecond=0)
    async with app.state.session_factory() as db, db.begin():  # due times as the SLA clocks would have set them
        (await db.get(WorkOrder, late_id)).resolution_due_at = now - timedelta(hours=2)
        (await db.get(WorkOrder, soon_id)).resolution_due_at = now + timedelta(minutes=30)
    rows = await listed(agent, view="all-visible")
    late_row = re.search(rf'<tr class="([^"]+)" data-href="/work-orders/{late_id}"', rows).group(1)
    soon_row = re.search(rf'<tr class="([^"]+)" data-href="/work-orders/{soon_id}"', rows).group(1)
    assert "wo-row-overdue" in late_row and "wo-row-warning" in soon_row
    overdue = await listed(agent, view="overdue")
    assert f"/work-orders/{late_id}" in overdue and f"/work-orders/{soon_id}" not in overdue
    shanghai = (now - timedelta(hours=2)).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")
    page = await agent.page(f"/work-orders/{late_id}")
    sla_box = section(page, "wo-sla")
    assert "wo-due-overdue" in sla_box and shanghai in sla_box and "Asia/Shanghai" in sla_box
    assert 'id="wo-sla-breached"' in sla_box
