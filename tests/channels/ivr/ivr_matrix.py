"""Access-matrix examples for the IVR flow routes (see tests/core/test_access_matrix.py)."""

from __future__ import annotations

import uuid
from typing import Any

from kefu.channels.ivr import service
from kefu.core.policy import Principal

SYSTEM = Principal(user_id=None, username="matrix", roles=frozenset({"admin"}), via="session")
A = "/api/v1/ivr/flows"
P = "/ivr/flows"
CALLER = "13800000000"
SOURCE = """\
start: main
nodes:
  main: {type: menu, prompt: "结束请按1", options: {"1": bye}, fallback: bye}
  bye: {type: hangup, text: "再见"}
"""


def _code() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, int]:
    settings = app.state.settings
    async with app.state.session_factory() as db, db.begin():
        view = await service.create_flow(
            db, SYSTEM, settings, {"code": _code(), "name": "矩阵流程", "source": SOURCE, "publish": True}
        )
        await service.update_flow(db, SYSTEM, settings, view.flow.id, {"source": SOURCE.replace("再见", "再会")})
    return {"ivr_flow_id": view.flow.id}


def _flow(c: Any) -> dict[str, Any]:
    return {"flow_id": c.ids["ivr_flow_id"]}


def _version(c: Any) -> dict[str, Any]:
    return {"flow_id": c.ids["ivr_flow_id"], "number": 1}


EXAMPLES = {
    ("GET", A): lambda c: {},
    ("POST", A): lambda c: {"json": {"code": _code(), "name": "新流程", "source": SOURCE}},
    ("POST", A + "/validate"): lambda c: {"json": {"source": SOURCE}},
    ("GET", A + "/{flow_id}"): lambda c: {"path": _flow(c)},
    ("PATCH", A + "/{flow_id}"): lambda c: {"path": _flow(c), "json": {"name": "矩阵流程改"}},
    ("POST", A + "/{flow_id}/publish"): lambda c: {"path": _flow(c), "json": {}},
    ("GET", A + "/{flow_id}/versions"): lambda c: {"path": _flow(c)},
    ("GET", A + "/{flow_id}/versions/{number}"): lambda c: {"path": _version(c)},
    ("POST", A + "/{flow_id}/versions/{number}/restore"): lambda c: {"path": _version(c)},
    ("POST", A + "/{flow_id}/simulate"): lambda c: {
        "path": _flow(c),
        "json": {"caller": "13800000000", "inputs": ["1"]},
    },
    # Pages: forms posted like a browser does.
    ("GET", P): lambda c: {},
    ("POST", P): lambda c: {"data": {"code": _code(), "name": "页面流程", "source": SOURCE}},
    ("GET", P + "/{flow_id}"): lambda c: {"path": _flow(c)},
    ("POST", P + "/{flow_id}/source"): lambda c: {"path": _flow(c), "data": {"source": SOURCE, "action": "save"}},
    ("POST", P + "/{flow_id}/settings"): lambda c: {"path": _flow(c), "data": {"name": "矩阵流程页", "active": "1"}},
    ("POST", P + "/{flow_id}/publish"): lambda c: {"path": _flow(c), "data": {}},
    ("POST", P + "/{flow_id}/versions/{number}/restore"): lambda c: {"path": _version(c), "data": {}},
    ("POST", P + "/{flow_id}/simulate"): lambda c: {"path": _flow(c), "data": {"caller": CALLER, "inputs": "1"}},
}
