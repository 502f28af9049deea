"""The board of recent changes and announcements (acknowledgements, the unread report), training
collections of case articles, and the points leaderboard per period."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conftest import Factory, login, principal_of, signed_in_clients, unique
from kefu.core.audit import Actor
from kefu.identity import service as identity
from kefu.identity.models import User
from kefu.knowledge import board, service
from kefu.knowledge.models import Announcement, AnnouncementAck, PointsEntry, TrainingItem

ROLES = {
    "admin": "admin",
    "km": "knowledge_manager",
    "supervisor": "supervisor",
    "agent": "agent",
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
    title: str | None = None,
    kind: str = "faq",
    audience: str = "internal",
    publish: bool = True,
    announce: bool = False,
    change_note: str = "",
) -> int:
    p = principal_of(by)
    case_fields = {"problem": "客户投诉", "resolution": "退款"} if kind == "case" else {}
    async with app.state.session_factory() as db, db.begin():
        view = await service.create_article(
            db,
            p,
            service.Content(
                title=title or unique("标题"), body_markdown="正文", case_fields=case_fields, change_note=change_note
            ),
            service.Placement(kind=kind, audience=audience),
        )
        if publish:
            await service.publish(db, p, app.state.settings, view.article.id, announce=announce)
    return view.article.id


async def republish(app, by: User, article_id: int, change_note: str) -> None:  # noqa: ANN001
    p = principal_of(by)
    async with app.state.session_factory() as db, db.begin():
        live = (await service.get_article(db, p, article_id)).live
        await service.save_draft(
            db, p, article_id, service.Content(title=live.title, body_markdown="新正文", change_note=change_note)
        )
        await service.publish(db, p, app.state.settings, article_id)


def entries_for(entries: list[dict], article_id: int) -> list[tuple]:
    return [(e["kind"], e["version_number"], e["change_note"]) for e in entries if e["article_id"] == article_id]


# --- the board -----------------------------------------------------------------------------------
async def test_board_merges_recent_changes_and_addressed_announcements(app, world) -> None:
    u, c = world["users"], world["c"]
    internal = await article(app, u["km"], change_note="初版")
    await republish(app, u["km"], internal, "更新热线号码")
    public = await article(app, u["km"], audience="public")
    draft = await article(app, u["km"], audience="public", publish=False)
    announced = await article(app, u["km"], announce=True, change_note="重要变更")
    for_agents = await c["km"].post(
        "/api/v1/kb/announcements",
        json={
            "title": "新规上线",
            "body_markdown": "请阅读 **新规**",
            "requires_ack": True,
            "audience_roles": ["agent"],
        },
    )
    assert for_agents.status_code == 201, for_agents.text
    for_supervisors = await c["supervisor"].post(
        "/api/v1/kb/announcements", json={"title": "排班调整", "audience_roles": ["supervisor"]}
    )
    assert for_supervisors.status_code == 201

    seen = (await c["agent"].get("/api/v1/kb/board")).json()
    # Newest first, every published version with its number and change note.
    assert entries_for(seen, internal) == [("change", 2, "更新热线号码"), ("change", 1, "初版")]
    assert entries_for(seen, public) == [("change", 1, "")]
    assert entries_for(seen, draft) == []  # drafts are not changes
    # Published "with announcement": shown once, as the announcement.
    assert entries_for(seen, announced) == [("announcement", 1, "")]
    times = [e["at"] for e in seen]
    assert times == sorted(times, reverse=True)
    ann_ids = {e["announcement_id"] for e in seen if e["kind"] == "announcement"}
    assert for_agents.json()["id"] in ann_ids and for_supervisors.json()["id"] not in ann_ids
    mine = next(e for e in seen if e["announcement_id"] == for_agents.json()["id"])
    assert mine["requires_ack"] is True and mine["acked"] is False and "<strong>新规</strong>" in mine["body_html"]
    sup_ids = {e["announcement_id"] for e in (await c["supervisor"].get("/api/v1/kb/board")).json()}
    assert for_supervisors.json()["id"] in sup_ids and for_agents.json()["id"] not in sup_ids

    # A customer (through the service: the REST board is for staff only) never sees internal articles,
    # drafts or staff announcements.
    async with app.state.session_factory() as db:
        customer_board = await board.board(db, principal_of(u["customer"]))
    assert {e.article_id for e in customer_board} >= {public}
    assert not {e.article_id for e in customer_board} & {internal, draft, announced}
    assert all(e.kind == "change" for e in customer_board)
    assert (await c["customer"].get("/api/v1/kb/board")).status_code == 403


async def test_acknowledgement_is_idempotent_and_the_unread_report_is_right(app, world) -> None:
    u, c = world["users"], world["c"]
    make = world["make"]
    team = await make.team(unique("一组"))
    reader, laggard = await make.user("agent", team_ids=(team,)), await make.user("agent")
    gone = await make.user("agent")
    async with app.state.session_factory() as db, db.begin():
        await identity.set_active(db, Actor.system("test"), await db.get(User, gone.id), False)
    created = await c["supervisor"].post(
        "/api/v1/kb/announcements", json={"title": "必读：新流程", "requires_ack": True, "audience_roles": ["agent"]}
    )
    aid = created.json()["id"]

    report = (await c["km"].get(f"/api/v1/kb/announcements/{aid}/unread")).json()
    unread = {r["user_id"]: r for r in report["unread"]}
    assert reader.id in unread and laggard.id in unread
    assert unread[reader.id]["teams"] and unread[reader.id]["display_name"] == reader.display_name
    assert gone.id not in unread  # inactive users are not expected to read
    assert u["km"].id not in unread and u["supervisor"].id not in unread  # not addressed
    assert report["addressed"] - report["acknowledged"] == len(report["unread"])

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    await login(client, reader)
    try:
        first = await client.post(f"/api/v1/kb/announcements/{aid}/ack")
        assert first.status_code == 200, first.text
        second = await client.post(f"/api/v1/kb/announcements/{aid}/ack")
        assert second.status_code == 200 and second.json()["acked_at"] == first.json()["acked_at"]
        entry = next(e for e in (await client.get("/api/v1/kb/board")).json() if e["announcement_id"] == aid)
        assert entry["acked"] is True and entry["acked_at"] == first.json()["acked_at"]
    finally:
        await client.aclose()
    async with app.state.session_factory() as db:
        acks = await db.scalar(
            select(func.count()).select_from(AnnouncementAck).where(AnnouncementAck.announcement_id == aid)
        )
    assert acks == 1

    after = (await c["admin"].get(f"/api/v1/kb/announcements/{aid}/unread")).json()
    still_unread = {r["user_id"] for r in after["unread"]}
    assert reader.id not in still_unread and laggard.id in still_unread
    assert after["acknowledged"] == report["acknowledged"] + 1

    # Agents do not read the report ("report" is not a read action: 403); those not addressed cannot
    # acknowledge (404: they do not learn of it).
    assert (await c["agent"].get(f"/api/v1/kb/announcements/{aid}/unread")).status_code == 403
    assert (await c["km"].post(f"/api/v1/kb/announcements/{aid}/ack")).status_code == 404
    assert (await c["customer"].post(f"/api/v1/kb/announcements/{aid}/ack")).status_code == 403
    assert (await c["km"].get("/api/v1/kb/announcements/999999999/unread")).status_code == 404


async def test_unacknowledged_important_announcements_stay_on_the_board(app, world) -> None:
    agent = await world["make"].user("agent")
    old = datetime.now(UTC) - timedelta(days=90)
    async with app.state.session_factory() as db, db.begin():
        important = Announcement(title="旧的必读", requires_ack=True, audience_roles=["agent"], created_at=old)
        casual = Announcement(title="旧的通知", requires_ack=False, audience_roles=["agent"], created_at=old)
        db.add_all([important, casual])
    async with app.state.session_factory() as db:
        ids = {e.announcement_id for e in await board.board(db, principal_of(agent), since_days=30)}
    assert important.id in ids and casual.id not in ids
    async with app.state.session_factory() as db, db.begin():
        await board.acknowledge(db, principal_of(agent), important.id)
    async with app.state.session_factory() as db:
        ids = {e.announcement_id for e in await board.board(db, principal_of(agent), since_days=30)}
    assert important.id not in ids


@pytest.mark.parametrize(
    "payload",
    [
        {"title": ""},
        {"title": "   "},
        {"title": "t", "audience_roles": ["customer"]},
        {"title": "t", "audience_roles": ["emperor"]},
        {"title": "t", "article_id": 999999999},
        {"title": "t", "requires_ack": "maybe"},
        {"title": "t", "colour": "red"},
        {"title": "t\x00"},
    ],
)
async def test_bad_announcements_are_refused_and_write_nothing(app, world, payload) -> None:  # noqa: ANN001
    c = world["c"]
    async with app.state.session_factory() as db:
        before = await db.scalar(select(func.count()).select_from(Announcement))
    response = await c["km"].post("/api/v1/kb/announcements", json=payload)
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error"}
    async with app.state.session_factory() as db:
        assert await db.scalar(select(func.count()).select_from(Announcement)) == before


async def test_announcements_neutralize_scripts_and_only_announcers_announce(app, world) -> None:
    u, c = world["users"], world["c"]
    aid = await article(app, u["km"])
    made = await c["admin"].post(
        "/api/v1/kb/announcements",
        json={
            "title": "<b>标题</b>",
            "body_markdown": "<script>alert(1)</script><img src=x onerror=alert(1)> [x](javascript:alert(1))",
            "article_id": aid,
        },
    )
    assert made.status_code == 201
    body = made.json()
    html = body["body_html"].lower()
    assert "<script" not in html and "onerror" not in html and 'href="javascript' not in html
    assert body["title"] == "<b>标题</b>"  # stored as text; pages escape it
    assert body["article_id"] == aid and body["version_number"] == 1
    assert sorted(body["audience_roles"]) == sorted(service.STAFF)
    assert (await c["agent"].post("/api/v1/kb/announcements", json={"title": "t"})).status_code == 403
    assert (await c["customer"].post("/api/v1/kb/announcements", json={"title": "t"})).status_code == 403


# --- training collections ------------------------------------------------------------------------
async def test_training_collections_hold_case_and_experience_articles_only(app, world) -> None:
    u, c = world["users"], world["c"]
    case = await article(app, u["km"], kind="case", title="案例：重复扣款")
    experience = await article(app, u["km"], kind="experience", title="经验：安抚客户")
    faq = await article(app, u["km"], kind="faq")
    case_draft = await article(app, u["km"], kind="case", publish=False, title="案例：草稿")

    name = unique("新人培训")
    created = await c["km"].post(
        "/api/v1/kb/training", json={"name": name, "description": "第一周", "article_ids": [case, experience]}
    )
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    assert [i["article_id"] for i in created.json()["items"]] == [case, experience]

    async def item_count() -> int:
        async with app.state.session_factory() as db:
            return await db.scalar(
                select(func.count()).select_from(TrainingItem).where(TrainingItem.collection_id == cid)
            )

    for bad in ([case, faq], [case, case], [case, 999999999], [0]):
        refused = await c["km"].put(f"/api/v1/kb/training/{cid}/items", json={"article_ids": bad})
        assert refused.status_code == 422, (bad, refused.text)
        assert set(refused.json()) == {"error"}
    assert await item_count() == 2  # nothing half-replaced
    wrong = await c["km"].put(f"/api/v1/kb/training/{cid}/items", json={"article_ids": [faq]})
    assert wrong.json()["error"]["details"] == {"article_ids": [faq]}

    # One call adds, removes and reorders.
    reordered = await c["km"].put(
        f"/api/v1/kb/training/{cid}/items", json={"article_ids": [experience, case_draft, case]}
    )
    assert reordered.status_code == 200
    items = reordered.json()["items"]
    assert [(i["article_id"], i["position"], i["published"]) for i in items] == [
        (experience, 0, True),
        (case_draft, 1, False),
        (case, 2, True),
    ]
    assert items[1]["title"] == "案例：草稿" and items[0]["kind"] == "experience"

    # Agents see only the published items, in order.
    agent_view = (await c["agent"].get(f"/api/v1/kb/training/{cid}")).json()
    assert [i["article_id"] for i in agent_view["items"]] == [experience, case]
    listed = next(col for col in (await c["agent"].get("/api/v1/kb/training")).json() if col["id"] == cid)
    assert [i["article_id"] for i in listed["items"]] == [experience, case]

    renamed = await c["supervisor"].patch(f"/api/v1/kb/training/{cid}", json={"name": name + " v2"})
    assert renamed.status_code == 200 and renamed.json()["name"] == name + " v2"
    assert renamed.json()["description"] == "第一周"
    clash = await c["km"].post("/api/v1/kb/training", json={"name": name + " v2"})
    assert clash.status_code == 409
    assert (await c["km"].patch(f"/api/v1/kb/training/{cid}", json={"name": "  "})).status_code == 422

    # Agents and customers do not curate; customers do not see training at all.
    assert (await c["agent"].post("/api/v1/kb/training", json={"name": unique("x")})).status_code == 403
    assert (await c["agent"].put(f"/api/v1/kb/training/{cid}/items", json={"article_ids": []})).status_code == 403
    assert (await c["agent"].patch(f"/api/v1/kb/training/{cid}", json={"description": "x"})).status_code == 403
    assert (await c["customer"].get(f"/api/v1/kb/training/{cid}")).status_code == 404
    assert (await c["customer"].get("/api/v1/kb/training")).status_code == 403
    assert (await c["km"].get("/api/v1/kb/training/999999999")).status_code == 404
    assert (await c["km"].put("/api/v1/kb/training/999999999/items", json={"article_ids": []})).status_code == 404

    emptied = await c["km"].put(f"/api/v1/kb/training/{cid}/items", json={"article_ids": []})
    assert emptied.json()["items"] == [] and await item_count() == 0


# --- points --------------------------------------------------------------------------------------
def test_period_bounds_follow_the_business_calendar() -> None:
    now = datetime(2021, 6, 16, 12, 0, tzinfo=UTC)  # Wednesday 20:00 in Shanghai
    assert board.period_bounds("week", now, "Asia/Shanghai") == (
        datetime(2021, 6, 13, 16, 0, tzinfo=UTC),  # Monday 00:00 Shanghai
        datetime(2021, 6, 20, 16, 0, tzinfo=UTC),
    )
    assert board.period_bounds("month", now, "Asia/Shanghai") == (
        datetime(2021, 5, 31, 16, 0, tzinfo=UTC),
        datetime(2021, 6, 30, 16, 0, tzinfo=UTC),
    )
    december = datetime(2021, 12, 31, 17, 0, tzinfo=UTC)  # already 1 January 2022 in Shanghai
    assert board.period_bounds("month", december, "Asia/Shanghai")[0] == datetime(2021, 12, 31, 16, 0, tzinfo=UTC)
    assert board.period_bounds("all", now, "Asia/Shanghai") == (None, None)


async def test_leaderboard_per_period(app, world) -> None:
    make = world["make"]
    a, b, old_timer = await make.user("agent"), await make.user("agent"), await make.user("agent")
    now = datetime(2021, 6, 16, 12, 0, tzinfo=UTC)
    # Past awards are written straight into the ledger (inserts are all it ever takes).
    seed = [
        (a, 5, datetime(2021, 6, 15, 3, 0, tzinfo=UTC)),  # this week
        (a, 1, datetime(2021, 6, 2, 3, 0, tzinfo=UTC)),  # this month, earlier week
        (b, 7, datetime(2021, 6, 3, 3, 0, tzinfo=UTC)),  # this month
        (b, 2, datetime(2021, 6, 20, 17, 0, tzinfo=UTC)),  # next week: outside this week
        (old_timer, 11, datetime(2021, 1, 10, 3, 0, tzinfo=UTC)),  # long ago
    ]
    async with app.state.session_factory() as db, db.begin():
        for user, amount, at in seed:
            db.add(
                PointsEntry(
                    user_id=user.id, points=amount, rule="feedback_accepted", event_key=unique("seed:"), created_at=at
                )
            )
    mine = {a.id: "a", b.id: "b", old_timer.id: "old"}

    async def ranking(period: str) -> list[tuple[str, int]]:
        async with app.state.session_factory() as db:
            result = await board.leaderboard(db, period, time_zone="Asia/Shanghai", now=now, limit=100)
        return [(mine[r.user_id], r.points) for r in result.rows if r.user_id in mine]

    assert await ranking("week") == [("a", 5)]
    assert await ranking("month") == [("b", 9), ("a", 6)]
    assert await ranking("all") == [("old", 11), ("b", 9), ("a", 6)]

    async with app.state.session_factory() as db:
        points_of_a = await board.my_points(db, principal_of(a), time_zone="Asia/Shanghai", now=now)
    assert (points_of_a.total, points_of_a.this_week, points_of_a.this_month) == (6, 5, 6)
    assert [e.points for e in points_of_a.recent] == [5, 1]


async def test_points_routes(app, world) -> None:
    u, c = world["users"], world["c"]
    for period in ("week", "month", "all"):
        response = await c["agent"].get("/api/v1/kb/points/leaderboard", params={"period": period})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["period"] == period and [r["rank"] for r in body["rows"]] == list(range(1, len(body["rows"]) + 1))
        assert (body["since"] is None) == (period == "all")
    assert (await c["agent"].get("/api/v1/kb/points/leaderboard", params={"period": "year"})).status_code == 422
    me = (await c["agent"].get("/api/v1/kb/points/me")).json()
    assert me["user_id"] == u["agent"].id and me["total"] == 0 and me["recent"] == []
    assert (await c["customer"].get("/api/v1/kb/points/me")).status_code == 403
    assert (await c["customer"].get("/api/v1/kb/points/leaderboard")).status_code == 403
