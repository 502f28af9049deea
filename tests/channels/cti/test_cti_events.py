"""The signed CTI event API over HTTP: signatures and timestamps, validation of every event type (bad input
is a 422 and stores nothing), duplicates stored once, seq gaps waited for, instructions for the PBX."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from cti_support import (
    EVENTS,
    body_bytes,
    deliver,
    event,
    event_rows,
    make_pbx,
    make_world,
    new_mobile,
    past,
    post_signed,
    signed_headers,
    uid,
    use_ivr,
)
from sqlalchemy import func, select

from kefu.channels.cti import service
from kefu.channels.cti.models import Call, CallEvent


async def _calls_named(app, call_id: str) -> int:  # noqa: ANN001
    async with app.state.session_factory() as db:
        return await db.scalar(select(func.count()).select_from(Call).where(Call.call_id == call_id))


async def _event_count(app) -> int:  # noqa: ANN001
    async with app.state.session_factory() as db:
        return await db.scalar(select(func.count()).select_from(CallEvent))


# --- signatures --------------------------------------------------------------------------------------
async def test_a_signed_event_is_taken_and_bad_signatures_are_refused(app, client, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, secret = await make_pbx(app)
    call_id = uid()
    payload = event(call_id, 1, "call_new", past(), caller=new_mobile(), called="4008001234")
    raw = body_bytes(payload)

    refused = []
    # A wrong secret, a body changed after signing, a stale and a future timestamp, an unknown PBX,
    # no signature at all.
    refused.append(await client.post(EVENTS, content=raw, headers=signed_headers(pbx, "x" * 43, raw)))
    tampered = raw.replace(b"4008001234", b"4008009999")
    refused.append(await client.post(EVENTS, content=tampered, headers=signed_headers(pbx, secret, raw)))
    # A minute past the 300 s window either way: a slow machine must not bring the future one back inside.
    for moment in (time.time() - 360, time.time() + 360):
        refused.append(await client.post(EVENTS, content=raw, headers=signed_headers(pbx, secret, raw, at=moment)))
    refused.append(await client.post(EVENTS, content=raw, headers=signed_headers(uid("nopbx"), secret, raw)))
    refused.append(await client.post(EVENTS, content=raw, headers={"Content-Type": "application/json"}))
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthenticated"
    assert await _calls_named(app, call_id) == 0

    taken = await client.post(EVENTS, content=raw, headers=signed_headers(pbx, secret, raw))
    assert taken.status_code == 200, taken.text
    assert taken.json()["call_id"] == call_id and taken.json()["duplicate"] is False
    assert taken.json()["call_state"] == "ivr"
    assert await _calls_named(app, call_id) == 1


async def test_query_parameters_and_the_default_pbx_secret(app, client, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    monkeypatch.setattr(app.state.settings, "cti_secret", "default-secret-for-the-test-pbx-0123456789")
    raw = body_bytes(event(uid(), 1, "call_new", past(), caller=new_mobile()))
    ts = str(int(time.time()))
    sig = service.sign("default-secret-for-the-test-pbx-0123456789", ts, raw)
    # As a dialplan's CURL() sends it: no custom headers, the signature in the query.
    response = await client.post(
        EVENTS, params={"ts": ts, "sig": sig}, content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    monkeypatch.setattr(app.state.settings, "cti_secret", "")
    again = await client.post(EVENTS, params={"ts": ts, "sig": sig}, content=raw)
    assert again.status_code == 401


async def test_an_inactive_pbx_or_a_renewed_secret_is_refused(app, client, monkeypatch) -> None:  # noqa: ANN001
    from cti_support import SYSTEM

    from kefu.channels.cti.models import Pbx
    from kefu.channels.cti.schemas import PbxUpdate

    use_ivr(monkeypatch, app, None)
    pbx, secret = await make_pbx(app)
    async with app.state.session_factory() as db, db.begin():
        row = await db.scalar(select(Pbx).where(Pbx.code == pbx))
        renewed, _ = await service.update_pbx(db, SYSTEM, row.id, PbxUpdate(new_secret=True))
        new_secret = renewed.secret
    assert new_secret != secret
    payload = event(uid(), 1, "call_new", past())
    assert (await post_signed(client, pbx, secret, payload)).status_code == 401
    assert (await post_signed(client, pbx, new_secret, payload)).status_code == 200
    async with app.state.session_factory() as db, db.begin():
        row = await db.scalar(select(Pbx).where(Pbx.code == pbx))
        await service.update_pbx(db, SYSTEM, row.id, PbxUpdate(active=False))
    assert (await post_signed(client, pbx, new_secret, event(uid(), 1, "call_new", past()))).status_code == 401


# --- validation --------------------------------------------------------------------------------------
def _valid(call_id: str) -> dict[str, dict]:
    at = past()
    return {
        "call_new": event(call_id, 1, "call_new", at, caller="+8613800138000", called="4008001234"),
        "ivr_input": event(call_id, 2, "ivr_input", at, digits="1#"),
        "queued": event(call_id, 3, "queued", at, queue="sales"),
        "ringing": event(call_id, 4, "ringing", at, extension="8001"),
        "answered": event(call_id, 5, "answered", at),
        "held": event(call_id, 6, "held", at),
        "unheld": event(call_id, 7, "retrieved", at),
        "transferred": event(call_id, 8, "transferred", at, to_queue="billing"),
        "hung_up": event(call_id, 9, "hung_up", at, cause="NORMAL_CLEARING", by="caller"),
        "recording_available": event(call_id, None, "recording_available", at, url="https://r.example.test/1.wav"),
    }


BAD = [
    ("call_new", {"seq": None}, "seq"),
    ("call_new", {"seq": 0}, "seq"),
    ("call_new", {"at": "2026-01-01T10:00:00"}, "at"),  # no zone
    ("call_new", {"direction": "sideways"}, "direction"),
    ("call_new", {"caller": "x" * 65}, "caller"),
    ("call_new", {"unknown_field": 1}, "unknown_field"),
    ("call_new", {"event_id": ""}, "event_id"),
    ("ivr_input", {"digits": "12a"}, "digits"),
    ("queued", {"queue": "has space"}, "queue"),
    ("queued", {"priority": 101}, "priority"),
    ("ringing", {"extension": None}, "extension or agent_id"),  # neither extension nor agent_id
    ("ringing", {"agent_id": 0}, "agent_id"),
    ("answered", {"extension": "80 01"}, "extension"),
    ("held", {"call_id": None}, "call_id"),
    ("unheld", {"type": "unhold"}, "unhold"),
    ("transferred", {"to_extension": "8002"}, "exactly one"),  # two targets
    ("transferred", {"to_queue": None}, "exactly one"),  # none
    ("hung_up", {"by": "nobody"}, "by"),
    ("recording_available", {"url": "javascript:alert(1)"}, "url"),
    ("recording_available", {"url": "file:///etc/passwd"}, "url"),
    ("recording_available", {"url": None}, "url or path"),  # neither url nor path
    ("recording_available", {"duration_seconds": -1}, "duration_seconds"),
]


@pytest.mark.parametrize(("type_", "change", "field"), BAD, ids=[f"{t}-{f}-{i}" for i, (t, _, f) in enumerate(BAD)])
async def test_bad_events_are_422_and_store_nothing(app, client, type_: str, change: dict, field: str) -> None:  # noqa: ANN001
    pbx, secret = await make_pbx(app)
    call_id = uid()
    payload = {**_valid(call_id)[type_], **change}
    payload = {k: v for k, v in payload.items() if v is not None}
    before = await _event_count(app)
    response = await post_signed(client, pbx, secret, payload)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert any(field in d["field"] or field in d["message"] for d in error["details"]), error
    # One bad event in a batch: the whole batch is refused, the good ones with it.
    batch = await post_signed(client, pbx, secret, {"events": [_valid(call_id)["call_new"], payload]})
    assert batch.status_code == 422, batch.text
    assert batch.json()["error"]["details"][0]["field"].startswith("events.1")
    assert await _calls_named(app, call_id) == 0
    assert await _event_count(app) == before


async def test_every_event_type_is_taken(app, client, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, secret = await make_pbx(app)
    call_id = uid()
    valid = _valid(call_id)
    response = await post_signed(client, pbx, secret, {"events": list(valid.values())})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["event_id"] for r in results] == [v["event_id"] for v in valid.values()]
    assert results[-1]["call_state"] == "ended"
    rows = await event_rows(app, pbx, call_id)
    assert {r.type for r in rows} == {*valid, "retrieved"} - {"unheld"}
    assert all(r.outcome == "applied" for r in rows)
    async with app.state.session_factory() as db:
        call = await db.scalar(select(Call).where(Call.pbx == pbx, Call.call_id == call_id))
        assert call.transfers == 1 and call.queue == "billing" and call.hangup_by == "caller"
        assert call.recording_url == "https://r.example.test/1.wav" and call.digits == "1#"


async def test_a_redelivered_event_is_stored_once(app, client, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, secret = await make_pbx(app)
    call_id = uid()
    payload = event(call_id, 1, "call_new", past(), caller=new_mobile())
    first = await post_signed(client, pbx, secret, payload)
    second = await post_signed(client, pbx, secret, payload)
    assert first.status_code == second.status_code == 200
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is True
    rows = await event_rows(app, pbx, call_id)
    assert len(rows) == 1 and rows[0].deliveries == 2
    # The same event_id for another event is the PBX's bug, told plainly; so is a seq used twice.
    reused_id = event(call_id, 2, "held", past()) | {"event_id": payload["event_id"]}
    reused = await post_signed(client, pbx, secret, reused_id)
    assert reused.status_code == 409, reused.text
    other = await post_signed(client, pbx, secret, event(call_id, 1, "held", past()))
    assert other.status_code == 409, other.text
    assert len(await event_rows(app, pbx, call_id)) == 1


async def test_events_past_a_gap_wait_for_it(app, client, make, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, secret = await make_pbx(app)
    world = await make_world(app, make, pbx, past(), available=())
    call_id = uid()
    new = event(call_id, 1, "call_new", world.at(0), caller=new_mobile())
    queued = event(call_id, 2, "queued", world.at(1), queue=world.queue.code)
    hung_up = event(call_id, 3, "hung_up", world.at(30), by="caller")

    early = await post_signed(client, pbx, secret, hung_up)
    assert early.status_code == 200 and early.json()["waiting_for_seq"] == 1
    # The call row already tells what is known; nothing was done with it yet.
    assert early.json()["call_state"] == "ended"
    async with app.state.session_factory() as db:
        call = await db.scalar(select(Call).where(Call.pbx == pbx, Call.call_id == call_id))
        assert call.interaction_id is None and call.applied_seq == 0
    assert (await post_signed(client, pbx, secret, queued)).json()["waiting_for_seq"] == 1
    done = await post_signed(client, pbx, secret, new)
    assert done.json()["waiting_for_seq"] is None
    async with app.state.session_factory() as db:
        call = await db.scalar(select(Call).where(Call.pbx == pbx, Call.call_id == call_id))
        assert call.applied_seq == 3 and call.gap_since is None
        from kefu.interactions.models import Interaction

        interaction = await db.get(Interaction, call.interaction_id)
        assert interaction.state == "abandoned" and interaction.abandoned_at == world.at(30)


async def test_a_lost_event_delays_the_call_only_until_the_gap_timeout(app, make, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, _ = await make_pbx(app)
    world = await make_world(app, make, pbx, past(), available=())
    call_id = uid()
    await deliver(app, pbx, [event(call_id, 1, "call_new", world.at(0), caller=new_mobile())])
    await deliver(app, pbx, [event(call_id, 3, "hung_up", world.at(30))])
    async with app.state.session_factory() as db, db.begin():
        assert await service.sweep_gaps(db, app.state.settings) == 0  # not waited long enough yet
    async with app.state.session_factory() as db, db.begin():
        later = service.utcnow() + timedelta(seconds=app.state.settings.cti_gap_seconds + 1)
        assert await service.sweep_gaps(db, app.state.settings, now=later) == 1
    await deliver(app, pbx, [event(call_id, 2, "queued", world.at(2), queue=world.queue.code)])
    rows = await event_rows(app, pbx, call_id)
    assert [(r.seq, r.outcome) for r in rows] == [(1, "applied"), (2, "late"), (3, "applied")]
    async with app.state.session_factory() as db:
        call = await db.scalar(select(Call).where(Call.pbx == pbx, Call.call_id == call_id))
        # The call tells all it knows; the late event did nothing (the call never reached a queue).
        assert call.state == "ended" and call.queue == world.queue.code and call.interaction_id is None


# --- instructions ----------------------------------------------------------------------------------
async def test_the_answer_says_which_extension_to_ring_and_polling_says_it_too(app, client, make, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, secret = await make_pbx(app)
    world = await make_world(app, make, pbx, service.utcnow() - timedelta(seconds=5), available=("A",))
    call_id = uid()
    await post_signed(client, pbx, secret, event(call_id, 1, "call_new", world.at(0), caller=new_mobile()))
    queued = await post_signed(client, pbx, secret, event(call_id, 2, "queued", world.at(1), queue=world.queue.code))
    assert queued.status_code == 200, queued.text
    instruction = queued.json()["instruction"]
    assert instruction["action"] == "ring" and instruction["extension"] == world.extensions["A"]
    assert instruction["agent_id"] == world.agents["A"].id and instruction["queue"] == world.queue.code

    path = f"/api/v1/cti/calls/{call_id}/instruction"
    polled = await client.get(path, headers=signed_headers(pbx, secret, path.encode()))
    assert polled.status_code == 200, polled.text
    again = polled.json()["instruction"]
    assert again == {**instruction, "timeout_seconds": again["timeout_seconds"]}
    # Signed for another path (another call) it is refused; an unknown call is a 404.
    other = f"/api/v1/cti/calls/{uid()}/instruction"
    assert (await client.get(path, headers=signed_headers(pbx, secret, other.encode()))).status_code == 401
    assert (await client.get(other, headers=signed_headers(pbx, secret, other.encode()))).status_code == 404

    answered = await post_signed(
        client, pbx, secret, event(call_id, 3, "ringing", world.at(2), extension=world.extensions["A"])
    )
    assert answered.json()["call_state"] == "ringing"
    talking = await post_signed(client, pbx, secret, event(call_id, 4, "answered", world.at(4)))
    assert talking.json()["instruction"] == {"action": "none", "reason": "connected"}


async def test_nobody_free_means_queue_and_the_ivr_step_is_the_instruction(app, client, make, monkeypatch) -> None:  # noqa: ANN001
    from cti_support import ScriptedIvr

    pbx, secret = await make_pbx(app)
    world = await make_world(app, make, pbx, service.utcnow() - timedelta(seconds=5), available=())
    use_ivr(monkeypatch, app, ScriptedIvr(world.queue.code))
    call_id = uid()
    first = await post_signed(client, pbx, secret, event(call_id, 1, "call_new", world.at(0), caller=new_mobile()))
    assert first.json()["instruction"]["action"] == "collect"
    queued = await post_signed(client, pbx, secret, event(call_id, 2, "ivr_input", world.at(3), digits="3"))
    assert queued.json()["instruction"] == {"action": "queue", "queue": world.queue.code}
    bye = uid()
    await post_signed(client, pbx, secret, event(bye, 1, "call_new", world.at(0), caller=new_mobile()))
    hangup = await post_signed(client, pbx, secret, event(bye, 2, "ivr_input", world.at(3), digits="1"))
    assert hangup.json()["instruction"] == {"action": "hangup", "text": "再见"}
    async with app.state.session_factory() as db:
        call = await db.scalar(select(Call).where(Call.pbx == pbx, Call.call_id == bye))
        assert call.interaction_id is None  # served by the IVR alone: no contact for an agent
