"""The knowledge pages around articles, through the browser's path (HTML, forms with their CSRF token):
feedback inbox and mail-like thread (opened from the article form, replied, accepted with a link to the
draft, rejected only with a reason), the board with acknowledgements and the unread report, the points
leaderboard, training collections and the search-gap report, and who is refused where."""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conftest import Factory, login, unique
from kefu.core.policy import Principal
from kefu.identity.models import User
from kefu.knowledge import board, board_pages, points, service
from kefu.knowledge.index import log_search
from kefu.web.pages import templates

ROLES = {
    "admin": "admin",
    "km": "knowledge_manager",
    "supervisor": "supervisor",
    "agent": "agent",
    "agent2": "agent",
    "customer": "customer",
}
HTML = {"accept": "text/html"}


def mount_once(app, router) -> None:  # noqa: ANN001
    """Mount a router on the test app unless app.py already includes it (then this does nothing)."""
    paths = {(route.path, frozenset(getattr(route, "methods", ()) or ())) for route in router.routes}
    for route in app.routes:
        if (getattr(route, "path", None), frozenset(getattr(route, "methods", ()) or ())) in paths:
            return
    app.include_router(router)


def principal_of(user: User) -> Principal:
    return Principal(user_id=user.id, username=user.username, roles=user.role_names, via="session")


@pytest.fixture(scope="module")
async def world(app) -> AsyncIterator[dict[str, Any]]:  # noqa: ANN001
    mount_once(app, board_pages.router)
    make = Factory(app)
    # English pages: the assertions read the words the templates write.
    users = {key: await make.user(role, locale="en") for key, role in ROLES.items()}
    clients = {}
    for key, user in users.items():
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=HTML)
        await login(client, user)
        # Pages post their forms with the token the form carries, never with the API's header.
        client.headers.pop("X-CSRF-Token")
        clients[key] = client
    anonymous = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=HTML)
    yield {"users": users, "c": clients, "anonymous": anonymous, "make": make}
    for client in (*clients.values(), anonymous):
        await client.aclose()


# --- helpers -------------------------------------------------------------------------------------
def form_fields(page: str, action: str) -> dict[str, str]:
    """The hidden and prefilled fields of the form posting to ``action`` (the CSRF token among them)."""
    match = re.search(rf'<form[^>]*action="{re.escape(action)}"[^>]*>(.*?)</form>', page, re.S)
    assert match, f"no form posting to {action}"
    fields = {
        name: htmllib.unescape(value)
        for name, value in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', match.group(1))
    }
    assert fields.get("csrf_token"), f"the form posting to {action} carries no csrf_token"
    return fields


async def get_ok(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("text/html")
    return response.text


async def submit(client: httpx.AsyncClient, page_url: str, action: str, **data: Any) -> httpx.Response:
    """Open ``page_url``, take the form posting to ``action`` as the browser would, fill in ``data``, send it."""
    fields = form_fields(await get_ok(client, page_url), action)
    return await client.post(action, data={**fields, **data})


async def article(
    app,  # noqa: ANN001
    by: User,
    *,
    kind: str = "faq",
    title: str = "信用卡挂失怎么办？",
    case_fields: dict[str, str] | None = None,
    owner: User | None = None,
) -> int:
    """A published internal article written through the service by ``by``, a knowledge manager."""
    p = principal_of(by)
    async with app.state.session_factory() as db, db.begin():
        view = await service.create_article(
            db,
            p,
            service.Content(title=title, body_markdown="拨打 **95588** 挂失。", case_fields=case_fields or {}),
            service.Placement(kind=kind, owner_id=owner.id if owner else None),
        )
        await service.publish(db, p, app.state.settings, view.article.id)
    return view.article.id


async def open_thread_from_form(
    client: httpx.AsyncClient, article_id: int, *, kind: str, subject: str, body: str
) -> tuple[int, str]:
    """Raise feedback the way the article page does: the shared form, refused once (no subject, so the
    form is shown again on its own page), then sent. Returns the thread id and the thread page."""
    action = f"/kb/articles/{article_id}/feedback"
    first = await client.post(action, data={"csrf_token": csrf_of(await get_ok(client, "/kb/feedback")), "kind": kind})
    assert first.status_code == 422, first.text[:500]
    assert 'id="kb-feedback-form"' in first.text and "subject" in first.text
    fields = form_fields(first.text, action)
    sent = await client.post(action, data={**fields, "kind": kind, "subject": subject, "body": body})
    assert sent.status_code == 303, sent.text[:500]
    location = sent.headers["location"]
    match = re.fullmatch(r"/kb/feedback/(\d+)\?done=opened", location)
    assert match, location
    return int(match.group(1)), await get_ok(client, location)


def csrf_of(page: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert match
    return match.group(1)


def text_of(page: str) -> str:
    """The page's visible text, tags dropped and whitespace folded (for phrases split over lines)."""
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", page)).split())


# --- who is refused where ------------------------------------------------------------------------
async def test_customers_strangers_and_agents_are_refused_where_they_should_be(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    tid, _ = await open_thread_from_form(c["agent"], aid, kind="question", subject="补卡多久？", body="客户问。")
    async with app.state.session_factory() as db, db.begin():
        ann = await board.create_announcement(db, principal_of(u["km"]), title="重要通知", requires_ack=True)
        coll = (await board.create_collection(db, principal_of(u["km"]), name=unique("培训"))).collection

    token = csrf_of(await get_ok(c["customer"], "/profile"))
    for url in ("/kb/feedback", "/kb/board", "/kb/announcements/new", "/kb/points", "/kb/training", "/kb/gaps"):
        assert (await c["customer"].get(url)).status_code == 403, url
    # By-id reads answer 404 to those who may not read (ids of hidden objects are not confirmed).
    assert (await c["customer"].get(f"/kb/feedback/{tid}")).status_code == 404
    assert (await c["customer"].get(f"/kb/training/{coll.id}")).status_code == 404
    assert (await c["customer"].get(f"/kb/announcements/{ann.id}/unread")).status_code == 403
    for action in (
        f"/kb/articles/{aid}/feedback",
        f"/kb/feedback/{tid}/reply",
        f"/kb/feedback/{tid}/accept",
        f"/kb/feedback/{tid}/reject",
        f"/kb/announcements/{ann.id}/ack",
        "/kb/announcements",
        "/kb/training",
        f"/kb/training/{coll.id}",
        f"/kb/training/{coll.id}/items",
    ):
        data = {"csrf_token": token, "kind": "question", "subject": "s", "body": "b", "reason": "r", "title": "t"}
        assert (await c["customer"].post(action, data=data)).status_code == 403, action

    # Strangers are sent to sign in.
    for url in ("/kb/feedback", f"/kb/feedback/{tid}", "/kb/board", "/kb/points", "/kb/training", "/kb/gaps"):
        response = await world["anonymous"].get(url)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next="), url

    # Agents: no accepting, no unread report, no gap report, no announcing, no curating.
    agent = c["agent"]
    token = csrf_of(await get_ok(agent, "/kb/board"))
    assert (await agent.post(f"/kb/feedback/{tid}/accept", data={"csrf_token": token})).status_code == 403
    assert (
        await agent.post(f"/kb/feedback/{tid}/reject", data={"csrf_token": token, "reason": "x"})
    ).status_code == 403
    assert (await agent.get(f"/kb/announcements/{ann.id}/unread")).status_code == 403
    assert (await agent.get("/kb/gaps")).status_code == 403
    assert (await agent.get("/kb/announcements/new")).status_code == 403
    assert (await agent.post("/kb/announcements", data={"csrf_token": token, "title": "x"})).status_code == 403
    assert (await agent.post("/kb/training", data={"csrf_token": token, "name": "x"})).status_code == 403
    assert (
        await agent.post(f"/kb/training/{coll.id}/items", data={"csrf_token": token, "article_ids": ""})
    ).status_code == 403

    # Another agent cannot learn the thread exists.
    assert (await c["agent2"].get(f"/kb/feedback/{tid}")).status_code == 404
    token2 = csrf_of(await get_ok(c["agent2"], "/kb/board"))
    assert (
        await c["agent2"].post(f"/kb/feedback/{tid}/reply", data={"csrf_token": token2, "body": "x"})
    ).status_code == 404
    assert f'data-thread-id="{tid}"' not in await get_ok(c["agent2"], "/kb/feedback")

    # Forms without the token, or with a forged one, are refused.
    assert (await agent.post(f"/kb/feedback/{tid}/reply", data={"body": "x"})).status_code == 403
    assert (
        await agent.post(f"/kb/feedback/{tid}/reply", data={"csrf_token": "forged", "body": "x"})
    ).status_code == 403
    # Nonsense ids and parameters are a 404/422 page, never a 500.
    assert (await agent.get("/kb/feedback/999999999")).status_code == 404
    assert (await agent.get("/kb/training/999999999")).status_code == 404
    assert (await agent.get("/kb/feedback/0")).status_code == 422
    assert (await c["km"].get("/kb/gaps", params={"days": "0"})).status_code == 422
    assert (await agent.get("/kb/board", params={"since_days": "abc"})).status_code == 422


# --- feedback ------------------------------------------------------------------------------------
async def test_thread_opened_from_the_form_replied_and_accepted_with_a_draft_link(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    tid, page = await open_thread_from_form(
        c["agent"], aid, kind="suggestion", subject="建议补充补卡时间", body="建议写明 **7 个工作日**。"
    )
    assert "Your feedback was sent." in page
    assert 'data-status="open"' in page and "Suggestion" in page
    assert "<strong>7 个工作日</strong>" in page  # the message as sanitized HTML
    assert f'href="/kb/articles/{aid}"' in page and "信用卡挂失怎么办？" in page
    assert u["agent"].display_name in page
    # The author may reply but not resolve; no draft yet.
    assert 'id="kb-reply-form"' in page and 'id="kb-accept-form"' not in page and 'id="kb-draft"' not in page

    # The knowledge manager finds it in the inbox (status filter), answers it, the author answers back.
    inbox = await get_ok(c["km"], "/kb/feedback?status=open")
    assert f'data-thread-id="{tid}"' in inbox and "Feedback inbox" in inbox
    assert f'data-thread-id="{tid}"' not in await get_ok(c["km"], "/kb/feedback?status=accepted")
    # The article's owner (the knowledge manager who wrote it) is the assignee.
    assert f'data-thread-id="{tid}"' in await get_ok(c["km"], "/kb/feedback?assignee=me")
    assert f'data-thread-id="{tid}"' not in await get_ok(c["km"], "/kb/feedback?assignee=pool")
    mine = await get_ok(c["agent"], "/kb/feedback")
    assert f'data-thread-id="{tid}"' in mine and "My feedback" in mine

    replied = await submit(c["km"], f"/kb/feedback/{tid}", f"/kb/feedback/{tid}/reply", body="好的，**已记录**。")
    assert replied.status_code == 303 and replied.headers["location"] == f"/kb/feedback/{tid}?done=replied"
    page = await get_ok(c["agent"], f"/kb/feedback/{tid}")
    assert 'data-status="answered"' in page
    messages = re.findall(r'<article class="card kb-message" id="message-(\d+)">(.*?)</article>', page, re.S)
    assert len(messages) == 2 and int(messages[0][0]) < int(messages[1][0])  # oldest first
    assert u["agent"].display_name in messages[0][1] and u["km"].display_name in messages[1][1]
    assert "<strong>已记录</strong>" in messages[1][1]
    again = await submit(c["agent"], f"/kb/feedback/{tid}", f"/kb/feedback/{tid}/reply", body="谢谢")
    assert again.status_code == 303
    assert 'data-status="open"' in await get_ok(c["agent"], f"/kb/feedback/{tid}")

    # Rejecting needs a reason: the page comes back with the message, nothing changed.
    refused = await submit(c["km"], f"/kb/feedback/{tid}", f"/kb/feedback/{tid}/reject", reason="  ")
    assert refused.status_code == 422 and 'role="alert"' in refused.text
    assert 'data-status="open"' in refused.text and 'id="kb-reject-form"' in refused.text

    accepted = await submit(c["km"], f"/kb/feedback/{tid}", f"/kb/feedback/{tid}/accept", reason="采纳，谢谢")
    assert accepted.status_code == 303 and accepted.headers["location"] == f"/kb/feedback/{tid}?done=accepted"
    page = await get_ok(c["km"], accepted.headers["location"])
    assert 'data-status="accepted"' in page and "Feedback accepted." in page
    assert f'id="kb-draft-link" href="/kb/articles/{aid}/edit"' in page
    assert "(version 2)" in text_of(page) and "采纳，谢谢" in page
    assert 'id="kb-reply-form"' not in page and 'id="kb-accept-form"' not in page
    # The author sees the outcome; not allowed to edit the draft, they get the article instead.
    page = await get_ok(c["agent"], f"/kb/feedback/{tid}")
    assert 'data-status="accepted"' in page and 'id="kb-draft"' in page and 'id="kb-draft-link"' not in page
    async with app.state.session_factory() as db:
        view = await service.get_article(db, principal_of(u["km"]), aid)
        assert view.working is not None and view.working.number == 2
        assert view.working.feedback_thread_id == tid

    # A closed thread refuses replies with the reason on the page (409), and can no longer be rejected.
    token = csrf_of(page)
    closed = await c["agent"].post(f"/kb/feedback/{tid}/reply", data={"csrf_token": token, "body": "再问"})
    assert closed.status_code == 409 and "open a new one" in closed.text
    token = csrf_of(await get_ok(c["km"], f"/kb/feedback/{tid}"))
    late = await c["km"].post(f"/kb/feedback/{tid}/reject", data={"csrf_token": token, "reason": "改主意"})
    assert late.status_code == 409 and 'data-status="accepted"' in late.text


async def test_rejection_and_questions(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    tid, _ = await open_thread_from_form(c["agent"], aid, kind="error", subject="电话号码错了", body="应为 95555")
    rejected = await submit(c["km"], f"/kb/feedback/{tid}", f"/kb/feedback/{tid}/reject", reason="号码无误")
    assert rejected.status_code == 303
    page = await get_ok(c["agent"], f"/kb/feedback/{tid}")
    assert 'data-status="rejected"' in page and "号码无误" in page and 'id="kb-draft"' not in page
    assert f'data-thread-id="{tid}"' in await get_ok(c["agent"], "/kb/feedback?status=rejected")

    # A question accepted is "answered well": no draft link.
    qid, _ = await open_thread_from_form(c["agent"], aid, kind="question", subject="要带身份证吗", body="?")
    ok = await submit(c["admin"], f"/kb/feedback/{qid}", f"/kb/feedback/{qid}/accept", reason="")
    assert ok.status_code == 303
    page = await get_ok(c["admin"], f"/kb/feedback/{qid}")
    assert 'data-status="accepted"' in page and 'id="kb-draft"' not in page

    # Feedback on an article the caller cannot see: 404; invalid kind: the form again with the reason.
    token = csrf_of(await get_ok(c["agent"], "/kb/feedback"))
    missing = await c["agent"].post(
        "/kb/articles/999999999/feedback", data={"csrf_token": token, "kind": "question", "subject": "s", "body": "b"}
    )
    assert missing.status_code == 404
    bad = await c["agent"].post(
        f"/kb/articles/{aid}/feedback", data={"csrf_token": token, "kind": "praise", "subject": "s", "body": "b"}
    )
    assert bad.status_code == 422 and 'id="kb-feedback-form"' in bad.text and 'value="s"' in bad.text


async def test_scripts_in_messages_are_neutralized_on_the_page(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    hostile = (
        "<script>alert('x')</script>\n\n"
        '<img src="x" onerror="alert(1)">\n\n'
        "[点我](javascript:alert(2))\n\n"
        '<a href="javascript:alert(3)">链接</a>'
    )
    tid, page = await open_thread_from_form(
        c["agent"], aid, kind="question", subject="<script>alert('s')</script>主题", body=hostile
    )
    await submit(c["km"], f"/kb/feedback/{tid}", f"/kb/feedback/{tid}/reply", body=hostile)
    for client in (c["agent"], c["km"]):
        for page in (await get_ok(client, f"/kb/feedback/{tid}"), await get_ok(client, "/kb/feedback")):
            lowered = page.lower()
            assert "<script>alert" not in lowered and "onerror" not in lowered
            assert not re.search(r"""(href|src)\s*=\s*["']?\s*javascript:""", lowered)
        assert "&lt;script&gt;alert(&#39;s&#39;)&lt;/script&gt;主题" in page  # the subject, escaped


async def test_article_feedback_context_and_fragments(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    mine, _ = await open_thread_from_form(c["agent"], aid, kind="question", subject="我的问题", body="一")
    theirs, _ = await open_thread_from_form(c["agent2"], aid, kind="error", subject="他的报错", body="二")
    async with app.state.session_factory() as db:
        agent_ctx = await board_pages.article_feedback_context(db, principal_of(u["agent"]), aid)
        km_ctx = await board_pages.article_feedback_context(db, principal_of(u["km"]), aid)
        customer_ctx = await board_pages.article_feedback_context(db, principal_of(u["customer"]), aid)
    assert [t["id"] for t in agent_ctx["feedback_threads"]] == [mine]
    assert [t["id"] for t in km_ctx["feedback_threads"]] == [theirs, mine]  # newest first
    assert agent_ctx["feedback_can_open"] is True
    assert customer_ctx == {"feedback_threads": [], "feedback_can_open": False}
    # An archived article takes no new feedback: the form is not offered (its threads still are).
    async with app.state.session_factory() as db, db.begin():
        await service.archive(db, principal_of(u["km"]), aid)
    async with app.state.session_factory() as db:
        archived_ctx = await board_pages.article_feedback_context(db, principal_of(u["agent"]), aid)
    assert archived_ctx["feedback_can_open"] is False and len(archived_ctx["feedback_threads"]) == 1

    # The fragments render on their own with what the article page has in its context.
    env = templates.env
    context = {"_": lambda s, **kw: s % kw if kw else s, "csrf_token": "tok-123", "article_id": aid, **km_ctx}
    threads_html = env.get_template("kb/_article_threads.html").render(context)
    assert f'href="/kb/feedback/{theirs}"' in threads_html and f'href="/kb/feedback/{mine}"' in threads_html
    assert "他的报错" in threads_html and u["agent2"].display_name in threads_html
    form_html = env.get_template("kb/_feedback_form.html").render(context)
    assert f'action="/kb/articles/{aid}/feedback"' in form_html and 'value="tok-123"' in form_html
    for kind in ("question", "error", "suggestion"):
        assert f'value="{kind}"' in form_html
    # An article page names the article "article", not "article_id": the form finds it either way.
    from types import SimpleNamespace

    by_article = {**context, "article": SimpleNamespace(id=aid)}
    del by_article["article_id"]
    assert f'action="/kb/articles/{aid}/feedback"' in env.get_template("kb/_feedback_form.html").render(by_article)
    hidden = env.get_template("kb/_feedback_form.html").render({**context, "feedback_can_open": False})
    assert "<form" not in hidden
    nothing = env.get_template("kb/_article_threads.html").render({**context, "feedback_threads": []})
    assert "No feedback on this article that you can see." in nothing


# --- board and announcements ---------------------------------------------------------------------
async def test_board_acknowledgement_and_unread_report(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"], title="挂失流程（公告链接）")
    changed = await article(app, u["km"], title="新版挂失流程")

    # The knowledge manager announces through the form (audience: agents; important).
    form = await get_ok(c["km"], "/kb/announcements/new")
    assert 'name="audience_roles[]" value="agent"' in form
    empty = await submit(c["km"], "/kb/announcements/new", "/kb/announcements", title=" ")
    assert empty.status_code == 422 and 'id="kb-announcement-form"' in empty.text
    title = "必读：挂失流程变更 " + unique()
    fields = form_fields(form, "/kb/announcements")
    sent = await c["km"].post(
        "/kb/announcements",
        data={
            **fields,
            "title": title,
            "body_markdown": "请**务必**阅读。<script>alert(1)</script>",
            "requires_ack": "1",
            "audience_roles[]": ["agent", "knowledge_manager"],
            "article_id": str(aid),
        },
    )
    assert sent.status_code == 303, sent.text[:500]
    ann_id = int(re.search(r"#announcement-(\d+)$", sent.headers["location"]).group(1))
    other = await submit(c["km"], "/kb/announcements/new", "/kb/announcements", title="一般通知 " + unique())
    assert other.status_code == 303

    # An agent sees it highlighted at the top with an acknowledge button; the change is listed below.
    page = await get_ok(c["agent"], "/kb/board")
    pending = re.search(r'<section class="kb-banner" id="kb-pending".*?</section>', page, re.S).group(0)
    assert f'id="announcement-{ann_id}"' in pending and f'action="/kb/announcements/{ann_id}/ack"' in pending
    assert "<strong>务必</strong>" in pending and "<script>alert" not in page
    assert f'href="/kb/articles/{aid}"' in pending
    # The change is listed below (the linked article's publication shows once: as the announcement).
    changes = re.search(r'<section id="kb-board".*?</section>', page, re.S).group(0)
    assert f'data-article-id="{changed}"' in changes and "新版挂失流程" in changes
    assert f'data-article-id="{aid}"' not in changes
    assert "Who has not read it" not in page

    # Before: both agents are on the unread report (name, username); after the ack only the other one.
    report = await get_ok(c["km"], f"/kb/announcements/{ann_id}/unread")
    assert f'data-user-id="{u["agent"].id}"' in report and f'data-user-id="{u["agent2"].id}"' in report
    assert u["agent"].username in report and title in report
    assert f'data-user-id="{u["supervisor"].id}"' not in report  # not addressed
    before_unread = int(re.search(r'data-count="unread">(\d+)<', report).group(1))
    before_acked = int(re.search(r'data-count="acknowledged">(\d+)<', report).group(1))

    acked = await submit(c["agent"], "/kb/board", f"/kb/announcements/{ann_id}/ack")
    assert acked.status_code == 303 and acked.headers["location"].startswith("/kb/board?done=acked")
    page = await get_ok(c["agent"], "/kb/board?done=acked")
    assert "Acknowledged. Thank you." in page
    assert f'id="announcement-{ann_id}"' not in (re.search(r'id="kb-pending".*?</section>', page, re.S) or [""])[0]
    entry = re.search(rf'id="announcement-{ann_id}".*?</article>', page, re.S).group(0)
    assert "Acknowledged at" in entry and "/ack" not in entry
    # A second acknowledgement (another tab) changes nothing and fails nothing.
    token = csrf_of(page)
    assert (await c["agent"].post(f"/kb/announcements/{ann_id}/ack", data={"csrf_token": token})).status_code == 303

    report = await get_ok(c["km"], f"/kb/announcements/{ann_id}/unread")
    assert f'data-user-id="{u["agent"].id}"' not in report and f'data-user-id="{u["agent2"].id}"' in report
    assert int(re.search(r'data-count="unread">(\d+)<', report).group(1)) == before_unread - 1
    assert int(re.search(r'data-count="acknowledged">(\d+)<', report).group(1)) == before_acked + 1
    # Supervisors read the report too; the manager's board links to it.
    assert (await c["supervisor"].get(f"/kb/announcements/{ann_id}/unread")).status_code == 200
    assert f'href="/kb/announcements/{ann_id}/unread"' in await get_ok(c["km"], "/kb/board")
    assert (await c["km"].get("/kb/announcements/999999999/unread")).status_code == 404

    # An announcement not addressed to the supervisor is not on their board and cannot be acknowledged.
    supervisor_board = await get_ok(c["supervisor"], "/kb/board")
    assert f'id="announcement-{ann_id}"' not in supervisor_board
    token = csrf_of(supervisor_board)
    assert (
        await c["supervisor"].post(f"/kb/announcements/{ann_id}/ack", data={"csrf_token": token})
    ).status_code == 404


# --- points --------------------------------------------------------------------------------------
async def test_points_leaderboard_with_periods_and_my_points(app, world) -> None:
    u, c = world["users"], world["c"]
    async with app.state.session_factory() as db, db.begin():
        for n in range(3):
            await points.award(
                db,
                {},
                user_id=u["agent2"].id,
                rule="contribution_published",
                event_key=unique("pts"),
                note=f"贡献 {n}",
            )
    for period in ("week", "month", "all"):
        page = await get_ok(c["agent2"], f"/kb/points?period={period}")
        assert f'href="/kb/points?period={period}" class="button primary" aria-current="page"' in page
        row = re.search(rf'<tr data-user-id="{u["agent2"].id}"[^>]*>(.*?)</tr>', page, re.S)
        assert row and 'class="kb-me"' in row.group(0) and ">30<" in row.group(1)
    assert 'data-points="total">30<' in page and 'data-points="week">30<' in page
    assert "Contribution published" in page and "贡献 2" in page
    # Another member sees the leaderboard and their own (empty) points; an unknown period is this month.
    page = await get_ok(c["agent"], "/kb/points?period=decade")
    assert 'href="/kb/points?period=month" class="button primary"' in page
    row = re.search(rf'<tr data-user-id="{u["agent2"].id}"[^>]*>', page)
    assert row and "kb-me" not in row.group(0)  # listed, not marked as the viewer
    assert 'data-points="total">' in page and "My points" in page


# --- training ------------------------------------------------------------------------------------
async def test_training_collections_are_curated_and_read(app, world) -> None:
    u, c = world["users"], world["c"]
    case_a = await article(
        app,
        u["km"],
        kind="case",
        title="案例：重复扣款",
        case_fields={
            "problem": "客户被重复扣款",
            "analysis": "支付渠道重试",
            "resolution": "原路退款",
            "lessons": "先查流水",
        },
    )
    case_b = await article(app, u["km"], kind="case", title="案例：卡片被吞", case_fields={"problem": "ATM 吞卡"})
    faq = await article(app, u["km"], title="普通问答")

    name = "新人培训 " + unique()
    made = await submit(
        c["km"], "/kb/training", "/kb/training", name=name, description="第一周", article_ids=f"{case_a}，{case_b}"
    )
    assert made.status_code == 303
    cid = int(re.fullmatch(r"/kb/training/(\d+)\?done=created", made.headers["location"]).group(1))
    page = await get_ok(c["km"], made.headers["location"])
    assert "Training collection created." in page
    order = [int(i) for i in re.findall(r'<li class="card kb-training-item" data-article-id="(\d+)"', page)]
    assert order == [case_a, case_b]
    for text in ("客户被重复扣款", "支付渠道重试", "原路退款", "先查流水", "Problem", "Lessons learned"):
        assert text in page
    fields = form_fields(page, f"/kb/training/{cid}/items")
    assert fields["article_ids"] == f"{case_a}, {case_b}"

    # Reorder; a FAQ or a non-id is refused with the reason; the list stays as it was.
    reordered = await submit(
        c["km"], f"/kb/training/{cid}", f"/kb/training/{cid}/items", article_ids=f"{case_b} {case_a}"
    )
    assert reordered.status_code == 303
    page = await get_ok(c["km"], f"/kb/training/{cid}")
    assert [int(i) for i in re.findall(r'kb-training-item" data-article-id="(\d+)"', page)] == [case_b, case_a]
    wrong = await submit(c["km"], f"/kb/training/{cid}", f"/kb/training/{cid}/items", article_ids=f"{case_a}, {faq}")
    assert wrong.status_code == 422 and str(faq) in wrong.text and 'role="alert"' in wrong.text
    junk = await submit(c["km"], f"/kb/training/{cid}", f"/kb/training/{cid}/items", article_ids="12, abc")
    assert junk.status_code == 422 and 'value="12, abc"' in junk.text
    renamed = await submit(c["km"], f"/kb/training/{cid}", f"/kb/training/{cid}", name=name + " v2")
    assert renamed.status_code == 303
    duplicate = await submit(c["km"], "/kb/training", "/kb/training", name=name + " v2")
    assert duplicate.status_code == 409 and 'id="kb-training-create"' in duplicate.text

    # Agents read the list and the collection, in order, without the management forms.
    listing = await get_ok(c["agent"], "/kb/training")
    assert f'data-collection-id="{cid}"' in listing and name + " v2" in listing
    assert 'id="kb-training-create"' not in listing
    page = await get_ok(c["agent"], f"/kb/training/{cid}")
    assert [int(i) for i in re.findall(r'kb-training-item" data-article-id="(\d+)"', page)] == [case_b, case_a]
    assert f'href="/kb/articles/{case_a}"' in page and 'id="kb-training-items-form"' not in page


# --- the search-gap report -----------------------------------------------------------------------
async def test_search_gap_report_for_knowledge_managers(app, world) -> None:
    u, c = world["users"], world["c"]
    query = "没有答案的问题" + unique("q")
    async with app.state.session_factory() as db, db.begin():
        for _ in range(3):
            await log_search(db, principal_of(u["agent"]), query, [], "agent")
    page = await get_ok(c["km"], "/kb/gaps?days=7")
    row = re.search(rf"<tr>\s*<td><a href=\"/kb\?q=[^\"]+\">{re.escape(query.lower())}</a></td>(.*?)</tr>", page, re.S)
    assert row, page[:3000]
    assert [int(n) for n in re.findall(r"<td>(\d+)</td>", row.group(1))] == [3, 3, 3]
    assert 'value="7" selected' in page
    assert (await c["supervisor"].get("/kb/gaps")).status_code == 200
