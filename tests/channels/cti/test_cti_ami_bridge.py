"""The Asterisk AMI bridge (contrib/asterisk/kefu_ami_bridge.py) against a fake AMI server speaking the
protocol (banner, Login, events as "Key: Value" blocks), posting to kefu's real event endpoint."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from cti_support import event_rows, make_pbx, make_world, new_mobile, past, uid, use_ivr
from sqlalchemy import select

from kefu.channels.cti.models import Call
from kefu.interactions.models import Interaction

BRIDGE = Path(__file__).resolve().parents[3] / "contrib" / "asterisk" / "kefu_ami_bridge.py"
_spec = importlib.util.spec_from_file_location("kefu_ami_bridge", BRIDGE)
assert _spec is not None and _spec.loader is not None
bridge = importlib.util.module_from_spec(_spec)
sys.modules["kefu_ami_bridge"] = bridge  # dataclasses look their module up
_spec.loader.exec_module(bridge)


def _block(**fields: str) -> bytes:
    return "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in fields.items()).encode() + b"\r\n"


async def _fake_ami(events: list[dict[str, str]], logins: list[dict[str, str]]) -> tuple[asyncio.Server, int]:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/7.0.3\r\n")
        login = await bridge.read_message(reader)
        logins.append(login or {})
        if (login or {}).get("Secret") != "ami-secret":
            writer.write(_block(Response="Error", Message="Authentication failed"))
            writer.close()
            return
        writer.write(_block(Response="Success", Message="Authentication accepted"))
        writer.write(_block(Event="FullyBooted", Privilege="system,all", Status="Fully Booted"))
        for fields in events:
            writer.write("".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode() + b"\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _queue_call(linkedid: str, caller: str, queue: str, ext: str, t0: float) -> list[dict[str, str]]:
    agent_leg = f"{linkedid[:-1]}9"

    def at(seconds: float) -> str:
        return f"{t0 + seconds:.6f}"

    return [
        {"Event": "Newchannel", "Channel": "PJSIP/trunk-00000001", "Uniqueid": linkedid, "Linkedid": linkedid,
         "CallerIDNum": caller, "Exten": "4008001234", "Timestamp": at(0)},
        {"Event": "QueueCallerJoin", "Queue": queue, "Uniqueid": linkedid, "Linkedid": linkedid, "Timestamp": at(3)},
        {"Event": "Newchannel", "Channel": f"PJSIP/{ext}-00000002", "Uniqueid": agent_leg, "Linkedid": linkedid,
         "CallerIDNum": ext, "Timestamp": at(4)},
        {"Event": "DialBegin", "DestChannel": f"PJSIP/{ext}-00000002", "Linkedid": linkedid, "Timestamp": at(4)},
        {"Event": "DialEnd", "DestChannel": f"PJSIP/{ext}-00000002", "DialStatus": "ANSWER", "Linkedid": linkedid,
         "Timestamp": at(9)},
        {"Event": "VarSet", "Variable": "MIXMONITOR_FILENAME", "Value": f"/var/spool/asterisk/monitor/{linkedid}.wav",
         "Linkedid": linkedid, "Uniqueid": linkedid, "Timestamp": at(9)},
        {"Event": "Hold", "Linkedid": linkedid, "Uniqueid": linkedid, "Timestamp": at(20)},
        {"Event": "Unhold", "Linkedid": linkedid, "Uniqueid": linkedid, "Timestamp": at(32)},
        {"Event": "Hangup", "Uniqueid": agent_leg, "Linkedid": linkedid, "Cause-txt": "Normal Clearing",
         "Timestamp": at(60)},
        {"Event": "Hangup", "Uniqueid": linkedid, "Linkedid": linkedid, "Cause-txt": "Normal Clearing",
         "Timestamp": at(60)},
    ]  # fmt: skip


def test_the_translation_follows_the_callers_channel() -> None:
    translator = bridge.Translator()
    script = _queue_call("1700.1", "13800138000", "sales", "8001", 1767225600.0)
    events = [e for ami in script for e in translator.feed(ami)]
    assert [(e["seq"], e["type"]) for e in events] == [
        (1, "call_new"),
        (2, "queued"),
        (3, "ringing"),
        (4, "answered"),
        (5, "held"),
        (6, "unheld"),
        (7, "hung_up"),
        (8, "recording_available"),
    ]
    assert events[0]["caller"] == "13800138000" and events[0]["at"] == "2026-01-01T00:00:00+00:00"
    assert events[2]["extension"] == "8001" and events[6]["cause"] == "Normal Clearing"
    assert {e["event_id"] for e in events} == {f"1700.1-{n}" for n in range(1, 9)}
    assert translator.calls == {}  # forgotten after the hang-up
    assert bridge.extension_of("Local/8002@agents-00000003;1") == "8002"
    # The dialplan hands a call to a kefu queue with a user event.
    translator.feed({"Event": "Newchannel", "Uniqueid": "1700.2", "Linkedid": "1700.2", "CallerIDNum": "<unknown>"})
    (queued,) = translator.feed({"Event": "UserEvent", "UserEvent": "KefuQueue", "Queue": "cn", "Linkedid": "1700.2"})
    assert queued["type"] == "queued" and queued["queue"] == "cn" and queued["seq"] == 2
    # A call that began before the bridge is not followed.
    assert translator.feed({"Event": "Hold", "Linkedid": "999.1"}) == []


async def test_the_bridge_posts_a_queue_call_that_kefu_records(app, client, make, monkeypatch) -> None:  # noqa: ANN001
    use_ivr(monkeypatch, app, None)
    pbx, secret = await make_pbx(app)
    world = await make_world(app, make, pbx, past(), available=())
    linkedid = f"{int(time.time())}.{uid('')[-5:]}1"
    caller = new_mobile().removeprefix("+86")
    t0 = (world.t0 + timedelta(seconds=1)).timestamp()
    script = _queue_call(linkedid, caller, "pbx-sales", world.extensions["C"], t0)
    logins: list[dict[str, str]] = []
    server, port = await _fake_ami(script, logins)
    statuses: list[int] = []

    async def send(event: dict[str, Any]) -> int:
        # The bridge's own signing, checked by kefu's real endpoint.
        body = json.dumps(event, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        headers = {"X-Kefu-Pbx": pbx, "X-Kefu-Timestamp": ts, "X-Kefu-Signature": bridge.sign(secret, ts, body)}
        response = await client.post("/api/v1/cti/events", content=body, headers=headers)
        statuses.append(response.status_code)
        return response.status_code

    async with server:
        delivered = await bridge.run("127.0.0.1", port, "kefu", "ami-secret", send)
    assert logins[0]["Action"] == "Login" and logins[0]["Username"] == "kefu"
    assert delivered == 8 and set(statuses) == {200}
    rows = await event_rows(app, pbx, linkedid)
    assert [r.outcome for r in rows] == ["applied"] * 8
    async with app.state.session_factory() as db:
        call = await db.scalar(select(Call).where(Call.pbx == pbx, Call.call_id == linkedid))
        assert call.state == "ended" and call.queue == "pbx-sales" and call.held_seconds == 12
        assert call.recording_path == f"/var/spool/asterisk/monitor/{linkedid}.wav"
        interaction = await db.get(Interaction, call.interaction_id)
        assert interaction.agent_id == world.agents["C"].id and interaction.state == "wrap_up"
        assert (interaction.answered_at - interaction.arrived_at).total_seconds() == 9


async def test_a_refused_login_stops_the_bridge(app) -> None:  # noqa: ANN001
    import pytest

    server, port = await _fake_ami([], [])

    async def send(event: dict[str, Any]) -> int:  # pragma: no cover - never called
        return 200

    async with server:
        with pytest.raises(PermissionError):
            await bridge.run("127.0.0.1", port, "kefu", "wrong", send)


async def test_the_dialplan_helper_asks_kefu_which_extension_to_ring(app, live_server, make, monkeypatch) -> None:  # noqa: ANN001
    """contrib/asterisk/kefu-instruction.sh (curl + openssl), signed, against a real ``kefu serve``."""
    import os
    import subprocess

    from cti_support import deliver, event

    from kefu.db.base import utcnow

    use_ivr(monkeypatch, app, None)
    pbx, secret = await make_pbx(app)
    world = await make_world(app, make, pbx, utcnow() - timedelta(seconds=5), available=("A",))
    call_id = f"{int(time.time())}.{uid('')[-6:]}"
    await deliver(app, pbx, [event(call_id, 1, "call_new", world.at(0), caller=new_mobile())])
    await deliver(app, pbx, [event(call_id, 2, "queued", world.at(1), queue=world.queue.code)])
    script = BRIDGE.parent / "kefu-instruction.sh"
    env = {**os.environ, "KEFU_URL": live_server.url, "KEFU_CTI_SECRET": secret, "KEFU_PBX": pbx}

    def ask(*args: str, secret_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own script
            [str(script), *args], env=secret_env or env, capture_output=True, text=True, timeout=30, check=False
        )

    done = await asyncio.to_thread(ask, call_id)
    assert done.returncode == 0, done.stderr
    action, extension, timeout = done.stdout.split()
    assert (action, extension) == ("ring", world.extensions["A"]) and int(timeout) > 0
    wrong = await asyncio.to_thread(ask, call_id, secret_env={**env, "KEFU_CTI_SECRET": "not-the-secret"})
    assert wrong.stdout.split()[0] == "error"
    assert (await asyncio.to_thread(ask, "bad id;rm")).stdout.split()[0] == "error"
