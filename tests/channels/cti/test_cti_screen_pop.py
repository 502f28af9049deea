"""Screen pop: a call ringing at an agent's extension pops on that agent's desk (and nobody else's) with the
customer found by the caller's number, through a real ``kefu serve`` process and real WebSockets."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import httpx
from cti_support import SYSTEM, body_bytes, customer_named, event, make_pbx, new_mobile, signed_headers, uid
from websockets.asyncio.client import connect

from conftest import TEST_PASSWORD
from kefu.channels.cti import service
from kefu.core.events import Subscription

WAIT = 15.0


async def _sign_in(base: str, user) -> httpx.AsyncClient:  # noqa: ANN001
    http = httpx.AsyncClient(base_url=base, timeout=WAIT)
    response = await http.post("/api/v1/auth/login", json={"login": user.username, "password": TEST_PASSWORD})
    assert response.status_code == 200, response.text
    return http


async def _next(ws) -> dict:  # noqa: ANN001
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=WAIT))
        if message["type"] not in ("ping", "cti.call"):
            return message


async def _extension(app, user, extension: str) -> None:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        await service.set_extension(db, SYSTEM, user.id, extension)


async def test_a_ringing_call_pops_on_the_agents_websocket(app, live_server, make) -> None:  # noqa: ANN001
    agent, other = await make.user("agent"), await make.user("agent")
    extension, other_extension = f"6{uid()[-6:]}", f"5{uid()[-6:]}"
    await _extension(app, agent, extension)
    await _extension(app, other, other_extension)
    number = new_mobile()
    customer_id = await customer_named(app, number, "钱七")
    pbx, secret = await make_pbx(app)
    sessions = [await _sign_in(live_server.url, user) for user in (agent, other)]
    ws_url = live_server.url.replace("http://", "ws://", 1) + "/ws"
    pbx_client = httpx.AsyncClient(base_url=live_server.url, timeout=WAIT)
    try:
        cookies = [s.cookies.get("kefu_session") for s in sessions]
        async with (
            connect(ws_url, origin=live_server.url, additional_headers={"Cookie": f"kefu_session={cookies[0]}"}) as a,
            connect(ws_url, origin=live_server.url, additional_headers={"Cookie": f"kefu_session={cookies[1]}"}) as b,
        ):
            assert (await _next(a))["type"] == "hello" and (await _next(b))["type"] == "hello"
            call_id = uid("call")
            at = service.utcnow() - timedelta(seconds=3)
            for payload in (
                event(call_id, 1, "call_new", at, caller=number.removeprefix("+86"), called="4008001234"),
                event(call_id, 2, "ringing", at + timedelta(seconds=1), extension=extension),
            ):
                raw = body_bytes(payload)
                response = await pbx_client.post(
                    "/api/v1/cti/events", content=raw, headers=signed_headers(pbx, secret, raw)
                )
                assert response.status_code == 200, response.text
            pop = await _next(a)
            assert pop["type"] == "desk.pop", pop
            assert pop["data"]["customer_id"] == customer_id
            assert pop["data"]["customer_name"] == "钱七"
            assert pop["data"]["identity"] == {"kind": "phone", "value": number}
            assert pop["data"]["channel"] == "phone"
            interaction_id = pop["data"]["interaction_id"]
            calls = await sessions[0].get("/api/v1/cti/calls", params={"agent_id": agent.id})
            assert calls.status_code == 200, calls.text
            assert [c["interaction_id"] for c in calls.json()["items"] if c["call_id"] == call_id] == [interaction_id]

            # The other agent's own call pops on their desk only: the first pop never reached them.
            second = uid("call")
            for payload in (
                event(second, 1, "call_new", at, caller=new_mobile()),
                event(second, 2, "ringing", at + timedelta(seconds=1), extension=other_extension),
            ):
                raw = body_bytes(payload)
                await pbx_client.post("/api/v1/cti/events", content=raw, headers=signed_headers(pbx, secret, raw))
            got = await _next(b)
            assert got["type"] == "desk.pop" and got["data"]["interaction_id"] != interaction_id
    finally:
        for http in (*sessions, pbx_client):
            await http.aclose()


async def test_a_redelivered_ringing_does_not_pop_again(app, make, monkeypatch) -> None:  # noqa: ANN001
    from cti_support import deliver, use_ivr

    use_ivr(monkeypatch, app, None)
    agent = await make.user("agent")
    extension = f"4{uid()[-6:]}"
    await _extension(app, agent, extension)
    pbx, _ = await make_pbx(app)
    subscription: Subscription = app.state.event_bus.subscribe()
    try:
        call_id = uid("call")
        at = service.utcnow() - timedelta(seconds=3)
        ringing = event(call_id, 2, "ringing", at + timedelta(seconds=1), extension=extension)
        await deliver(app, pbx, [event(call_id, 1, "call_new", at, caller=new_mobile())])
        await deliver(app, pbx, [ringing])
        await deliver(app, pbx, [ringing])
        await deliver(app, pbx, [event(call_id, 3, "hung_up", at + timedelta(seconds=2))])
        pops = []
        while True:
            try:
                got = await asyncio.wait_for(subscription.get(), timeout=0.5)
            except TimeoutError:
                break
            if got.type == "desk.pop" and agent.id in got.user_ids:
                pops.append(got)
        assert len(pops) == 1 and pops[0].user_ids == (agent.id,)
    finally:
        subscription.close()
