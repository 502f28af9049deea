"""The routing REST API through signed-in clients: queue configuration with every refusal (and nothing
written on one), membership and capacity changes that route again, presence for oneself and by a
supervisor, offers accepted and rejected, queue position, moves, priority, the live view, presence
history, and a skill change through the identity API that routes a waiting contact."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from tests.routing.routing_support import SYSTEM, code, contact, entry, make_agent, make_queue, offered_to

from conftest import signed_in_clients
from kefu.core.audit import AuditEntry
from kefu.core.errors import Invalid
from kefu.db.base import utcnow
from kefu.routing import queues
from kefu.routing.models import CapacityAssignment, CapacityProfile, QueueMember, QueueSkill, RoutingQueue

Q = "/api/v1/routing/queues"
COUNTED = (RoutingQueue, QueueSkill, QueueMember, CapacityProfile, CapacityAssignment, AuditEntry)


async def counts(app: Any) -> dict[str, int]:
    async with app.state.session_factory() as db:
        return {m.__tablename__: await db.scalar(select(func.count()).select_from(m)) for m in COUNTED}


def field_of(response: httpx.Response) -> str:
    details = response.json()["error"]["details"]
    if isinstance(details, dict):
        return str(details["field"])
    return ".".join(str(p) for p in details[0]["loc"][1:])  # pydantic: ["body", field, ...]


async def people(app: Any, make: Any) -> dict[str, Any]:
    return {"sup": await make.user("supervisor"), "agent": await make.user("agent")}


async def test_queue_crud_and_every_refusal_writes_nothing(app, make) -> None:  # noqa: ANN001
    skill = await make.skill()
    team = await make.team()
    chat_queue = await make_queue(app, channel="chat")
    async with signed_in_clients(app, await people(app, make)) as c:
        sup = c["sup"]
        body = {
            "code": code("api"),
            "name": "售后热线",
            "channel": "phone",
            "language": "zh-CN",
            "priority": 10,
            "sl_target_percent": 85,
            "sl_threshold_seconds": 20,
            "bullseye": [{"after_seconds": 30}, {"after_seconds": 60, "proficiency_drop": 2, "any_member": True}],
            "team_id": team,
            "skills": [{"skill_id": skill, "min_proficiency": 3}],
        }
        created = await sup.post(Q, json=body)
        assert created.status_code == 201, created.text
        queue = created.json()
        assert queue["channel_class"] == "voice" and queue["skills"] == [{"skill_id": skill, "min_proficiency": 3}]
        assert queue["bullseye"][0] == {"after_seconds": 30, "proficiency_drop": 1, "any_member": False}
        spare = (await sup.post(Q, json={"code": code("api"), "name": "溢出", "channel": "walk_in"})).json()
        assert (await sup.get(f"{Q}/{queue['id']}")).json()["code"] == body["code"]
        assert {q["id"] for q in (await sup.get(Q)).json()} >= {queue["id"], spare["id"]}
        assert (await c["agent"].get(Q)).status_code == 200
        assert (await c["agent"].post(Q, json={**body, "code": code()})).status_code == 403

        changed = await sup.patch(
            f"{Q}/{queue['id']}",
            json={"overflow_queue_id": spare["id"], "overflow_after_seconds": 120, "skills": [], "priority": -5},
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["skills"] == [] and changed.json()["overflow_queue_id"] == spare["id"]

        def new(**fields: Any) -> dict[str, Any]:
            return {"code": code("api"), "name": "队列", "channel": "phone", **fields}

        refusals: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("POST", Q, {**new(), "code": body["code"]}, 409, "code"),
            ("POST", Q, new(code="has space"), 422, "code"),
            ("POST", Q, new(channel="fax"), 422, "channel"),
            ("POST", Q, new(language="x"), 422, "language"),
            ("POST", Q, new(priority=101), 422, "priority"),
            ("POST", Q, new(sl_target_percent=0), 422, "sl_target_percent"),
            ("POST", Q, new(sl_threshold_seconds=7 * 86400 + 1), 422, "sl_threshold_seconds"),
            ("POST", Q, new(offer_timeout_seconds=4), 422, "offer_timeout_seconds"),
            ("POST", Q, new(after_contact_seconds=-1), 422, "after_contact_seconds"),
            ("POST", Q, new(expected_handle_seconds=0), 422, "expected_handle_seconds"),
            ("POST", Q, new(sticky_seconds=86_401), 422, "sticky_seconds"),
            ("POST", Q, new(bullseye=[{"after_seconds": 30}, {"after_seconds": 30}]), 422, "bullseye[1].after_seconds"),
            (
                "POST",
                Q,
                new(bullseye=[{"after_seconds": 30, "any_member": True}, {"after_seconds": 60}]),
                422,
                "bullseye[1]",
            ),
            ("POST", Q, new(bullseye=[{"after_seconds": 10 * i + 1} for i in range(11)]), 422, "bullseye"),
            (
                "POST",
                Q,
                new(bullseye=[{"after_seconds": 5, "proficiency_drop": 5}]),
                422,
                "bullseye.0.proficiency_drop",
            ),
            ("POST", Q, new(overflow_queue_id=999_999_999, overflow_after_seconds=5), 422, "overflow_queue_id"),
            ("POST", Q, new(overflow_queue_id=spare["id"]), 422, "overflow_after_seconds"),
            ("POST", Q, new(overflow_after_seconds=60), 422, "overflow_after_seconds"),
            (
                "POST",
                Q,
                new(overflow_queue_id=chat_queue.id, overflow_after_seconds=5),
                422,
                "overflow_queue_id",
            ),
            ("POST", Q, new(max_wait_seconds=60, max_wait_action="overflow"), 422, "max_wait_action"),
            ("POST", Q, new(closed_action="overflow"), 422, "closed_action"),
            ("POST", Q, new(max_wait_action="work_order"), 422, "max_wait_seconds"),
            ("POST", Q, new(max_wait_action="hang_up", max_wait_seconds=5), 422, "max_wait_action"),
            ("POST", Q, new(calendar_id=999_999_999), 422, "calendar_id"),
            ("POST", Q, new(team_id=999_999_999), 422, "team_id"),
            ("POST", Q, new(skills=[{"skill_id": 999_999_999}]), 422, "skills[0].skill_id"),
            ("POST", Q, new(skills=[{"skill_id": skill, "min_proficiency": 6}]), 422, "skills.0.min_proficiency"),
            ("POST", Q, new(wait_music="x"), 422, "wait_music"),
            ("PATCH", f"{Q}/{queue['id']}", {"code": None}, 422, "code"),
            ("PATCH", f"{Q}/{queue['id']}", {"overflow_queue_id": queue["id"]}, 422, "overflow_queue_id"),
            (
                "PATCH",
                f"{Q}/{spare['id']}",
                {"overflow_queue_id": queue["id"], "overflow_after_seconds": 9},
                422,
                "overflow_queue_id",
            ),
            ("PATCH", f"{Q}/{spare['id']}", {"active": False}, 409, "active"),
            ("PATCH", f"{Q}/{spare['id']}", {"channel": "chat"}, 422, "channel"),
            ("PATCH", f"{Q}/{queue['id']}", {"overflow_queue_id": None}, 422, "overflow_after_seconds"),
            ("PATCH", f"{Q}/999999999", {"name": "x"}, 404, ""),
        ]
        for method, url, payload, status, field in refusals:
            before = await counts(app)
            response = await sup.request(method, url, json=payload)
            assert response.status_code == status, (payload, response.text)
            if field:
                assert field_of(response) == field, (payload, response.text)
            assert await counts(app) == before, f"refused {payload} but wrote"
        # Still exactly as last saved.
        again = (await sup.get(f"{Q}/{queue['id']}")).json()
        assert again["priority"] == -5 and again["overflow_after_seconds"] == 120 and again["active"] is True


async def test_service_refuses_what_bypasses_the_schema(app) -> None:  # noqa: ANN001
    """Pages and imports call the service directly: it checks every range itself."""
    async with app.state.session_factory() as db:
        for fields, field in (
            ({"priority": 500}, "priority"),
            ({"priority": True}, "priority"),
            ({"name": "bad\x00name"}, "name"),
            ({"bullseye": [{"after_seconds": 5, "colour": "red"}]}, "bullseye[0]"),
            ({"active": "yes"}, "active"),
        ):
            with pytest.raises(Invalid) as refused:
                await queues.create_queue(db, SYSTEM, {"code": code(), "name": "q", "channel": "sms", **fields})
            assert refused.value.details["field"] == field
        await db.rollback()


async def test_membership_change_routes_a_waiting_contact(app, make) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    agent = await make_agent(app, make)
    sup = await make.user("supervisor")
    customer = await make.user("customer")
    async with signed_in_clients(app, {"sup": sup, "agent": agent}) as c:
        assert (await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "available"})).status_code == 200
        waiting = await contact(app, queue, utcnow())
        assert await offered_to(app, waiting) is None  # nobody serves the queue yet
        refused = await c["sup"].put(f"{Q}/{queue.id}/members", json={"user_ids": [agent.id, customer.id]})
        assert refused.status_code == 422 and field_of(refused) == "user_ids"
        assert refused.json()["error"]["details"]["user_ids"] == [customer.id]
        before = await counts(app)
        members = await c["sup"].put(f"{Q}/{queue.id}/members", json={"user_ids": [agent.id]})
        assert members.status_code == 200, members.text
        assert members.json() == [{"user_id": agent.id, "display_name": agent.display_name, "presence": "available"}]
        assert (await counts(app))["audit_log"] == before["audit_log"] + 1
        assert await offered_to(app, waiting) == agent.id
        mine = (await c["agent"].get("/api/v1/routing/offers/mine")).json()
        assert [o["interaction_id"] for o in mine] == [waiting]
        assert mine[0]["queue_code"] == queue.code and 0 < mine[0]["seconds_left"] <= 20
        listed = (await c["sup"].get(f"{Q}/{queue.id}/members")).json()
        assert [m["user_id"] for m in listed] == [agent.id]
        # Moving the agent out of the queue and into another through the agents route.
        other = await make_queue(app)
        moved = await c["sup"].put(
            f"/api/v1/routing/agents/{agent.id}/queues", json={"add": [other.id], "remove": [queue.id]}
        )
        assert moved.status_code == 200 and moved.json() == {"user_id": agent.id, "queue_ids": [other.id]}
        bad = await c["sup"].put(f"/api/v1/routing/agents/{customer.id}/queues", json={"add": [other.id]})
        assert bad.status_code == 404


async def test_capacity_changes_route_again(app, make) -> None:  # noqa: ANN001
    queue = await make_queue(app, channel="chat")
    agent = await make_agent(app, make, queues=(queue.id,))
    sup = await make.user("supervisor")
    async with signed_in_clients(app, {"sup": sup, "agent": agent}) as c:
        profile = await c["sup"].post("/api/v1/routing/capacity-profiles", json={"name": code("cap"), "chat": 1})
        assert profile.status_code == 201, profile.text
        pid = profile.json()["id"]
        assigned = await c["sup"].put(
            "/api/v1/routing/capacity-assignments", json={"user_id": agent.id, "profile_id": pid}
        )
        assert assigned.status_code == 200 and assigned.json()["refreshed_user_ids"] == [agent.id]
        me = await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "available"})
        assert me.json()["caps"]["chat"] == 1
        now = utcnow()
        first, second = await contact(app, queue, now), await contact(app, queue, now)
        assert await offered_to(app, first) == agent.id and await offered_to(app, second) is None
        for payload, field in (
            ({"chat": 21}, "chat"),
            ({"voice": 2}, "voice"),
            ({"name": None}, "name"),
        ):
            before = await counts(app)
            refused = await c["sup"].patch(f"/api/v1/routing/capacity-profiles/{pid}", json=payload)
            assert refused.status_code == 422 and field_of(refused) == field, refused.text
            assert await counts(app) == before
        dup = await c["sup"].post("/api/v1/routing/capacity-profiles", json={"name": profile.json()["name"]})
        assert dup.status_code == 409 and field_of(dup) == "name"
        widened = await c["sup"].patch(f"/api/v1/routing/capacity-profiles/{pid}", json={"chat": 2})
        assert widened.status_code == 200 and widened.json()["user_ids"] == [agent.id]
        assert await offered_to(app, second) == agent.id  # capacity freed: routing ran again
        state = (await c["agent"].get("/api/v1/routing/presence/me")).json()
        assert state["caps"]["chat"] == 2 and state["loads"]["chat"] == 2
        # A team's profile applies to its members; an agent's own overrides it; removing it falls back.
        team = await make.team()
        for wrong in ({"profile_id": pid}, {"team_id": team, "user_id": agent.id, "profile_id": pid}):
            assert (await c["sup"].put("/api/v1/routing/capacity-assignments", json=wrong)).status_code == 422
        missing = await c["sup"].put(
            "/api/v1/routing/capacity-assignments", json={"team_id": team, "profile_id": 999_999_999}
        )
        assert missing.status_code == 422 and field_of(missing) == "profile_id"
        removed = await c["sup"].put(
            "/api/v1/routing/capacity-assignments", json={"user_id": agent.id, "profile_id": None}
        )
        assert removed.status_code == 200
        assert (await c["agent"].get("/api/v1/routing/presence/me")).json()["caps"]["chat"] == 3  # the default
        listed = {p["id"]: p for p in (await c["sup"].get("/api/v1/routing/capacity-profiles")).json()}
        assert listed[pid]["user_ids"] == [] and listed[pid]["chat"] == 2
        assert (await c["agent"].get("/api/v1/routing/capacity-profiles")).status_code == 403


async def test_presence_for_oneself_and_by_a_supervisor_with_history(app, make) -> None:  # noqa: ANN001
    agent, other, sup = await make.user("agent"), await make.user("agent"), await make.user("supervisor")
    async with signed_in_clients(app, {"agent": agent, "other": other, "sup": sup}) as c:
        me = await c["agent"].get("/api/v1/routing/presence/me")
        assert me.status_code == 200 and me.json()["presence"] == "offline"
        assert me.json()["loads"] == {"voice": 0, "chat": 0, "email": 0, "message": 0}
        assert (await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "available"})).json()[
            "presence"
        ] == "available"
        no_reason = await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "break"})
        assert no_reason.status_code == 422 and field_of(no_reason) == "reason"
        bad_reason = await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "break", "reason": "nap"})
        assert bad_reason.status_code == 422
        on_break = await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "break", "reason": "meal"})
        assert on_break.json()["presence"] == "break" and on_break.json()["reason"] == "meal"
        assert (await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "on_contact"})).status_code == 422
        # Only supervisors set someone else's presence.
        denied = await c["agent"].put(f"/api/v1/routing/agents/{other.id}/presence", json={"presence": "available"})
        assert denied.status_code == 403
        by_sup = await c["sup"].put(f"/api/v1/routing/agents/{agent.id}/presence", json={"presence": "training"})
        assert by_sup.status_code == 200 and by_sup.json()["presence"] == "training"
        history = await c["agent"].get(f"/api/v1/routing/agents/{agent.id}/state-changes")
        items = history.json()["items"]
        assert [i["presence"] for i in items] == ["training", "break", "available"]
        assert items[0]["changed_by_id"] == sup.id and items[1]["reason"] == "meal"
        page = (await c["agent"].get(f"/api/v1/routing/agents/{agent.id}/state-changes", params={"limit": 2})).json()
        assert len(page["items"]) == 2 and page["next_before_id"] == items[1]["id"]
        rest = await c["agent"].get(
            f"/api/v1/routing/agents/{agent.id}/state-changes", params={"before_id": page["next_before_id"]}
        )
        assert [i["presence"] for i in rest.json()["items"]] == ["available"]
        assert (await c["other"].get(f"/api/v1/routing/agents/{agent.id}/state-changes")).status_code == 404
        assert (await c["sup"].get(f"/api/v1/routing/agents/{agent.id}/state-changes")).json()["items"] == items


async def test_offers_accept_and_reject_through_the_api(app, make) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    first = await make_agent(app, make, queues=(queue.id,))
    second = await make_agent(app, make, queues=(queue.id,))
    async with signed_in_clients(app, {"a": first, "b": second}) as c:
        for client in c.values():
            assert (await client.put("/api/v1/routing/presence/me", json={"presence": "available"})).status_code == 200
        waiting = await contact(app, queue, utcnow())
        ringing = await offered_to(app, waiting)
        holder, bystander = (c["a"], c["b"]) if ringing == first.id else (c["b"], c["a"])
        assert [o["interaction_id"] for o in (await holder.get("/api/v1/routing/offers/mine")).json()] == [waiting]
        assert (await bystander.get("/api/v1/routing/offers/mine")).json() == []
        stolen = await bystander.post(f"/api/v1/routing/offers/{waiting}/accept")
        assert stolen.status_code == 409
        assert (await bystander.post(f"/api/v1/routing/offers/{waiting}/reject")).status_code == 409
        rejected = await holder.post(f"/api/v1/routing/offers/{waiting}/reject")
        assert rejected.status_code == 200
        # Re-offered to the other agent at once.
        assert rejected.json()["state"] == "offered" and rejected.json()["offer_agent_id"] != ringing
        accepted = await bystander.post(f"/api/v1/routing/offers/{waiting}/accept")
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["state"] == "assigned" and accepted.json()["agent_id"] != ringing
        assert (await bystander.get("/api/v1/routing/presence/me")).json()["presence"] == "on_contact"
        assert (await holder.post(f"/api/v1/routing/offers/{waiting}/accept")).status_code == 409


async def test_position_priority_move_entries_and_live(app, make) -> None:  # noqa: ANN001
    queue = await make_queue(app, expected_handle_seconds=100)
    other = await make_queue(app)
    chat = await make_queue(app, channel="chat")
    agent = await make_agent(app, make, queues=(queue.id,))
    sup = await make.user("supervisor")
    async with signed_in_clients(app, {"sup": sup, "agent": agent}) as c:
        # On break: a member who serves the queue soon, so waits have an estimate but nothing is offered.
        await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "available"})
        await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "break", "reason": "meeting"})
        now = utcnow()
        ids = [await contact(app, queue, now) for _ in range(3)]
        third = await c["agent"].get(f"/api/v1/routing/entries/{ids[2]}/position")
        assert third.status_code == 200, third.text
        assert third.json()["position"] == 3 and third.json()["state"] == "waiting"
        assert (await c["sup"].get("/api/v1/routing/entries/999999999/position")).status_code == 404
        raised = await c["sup"].patch(f"/api/v1/routing/entries/{ids[2]}", json={"priority": 50})
        assert raised.status_code == 200 and raised.json()["priority"] == 50
        assert (await c["sup"].get(f"/api/v1/routing/entries/{ids[2]}/position")).json()["position"] == 1
        assert (await c["sup"].patch(f"/api/v1/routing/entries/{ids[2]}", json={"priority": 101})).status_code == 422
        assert (await c["agent"].patch(f"/api/v1/routing/entries/{ids[2]}", json={"priority": 1})).status_code == 403
        wrong_class = await c["sup"].post(f"/api/v1/routing/entries/{ids[0]}/move", json={"queue_id": chat.id})
        assert wrong_class.status_code == 422 and field_of(wrong_class) == "queue_id"
        moved = await c["sup"].post(f"/api/v1/routing/entries/{ids[0]}/move", json={"queue_id": other.id})
        assert moved.status_code == 200 and moved.json()["queue_id"] == other.id
        listed = (await c["sup"].get("/api/v1/routing/entries", params={"queue_id": queue.id})).json()
        assert [e["interaction_id"] for e in listed["items"]] == ids[1:]
        paged = (
            await c["sup"].get("/api/v1/routing/entries", params={"queue_id": queue.id, "state": "waiting", "limit": 1})
        ).json()
        assert [e["interaction_id"] for e in paged["items"]] == [ids[1]] and paged["next_after_id"] == ids[1]
        assert (await c["agent"].get("/api/v1/routing/entries")).status_code == 403
        # A queue rule change re-orders what waits there: the queue's priority moves into every entry.
        assert (await c["sup"].patch(f"{Q}/{queue.id}", json={"priority": 7})).status_code == 200
        assert (await entry(app, ids[1])).priority_order == -7 and (await entry(app, ids[2])).priority_order == -57
        live = await c["sup"].get("/api/v1/routing/live")
        assert live.status_code == 200, live.text
        rows = {q["id"]: q for q in live.json()["queues"]}
        assert rows[queue.id]["waiting"] == 2 and rows[other.id]["waiting"] == 1
        assert any(a["user_id"] == agent.id and a["presence"] == "break" for a in live.json()["agents"])
        assert (await c["agent"].get("/api/v1/routing/live")).status_code == 403


async def test_skill_change_through_the_identity_api_routes_a_waiting_contact(app, make) -> None:  # noqa: ANN001
    skill = await make.skill()
    queue = await make_queue(app, skills={skill: 3})
    agent = await make_agent(app, make, queues=(queue.id,), skills={skill: 1})
    sup = await make.user("supervisor")
    async with signed_in_clients(app, {"sup": sup, "agent": agent}) as c:
        await c["agent"].put("/api/v1/routing/presence/me", json={"presence": "available"})
        waiting = await contact(app, queue, utcnow())
        assert await offered_to(app, waiting) is None  # proficiency 1 < 3
        trained = await c["sup"].put(
            f"/api/v1/users/{agent.id}/skills", json={"skills": [{"skill_id": skill, "proficiency": 4}]}
        )
        assert trained.status_code == 200, trained.text
        assert await offered_to(app, waiting) == agent.id
