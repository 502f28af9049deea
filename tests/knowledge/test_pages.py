"""The knowledge pages, used the way a browser uses them: HTML responses, forms posted with the CSRF
token the page carries, redirects after each step.

An agent contributes through the form and submits to a knowledge manager, who approves and publishes from
the review queue; the agent then finds it (highlighted) and gets suggestions. Along the way: what each
role may not do (customers are sent away, agents cannot publish, nobody opens another agent's draft),
edits with a stale version (409, text kept), history, diff, restore, scheduling, archive, re-verification,
escaping of what users typed, and refusals that re-render the page instead of failing.
"""

from __future__ import annotations

import asyncio
import html as html_lib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from conftest import Factory, login, unique
from kefu.db.base import utcnow
from kefu.identity.models import User
from kefu.knowledge.models import Article, SearchLog


@dataclass
class Person:
    user: User
    client: httpx.AsyncClient
    csrf: str = ""

    async def page(self, url: str, status: int = 200, **params: object) -> str:
        response = await self.client.get(url, params=params or None)
        assert response.status_code == status, f"{url}: {response.status_code} {response.text[:500]}"
        return response.text

    async def post(self, url: str, data: dict[str, object] | None = None) -> httpx.Response:
        """A form post as the page sends it: the session's token in the form's csrf_token field."""
        return await self.client.post(url, data={"csrf_token": self.csrf, **(data or {})})


def csrf_of(page: str) -> str:
    match = re.search(r'<input type="hidden" name="csrf_token" value="([^"]+)">', page)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def article_id_of(response: httpx.Response) -> int:
    assert response.status_code == 303, response.text[:500]
    match = re.match(r"^/kb/articles/(\d+)\?done=\w+$", response.headers["location"])
    assert match, response.headers["location"]
    return int(match.group(1))


def text_of(page: str) -> str:
    """The visible text, tags dropped and entities decoded, spaces collapsed."""
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def section(page: str, element_id: str) -> str:
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}".*?</\1>', page, re.S)
    assert match, f"no #{element_id} on the page"
    return match.group(0)


@pytest.fixture(scope="module")
async def people(app) -> AsyncIterator[dict[str, Person]]:  # noqa: ANN001
    make = Factory(app)
    roles = {
        "agent": "agent",
        "agent2": "agent",
        "km": "knowledge_manager",
        "km2": "knowledge_manager",
        "admin": "admin",
        "customer": "customer",
        "supervisor": "supervisor",
    }
    out: dict[str, Person] = {}
    for key, role in roles.items():
        user = await make.user(role)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50002))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver", headers={"Accept": "text/html"})
        await login(client, user)
        client.headers.pop("X-CSRF-Token")  # pages send the token in the form, like a browser
        out[key] = Person(user, client)
    for person in out.values():
        person.csrf = csrf_of(await person.page("/profile"))
    yield out
    for person in out.values():
        await person.client.aclose()


async def contribute(agent: Person, reviewer: Person | None, **fields: object) -> int:
    """An article through the new-article form; submitted to ``reviewer`` if given."""
    form = await agent.page("/kb/articles/new")
    assert csrf_of(form) == agent.csrf
    data = {
        "title": "默认标题 " + unique(),
        "body_markdown": "正文",
        "kind": "faq",
        "audience": "internal",
        "language": "zh-CN",
        "category_id": "",
        "reviewer_id": reviewer.user.id if reviewer else "",
        **fields,
    }
    return article_id_of(await agent.post("/kb/articles", data))


async def published_by(km: Person, **fields: object) -> int:
    aid = await contribute(km, None, **fields)
    response = await km.post(f"/kb/articles/{aid}/publish", {"when": "now"})
    assert response.headers["location"] == f"/kb/articles/{aid}?done=published"
    return aid


async def found(person: Person, query: str, article_id: int) -> str:
    """Searches from the knowledge home until the index (refreshed in the background) shows the article."""
    for _ in range(100):
        page = await person.page("/kb", q=query)
        if f'href="/kb/articles/{article_id}"' in section(page, "kb-results"):
            return page
        await asyncio.sleep(0.1)
    raise AssertionError(f"article {article_id} never appeared for {query!r}")


# --- who may come in -----------------------------------------------------------------------------
async def test_customers_are_sent_away_and_strangers_to_sign_in(people, client: httpx.AsyncClient) -> None:
    customer = people["customer"]
    km = people["km"]
    aid = await published_by(km, title="公开文章 " + unique(), audience="public")
    for url in ("/kb", f"/kb/articles/{aid}"):
        response = await customer.client.get(url)
        assert response.status_code == 303 and response.headers["location"] == "/", url
    # The suggestion fragment is swapped into a page: it stays a (here empty) fragment, never a redirect.
    response = await customer.client.get("/kb/suggest", params={"q": "公开"})
    assert response.status_code == 200 and "<li>" not in response.text
    for url in ("/kb/review", "/kb/articles/new"):
        assert (await customer.client.get(url)).status_code == 403
    assert (await customer.client.get(f"/kb/articles/{aid}/history")).status_code == 403
    assert (await customer.post("/kb/articles", {"title": "不许"})).status_code == 403
    # Not signed in: pages send you to sign in and back.
    response = await client.get("/kb?q=x", headers={"Accept": "text/html"})
    assert response.status_code == 303 and response.headers["location"] == "/login?next=/kb%3Fq%3Dx"
    # The navigation shows the knowledge base to staff only.
    assert 'href="/kb"' in await people["agent"].page("/")
    assert 'href="/kb"' not in await customer.page("/")


async def test_review_queue_is_for_reviewers(people) -> None:
    for key in ("agent", "supervisor"):
        assert (await people[key].client.get("/kb/review")).status_code == 403
    home = await people["agent"].page("/kb")
    assert 'href="/kb/review"' not in home and 'id="kb-to-review"' not in home
    assert 'href="/kb/review"' in await people["km"].page("/kb")


async def test_forms_need_the_csrf_token(people) -> None:
    agent = people["agent"]
    response = await agent.client.post("/kb/articles", data={"title": "没有令牌"})
    assert response.status_code == 403
    response = await agent.client.post("/kb/articles", data={"title": "伪造", "csrf_token": "forged"})
    assert response.status_code == 403
    assert "没有令牌" not in await agent.page("/kb")


# --- the whole workflow --------------------------------------------------------------------------
async def test_contribution_reviewed_and_published_through_the_pages(people, app) -> None:  # noqa: ANN001
    agent, agent2, km, km2 = people["agent"], people["agent2"], people["km"], people["km2"]
    word = unique("kbp")
    title = f"{word} 信用卡挂失怎么办？"

    form = await agent.page("/kb/articles/new")
    assert "您的文章属于知识贡献" in form
    # Contributions go to review: a reviewer is chosen already, and only reviewers are offered.
    reviewer_select = section(form, "kb-reviewer")
    assert f'value="{km.user.id}"' in reviewer_select and f'value="{agent2.user.id}"' not in reviewer_select
    assert re.search(r'<option value="\d+" selected>', reviewer_select)

    aid = await contribute(
        agent,
        km,
        title=title,
        body_markdown="拨打热线 **95588** 挂失。\r\n\r\n<script>alert(1)</script>",
        similar_questions="卡丢了怎么办\r\n信用卡丢失\r\n\r\n",
        tags="信用卡，挂失, 紧急",
    )
    page = await agent.page(f"/kb/articles/{aid}", done="submitted")
    assert "已提交审核。" in page
    article = section(page, "kb-article")
    assert "<strong>95588</strong>" in article and "<script>alert(1)" not in article  # sanitized on save
    assert "卡丢了怎么办" in section(page, "kb-similar") and "信用卡丢失" in section(page, "kb-similar")
    assert [t for t in ("信用卡", "挂失", "紧急") if t not in section(page, "kb-tags")] == []
    banner = text_of(section(page, "kb-working"))
    assert "工作版本 1" in banner and "审核中" in banner and f"审核人：{km.user.display_name}" in banner
    assert 'id="kb-withdraw-form"' in page  # the author may take it back
    for form_id in ("kb-review-form", "kb-publish-form", "kb-submit-form"):
        assert f'id="{form_id}"' not in page, form_id
    assert "版本 1" in text_of(section(page, "kb-version"))
    assert f"负责人：{agent.user.display_name}" in text_of(page)

    # Another agent cannot open an unpublished draft; an agent cannot publish or review.
    assert (await agent2.client.get(f"/kb/articles/{aid}")).status_code == 404
    assert (await agent2.client.get(f"/kb/articles/{aid}/history")).status_code == 404
    assert (await agent.post(f"/kb/articles/{aid}/publish", {"when": "now"})).status_code == 403
    assert (await agent.post(f"/kb/articles/{aid}/review", {"decision": "approve"})).status_code == 403
    # Only the named reviewer reviews: another knowledge manager sees no review form and is refused.
    other = await km2.page(f"/kb/articles/{aid}")
    assert 'id="kb-review-form"' not in other
    refused = await km2.post(f"/kb/articles/{aid}/review", {"decision": "approve"})
    assert refused.status_code == 403 and "only the named reviewer" in refused.text
    assert 'id="kb-article"' in refused.text  # the page again, with the reason, not a bare error

    # The reviewer finds it on the knowledge home and in the review queue, and approves from there.
    assert title in section(await km.page("/kb"), "kb-to-review")
    queue = await km.page("/kb/review")
    assert title in section(queue, "kb-queue-review")
    assert title not in section(queue, "kb-queue-approved")
    response = await km.post(f"/kb/articles/{aid}/review", {"decision": "approve", "next": "/kb/review"})
    assert response.status_code == 303 and response.headers["location"] == "/kb/review?done=approved"
    queue = await km.page("/kb/review", done="approved")
    assert "审核已通过。" in queue
    assert title not in section(queue, "kb-queue-review") and title in section(queue, "kb-queue-approved")
    response = await km.post(f"/kb/articles/{aid}/publish", {"when": "now", "next": "/kb/review"})
    assert response.headers["location"] == "/kb/review?done=published"
    assert title not in section(await km.page("/kb/review"), "kb-queue-approved")

    # Live: every agent reads version 1, no working-version banner.
    page = await agent2.page(f"/kb/articles/{aid}")
    assert 'id="kb-working"' not in page and "已发布" in text_of(page) and "版本 1" in text_of(page)
    assert title not in section(await agent.page("/kb"), "kb-mine")

    # Search from the knowledge home: the hit is highlighted, what was typed is escaped.
    page = await found(agent, word, aid)
    results = section(page, "kb-results")
    assert f"<mark>{word}</mark>" in results
    assert f'<a class="kb-hit-title" href="/kb/articles/{aid}">' in results
    # Suggestions as you type: <li> items linking to the article.
    fragment = await agent.page("/kb/suggest", q=word[:-2])
    assert f'<li><a href="/kb/articles/{aid}">{html_lib.escape(title, quote=False)}</a></li>' in fragment
    assert "<html" not in fragment
    # Every search is logged for the gap report.
    async with app.state.session_factory() as db:
        logged = (await db.scalars(select(SearchLog).where(SearchLog.user_id == agent.user.id))).all()
        assert any(entry.query == word and entry.surface == "agent" for entry in logged)


async def test_changes_requested_edit_conflict_and_withdraw(people) -> None:
    agent, km = people["agent"], people["km"]
    aid = await contribute(agent, km, title="退回测试 " + unique(), body_markdown="第一稿")

    # Frozen while in review: the edit page says so instead of offering a form that cannot be saved.
    blocked = await agent.page(f"/kb/articles/{aid}/edit", status=409)
    assert 'id="kb-blocked"' in blocked and 'id="kb-article-form"' not in blocked

    # Sending back needs a comment; without one the page comes back with the reason.
    response = await km.post(f"/kb/articles/{aid}/review", {"decision": "changes", "comment": "  "})
    assert response.status_code == 422 and 'id="kb-review-form"' in response.text
    response = await km.post(f"/kb/articles/{aid}/review", {"decision": "maybe"})
    assert response.status_code == 422 and "请选择“通过”或“退回修改”。" in response.text
    response = await km.post(
        f"/kb/articles/{aid}/review", {"decision": "changes", "comment": "请补充网点挂失 <b>流程</b>"}
    )
    assert response.headers["location"] == f"/kb/articles/{aid}?done=changes_requested"

    page = await agent.page(f"/kb/articles/{aid}")
    banner = section(page, "kb-working")
    assert "请补充网点挂失 &lt;b&gt;流程&lt;/b&gt;" in banner and "草稿" in text_of(banner)
    assert 'id="kb-submit-form"' in page

    form = await agent.page(f"/kb/articles/{aid}/edit")
    assert '<input type="hidden" name="expected_version" value="1">' in form
    assert "第一稿</textarea>" in form
    fields = {
        "title": "退回测试（改）",
        "body_markdown": "第二稿\r\n也可到网点挂失。",
        "similar_questions": "",
        "tags": "",
        "change_note": "补充网点",
    }
    # A save from a page opened on another version is refused, and the text typed is kept.
    stale = await agent.post(f"/kb/articles/{aid}/edit", {**fields, "expected_version": "7"})
    assert stale.status_code == 409
    assert 'id="kb-conflict"' in stale.text and "版本 1" in section(stale.text, "kb-conflict")
    assert "也可到网点挂失。</textarea>" in stale.text
    invalid = await agent.post(f"/kb/articles/{aid}/edit", {**fields, "title": "", "expected_version": "1"})
    assert invalid.status_code == 422 and "也可到网点挂失。</textarea>" in invalid.text
    saved = await agent.post(f"/kb/articles/{aid}/edit", {**fields, "expected_version": "1"})
    assert saved.headers["location"] == f"/kb/articles/{aid}?done=saved"
    page = await agent.page(f"/kb/articles/{aid}", done="saved")
    assert "草稿已保存。" in page and "第二稿" in section(page, "kb-body") and "退回测试（改）" in page

    # Submit from the article page, then take it back.
    assert (await agent.post(f"/kb/articles/{aid}/submit", {"reviewer_id": "abc"})).status_code == 422
    not_a_reviewer = await agent.post(f"/kb/articles/{aid}/submit", {"reviewer_id": people["agent2"].user.id})
    assert not_a_reviewer.status_code == 422 and "reviewer must be" in not_a_reviewer.text
    response = await agent.post(f"/kb/articles/{aid}/submit", {"reviewer_id": km.user.id})
    assert response.headers["location"] == f"/kb/articles/{aid}?done=submitted"
    response = await agent.post(f"/kb/articles/{aid}/withdraw")
    assert response.headers["location"] == f"/kb/articles/{aid}?done=withdrawn"
    assert "已撤回为草稿。" in await agent.page(f"/kb/articles/{aid}", done="withdrawn")
    # Withdrawing a draft is a conflict shown on the page, not an error page.
    again = await agent.post(f"/kb/articles/{aid}/withdraw")
    assert again.status_code == 409 and 'id="kb-article"' in again.text


async def test_history_diff_and_restore(people) -> None:
    km, agent = people["km"], people["agent"]
    title = "历史测试 " + unique()
    aid = await published_by(km, title=title, body_markdown="第一行\n第二行", tags="旧标签")
    # Editing the published article starts version 2 while version 1 stays live.
    form = await km.page(f"/kb/articles/{aid}/edit")
    assert "线上仍显示版本 1" in form and '<input type="hidden" name="expected_version" value="1">' in form
    response = await km.post(
        f"/kb/articles/{aid}/edit",
        {"title": title + "（新）", "body_markdown": "第一行\n第三行", "tags": "新标签", "expected_version": "1"},
    )
    assert response.status_code == 303
    live = await agent.page(f"/kb/articles/{aid}")
    assert "第二行" in section(live, "kb-body") and 'id="kb-working"' not in live  # agents see only v1
    page = await km.page(f"/kb/articles/{aid}")
    assert "第二行" in section(page, "kb-body") and "工作版本 2" in text_of(section(page, "kb-working"))
    preview = await km.page(f"/kb/articles/{aid}", show="working")
    assert "第三行" in section(preview, "kb-body") and "其他人看到的仍是版本 1" in preview
    await km.post(f"/kb/articles/{aid}/publish", {"when": "now", "announce": "1", "requires_ack": "1"})

    history = await agent.page(f"/kb/articles/{aid}/history")
    rows = {int(n): text_of(row) for n, row in re.findall(r'<tr data-version="(\d+)">(.*?)</tr>', history, re.S)}
    assert set(rows) == {1, 2} and "已被取代" in rows[1] and "已发布" in rows[2]
    assert people["km"].user.display_name in rows[1] and title + "（新）" in rows[2]
    assert "/restore" not in history  # agents (not owner) cannot restore
    assert 'name="from" value="1" aria-label="以版本 1 为对比起点" checked' in history
    assert 'name="to" value="2" aria-label="以版本 2 为对比终点" checked' in history

    diff = await agent.page(f"/kb/articles/{aid}/diff", **{"from": 1, "to": 2})
    assert '<del class="diff-line diff-removed"><span class="diff-op" aria-hidden="true">−</span>第二行</del>' in diff
    assert '<ins class="diff-line diff-added"><span class="diff-op" aria-hidden="true">+</span>第三行</ins>' in diff
    assert 'data-field="title"' in diff and 'data-field="tags"' in diff and "第一行" in diff
    assert 'id="kb-no-diff"' in await agent.page(f"/kb/articles/{aid}/diff", **{"from": 2, "to": 2})
    assert (await agent.client.get(f"/kb/articles/{aid}/diff", params={"from": 1, "to": 9})).status_code == 404
    assert (await agent.client.get(f"/kb/articles/{aid}/diff", params={"from": 0, "to": 1})).status_code == 422
    assert (await km.post(f"/kb/articles/{aid}/versions/3000000000/restore")).status_code == 422

    # Restore version 1 as a new draft (3); a second restore while a draft exists is refused on the page.
    assert "/versions/1/restore" in await km.page(f"/kb/articles/{aid}/history")
    response = await km.post(f"/kb/articles/{aid}/versions/1/restore")
    assert response.headers["location"] == f"/kb/articles/{aid}?done=restored"
    page = await km.page(f"/kb/articles/{aid}", show="working")
    assert "工作版本 3" in text_of(section(page, "kb-working")) and "第二行" in section(page, "kb-body")
    again = await km.post(f"/kb/articles/{aid}/versions/1/restore")
    assert again.status_code == 409 and "already has a working version" in again.text
    assert "/restore" not in await km.page(f"/kb/articles/{aid}/history")


async def test_schedule_archive_and_unarchive(people) -> None:
    km, agent = people["km"], people["agent"]
    title = "定时测试 " + unique()
    aid = await contribute(km, None, title=title)
    page = await km.page(f"/kb/articles/{aid}")
    assert 'id="kb-publish-form"' in page and 'type="datetime-local"' in page  # publishers skip review
    assert "发布时间（Asia/Shanghai）" in page

    past = await km.post(f"/kb/articles/{aid}/publish", {"when": "schedule", "publish_at": "2001-01-01T09:00"})
    assert past.status_code == 422 and "请选择一个未来的日期和时间" in past.text
    for garbage in ("明天", "", "0001-01-01T00:00", "2030-13-01T00:00", "2030-01-01T00:00+08:00"):
        response = await km.post(f"/kb/articles/{aid}/publish", {"when": "schedule", "publish_at": garbage})
        assert response.status_code == 422, garbage
    at = (utcnow() + timedelta(days=2)).astimezone(ZoneInfo("Asia/Shanghai")).replace(second=0, microsecond=0)
    local = at.strftime("%Y-%m-%dT%H:%M")
    response = await km.post(f"/kb/articles/{aid}/publish", {"when": "schedule", "publish_at": local, "announce": "1"})
    assert response.headers["location"] == f"/kb/articles/{aid}?done=scheduled"
    page = await km.page(f"/kb/articles/{aid}", done="scheduled")
    assert "已设置定时发布。" in page
    assert f"定时发布于 {at.strftime('%Y-%m-%d %H:%M')}" in text_of(section(page, "kb-working"))
    queue = await km.page("/kb/review")
    assert title in section(queue, "kb-queue-scheduled") and title not in section(queue, "kb-queue-approved")

    # Archive: the article leaves the lists; an archived article is not edited; unarchive brings it back.
    published = await published_by(km, title="归档测试 " + unique())
    assert (await agent.post(f"/kb/articles/{published}/archive")).status_code == 403
    response = await km.post(f"/kb/articles/{published}/archive")
    assert response.headers["location"] == f"/kb/articles/{published}?done=archived"
    page = await km.page(f"/kb/articles/{published}")
    assert "已归档" in text_of(page) and f"/kb/articles/{published}/unarchive" in page
    assert f"/kb/articles/{published}/edit" not in page
    assert (await km.client.get(f"/kb/articles/{published}/edit")).status_code == 409
    response = await km.post(f"/kb/articles/{published}/unarchive")
    assert response.headers["location"] == f"/kb/articles/{published}?done=unarchived"
    assert f"/kb/articles/{published}/archive" in await km.page(f"/kb/articles/{published}")

    # A draft archived before it was ever published (its draft is withdrawn): still shown, restorable,
    # and editable again after unarchiving.
    never = await contribute(km, None, title="从未发布 " + unique(), body_markdown="旧稿")
    await km.post(f"/kb/articles/{never}/archive")
    page = await km.page(f"/kb/articles/{never}")
    assert "从未发布" in page and "已归档" in text_of(page) and "旧稿" in section(page, "kb-body")
    assert "已撤回" in text_of(section(await km.page(f"/kb/articles/{never}/history"), "kb-versions"))
    await km.post(f"/kb/articles/{never}/unarchive")
    form = await km.page(f"/kb/articles/{never}/edit")
    assert "旧稿</textarea>" in form
    response = await km.post(f"/kb/articles/{never}/edit", {"title": "从未发布（续）", "body_markdown": "新稿"})
    assert response.headers["location"] == f"/kb/articles/{never}?done=saved"
    assert "新稿" in section(await km.page(f"/kb/articles/{never}"), "kb-body")


async def test_due_for_reverification(people, app) -> None:  # noqa: ANN001
    km = people["km"]
    title = "复核测试 " + unique()
    aid = await published_by(km, title=title)
    async with app.state.session_factory() as db, db.begin():
        article = await db.get(Article, aid)
        article.verify_interval_days = 30
        article.last_verified_at = utcnow() - timedelta(days=31)
    due = section(await km.page("/kb/review"), "kb-queue-verify")
    assert title in due
    response = await km.post(f"/kb/articles/{aid}/verify", {"next": "/kb/review"})
    assert response.headers["location"] == "/kb/review?done=verified"
    queue = await km.page("/kb/review", done="verified")
    assert "已标记为复核通过。" in queue and title not in section(queue, "kb-queue-verify")
    assert (await people["agent"].post(f"/kb/articles/{aid}/verify")).status_code == 403


# --- the forms and the pages themselves ----------------------------------------------------------
async def test_case_articles_and_my_drafts(people) -> None:
    agent = people["agent"]
    title = "案例测试 " + unique()
    aid = await contribute(
        agent,
        None,
        title=title,
        kind="case",
        case_problem="客户无法登录",
        case_resolution="重置密码\n并解锁",
        case_lessons="",
    )
    page = await agent.page(f"/kb/articles/{aid}", done="created")
    assert "文章已创建为草稿。" in page and "案例" in text_of(page)
    case = text_of(section(page, "kb-case"))
    assert "问题描述 客户无法登录" in case and "处理方案 重置密码 并解锁" in case and "经验总结" not in case
    assert 'id="kb-submit-form"' in page  # a draft: the author submits when ready
    mine = section(await agent.page("/kb"), "kb-mine")
    assert title in mine and "草稿" in mine
    form = await agent.page(f"/kb/articles/{aid}/edit")
    assert 'name="case_problem"' in form and "客户无法登录</textarea>" in form
    # The case fields (hidden by the page for other kinds) are not sent on for a FAQ.
    response = await agent.post("/kb/articles", {"title": "不是案例", "kind": "faq", "case_problem": "x"})
    assert response.status_code == 303
    # Refused input brings the form back with what was typed.
    response = await agent.post("/kb/articles", {"title": "类型错误", "kind": "novel", "body_markdown": "保留我"})
    assert response.status_code == 422 and "保留我</textarea>" in response.text
    response = await agent.post("/kb/articles", {"title": "分类错误", "category_id": "999999"})
    assert response.status_code == 422 and "category 999999 does not exist" in response.text
    # Another agent's draft cannot be edited either.
    assert (await people["agent2"].client.get(f"/kb/articles/{aid}/edit")).status_code == 404
    assert (await people["agent2"].post(f"/kb/articles/{aid}/edit", {"title": "x"})).status_code == 404


async def test_what_users_typed_is_escaped(people) -> None:
    km, agent = people["km"], people["agent"]
    word = unique("esc")
    title = f'<img src=x onerror=alert(1)> "{word}"'
    aid = await published_by(
        km,
        title=title,
        body_markdown="<img src=x onerror=alert(2)>正文",
        similar_questions="<b>粗体</b>",
        tags="<i>t</i>",
    )
    page = await agent.page(f"/kb/articles/{aid}")
    assert "<img src=x" not in page and "onerror=alert(2)" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;b&gt;粗体&lt;/b&gt;" in page and "&lt;i&gt;t&lt;/i&gt;" in page
    results = section(await found(agent, word, aid), "kb-results")
    assert "<img" not in results and "&lt;img" in results
    fragment = await agent.page("/kb/suggest", q="<img")
    assert "<img" not in fragment
    echoed = await agent.page("/kb", q='"><script>alert(3)</script>')
    assert "<script>alert(3)" not in echoed and "&lt;script&gt;alert(3)" in echoed


async def test_filters_and_odd_input(people) -> None:
    km, agent = people["km"], people["agent"]
    made = await km.client.post(
        "/api/v1/kb/categories", json={"name": unique("分类")}, headers={"X-CSRF-Token": km.csrf}
    )
    category = made.json()
    tag, word = unique("标签"), unique("flt")
    aid = await published_by(km, title=f"筛选测试 {word}", tags=tag, language="en", category_id=category["id"])
    other = await published_by(km, title=f"筛选测试 {word} 无分类")
    assert category["name"] in text_of(await agent.page(f"/kb/articles/{aid}"))
    home = await agent.page("/kb")
    assert f'<option value="{category["id"]}">{category["name"]}</option>' in home
    # Filters without a query browse the published articles.
    browse = section(await agent.page("/kb", tag=tag), "kb-browse")
    assert f'href="/kb/articles/{aid}"' in browse
    assert f'href="/kb/articles/{aid}"' in section(await agent.page("/kb", category=category["id"]), "kb-browse")
    assert 'id="kb-browse"' not in await agent.page("/kb", tag=tag, language="zh-CN")
    # With a query they narrow the hits. The form sends every filter, empty ones included.
    await found(agent, word, other)
    page = await agent.page("/kb", q=word, category="", tag="", language="")
    assert f'href="/kb/articles/{aid}"' in page and f'href="/kb/articles/{other}"' in page
    narrowed = section(await agent.page("/kb", q=word, category=category["id"], tag="", language="en"), "kb-results")
    assert f'href="/kb/articles/{aid}"' in narrowed and f'href="/kb/articles/{other}"' not in narrowed
    # The suggestion fragment answers on every key stroke: odd input suggests nothing, never an error.
    for odd in ("", " ", "a\x00b", "x" * 500):
        response = await agent.client.get("/kb/suggest", params={"q": odd})
        assert response.status_code == 200 and "<li>" not in response.text
    for params in ({"q": "x" * 201}, {"q": "a\x00b"}, {"category": "abc"}, {"category": "0"}):
        assert (await agent.client.get("/kb", params=params)).status_code == 422
    assert (await agent.client.get("/kb/articles/abc")).status_code == 422
    assert (await agent.client.get("/kb/articles/99999999")).status_code == 404
    assert (await agent.post("/kb/articles/99999999/submit", {"reviewer_id": km.user.id})).status_code == 404
    search = section(await agent.page("/kb", q="完全不存在的问题 " + unique()), "kb-results")
    assert "未找到相关内容" in search
