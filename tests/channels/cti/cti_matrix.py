"""Access-matrix examples for the phone channel's routes (see tests/core/test_access_matrix.py).

The PBX's two routes are open to every role (the signature is the check): their examples are signed
with a PBX made here, in query parameters (the matrix client sends no custom headers)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from kefu.channels.cti import service
from kefu.channels.cti.schemas import EventIn, PbxCreate
from kefu.core.events import bind_bus
from kefu.core.policy import Principal

SYSTEM = Principal(user_id=None, username="matrix", roles=frozenset({"admin"}), via="session")
API = "/api/v1/cti"
_PBX = {"code": f"mx{uuid.uuid4().hex[:10]}", "secret": "matrix-secret-" + uuid.uuid4().hex}


def _code(prefix: str = "m") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def _ext() -> str:
    return f"7{uuid.uuid4().int % 10**9:09d}"


def _call_id(n: int) -> str:
    return f"matrix-call-{n}"


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, int]:
    agent = await world["make"].user("agent")
    n = uuid.uuid4().int % 10**9
    async with app.state.session_factory() as db, db.begin():
        bind_bus(db, app.state.event_bus)
        pbx = await service.create_pbx(db, SYSTEM, PbxCreate(code=_PBX["code"], name="矩阵", secret=_PBX["secret"]))
        await service.set_extension(db, SYSTEM, agent.id, _ext())
        body = EventIn.validate_python(
            {
                "event_id": _code("e"),
                "call_id": _call_id(n),
                "seq": 1,
                "type": "call_new",
                "at": service.utcnow().isoformat(),
                "caller": "+8613800138000",
            }
        )
        received = await service.receive(db, app.state.settings, _PBX["code"], [body])
    return {"cti_pbx_id": pbx.id, "cti_agent_id": agent.id, "cti_call_n": n, "cti_call_row_id": received[0].call.id}


def _signed_event(c: Any) -> dict[str, Any]:
    payload = {
        "event_id": _code("e"),
        "call_id": _call_id(c.ids["cti_call_n"]),
        "seq": 2 + uuid.uuid4().int % 100_000,
        "type": "held",
        "at": service.utcnow().isoformat(),
    }
    raw = httpx.Request("POST", "http://testserver/", json=payload).content
    ts = str(int(time.time()))
    return {"json": payload, "params": {"pbx": _PBX["code"], "ts": ts, "sig": service.sign(_PBX["secret"], ts, raw)}}


def _signed_poll(c: Any) -> dict[str, Any]:
    call_id = _call_id(c.ids["cti_call_n"])
    ts = str(int(time.time()))
    path = f"{API}/calls/{call_id}/instruction"
    sig = service.sign(_PBX["secret"], ts, path.encode())
    return {"path": {"call_id": call_id}, "params": {"pbx": _PBX["code"], "ts": ts, "sig": sig}}


async def _fresh_extension(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    agent = await world["make"].user("agent")
    async with app.state.session_factory() as db, db.begin():
        await service.set_extension(db, SYSTEM, agent.id, _ext())
    return {"cti_remove_user_id": agent.id}


EXAMPLES = {
    ("POST", API + "/events"): _signed_event,
    ("GET", API + "/calls/{call_id}/instruction"): _signed_poll,
    ("GET", API + "/calls"): lambda c: {},
    ("GET", API + "/calls/{call_row_id}"): lambda c: {"path": {"call_row_id": c.ids["cti_call_row_id"]}},
    ("GET", API + "/extensions"): lambda c: {},
    ("PUT", API + "/extensions/{user_id}"): lambda c: {
        "path": {"user_id": c.ids["cti_agent_id"]},
        "json": {"extension": _ext()},
    },
    ("DELETE", API + "/extensions/{user_id}"): lambda c: {"path": {"user_id": c.ids["cti_remove_user_id"]}},
    ("GET", API + "/pbxs"): lambda c: {},
    ("POST", API + "/pbxs"): lambda c: {"json": {"code": _code("p"), "name": "新交换机"}},
    ("PATCH", API + "/pbxs/{pbx_id}"): lambda c: {"path": {"pbx_id": c.ids["cti_pbx_id"]}, "json": {"name": "矩阵二"}},
    # Pages.
    ("GET", "/cti/calls"): lambda c: {},
    ("GET", "/cti/calls/{call_row_id}"): lambda c: {"path": {"call_row_id": c.ids["cti_call_row_id"]}},
    ("GET", "/cti/extensions"): lambda c: {},
    ("POST", "/cti/extensions"): lambda c: {"data": {"user_id": str(c.ids["cti_agent_id"]), "extension": _ext()}},
    ("POST", "/cti/extensions/{user_id}/remove"): lambda c: {"path": {"user_id": c.ids["cti_remove_user_id"]}},
}

PER_CELL = {
    ("DELETE", API + "/extensions/{user_id}"): _fresh_extension,
    ("POST", "/cti/extensions/{user_id}/remove"): _fresh_extension,
}
