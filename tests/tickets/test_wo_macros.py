"""Macros (variables looked up, never evaluated; actions applied with the reply) and suggestion forwards."""

from __future__ import annotations

import pytest
from wo_support import create, two_teams

from conftest import signed_in_clients
from kefu.tickets.macros import render_text


@pytest.fixture
async def world(app, make):  # noqa: ANN001, ANN201
    return await two_teams(app, make)


@pytest.fixture
async def clients(app, make, world):  # noqa: ANN001, ANN201
    km = await make.user("knowledge_manager")
    users = {"a": world.agent_a, "b": world.agent_b, "sup": world.supervisor, "km": km}
    async with signed_in_clients(app, users) as signed_in:
        yield signed_in


def test_render_text_never_evaluates() -> None:
    values = {"customer.name": "张三", "agent.name": "李四"}
    rendered = render_text(
        "{{ customer.name }}您好，我是{{agent.name}}。{{ customer.__class__ }} {{7*7}} {% if x %}{{nope}}", values
    )
    assert rendered.text == "张三您好，我是李四。{{ customer.__class__ }} {{7*7}} {% if x %}{{nope}}"
    assert rendered.unknown_variables == ["customer.__class__", "7*7", "nope"]


async def test_macro_scopes_render_and_apply(clients, world) -> None:  # noqa: ANN001
    a, b, sup = clients["a"], clients["b"], clients["sup"]
    body = "{{customer.name}}您好，工单{{work_order.number}}（{{work_order.title}}）已处理。{{agent.name}} {{secret}}"
    refused = await a.post("/api/v1/macros", json={"name": "共享", "body": "x", "scope": "shared"})
    assert refused.status_code == 403
    shared = await sup.post(
        "/api/v1/macros",
        json={
            "name": "已解决",
            "body": body,
            "scope": "shared",
            "actions": {"status": "resolved", "priority": "low", "add_tags": ["已回复"], "remove_tags": ["待办"]},
        },
    )
    assert shared.status_code == 201, shared.text
    mine = (await a.post("/api/v1/macros", json={"name": "我的", "body": "hi"})).json()
    team = await a.post("/api/v1/macros", json={"name": "团队", "body": "t", "scope": "team", "team_id": world.team_a})
    assert team.status_code == 201
    assert (
        await a.post("/api/v1/macros", json={"name": "别队", "body": "t", "scope": "team", "team_id": world.team_b})
    ).status_code == 403
    visible_a = {m["id"] for m in (await a.get("/api/v1/macros")).json()}
    visible_b = {m["id"] for m in (await b.get("/api/v1/macros")).json()}
    assert {shared.json()["id"], mine["id"], team.json()["id"]} <= visible_a
    assert shared.json()["id"] in visible_b and not {mine["id"], team.json()["id"]} & visible_b
    assert (await b.patch(f"/api/v1/macros/{mine['id']}", json={"name": "x"})).status_code == 404
    assert (await a.patch(f"/api/v1/macros/{shared.json()['id']}", json={"name": "x"})).status_code == 403
    assert (await a.patch(f"/api/v1/macros/{mine['id']}", json={"name": "改名"})).json()["name"] == "改名"

    work_order = await create(a, title="无法登录", customer_id=world.customer_id, tags=["待办"])
    rendered = await a.post(f"/api/v1/macros/{shared.json()['id']}/render", json={"work_order_id": work_order["id"]})
    assert rendered.status_code == 200, rendered.text
    text = rendered.json()["text"]
    assert text.startswith(work_order["customer_name"] + "您好，工单" + work_order["number"] + "（无法登录）")
    assert world.agent_a.display_name in text and "{{secret}}" in text
    assert rendered.json()["unknown_variables"] == ["secret"]

    applied = await a.post(
        f"/api/v1/work-orders/{work_order['id']}/apply-macro", json={"macro_id": shared.json()["id"]}
    )
    assert applied.status_code == 200, applied.text
    result = applied.json()
    assert result["work_order"]["status"] == "resolved"
    assert result["work_order"]["priority"] == "low"
    assert result["work_order"]["tags"] == ["已回复"]
    assert result["comment"]["internal"] is False and result["comment"]["body"] == text
    kinds = [e["kind"] for e in (await a.get(f"/api/v1/work-orders/{work_order['id']}/history")).json()]
    assert "macro_applied" in kinds and "status" in kinds

    assert (await a.delete(f"/api/v1/macros/{mine['id']}")).status_code == 204
    assert (
        await a.post(f"/api/v1/macros/{mine['id']}/render", json={"work_order_id": work_order["id"]})
    ).status_code == 404


async def test_suggestion_forward_and_answer(clients, world, make) -> None:  # noqa: ANN001
    a, b, km, sup = clients["a"], clients["b"], clients["km"], clients["sup"]
    inquiry = await create(a)
    km_user_id = (await km.get("/api/v1/me")).json()["id"]
    assert (
        await a.post(f"/api/v1/work-orders/{inquiry['id']}/forward", json={"to_user_id": km_user_id})
    ).status_code == 422  # only suggestions
    suggestion = await create(a, type="suggestion", title="希望增加夜间客服", assignee_id=world.agent_a.id)
    forwarded = await a.post(
        f"/api/v1/work-orders/{suggestion['id']}/forward", json={"to_user_id": km_user_id, "question": "可行吗？"}
    )
    assert forwarded.status_code == 201, forwarded.text
    forward_id = forwarded.json()["id"]
    older = await create(a, type="suggestion")
    older_forward = (await a.post(f"/api/v1/work-orders/{older['id']}/forward", json={"to_user_id": km_user_id})).json()

    inbox = (await km.get("/api/v1/suggestions")).json()
    assert {f["id"] for f in inbox} >= {forward_id, older_forward["id"]}
    assert next(f for f in inbox if f["id"] == forward_id)["work_order_title"] == "希望增加夜间客服"
    assert (await b.get("/api/v1/suggestions")).json() == []

    assert (await b.post(f"/api/v1/suggestions/{forward_id}/answer", json={"answer": "x"})).status_code == 404
    answered = await km.post(f"/api/v1/suggestions/{forward_id}/answer", json={"answer": "已列入计划"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["answered_at"] is not None
    assert (await km.post(f"/api/v1/suggestions/{forward_id}/answer", json={"answer": "again"})).status_code == 409
    # A supervisor may answer for the recipient.
    assert (
        await sup.post(f"/api/v1/suggestions/{older_forward['id']}/answer", json={"answer": "好"})
    ).status_code == 200

    inbox = (await km.get("/api/v1/suggestions")).json()
    unanswered_first = [f["answered_at"] is None for f in inbox]
    assert unanswered_first == sorted(unanswered_first, reverse=True)
    comments = (await a.get(f"/api/v1/work-orders/{suggestion['id']}/comments")).json()
    assert [(c["body"], c["internal"]) for c in comments] == [("已列入计划", False)]
    kinds = [e["kind"] for e in (await a.get(f"/api/v1/work-orders/{suggestion['id']}/history")).json()]
    assert "forwarded" in kinds and "suggestion_answered" in kinds
