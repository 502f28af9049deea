"""Feedback threads on articles: every transition (forbidden ones too), who may read what, the draft
revision an accepted suggestion opens, points awarded exactly once, and hostile markup neutralized."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conftest import Factory, login, principal_of, signed_in_clients
from kefu.core.audit import Actor
from kefu.core.errors import Invalid, NotFound
from kefu.core.events import Event
from kefu.identity import service as identity
from kefu.identity.models import User
from kefu.knowledge import feedback, points, service
from kefu.knowledge.models import ArticleVersion, FeedbackMessage, FeedbackThread, PointsEntry

ROLES = {
    "admin": "admin",
    "km": "knowledge_manager",
    "supervisor": "supervisor",
    "agent": "agent",
    "agent2": "agent",
    "owner": "agent",  # an agent who owns an article
    "customer": "customer",
}


@pytest.fixture(scope="module")
async def world(app) -> AsyncIterator[dict[str, Any]]:  # noqa: ANN001
    make = Factory(app)
    users = {key: await make.user(role) for key, role in ROLES.items()}
    async with signed_in_clients(app, users) as clients:
        yield {"users": users, "c": clients, "make": make}


async def article(
    app,  # noqa: ANN001
    by: User,
    *,
    owner: User | None = None,
    publish: bool = True,
    body: str = "拨打 **95588** 挂失。",
    kind: str = "faq",
) -> int:
    """An internal article written (and published) through the service by ``by``, a knowledge manager."""
    p = principal_of(by)
    async with app.state.session_factory() as db, db.begin():
        view = await service.create_article(
            db,
            p,
            service.Content(title="信用卡挂失怎么办？", body_markdown=body, tags=["挂失"]),
            service.Placement(kind=kind, owner_id=owner.id if owner else None),
        )
        if publish:
            await service.publish(db, p, app.state.settings, view.article.id)
    return view.article.id


async def open_via_api(client: httpx.AsyncClient, article_id: int, kind: str = "question", **extra: str) -> dict:
    payload = {"kind": kind, "subject": "挂失后多久补卡？", "body": "客户问补卡时间。", **extra}
    response = await client.post(f"/api/v1/kb/articles/{article_id}/feedback", json=payload)
    assert response.status_code == 201, response.text
    return response.json()


async def ledger_rows(app, event_key: str) -> list[PointsEntry]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        return list((await db.scalars(select(PointsEntry).where(PointsEntry.event_key == event_key))).all())


async def next_event(sub, type_: str, thread_id: int) -> Event:  # noqa: ANN001
    """The next event of ``type_`` about ``thread_id`` (other tests' events are skipped)."""

    async def wait() -> Event:
        while True:
            event = await sub.get()
            if event.type == type_ and event.data.get("thread_id") == thread_id:
                return event

    return await asyncio.wait_for(wait(), timeout=10)


# --- opening and routing -------------------------------------------------------------------------
async def test_thread_goes_to_the_owner_or_else_to_the_knowledge_managers(app, world) -> None:
    u, c = world["users"], world["c"]
    sub = app.state.event_bus.subscribe()
    try:
        owned = await article(app, u["km"], owner=u["owner"])
        thread = await open_via_api(c["agent"], owned, kind="error")
        assert thread["status"] == "open" and thread["kind"] == "error"
        assert thread["assignee_id"] == u["owner"].id and thread["author_id"] == u["agent"].id
        assert thread["article_title"] == "信用卡挂失怎么办？" and thread["version_number"] == 1
        assert [m["author_id"] for m in thread["messages"]] == [u["agent"].id]
        event = await next_event(sub, "kb.feedback_opened", thread["id"])
        assert event.user_ids == (u["owner"].id,)

        # An owner who left (inactive): the thread goes to the knowledge-manager pool.
        leaver = await world["make"].user("agent")
        orphan = await article(app, u["km"], owner=leaver)
        async with app.state.session_factory() as db, db.begin():
            await identity.set_active(db, Actor.system("test"), await db.get(User, leaver.id), False)
        pooled = await open_via_api(c["agent"], orphan)
        assert pooled["assignee_id"] is None
        event = await next_event(sub, "kb.feedback_opened", pooled["id"])
        assert event.roles == ("knowledge_manager",) and not event.user_ids

        # Feedback on one's own article also needs other eyes: the pool, not oneself.
        own = await article(app, u["km"])
        assert (await open_via_api(c["km"], own))["assignee_id"] is None
    finally:
        sub.close()


async def test_conversation_moves_between_open_and_answered_and_notifies_the_other_side(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    thread = await open_via_api(c["agent"], aid)
    tid = thread["id"]
    sub = app.state.event_bus.subscribe()
    try:
        answered = await c["km"].post(f"/api/v1/kb/feedback/{tid}/replies", json={"body": "补卡约 7 个工作日。"})
        assert answered.status_code == 201 and answered.json()["status"] == "answered"
        assert (await next_event(sub, "kb.feedback_reply", tid)).user_ids == (u["agent"].id,)

        again = await c["agent"].post(f"/api/v1/kb/feedback/{tid}/replies", json={"body": "加急呢？"})
        assert again.json()["status"] == "open"
        # The article's owner (the knowledge manager who wrote it) is the assignee.
        assert (await next_event(sub, "kb.feedback_reply", tid)).user_ids == (u["km"].id,)

        # The author writing twice in a row keeps it open; a second handler reply keeps it answered.
        assert (await c["agent"].post(f"/api/v1/kb/feedback/{tid}/replies", json={"body": "补充"})).json()[
            "status"
        ] == "open"
        assert (await c["admin"].post(f"/api/v1/kb/feedback/{tid}/replies", json={"body": "加急 3 天"})).json()[
            "status"
        ] == "answered"
        assert (await c["km"].post(f"/api/v1/kb/feedback/{tid}/replies", json={"body": "已确认"})).json()[
            "status"
        ] == "answered"
    finally:
        sub.close()

    full = (await c["agent"].get(f"/api/v1/kb/feedback/{tid}")).json()
    assert full["message_count"] == 6 and len(full["messages"]) == 6
    assert [m["author_name"] for m in full["messages"]][:2] == [u["agent"].display_name, u["km"].display_name]

    # A question accepted = answered satisfactorily: no draft, and (by default) no points.
    accepted = await c["km"].post(f"/api/v1/kb/feedback/{tid}/accept", json={"reason": "已解答"})
    assert accepted.status_code == 200
    body = accepted.json()
    assert body["status"] == "accepted" and body["draft_version_id"] is None
    assert body["resolution_reason"] == "已解答" and body["resolved_by_id"] == u["km"].id
    assert await ledger_rows(app, f"feedback_answered:{tid}") == []
    closed = await c["agent"].post(f"/api/v1/kb/feedback/{tid}/replies", json={"body": "谢谢"})
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "conflict"


# --- who may do what -----------------------------------------------------------------------------
async def test_forbidden_transitions_and_reads(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    tid = (await open_via_api(c["agent"], aid, kind="suggestion"))["id"]

    # Another agent cannot learn the thread exists: 404 for reading and replying, absent from lists.
    assert (await c["agent2"].get(f"/api/v1/kb/feedback/{tid}")).status_code == 404
    assert (await c["agent2"].post(f"/api/v1/kb/feedback/{tid}/replies", json={"body": "x"})).status_code == 404
    listed = (await c["agent2"].get("/api/v1/kb/feedback", params={"article_id": aid})).json()
    assert listed["items"] == []
    # Supervisors are not participants of knowledge feedback.
    assert (await c["supervisor"].get(f"/api/v1/kb/feedback/{tid}")).status_code == 404
    # Agents (the author included) cannot accept or reject: the access matrix says so.
    for who in ("agent", "agent2"):
        assert (await c[who].post(f"/api/v1/kb/feedback/{tid}/accept", json={})).status_code == 403
        assert (await c[who].post(f"/api/v1/kb/feedback/{tid}/reject", json={"reason": "no"})).status_code == 403
    # Customers: no feedback routes at all, and by-id reads do not confirm the id.
    assert (await c["customer"].get(f"/api/v1/kb/feedback/{tid}")).status_code == 404
    assert (await c["customer"].get("/api/v1/kb/feedback")).status_code == 403
    assert (await c["customer"].post(f"/api/v1/kb/articles/{aid}/feedback", json={})).status_code == 403
    # Strangers must sign in.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as anon:
        assert (await anon.get(f"/api/v1/kb/feedback/{tid}")).status_code == 401

    # The author and the knowledge managers see it.
    assert (await c["agent"].get(f"/api/v1/kb/feedback/{tid}")).status_code == 200
    assert tid in [
        t["id"] for t in (await c["km"].get("/api/v1/kb/feedback", params={"article_id": aid})).json()["items"]
    ]
    # Nothing above changed the thread.
    assert (await c["km"].get(f"/api/v1/kb/feedback/{tid}")).json()["status"] == "open"


async def test_an_agent_who_owns_the_article_handles_its_feedback(app, world) -> None:
    u = world["users"]
    aid = await article(app, u["km"], owner=u["owner"])
    author, owner, other = principal_of(u["agent"]), principal_of(u["owner"]), principal_of(u["agent2"])
    settings = app.state.settings
    async with app.state.session_factory() as db, db.begin():
        tid = (await feedback.open_thread(db, author, settings, aid, "error", "号码错了", "应为 95588")).thread.id
    async with app.state.session_factory() as db:
        assert [v.thread.id for v in await feedback.list_threads(db, owner, article_id=aid)] == [tid]
        with pytest.raises(NotFound):
            await feedback.get_thread(db, other, tid)
    async with app.state.session_factory() as db, db.begin():
        assert (await feedback.reply(db, owner, tid, "谢谢，已核实")).thread.status == "answered"
    # The service lets the owner resolve (the REST route additionally needs feedback/resolve).
    async with app.state.session_factory() as db, db.begin():
        view = await feedback.accept(db, owner, settings, tid)
    assert view.thread.status == "accepted" and view.draft_version_number == 2
    async with app.state.session_factory() as db:
        draft = await db.get(ArticleVersion, view.thread.draft_version_id)
        assert draft.author_id == u["owner"].id and draft.feedback_thread_id == tid
    assert len(await ledger_rows(app, f"feedback_accepted:{tid}")) == 1


# --- resolution ----------------------------------------------------------------------------------
async def test_reject_needs_a_reason_and_closes_the_thread(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    tid = (await open_via_api(c["agent"], aid, kind="suggestion"))["id"]

    for payload in ({}, {"reason": ""}, {"reason": "   "}):
        refused = await c["km"].post(f"/api/v1/kb/feedback/{tid}/reject", json=payload)
        assert refused.status_code == 422, payload
        assert set(refused.json()) == {"error"}
    assert (await c["km"].get(f"/api/v1/kb/feedback/{tid}")).json()["status"] == "open"  # nothing half-done
    # The service refuses an empty reason too, whoever calls it.
    async with app.state.session_factory() as db, db.begin():
        with pytest.raises(Invalid):
            await feedback.reject(db, principal_of(u["km"]), tid, " \n ")

    rejected = await c["km"].post(f"/api/v1/kb/feedback/{tid}/reject", json={"reason": "与监管要求不符"})
    assert rejected.status_code == 200
    body = rejected.json()
    assert body["status"] == "rejected" and body["resolution_reason"] == "与监管要求不符"
    assert body["resolved_by_name"] == u["km"].display_name and body["resolved_at"]

    assert (await c["agent"].post(f"/api/v1/kb/feedback/{tid}/replies", json={"body": "为什么？"})).status_code == 409
    assert (await c["km"].post(f"/api/v1/kb/feedback/{tid}/accept", json={})).status_code == 409
    # Rejecting again (a retried request) changes nothing.
    again = await c["admin"].post(f"/api/v1/kb/feedback/{tid}/reject", json={"reason": "另一个理由"})
    assert again.status_code == 200 and again.json()["resolution_reason"] == "与监管要求不符"
    assert again.json()["resolved_by_id"] == u["km"].id
    assert await ledger_rows(app, f"feedback_accepted:{tid}") == []


async def test_accepting_a_suggestion_opens_a_linked_draft_and_awards_points_once(app, world) -> None:
    u, c = world["users"], world["c"]
    author = await world["make"].user("agent")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    await login(client, author)
    try:
        aid = await article(app, u["km"], body="原文：拨打 95588。")
        tid = (await open_via_api(client, aid, kind="suggestion", subject="补充网点挂失"))["id"]

        accepted = await c["km"].post(f"/api/v1/kb/feedback/{tid}/accept", json={"reason": "采纳"})
        assert accepted.status_code == 200, accepted.text
        body = accepted.json()
        assert body["status"] == "accepted" and body["draft_version_number"] == 2
        async with app.state.session_factory() as db:
            draft = await db.get(ArticleVersion, body["draft_version_id"])
            live = await db.scalar(
                select(ArticleVersion).where(ArticleVersion.article_id == aid, ArticleVersion.number == 1)
            )
            assert draft.status == "draft" and draft.feedback_thread_id == tid
            # The draft starts as the live content (nothing retyped, nothing duplicated).
            assert (draft.title, draft.body_markdown, draft.tags) == (live.title, live.body_markdown, live.tags)
            assert draft.based_on_version == 1 and live.status == "published"
            assert f"#{tid}" in draft.change_note

        rows = await ledger_rows(app, f"feedback_accepted:{tid}")
        assert [(r.user_id, r.points, r.rule, r.article_id) for r in rows] == [
            (author.id, points.DEFAULT_RULES["feedback_accepted"], "feedback_accepted", aid)
        ]
        # The accept processed twice: the request retried, and the award path run again directly.
        retried = await c["admin"].post(f"/api/v1/kb/feedback/{tid}/accept", json={})
        assert retried.status_code == 200 and retried.json()["draft_version_id"] == body["draft_version_id"]
        async with app.state.session_factory() as db, db.begin():
            thread = await db.get(FeedbackThread, tid)
            assert await feedback.award_accepted_feedback(db, app.state.settings, thread) is False
            assert await feedback.award_accepted_feedback(db, app.state.settings, thread) is False
        assert len(await ledger_rows(app, f"feedback_accepted:{tid}")) == 1
        mine = (await client.get("/api/v1/kb/points/me")).json()
        assert mine["total"] == points.DEFAULT_RULES["feedback_accepted"]
        assert [e["rule"] for e in mine["recent"]] == ["feedback_accepted"]

        # A second accepted error report links to the draft that already exists, not a new one.
        second = (await open_via_api(client, aid, kind="error", subject="热线号码"))["id"]
        linked = (await c["km"].post(f"/api/v1/kb/feedback/{second}/accept", json={})).json()
        assert linked["draft_version_id"] == body["draft_version_id"]
        async with app.state.session_factory() as db:
            versions = await db.scalar(
                select(func.count()).select_from(ArticleVersion).where(ArticleVersion.article_id == aid)
            )
            assert versions == 2
            assert (await db.get(ArticleVersion, body["draft_version_id"])).feedback_thread_id == tid
        assert len(await ledger_rows(app, f"feedback_accepted:{second}")) == 1
    finally:
        await client.aclose()


async def test_nobody_earns_points_by_accepting_their_own_feedback(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["admin"])
    tid = (await open_via_api(c["km"], aid, kind="error"))["id"]
    accepted = await c["km"].post(f"/api/v1/kb/feedback/{tid}/accept", json={})
    assert accepted.json()["status"] == "accepted" and accepted.json()["draft_version_id"]
    assert await ledger_rows(app, f"feedback_accepted:{tid}") == []


async def test_accepting_on_an_archived_article_writes_nothing(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    tid = (await open_via_api(c["agent"], aid, kind="suggestion"))["id"]
    async with app.state.session_factory() as db, db.begin():
        await service.archive(db, principal_of(u["km"]), aid)
    refused = await c["km"].post(f"/api/v1/kb/feedback/{tid}/accept", json={})
    assert refused.status_code == 409
    thread = (await c["km"].get(f"/api/v1/kb/feedback/{tid}")).json()
    assert thread["status"] == "open" and thread["draft_version_id"] is None
    assert await ledger_rows(app, f"feedback_accepted:{tid}") == []
    # And no new feedback on an archived article.
    closed = await c["agent"].post(
        f"/api/v1/kb/articles/{aid}/feedback", json={"kind": "question", "subject": "s", "body": "b"}
    )
    assert closed.status_code == 409


# --- hostile and bad input -----------------------------------------------------------------------
HOSTILE = (
    "<script>alert('x')</script>\n\n"
    '<img src="x" onerror="alert(1)">\n\n'
    "[点我](javascript:alert(2))\n\n"
    '<a href="javascript:alert(3)">链接</a> <a href="https://example.com/ok">好链接</a>'
)


def assert_neutralized(html: str) -> None:
    lowered = html.lower()
    assert "<script" not in lowered and "onerror" not in lowered, html
    # "javascript:" may survive as inert text, never as a link or source.
    assert not re.search(r"""(href|src)\s*=\s*["']?\s*javascript:""", lowered), html
    assert 'href="https://example.com/ok"' in html


async def test_scripts_in_feedback_are_neutralized(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    thread = await open_via_api(c["agent"], aid, body=HOSTILE)
    assert_neutralized(thread["messages"][0]["body_html"])
    replied = await c["km"].post(f"/api/v1/kb/feedback/{thread['id']}/replies", json={"body": HOSTILE})
    assert_neutralized(replied.json()["messages"][1]["body_html"])
    async with app.state.session_factory() as db:
        stored = (
            await db.scalars(select(FeedbackMessage.body_html).where(FeedbackMessage.thread_id == thread["id"]))
        ).all()
    assert len(stored) == 2
    for html in stored:
        assert_neutralized(html)


async def count_threads(app) -> tuple[int, int]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        return (
            await db.scalar(select(func.count()).select_from(FeedbackThread)),
            await db.scalar(select(func.count()).select_from(FeedbackMessage)),
        )


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"kind": "praise", "subject": "s", "body": "b"}, 422),
        ({"kind": "question", "subject": "   ", "body": "b"}, 422),
        ({"kind": "question", "subject": "s", "body": ""}, 422),
        ({"kind": "question", "subject": "s\x00", "body": "b"}, 422),
        ({"kind": "question", "subject": "s", "body": "x" * (feedback.MAX_MESSAGE_CHARS + 1)}, 422),
        ({"kind": "question", "subject": "s" * 301, "body": "b"}, 422),
        ({"kind": "question", "subject": "s", "body": "b", "priority": "high"}, 422),
        ({"kind": "question", "subject": "s"}, 422),
    ],
)
async def test_bad_feedback_is_refused_and_writes_nothing(app, world, payload, status) -> None:  # noqa: ANN001
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    before = await count_threads(app)
    response = await c["agent"].post(f"/api/v1/kb/articles/{aid}/feedback", json=payload)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert await count_threads(app) == before


async def test_unknown_or_hidden_articles_and_threads_are_404(app, world) -> None:
    u, c = world["users"], world["c"]
    draft_only = await article(app, u["km"], publish=False)  # a draft: agents do not see it
    payload = {"kind": "question", "subject": "s", "body": "b"}
    before = await count_threads(app)
    assert (await c["agent"].post(f"/api/v1/kb/articles/{draft_only}/feedback", json=payload)).status_code == 404
    assert (await c["agent"].post("/api/v1/kb/articles/999999999/feedback", json=payload)).status_code == 404
    assert await count_threads(app) == before
    for url in ("/api/v1/kb/feedback/999999999", "/api/v1/kb/feedback/0", "/api/v1/kb/feedback/abc"):
        response = await c["km"].get(url)
        assert response.status_code in (404, 422) and set(response.json()) == {"error"}
    assert (await c["km"].get("/api/v1/kb/feedback", params={"status": "lost"})).status_code == 422
    assert (await c["km"].get("/api/v1/kb/feedback", params={"limit": 0})).status_code == 422
    assert (await c["km"].post("/api/v1/kb/feedback/999999999/replies", json={"body": "x"})).status_code == 404
    # Knowledge managers may give feedback on drafts they can see.
    assert (await c["km"].post(f"/api/v1/kb/articles/{draft_only}/feedback", json=payload)).status_code == 201


# --- the inbox -----------------------------------------------------------------------------------
async def test_inbox_filters_and_keyset_pages(app, world) -> None:
    u, c = world["users"], world["c"]
    owned = await article(app, u["km"], owner=u["owner"])
    ids = [(await open_via_api(c["agent"], owned, subject=f"问题 {i}"))["id"] for i in range(3)]
    mine_elsewhere = (await open_via_api(c["agent2"], owned))["id"]
    await c["owner"].post(f"/api/v1/kb/feedback/{ids[0]}/replies", json={"body": "答复"})

    first = (await c["km"].get("/api/v1/kb/feedback", params={"article_id": owned, "limit": 2})).json()
    assert [t["id"] for t in first["items"]] == [mine_elsewhere, ids[2]]  # newest first
    second = (
        await c["km"].get(
            "/api/v1/kb/feedback", params={"article_id": owned, "limit": 2, "before_id": first["next_before_id"]}
        )
    ).json()
    assert [t["id"] for t in second["items"]] == [ids[1], ids[0]]
    third = (
        await c["km"].get(
            "/api/v1/kb/feedback", params={"article_id": owned, "limit": 2, "before_id": second["next_before_id"]}
        )
    ).json()
    assert third == {"items": [], "next_before_id": None}

    answered = (await c["km"].get("/api/v1/kb/feedback", params={"article_id": owned, "status": "answered"})).json()
    assert [t["id"] for t in answered["items"]] == [ids[0]]
    assert (
        answered["items"][0]["message_count"] == 2 and answered["items"][0]["assignee_name"] == u["owner"].display_name
    )
    by_assignee = (await c["km"].get("/api/v1/kb/feedback", params={"assignee_id": u["owner"].id})).json()["items"]
    assert {t["id"] for t in by_assignee} >= {*ids, mine_elsewhere}
    pool = (await c["km"].get("/api/v1/kb/feedback", params={"unassigned": True, "article_id": owned})).json()
    assert pool["items"] == []

    # Agents see only their own threads; the owner sees the threads on their article.
    agent2_view = (await c["agent2"].get("/api/v1/kb/feedback", params={"article_id": owned})).json()["items"]
    assert [t["id"] for t in agent2_view] == [mine_elsewhere]
    owner_view = (await c["owner"].get("/api/v1/kb/feedback", params={"article_id": owned})).json()["items"]
    assert [t["id"] for t in owner_view] == [mine_elsewhere, *reversed(ids)]
    agent_mine = (await c["agent"].get("/api/v1/kb/feedback", params={"mine": True, "article_id": owned})).json()
    assert [t["id"] for t in agent_mine["items"]] == list(reversed(ids))
