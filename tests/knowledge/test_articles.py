"""Articles through the API: versions, the review workflow (every transition, forbidden ones too),
visibility (drafts never public, internal never to customers), history, restore and scheduling."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from conftest import login
from kefu.core.jobs import run_due_jobs
from kefu.db.base import utcnow


@pytest.fixture
async def people(app, make):  # noqa: ANN001, ANN201
    roles = {
        "admin": "admin",
        "km": "knowledge_manager",
        "agent": "agent",
        "agent2": "agent",
        "customer": "customer",
        "supervisor": "supervisor",
    }
    users = {key: await make.user(role) for key, role in roles.items()}
    clients = {}
    for key, user in users.items():
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        await login(client, user)
        clients[key] = client
    yield users, clients
    for client in clients.values():
        await client.aclose()


ARTICLE = {
    "title": "信用卡挂失怎么办？",
    "body_markdown": "拨打客服热线 **95588** 或在手机银行挂失。",
    "similar_questions": ["卡丢了怎么办", "信用卡丢失 挂失", "卡丢了怎么办"],
    "tags": ["信用卡", "挂失"],
}


async def test_contribution_goes_through_review_to_publication(people) -> None:
    users, c = people
    created = await c["agent"].post("/api/v1/kb/articles", json={**ARTICLE, "audience": "public"})
    assert created.status_code == 201, created.text
    article = created.json()
    aid = article["id"]
    assert article["status"] == "draft" and article["live"] is None
    assert article["working"]["similar_questions"] == ["卡丢了怎么办", "信用卡丢失 挂失"]  # de-duplicated
    assert "<strong>95588</strong>" in article["working"]["body_html"]

    # Drafts are never public, and other agents do not see someone else's unpublished draft.
    assert (await c["customer"].get(f"/api/v1/kb/articles/{aid}")).status_code == 404
    assert (await c["agent2"].get(f"/api/v1/kb/articles/{aid}")).status_code == 404
    # Agents cannot publish directly, review, or name a non-reviewer.
    assert (await c["agent"].post(f"/api/v1/kb/articles/{aid}/publish", json={})).status_code == 403
    bad_reviewer = await c["agent"].post(f"/api/v1/kb/articles/{aid}/submit", json={"reviewer_id": users["agent2"].id})
    assert bad_reviewer.status_code == 422
    # Review before submission is a conflict, not a silent no-op.
    assert (await c["km"].post(f"/api/v1/kb/articles/{aid}/review", json={"approve": True})).status_code == 409

    submitted = await c["agent"].post(f"/api/v1/kb/articles/{aid}/submit", json={"reviewer_id": users["km"].id})
    assert submitted.json()["status"] == "in_review"
    # In review, the draft is frozen.
    frozen = await c["agent"].put(f"/api/v1/kb/articles/{aid}/draft", json=ARTICLE)
    assert frozen.status_code == 409
    # Only the named reviewer (or an admin) reviews; sending back needs a reason.
    other_km = people[0]["admin"]
    assert other_km  # admins may review too, tested below
    no_reason = await c["km"].post(f"/api/v1/kb/articles/{aid}/review", json={"approve": False})
    assert no_reason.status_code == 422
    back = await c["km"].post(f"/api/v1/kb/articles/{aid}/review", json={"approve": False, "comment": "补充网点挂失"})
    assert back.json()["status"] == "draft" and back.json()["working"]["review_comment"] == "补充网点挂失"

    edited = await c["agent"].put(
        f"/api/v1/kb/articles/{aid}/draft",
        json={**ARTICLE, "body_markdown": ARTICLE["body_markdown"] + "\n\n也可到网点挂失。"},
    )
    assert edited.status_code == 200 and edited.json()["working"]["number"] == 1
    await c["agent"].post(f"/api/v1/kb/articles/{aid}/submit", json={"reviewer_id": users["km"].id})
    approved = await c["km"].post(f"/api/v1/kb/articles/{aid}/review", json={"approve": True, "comment": "好"})
    assert approved.json()["status"] == "approved"
    published = await c["km"].post(f"/api/v1/kb/articles/{aid}/publish", json={})
    body = published.json()
    assert body["status"] == "published" and body["live"]["number"] == 1 and body["working"] is None

    # Public and published: customers see it now (only the live version, no drafts).
    seen = (await c["customer"].get(f"/api/v1/kb/articles/{aid}")).json()
    assert seen["live"]["title"] == ARTICLE["title"] and seen["working"] is None
    # The contributor earned points once.
    from kefu.knowledge.points import balance

    async with c["agent"]._transport.app.state.session_factory() as db:  # type: ignore[attr-defined]
        assert await balance(db, users["agent"].id) == 10


async def test_editing_published_creates_next_version_while_live_stays(people) -> None:
    _, c = people
    aid = (await c["km"].post("/api/v1/kb/articles", json=ARTICLE)).json()["id"]
    await c["km"].post(f"/api/v1/kb/articles/{aid}/publish", json={})  # publishers may skip review
    draft = await c["km"].put(
        f"/api/v1/kb/articles/{aid}/draft", json={**ARTICLE, "title": "信用卡挂失流程（新）", "change_note": "新增网点"}
    )
    view = draft.json()
    assert view["live"]["number"] == 1 and view["live"]["title"] == ARTICLE["title"]
    assert view["working"]["number"] == 2 and view["working"]["based_on_version"] == 1
    # Agents keep reading version 1 until version 2 is published.
    assert (await c["agent"].get(f"/api/v1/kb/articles/{aid}")).json()["live"]["number"] == 1
    stale = await c["km"].put(f"/api/v1/kb/articles/{aid}/draft", json={**ARTICLE, "expected_version": 1})
    assert stale.status_code == 409  # someone else's newer draft is never overwritten silently
    await c["km"].post(f"/api/v1/kb/articles/{aid}/publish", json={"announce": True, "requires_ack": True})
    versions = (await c["agent"].get(f"/api/v1/kb/articles/{aid}/versions")).json()
    assert [(v["number"], v["status"]) for v in versions] == [(1, "superseded"), (2, "published")]
    diff = (await c["agent"].get(f"/api/v1/kb/articles/{aid}/diff", params={"from": 1, "to": 2})).json()
    title = next(d for d in diff if d["field"] == "title")
    assert {"op": "removed", "text": ARTICLE["title"]} in title["lines"]
    assert {"op": "added", "text": "信用卡挂失流程（新）"} in title["lines"]
    # Restore version 1 as a new draft (3); nothing is lost.
    restored = (await c["km"].post(f"/api/v1/kb/articles/{aid}/versions/1/restore")).json()
    assert restored["working"]["number"] == 3 and restored["working"]["title"] == ARTICLE["title"]
    assert restored["working"]["based_on_version"] == 1
    again = await c["km"].post(f"/api/v1/kb/articles/{aid}/versions/1/restore")
    assert again.status_code == 409
    old = (await c["agent"].get(f"/api/v1/kb/articles/{aid}/versions/1")).json()
    assert old["status"] == "superseded" and old["title"] == ARTICLE["title"]


async def test_internal_articles_never_reach_customers(people) -> None:
    _, c = people
    aid = (await c["km"].post("/api/v1/kb/articles", json={**ARTICLE, "audience": "internal"})).json()["id"]
    await c["km"].post(f"/api/v1/kb/articles/{aid}/publish", json={})
    assert (await c["customer"].get(f"/api/v1/kb/articles/{aid}")).status_code == 404
    listed = (await c["customer"].get("/api/v1/kb/articles", params={"limit": 200})).json()["items"]
    assert aid not in [a["id"] for a in listed]
    assert all(a["audience"] == "public" and a["status"] == "published" for a in listed)
    assert (await c["customer"].get(f"/api/v1/kb/articles/{aid}/versions")).status_code == 403


async def test_archive_and_scheduled_publication_and_expiry(people, app) -> None:
    _, c = people
    aid = (await c["km"].post("/api/v1/kb/articles", json={**ARTICLE, "audience": "public"})).json()["id"]
    at = (utcnow() + timedelta(hours=1)).isoformat()
    scheduled = (await c["km"].post(f"/api/v1/kb/articles/{aid}/publish", json={"publish_at": at})).json()
    assert scheduled["status"] == "approved" and scheduled["working"]["publish_at"] is not None
    assert (await c["customer"].get(f"/api/v1/kb/articles/{aid}")).status_code == 404
    # The scheduler's job runs when due (moved to now here, standing in for the hour passing).
    from sqlalchemy import update

    from kefu.core.jobs import Job

    async with app.state.session_factory() as db, db.begin():
        await db.execute(update(Job).where(Job.kind == "kb.publish_scheduled").values(run_at=utcnow()))
        from kefu.knowledge.models import ArticleVersion

        await db.execute(
            update(ArticleVersion)
            .where(ArticleVersion.article_id == aid)
            .values(publish_at=utcnow() - timedelta(seconds=1))
        )
    # A re-scheduled time no longer matches the job: nothing happens (the time in the job is stale).
    await run_due_jobs(app.state.session_factory, app.state.settings, worker="t")
    assert (await c["km"].get(f"/api/v1/kb/articles/{aid}")).json()["status"] == "approved"
    at2 = (utcnow() - timedelta(seconds=5)).isoformat()
    now_published = (await c["km"].post(f"/api/v1/kb/articles/{aid}/publish", json={"publish_at": at2})).json()
    assert now_published["status"] == "published"  # a time in the past publishes at once

    # The normal case: the job comes due at the scheduled time and publishes.
    later = (await c["km"].post("/api/v1/kb/articles", json={**ARTICLE, "audience": "public"})).json()["id"]
    await c["km"].post(
        f"/api/v1/kb/articles/{later}/publish", json={"publish_at": (utcnow() + timedelta(hours=2)).isoformat()}
    )
    async with app.state.session_factory() as db, db.begin():
        await db.execute(
            update(Job).where(Job.kind == "kb.publish_scheduled", Job.status == "queued").values(run_at=utcnow())
        )
    await run_due_jobs(app.state.session_factory, app.state.settings, worker="t")
    assert (await c["customer"].get(f"/api/v1/kb/articles/{later}")).json()["live"]["number"] == 1

    archived = (await c["km"].post(f"/api/v1/kb/articles/{aid}/archive")).json()
    assert archived["status"] == "archived"
    assert (await c["customer"].get(f"/api/v1/kb/articles/{aid}")).status_code == 404
    assert (await c["km"].put(f"/api/v1/kb/articles/{aid}/draft", json=ARTICLE)).status_code == 409
    assert (await c["km"].post(f"/api/v1/kb/articles/{aid}/unarchive")).json()["status"] == "published"

    expired = (
        await c["km"].post(
            "/api/v1/kb/articles",
            json={**ARTICLE, "audience": "public", "expires_at": (utcnow() + timedelta(seconds=2)).isoformat()},
        )
    ).json()
    await c["km"].post(f"/api/v1/kb/articles/{expired['id']}/publish", json={})
    assert (await c["customer"].get(f"/api/v1/kb/articles/{expired['id']}")).status_code == 200
    async with app.state.session_factory() as db, db.begin():
        from kefu.knowledge.models import Article

        await db.execute(
            update(Article).where(Article.id == expired["id"]).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert (await c["customer"].get(f"/api/v1/kb/articles/{expired['id']}")).status_code == 404


async def test_reverification_flags_overdue_articles(people, app) -> None:
    from sqlalchemy import update

    from kefu.knowledge.models import Article

    _, c = people
    aid = (await c["km"].post("/api/v1/kb/articles", json={**ARTICLE, "verify_interval_days": 30})).json()["id"]
    await c["km"].post(f"/api/v1/kb/articles/{aid}/publish", json={})
    assert aid not in [a["id"] for a in (await c["km"].get("/api/v1/kb/verification-due")).json()]
    async with app.state.session_factory() as db, db.begin():
        await db.execute(
            update(Article).where(Article.id == aid).values(last_verified_at=utcnow() - timedelta(days=31))
        )
    assert aid in [a["id"] for a in (await c["km"].get("/api/v1/kb/verification-due?mine=true")).json()]
    await c["km"].post(f"/api/v1/kb/articles/{aid}/verify")
    assert aid not in [a["id"] for a in (await c["km"].get("/api/v1/kb/verification-due")).json()]
    assert (await c["agent"].get("/api/v1/kb/verification-due")).status_code == 403


async def test_case_articles_and_bad_content(people) -> None:
    _, c = people
    case = await c["km"].post(
        "/api/v1/kb/articles",
        json={
            "title": "客户重复扣费投诉处理",
            "kind": "case",
            "case_fields": {
                "problem": "重复扣费",
                "analysis": "支付回调重试",
                "resolution": "退款",
                "lessons": "核对流水",
            },
        },
    )
    assert case.status_code == 201 and case.json()["working"]["case_fields"]["lessons"] == "核对流水"
    not_case = await c["km"].post("/api/v1/kb/articles", json={**ARTICLE, "case_fields": {"problem": "x"}})
    assert not_case.status_code == 422
    scripted = await c["km"].post(
        "/api/v1/kb/articles",
        json={
            **ARTICLE,
            "body_markdown": "<script>alert(1)</script><img src=x onerror=alert(1)>[x](javascript:alert(1))",
        },
    )
    html = scripted.json()["working"]["body_html"]
    assert "<script" not in html and "onerror" not in html and 'href="javascript' not in html
    huge = await c["km"].post(
        "/api/v1/kb/articles",
        content=b'{"title": "x", "body_markdown": "' + b"x" * 10_000_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    empty_title = await c["km"].post("/api/v1/kb/articles", json={**ARTICLE, "title": "   "})
    assert empty_title.status_code == 422
