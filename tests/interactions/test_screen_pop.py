"""Screen pop: when an interaction gets an agent, that agent's desktop (and nobody else's) is told, after
the commit. Observed on the app's real event bus and through real WebSockets on a ``kefu serve`` process."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
from interaction_fixtures import customer_with_phone, external_id, new_mobile
from websockets.asyncio.client import connect

from conftest import TEST_PASSWORD, login
from kefu.core.events import Event, Subscription

API = "/api/v1/interactions"
WAIT = 15.0


async def next_pop(subscription: Subscription) -> Event:
    """The next desk.pop on the bus (other tests' events are skipped)."""
    while True:
        event = await asyncio.wait_for(subscription.get(), timeout=WAIT)
        if event.type == "desk.pop":
            return event


async def test_a_contact_created_for_an_agent_pops_on_their_desk_only(app, client, make) -> None:  # noqa: ANN001
    agent, other = await make.user("agent"), await make.user("agent")
    await login(client, await make.user("agent"))
    number = new_mobile()
    customer_id = await customer_with_phone(app, number, name="李四")
    subscription = app.state.event_bus.subscribe()
    try:
        response = await client.post(
            API,
            json={
                "channel": "phone",
                "external_id": external_id(),
                "identity": {"kind": "phone", "value": number.removeprefix("+86")},
                "agent_id": agent.id,
            },
        )
        assert response.status_code == 201, response.text
        pop = await next_pop(subscription)
        assert pop.data == {
            "interaction_id": response.json()["id"],
            "customer_id": customer_id,
            "channel": "phone",
            "identity": {"kind": "phone", "value": number},
            "customer_name": "李四",
        }
        assert pop.user_ids == (agent.id,)
        assert pop.concerns(agent.id, frozenset({"agent"}))
        assert not pop.concerns(other.id, frozenset({"agent"}))
        assert not pop.concerns(other.id, frozenset({"supervisor", "admin"}))
    finally:
        subscription.close()


async def test_offered_and_answered_pop_when_the_agent_changes(app, client, make) -> None:  # noqa: ANN001
    first, second, marker = await make.user("agent"), await make.user("agent"), await make.user("agent")
    await login(client, await make.user("agent"))
    subscription = app.state.event_bus.subscribe()
    try:
        arrived = datetime.now(UTC) - timedelta(minutes=5)
        row = (await client.post(API, json={"channel": "chat", "arrived_at": arrived.isoformat()})).json()
        events = f"{API}/{row['id']}/events"
        await client.post(events, json={"event": "queued", "at": (arrived + timedelta(seconds=1)).isoformat()})
        offered = await client.post(
            events, json={"event": "offered", "at": (arrived + timedelta(seconds=2)).isoformat(), "agent_id": first.id}
        )
        assert offered.status_code == 200, offered.text
        pop = await next_pop(subscription)
        assert pop.user_ids == (first.id,) and pop.data["interaction_id"] == row["id"]
        assert pop.data["customer_id"] is None and pop.data["identity"] is None

        # Answered by the agent it was offered to: already on their desk, no second pop.
        answered = await client.post(
            events, json={"event": "answered", "at": (arrived + timedelta(seconds=3)).isoformat(), "agent_id": first.id}
        )
        assert answered.status_code == 200, answered.text
        await client.post(API, json={"channel": "phone", "agent_id": marker.id})
        assert (await next_pop(subscription)).user_ids == (marker.id,)

        # Answered by someone else (taken over): that agent gets it.
        row2 = (await client.post(API, json={"channel": "chat", "arrived_at": arrived.isoformat()})).json()
        await client.post(
            f"{API}/{row2['id']}/events",
            json={"event": "offered", "at": (arrived + timedelta(seconds=2)).isoformat(), "agent_id": first.id},
        )
        assert (await next_pop(subscription)).user_ids == (first.id,)
        taken = await client.post(
            f"{API}/{row2['id']}/events",
            json={"event": "answered", "at": (arrived + timedelta(seconds=4)).isoformat(), "agent_id": second.id},
        )
        assert taken.json()["agent_id"] == second.id
        pop = await next_pop(subscription)
        assert pop.user_ids == (second.id,) and pop.data["interaction_id"] == row2["id"]
    finally:
        subscription.close()


async def test_no_pop_for_a_refused_or_repeated_delivery(app, client, make) -> None:  # noqa: ANN001
    agent, marker = await make.user("agent"), await make.user("agent")
    await login(client, await make.user("agent"))
    subscription = app.state.event_bus.subscribe()
    try:
        payload = {"channel": "phone", "external_id": external_id(), "agent_id": agent.id}
        assert (await client.post(API, json=payload)).status_code == 201
        assert (await next_pop(subscription)).user_ids == (agent.id,)
        assert (await client.post(API, json=payload)).status_code == 200  # a redelivery: no second pop
        refused = await client.post(API, json={**payload, "external_id": external_id(), "team_id": 987_654_321})
        assert refused.status_code == 422  # nothing committed, nothing published
        await client.post(API, json={"channel": "phone", "agent_id": marker.id})
        assert (await next_pop(subscription)).user_ids == (marker.id,)
    finally:
        subscription.close()


async def _sign_in(base: str, user) -> httpx.AsyncClient:  # noqa: ANN001
    http = httpx.AsyncClient(base_url=base, timeout=WAIT)
    response = await http.post("/api/v1/auth/login", json={"login": user.username, "password": TEST_PASSWORD})
    assert response.status_code == 200, response.text
    http.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return http


async def _receive(ws) -> dict:  # noqa: ANN001
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=WAIT))
        if message["type"] != "ping":
            return message


async def test_the_pop_reaches_the_agents_websocket_and_no_other(app, live_server, make) -> None:  # noqa: ANN001
    first, second, caller = await make.user("agent"), await make.user("agent"), await make.user("agent")
    number = new_mobile()
    customer_id = await customer_with_phone(app, number, name="赵六")
    api = await _sign_in(live_server.url, caller)
    sessions = [await _sign_in(live_server.url, user) for user in (first, second)]
    ws_url = live_server.url.replace("http://", "ws://", 1) + "/ws"
    try:
        cookies = [s.cookies.get("kefu_session") for s in sessions]
        async with (
            connect(ws_url, origin=live_server.url, additional_headers={"Cookie": f"kefu_session={cookies[0]}"}) as a,
            connect(ws_url, origin=live_server.url, additional_headers={"Cookie": f"kefu_session={cookies[1]}"}) as b,
        ):
            assert (await _receive(a))["type"] == "hello" and (await _receive(b))["type"] == "hello"
            for_first = await api.post(
                API, json={"channel": "phone", "identity": {"kind": "phone", "value": number}, "agent_id": first.id}
            )
            assert for_first.status_code == 201, for_first.text
            for_second = await api.post(API, json={"channel": "chat", "agent_id": second.id})
            assert for_second.status_code == 201, for_second.text
            got_first = await _receive(a)
            assert got_first["type"] == "desk.pop"
            assert got_first["data"]["interaction_id"] == for_first.json()["id"]
            assert got_first["data"]["customer_id"] == customer_id
            assert got_first["data"]["customer_name"] == "赵六"
            # Published before the second agent's own pop, the first agent's never reaches them.
            got_second = await _receive(b)
            assert got_second["type"] == "desk.pop"
            assert got_second["data"]["interaction_id"] == for_second.json()["id"]
    finally:
        for http in (api, *sessions):
            await http.aclose()
