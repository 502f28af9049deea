"""Staff side of the phone channel: the call list and a call's timeline (API and pages), agents'
extensions, PBXs and their secrets; and the pop of a call kefu itself routed to an agent."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cti_support import (
    SYSTEM,
    customer_named,
    deliver,
    event,
    make_pbx,
    make_world,
    new_mobile,
    past,
    uid,
    use_ivr,
)
from sqlalchemy import select

from conftest import login
from kefu.channels.cti import service
from kefu.core.audit import AuditEntry

API = "/api/v1/cti"


async def _a_finished_call(app, make, monkeypatch) -> tuple[str, str, object]:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, _ = await make_pbx(app)
    world = await make_world(app, make, pbx, past(), available=())
    call_id = uid("call")
    await deliver(
        app,
        pbx,
        [
            event(call_id, 1, "call_new", world.at(0), caller=new_mobile(), called="4008001234"),
            event(call_id, 2, "ringing", world.at(1), extension=world.extensions["C"]),
            event(call_id, 3, "answered", world.at(4)),
            event(call_id, 4, "hung_up", world.at(64), by="caller", cause="16"),
            event(call_id, None, "recording_available", world.at(65), url="https://rec.example.test/a.wav"),
        ],
    )
    return pbx, call_id, world


async def test_calls_list_and_timeline(app, client, make, monkeypatch) -> None:  # noqa: ANN001
    pbx, call_id, world = await _a_finished_call(app, make, monkeypatch)
    await login(client, await make.user("supervisor"))
    listed = await client.get(f"{API}/calls", params={"agent_id": world.agents["C"].id})
    assert listed.status_code == 200, listed.text
    (row,) = [c for c in listed.json()["items"] if c["call_id"] == call_id]
    assert row["state"] == "ended" and row["agent_name"] == world.agents["C"].display_name
    assert row["recording_url"] == "https://rec.example.test/a.wav" and row["customer_id"] is not None
    detail = await client.get(f"{API}/calls/{row['id']}")
    assert detail.status_code == 200, detail.text
    assert [e["type"] for e in detail.json()["events"]] == [
        "call_new",
        "ringing",
        "answered",
        "hung_up",
        "recording_available",
    ]
    assert detail.json()["instruction"] == {"action": "none", "reason": "ended"}
    # Keyset pages: the cursor of a full page leads on without repeats.
    await deliver(app, pbx, [event(uid("call"), 1, "call_new", world.at(100), caller=new_mobile())])
    first = (await client.get(f"{API}/calls", params={"limit": 1})).json()
    second = (await client.get(f"{API}/calls", params={"limit": 1, "cursor": first["next_cursor"]})).json()
    assert first["items"][0]["id"] != second["items"][0]["id"]
    assert (await client.get(f"{API}/calls", params={"cursor": "junk"})).status_code == 422

    page = await client.get("/cti/calls", headers={"Accept": "text/html"})
    assert page.status_code == 200 and call_id in page.text
    call_page = await client.get(f"/cti/calls/{row['id']}", headers={"Accept": "text/html"})
    assert call_page.status_code == 200
    assert 'href="https://rec.example.test/a.wav" rel="noopener noreferrer"' in call_page.text
    assert call_page.text.count('data-event-type="') == 5
    assert (await client.get("/cti/calls/987654321", headers={"Accept": "text/html"})).status_code == 404


async def test_agents_see_calls_too_customers_do_not(app, client, make, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, _ = await make_pbx(app)
    await deliver(app, pbx, [event(uid("call"), 1, "call_new", past(), caller=new_mobile())])
    await login(client, await make.user("agent"))
    assert (await client.get(f"{API}/calls")).json()["items"]
    await login(client, await make.user("customer"))
    assert (await client.get(f"{API}/calls")).status_code == 403


async def test_extensions_api_and_page(app, client, make) -> None:  # noqa: ANN001
    first, second, customer = await make.user("agent"), await make.user("agent"), await make.user("customer")
    await login(client, await make.user("supervisor"))
    ext = f"9{uid()[-6:]}"
    put = await client.put(f"{API}/extensions/{first.id}", json={"extension": ext})
    assert put.status_code == 200, put.text
    assert put.json()["extension"] == ext and put.json()["username"] == first.username
    taken = await client.put(f"{API}/extensions/{second.id}", json={"extension": ext})
    assert taken.status_code == 409 and taken.json()["error"]["details"]["user_id"] == first.id
    assert (await client.put(f"{API}/extensions/{customer.id}", json={"extension": "1"})).status_code == 404
    assert (await client.put(f"{API}/extensions/{first.id}", json={"extension": "12 34"})).status_code == 422
    listed = await client.get(f"{API}/extensions")
    assert {"user_id": first.id, "extension": ext} in [
        {"user_id": x["user_id"], "extension": x["extension"]} for x in listed.json()
    ]

    page = await client.get("/cti/extensions", headers={"Accept": "text/html"})
    assert page.status_code == 200 and ext in page.text and "cti-extension-form" in page.text
    refused = await client.post("/cti/extensions", data={"user_id": str(second.id), "extension": ext})
    assert refused.status_code == 422 and "another agent" in refused.text
    saved = await client.post("/cti/extensions", data={"user_id": str(second.id), "extension": ext + "1"})
    assert saved.status_code == 303
    removed = await client.post(f"/cti/extensions/{second.id}/remove")
    assert removed.status_code == 303
    assert (await client.delete(f"{API}/extensions/{first.id}")).status_code == 204
    assert (await client.delete(f"{API}/extensions/{first.id}")).status_code == 404
    remaining = {x["user_id"] for x in (await client.get(f"{API}/extensions")).json()}
    assert first.id not in remaining and second.id not in remaining


async def test_a_pbx_secret_is_shown_once_and_never_audited(app, client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("admin"))
    code = uid("pbx")
    made = await client.post(f"{API}/pbxs", json={"code": code, "name": "总部交换机"})
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert len(secret) >= 32
    listed = await client.get(f"{API}/pbxs")
    assert code in listed.text and secret not in listed.text
    assert (await client.post(f"{API}/pbxs", json={"code": code, "name": "再来"})).status_code == 409
    renamed = await client.patch(f"{API}/pbxs/{made.json()['id']}", json={"name": "分部"})
    assert renamed.status_code == 200 and "secret" not in renamed.json()
    renewed = await client.patch(f"{API}/pbxs/{made.json()['id']}", json={"new_secret": True})
    assert renewed.json()["secret"] not in (secret, None)
    async with app.state.session_factory() as db:
        audited = await db.scalars(select(AuditEntry).where(AuditEntry.action.like("cti_pbx%")))
        details = [str(a.details) for a in audited]
    assert details and not any(secret in d or renewed.json()["secret"] in d for d in details)


async def test_a_call_kefu_routed_pops_on_the_offered_agents_desk(app, make, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, _ = await make_pbx(app)
    world = await make_world(app, make, pbx, service.utcnow() - timedelta(seconds=10), available=("A",))
    number = new_mobile()
    customer_id = await customer_named(app, number, "孙八")
    subscription = app.state.event_bus.subscribe()
    try:
        call_id = uid("call")
        await deliver(app, pbx, [event(call_id, 1, "call_new", world.at(0), caller=number)])
        queued = await deliver(app, pbx, [event(call_id, 2, "queued", world.at(1), queue=world.queue.code)])
        async with app.state.session_factory() as db:
            instruction = await service.instruction_for(db, queued[0].call)
        assert instruction["action"] == "ring" and instruction["extension"] == world.extensions["A"]
        await deliver(app, pbx, [event(call_id, 3, "ringing", world.at(2), extension=world.extensions["A"])])
        while True:
            got = await asyncio.wait_for(subscription.get(), timeout=5)
            if got.type == "desk.pop":
                break
        assert got.user_ids == (world.agents["A"].id,)
        assert got.data["customer_id"] == customer_id and got.data["customer_name"] == "孙八"
    finally:
        subscription.close()


async def test_an_unmapped_extension_is_recorded_without_a_contact(app, make, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, _ = await make_pbx(app)
    call_id = uid("call")
    at = past()
    received = await deliver(
        app,
        pbx,
        [
            event(call_id, 1, "call_new", at, caller="anonymous"),
            event(call_id, 2, "ringing", at + timedelta(seconds=1), extension="0000"),
        ],
    )
    call = received[-1].call
    assert call.state == "ringing" and call.extension == "0000" and call.agent_id is None
    assert call.interaction_id is None and call.caller == "anonymous"
    assert SYSTEM.user_id is None
