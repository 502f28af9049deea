"""Work orders through the API: lifecycle, visibility of restricted ones everywhere, idempotency, custom
fields, merges and links, attachments, export, and a guard against N+1 queries in the list."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from sqlalchemy import select
from wo_support import create, two_teams

from conftest import QueryCounter, signed_in_clients
from kefu.tickets.models import WorkOrder, WorkOrderComment, WorkOrderLink


@pytest.fixture
async def world(app, make):  # noqa: ANN001, ANN201
    return await two_teams(app, make)


@pytest.fixture
async def clients(app, world):  # noqa: ANN001, ANN201
    users = {"a": world.agent_a, "b": world.agent_b, "sup": world.supervisor, "admin": world.admin}
    async with signed_in_clients(app, users) as signed_in:
        yield signed_in


# --- lifecycle ---------------------------------------------------------------------------------------
async def test_create_read_update_and_history(clients, world) -> None:  # noqa: ANN001
    a = clients["a"]
    made = await create(
        a, type="complaint", priority="high", customer_id=world.customer_id, tags=["退款", "vip", "vip"]
    )
    assert made["number"] == f"WO{made['id']:08d}"
    assert made["status"] == "new"
    assert made["team_id"] == world.team_a  # the creator's only team
    assert made["tags"] == ["vip", "退款"]
    assert made["customer_name"].startswith("客户")
    assert made["created_by_id"] == world.agent_a.id

    changed = await a.patch(
        f"/api/v1/work-orders/{made['id']}", json={"priority": "urgent", "title": "新标题", "description": "详情"}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["priority"] == "urgent"

    assigned = await a.post(f"/api/v1/work-orders/{made['id']}/assign", json={"assignee_id": world.agent_a.id})
    assert assigned.json()["assignee_name"] == world.agent_a.display_name

    events = (await a.get(f"/api/v1/work-orders/{made['id']}/history")).json()
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "created"
    field_changes = {e["data"]["field"]: e["data"] for e in events if e["kind"] == "field_changed"}
    assert set(field_changes) == {"priority", "title", "description"}
    assert field_changes["priority"]["old"] == "high" and field_changes["priority"]["new"] == "urgent"
    assert "assigned" in kinds

    # Unknown assignee, customer and team are refused, and nothing is half written.
    for body in ({"assignee_id": 999_999_999}, {"customer_id": 999_999_999}, {"team_id": 999_999_999}):
        refused = await a.patch(f"/api/v1/work-orders/{made['id']}", json=body)
        assert refused.status_code == 422, refused.text
    assert (await a.patch(f"/api/v1/work-orders/{made['id']}", json={})).status_code == 422
    assert (await a.patch(f"/api/v1/work-orders/{made['id']}", json={"title": None})).status_code == 422


async def test_customer_cannot_be_assignee(app, make, clients) -> None:  # noqa: ANN001
    customer_user = await make.user("customer")
    refused = await clients["a"].post("/api/v1/work-orders", json={"title": "x", "assignee_id": customer_user.id})
    assert refused.status_code == 422


async def test_state_machine(clients) -> None:  # noqa: ANN001
    a = clients["a"]
    made = await create(a)
    url = f"/api/v1/work-orders/{made['id']}/status"
    assert (await a.post(url, json={"status": "open"})).json()["status"] == "open"
    assert (await a.post(url, json={"status": "pending"})).status_code == 200
    resolved = await a.post(url, json={"status": "resolved", "reason": "已解决"})
    assert resolved.json()["resolved_at"] is not None
    refused = await a.post(url, json={"status": "pending"})
    assert refused.status_code == 422 and refused.json()["error"]["details"] == {"from": "resolved", "to": "pending"}
    assert (await a.post(url, json={"status": "escalated"})).status_code == 422
    assert (await a.post(url, json={"status": "flying"})).status_code == 422
    assert (await a.post(url, json={"status": "closed"})).json()["closed_at"] is not None
    reopened = (await a.post(url, json={"status": "reopened"})).json()
    assert reopened["closed_at"] is None and reopened["resolved_at"] is None
    statuses = [
        (e["data"]["old"], e["data"]["new"])
        for e in (await a.get(f"/api/v1/work-orders/{made['id']}/history")).json()
        if e["kind"] == "status"
    ]
    assert statuses == [
        ("new", "open"),
        ("open", "pending"),
        ("pending", "resolved"),
        ("resolved", "closed"),
        ("closed", "reopened"),
    ]


async def test_comments_public_and_internal(app, clients) -> None:  # noqa: ANN001
    a = clients["a"]
    made = await create(a)
    url = f"/api/v1/work-orders/{made['id']}/comments"
    note = await a.post(url, json={"body": "内部备注"})
    assert note.status_code == 201 and note.json()["internal"] is True
    async with app.state.session_factory() as db:
        assert (await db.get(WorkOrder, made["id"])).first_responded_at is None
    reply = await a.post(url, json={"body": "您好，已处理", "internal": False})
    assert reply.json()["internal"] is False
    async with app.state.session_factory() as db:
        first = (await db.get(WorkOrder, made["id"])).first_responded_at
    assert first is not None
    await a.post(url, json={"body": "第二次回复", "internal": False})
    async with app.state.session_factory() as db:
        assert (await db.get(WorkOrder, made["id"])).first_responded_at == first
    listed = (await a.get(url)).json()
    assert [c["body"] for c in listed] == ["内部备注", "您好，已处理", "第二次回复"]
    assert listed[0]["author_name"]
    assert (await a.post(url, json={"body": ""})).status_code == 422


async def test_tags(clients) -> None:  # noqa: ANN001
    a = clients["a"]
    made = await create(a, tags=["a"])
    url = f"/api/v1/work-orders/{made['id']}/tags"
    assert (await a.post(url, json={"tags": ["b", "a", "发票"]})).json() == ["a", "b", "发票"]
    assert (await a.delete(f"{url}/发票")).json() == ["a", "b"]
    assert (await a.delete(f"{url}/nope")).status_code == 404
    listed = (await a.get("/api/v1/work-orders", params={"tag": "b"})).json()["items"]
    assert [i["id"] for i in listed] == [made["id"]]


# --- visibility of restricted work orders ------------------------------------------------------------
async def test_restricted_work_order_is_hidden_from_other_teams_everywhere(clients, world) -> None:  # noqa: ANN001
    a, b, sup = clients["a"], clients["b"], clients["sup"]
    secret_title = f"投诉坐席-{world.team_a}"
    secret = await create(a, title=secret_title, restricted=True, type="complaint", tags=["secret-tag"])
    public = await create(a, title=f"公开-{world.team_a}")
    wid = secret["id"]
    att = await a.post(
        f"/api/v1/work-orders/{wid}/attachments", files={"file": ("evidence.txt", b"secret", "text/plain")}
    )
    assert att.status_code == 201, att.text
    att_id = att.json()["id"]
    await a.post(f"/api/v1/work-orders/{wid}/comments", json={"body": "note"})

    def ids(response: Any) -> set[int]:
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    searches = [
        {},
        {"q": secret["number"]},
        {"q": str(wid)},
        {"q": secret_title},
        {"tag": "secret-tag"},
        {"view": "team"},
        {"team_id": world.team_a},
    ]
    for params in searches:
        assert wid not in ids(await b.get("/api/v1/work-orders", params=params)), params
    assert public["id"] in ids(await b.get("/api/v1/work-orders", params={"q": public["title"]}))
    for q in (secret["number"], str(wid), secret_title):
        found = await b.get("/api/v1/work-orders/search", params={"q": q})
        assert found.status_code == 200 and wid not in {i["id"] for i in found.json()}, q
        assert wid in {i["id"] for i in (await a.get("/api/v1/work-orders/search", params={"q": q})).json()}, q
    for client in (a, sup):
        for params in searches[:5]:
            assert wid in ids(await client.get("/api/v1/work-orders", params=params)), params

    for path in ("", "/comments", "/history", "/attachments", f"/attachments/{att_id}"):
        hidden = await b.get(f"/api/v1/work-orders/{wid}{path}")
        assert hidden.status_code == 404, (path, hidden.text)
        assert (await a.get(f"/api/v1/work-orders/{wid}{path}")).status_code == 200, path
        assert (await sup.get(f"/api/v1/work-orders/{wid}{path}")).status_code == 200, path
    # Writes by id are refused the same way: the id is never confirmed.
    for method, path, body in (
        ("PATCH", "", {"title": "x"}),
        ("POST", "/comments", {"body": "x"}),
        ("POST", "/status", {"status": "open"}),
        ("POST", "/tags", {"tags": ["x"]}),
        ("POST", "/links", {"other_id": public["id"]}),
    ):
        assert (await b.request(method, f"/api/v1/work-orders/{wid}{path}", json=body)).status_code == 404
    # Linking a visible work order to a hidden one does not confirm the hidden one either.
    assert (await b.post(f"/api/v1/work-orders/{public['id']}/links", json={"other_id": wid})).status_code == 404

    def exported(response: Any) -> set[int]:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text.lstrip("\ufeff"))))
        return {int(r["id"]) for r in rows}

    assert wid not in exported(await b.get("/api/v1/work-orders/export"))
    assert wid not in exported(await b.get("/api/v1/work-orders/export", params={"q": secret["number"]}))
    assert public["id"] in exported(await b.get("/api/v1/work-orders/export"))
    assert wid in exported(await a.get("/api/v1/work-orders/export", params={"q": secret["number"]}))
    assert wid in exported(await sup.get("/api/v1/work-orders/export", params={"tag": "secret-tag"}))

    # Assigned to agent b, it becomes visible to b.
    await a.post(f"/api/v1/work-orders/{wid}/assign", json={"assignee_id": world.agent_b.id})
    assert (await b.get(f"/api/v1/work-orders/{wid}")).status_code == 200


# --- idempotency -------------------------------------------------------------------------------------
async def test_idempotency_key_on_create(app, clients) -> None:  # noqa: ANN001
    a = clients["a"]
    title = "幂等-" + str(id(a))
    headers = {"Idempotency-Key": f"create-{id(a)}"}
    first = await a.post("/api/v1/work-orders", json={"title": title}, headers=headers)
    again = await a.post("/api/v1/work-orders", json={"title": title}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    different = await a.post("/api/v1/work-orders", json={"title": title + "!"}, headers=headers)
    assert different.status_code == 422
    plain = [await a.post("/api/v1/work-orders", json={"title": title}) for _ in range(2)]
    assert plain[0].json()["id"] != plain[1].json()["id"]
    async with app.state.session_factory() as db:
        rows = (await db.scalars(select(WorkOrder.id).where(WorkOrder.title == title))).all()
    assert len(rows) == 3


# --- custom fields -----------------------------------------------------------------------------------
async def test_custom_field_definitions_and_validation(clients) -> None:  # noqa: ANN001
    admin, a = clients["admin"], clients["a"]
    suffix = str(id(admin) % 100000)
    order_no, channel, amount, due = f"order_{suffix}", f"channel_{suffix}", f"amount_{suffix}", f"due_{suffix}"
    assert (await a.post("/api/v1/work-order-fields", json={"key": order_no, "label": "x"})).status_code == 403
    made = {}
    for body in (
        {"key": order_no, "label": "订单号", "kind": "text", "required": True},
        {"key": channel, "label": "渠道", "kind": "choice", "choices": ["电话", "微信"]},
        {"key": amount, "label": "金额", "kind": "number"},
        {"key": due, "label": "日期", "kind": "date"},
    ):
        response = await admin.post("/api/v1/work-order-fields", json=body)
        assert response.status_code == 201, response.text
        made[body["key"]] = response.json()["id"]
    assert (await admin.post("/api/v1/work-order-fields", json={"key": order_no, "label": "dup"})).status_code == 409
    bad_defs = (
        {"key": "Bad Key", "label": "x"},
        {"key": f"c_{suffix}", "label": "x", "kind": "choice"},
        {"key": f"t_{suffix}", "label": "x", "kind": "text", "choices": ["a"]},
    )
    for body in bad_defs:
        assert (await admin.post("/api/v1/work-order-fields", json=body)).status_code == 422, body

    try:
        for fields in (
            {},  # the required one is missing
            {order_no: "A1", "nope": "x"},
            {order_no: "A1", channel: "邮件"},
            {order_no: "A1", amount: "十"},
            {order_no: "A1", amount: True},
            {order_no: "A1", due: "2026-02-30"},
            {order_no: 12},
        ):
            refused = await a.post("/api/v1/work-orders", json={"title": "f", "custom_fields": fields})
            assert refused.status_code == 422, (fields, refused.text)
        good = await create(a, custom_fields={order_no: "A1", channel: "微信", amount: 12.5, due: "2026-02-28"})
        assert good["custom_fields"] == {order_no: "A1", channel: "微信", amount: 12.5, due: "2026-02-28"}
        url = f"/api/v1/work-orders/{good['id']}"
        assert (await a.patch(url, json={"custom_fields": {order_no: None}})).status_code == 422
        changed = await a.patch(url, json={"custom_fields": {channel: None, amount: 3}})
        assert changed.json()["custom_fields"] == {order_no: "A1", amount: 3, due: "2026-02-28"}
        history = (await a.get(f"{url}/history")).json()
        assert {e["data"]["field"] for e in history if e["kind"] == "field_changed"} == {
            f"custom_fields.{channel}",
            f"custom_fields.{amount}",
        }
        listed = {f["key"]: f for f in (await a.get("/api/v1/work-order-fields")).json()}
        assert listed[channel]["choices"] == ["电话", "微信"]
    finally:
        # Switch them off: other tests create work orders without these required fields.
        for field_id in made.values():
            off = await admin.patch(f"/api/v1/work-order-fields/{field_id}", json={"active": False})
            assert off.status_code == 200 and off.json()["active"] is False
    assert (await a.post("/api/v1/work-orders", json={"title": "after"})).status_code == 201


# --- links and merges --------------------------------------------------------------------------------
async def test_links_are_stored_once_per_pair(app, clients) -> None:  # noqa: ANN001
    a = clients["a"]
    one, two = await create(a), await create(a)
    linked = await a.post(f"/api/v1/work-orders/{two['id']}/links", json={"other_id": one["id"]})
    assert linked.json() == [{"other_id": one["id"], "kind": "related"}]
    again = await a.post(f"/api/v1/work-orders/{one['id']}/links", json={"other_id": two["id"]})
    assert again.json() == [{"other_id": two["id"], "kind": "related"}]
    async with app.state.session_factory() as db:
        rows = (await db.scalars(select(WorkOrderLink).where(WorkOrderLink.from_id.in_([one["id"], two["id"]])))).all()
    assert [(r.from_id, r.to_id) for r in rows] == [(one["id"], two["id"])]
    assert (await a.post(f"/api/v1/work-orders/{one['id']}/links", json={"other_id": one["id"]})).status_code == 422
    assert (await a.delete(f"/api/v1/work-orders/{two['id']}/links/{one['id']}")).status_code == 204
    assert (await a.delete(f"/api/v1/work-orders/{two['id']}/links/{one['id']}")).status_code == 404


async def test_merge_duplicates(app, clients, world) -> None:  # noqa: ANN001
    a, b = clients["a"], clients["b"]
    survivor, duplicate, third = await create(a), await create(a), await create(a)
    await a.post(f"/api/v1/work-orders/{duplicate['id']}/comments", json={"body": "重复工单的备注"})
    assert (
        await a.post(f"/api/v1/work-orders/{duplicate['id']}/merge", json={"into_id": duplicate["id"]})
    ).status_code == 422
    merged = await a.post(f"/api/v1/work-orders/{duplicate['id']}/merge", json={"into_id": survivor["id"]})
    assert merged.status_code == 200, merged.text
    assert merged.json()["id"] == survivor["id"]
    gone = (await a.get(f"/api/v1/work-orders/{duplicate['id']}")).json()
    assert gone["status"] == "closed" and gone["merged_into_id"] == survivor["id"]
    assert [c["body"] for c in (await a.get(f"/api/v1/work-orders/{duplicate['id']}/comments")).json()] == [
        "重复工单的备注"
    ]
    survivor_events = (await a.get(f"/api/v1/work-orders/{survivor['id']}/history")).json()
    assert {"kind": "merged_from", "from_id": duplicate["id"]} in [
        {"kind": e["kind"], **e["data"]} for e in survivor_events
    ]
    duplicate_kinds = [e["kind"] for e in (await a.get(f"/api/v1/work-orders/{duplicate['id']}/history")).json()]
    assert "merged" in duplicate_kinds
    # Into a merged one, twice, or writing on a merged one: refused.
    assert (
        await a.post(f"/api/v1/work-orders/{third['id']}/merge", json={"into_id": duplicate["id"]})
    ).status_code == 422
    assert (
        await a.post(f"/api/v1/work-orders/{duplicate['id']}/merge", json={"into_id": third["id"]})
    ).status_code == 422
    assert (await a.post(f"/api/v1/work-orders/{duplicate['id']}/comments", json={"body": "x"})).status_code == 422
    # Across restricted visibility: refused (and hidden ones are not even confirmed).
    restricted = await create(a, restricted=True)
    assert (
        await a.post(f"/api/v1/work-orders/{third['id']}/merge", json={"into_id": restricted["id"]})
    ).status_code == 422
    assert (
        await a.post(f"/api/v1/work-orders/{restricted['id']}/merge", json={"into_id": third["id"]})
    ).status_code == 422
    assert (
        await b.post(f"/api/v1/work-orders/{third['id']}/merge", json={"into_id": restricted["id"]})
    ).status_code == 404
    async with app.state.session_factory() as db:
        comments = (
            await db.scalars(
                select(WorkOrderComment.work_order_id).where(WorkOrderComment.work_order_id == survivor["id"])
            )
        ).all()
    assert comments == []  # the duplicate's comments stay on the duplicate


# --- attachments -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content", "served_as"),
    [
        ("page.html", b"<script>alert(1)</script>", "application/octet-stream"),
        ("logo.svg", b"<svg onload='alert(1)'/>", "application/octet-stream"),
        ("../../报告.pdf", b"%PDF-1.4", "application/pdf"),
    ],
)
async def test_attachments_are_served_only_as_safe_downloads(clients, name, content, served_as) -> None:  # noqa: ANN001
    a = clients["a"]
    made = await create(a)
    url = f"/api/v1/work-orders/{made['id']}/attachments"
    uploaded = await a.post(url, files={"file": (name, content, "text/html")})
    assert uploaded.status_code == 201, uploaded.text
    info = uploaded.json()
    assert "/" not in info["filename"] and info["size"] == len(content)
    download = await a.get(f"{url}/{info['id']}")
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"].split(";")[0] == served_as
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in download.headers["content-security-policy"]
    assert [x["id"] for x in (await a.get(url)).json()] == [info["id"]]


async def test_attachment_limits_and_removal(app, clients) -> None:  # noqa: ANN001
    a, b, sup = clients["a"], clients["b"], clients["sup"]
    made = await create(a)
    url = f"/api/v1/work-orders/{made['id']}/attachments"
    assert (await a.post(url, files={"file": ("empty.txt", b"", "text/plain")})).status_code == 422
    limit = app.state.settings.kb_attachment_max_bytes
    too_big = await a.post(url, files={"file": ("big.bin", b"x" * (limit + 1), "application/octet-stream")})
    assert too_big.status_code == 413
    first = (await a.post(url, files={"file": ("a.txt", b"a", "text/plain")})).json()
    assert (await b.delete(f"{url}/{first['id']}")).status_code == 403  # visible to b, but not b's file
    assert (await sup.delete(f"{url}/{first['id']}")).status_code == 204
    assert (await a.get(f"{url}/{first['id']}")).status_code == 404
    kinds = [e["kind"] for e in (await a.get(f"/api/v1/work-orders/{made['id']}/history")).json()]
    assert kinds.count("attachment_added") == 1 and kinds.count("attachment_removed") == 1


# --- lists -------------------------------------------------------------------------------------------
async def test_list_views_filters_and_keyset_pages(clients, world) -> None:  # noqa: ANN001
    a, b = clients["a"], clients["b"]
    tag = f"page-{world.team_a}"
    made = [await create(a, tags=[tag], priority="high" if i % 2 else "low") for i in range(5)]
    mine = await create(a, tags=[tag], assignee_id=world.agent_a.id)
    seen: list[int] = []
    cursor = ""
    while True:
        page = (await a.get("/api/v1/work-orders", params={"tag": tag, "limit": 2, "cursor": cursor})).json()
        seen += [i["id"] for i in page["items"]]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    assert seen == sorted([m["id"] for m in made] + [mine["id"]], reverse=True)  # newest activity first
    high = (await a.get("/api/v1/work-orders", params={"tag": tag, "priority": "high"})).json()["items"]
    assert {i["id"] for i in high} == {made[1]["id"], made[3]["id"]}
    assert [
        i["id"] for i in (await a.get("/api/v1/work-orders", params={"view": "mine", "tag": tag})).json()["items"]
    ] == [mine["id"]]
    team_view = (await b.get("/api/v1/work-orders", params={"view": "team", "tag": tag})).json()["items"]
    assert team_view == []
    await a.post(f"/api/v1/work-orders/{made[0]['id']}/status", json={"status": "resolved"})
    several = await a.get("/api/v1/work-orders", params=[("tag", tag), ("status", "resolved"), ("status", "closed")])
    assert [i["id"] for i in several.json()["items"]] == [made[0]["id"]]
    for bad in ({"cursor": "!!"}, {"cursor": "bm9wZQ"}, {"view": "everything"}, {"status": "flying"}, {"limit": 0}):
        assert (await a.get("/api/v1/work-orders", params=bad)).status_code == 422, bad


async def test_work_orders_for_customer_open_first(app, clients, world) -> None:  # noqa: ANN001
    from wo_support import principal_with_teams

    from kefu.tickets import service

    a = clients["a"]
    old_open = await create(a, customer_id=world.customer_id)
    done = await create(a, customer_id=world.customer_id)
    await a.post(f"/api/v1/work-orders/{done['id']}/status", json={"status": "resolved"})
    hidden = await create(clients["b"], customer_id=world.customer_id, restricted=True)
    async with app.state.session_factory() as db:
        rows = await service.work_orders_for_customer(db, principal_with_teams(world.agent_a), world.customer_id)
    assert [r.work_order.id for r in rows] == [old_open["id"], done["id"]]
    assert hidden["id"] not in [r.work_order.id for r in rows]


async def test_saved_views_are_per_user(clients) -> None:  # noqa: ANN001
    a, b = clients["a"], clients["b"]
    made = await a.post(
        "/api/v1/saved-views", json={"name": "我的紧急", "filters": {"view": "mine", "priority": "urgent"}}
    )
    assert made.status_code == 201, made.text
    assert made.json()["filters"] == {"view": "mine", "priority": "urgent"}
    assert (await a.post("/api/v1/saved-views", json={"name": "我的紧急"})).status_code == 409
    assert (await a.post("/api/v1/saved-views", json={"name": "x", "filters": {"view": "nope"}})).status_code == 422
    assert [v["name"] for v in (await a.get("/api/v1/saved-views")).json()] == ["我的紧急"]
    assert (await b.get("/api/v1/saved-views")).json() == []
    assert (await b.delete(f"/api/v1/saved-views/{made.json()['id']}")).status_code == 404
    assert (await a.delete(f"/api/v1/saved-views/{made.json()['id']}")).status_code == 204


# --- N+1 guard ---------------------------------------------------------------------------------------
async def test_list_runs_a_fixed_number_of_queries(app, make, clients, world) -> None:  # noqa: ANN001
    a = clients["a"]
    assignees = [await make.user("agent", team_ids=(world.team_a,)) for _ in range(3)]
    few, many = f"few-{world.team_a}", f"many-{world.team_a}"
    for i in range(3):
        await create(a, tags=[few, f"x{i}"], assignee_id=assignees[i % 3].id, customer_id=world.customer_id)
    for i in range(40):
        await create(a, tags=[many, f"y{i}"], assignee_id=assignees[i % 3].id, customer_id=world.customer_id)
    counts = {}
    for tag, expected in ((few, 3), (many, 40)):
        with QueryCounter(app) as queries:
            response = await a.get("/api/v1/work-orders", params={"tag": tag, "limit": 50})
        items = response.json()["items"]
        assert len(items) == expected
        assert all(i["assignee_name"] and i["customer_name"] and i["team_name"] for i in items)
        counts[tag] = queries.count
    assert counts[few] > 0
    assert counts[few] == counts[many], counts
