"""Access-matrix examples for the interaction and contact-reason routes (see tests/core/test_access_matrix.py)."""

from __future__ import annotations

import uuid
from typing import Any

from kefu.core.policy import Principal
from kefu.interactions import service

SYSTEM = Principal(user_id=None, username="matrix", roles=frozenset({"admin"}), via="session")
BASE = "/api/v1/interactions"


def _code() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


async def _interaction(app: Any, world: dict[str, Any]) -> int:
    async with app.state.session_factory() as db, db.begin():
        view, _ = await service.create_interaction(
            db, SYSTEM, service.NewInteraction(channel="phone", agent_id=world["users"]["agent"].id)
        )
        return view.interaction.id


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, int]:
    async with app.state.session_factory() as db, db.begin():
        reason = await service.create_reason(db, SYSTEM, code=_code(), name="矩阵")
    return {"interaction_id": await _interaction(app, world), "contact_reason_id": reason.reason.id}


async def _fresh_interaction(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    # "queued" is written once per interaction: each cell records it on its own.
    return {"interaction_id": await _interaction(app, world)}


EXAMPLES = {
    ("POST", BASE): lambda c: {"json": {"channel": "phone", "external_id": _code()}},
    ("GET", BASE): lambda c: {"params": {"limit": 5}},
    ("GET", BASE + "/{interaction_id}"): lambda c: {"path": {"interaction_id": c.ids["interaction_id"]}},
    ("POST", BASE + "/{interaction_id}/events"): lambda c: {
        "path": {"interaction_id": c.ids["interaction_id"]},
        "json": {"event": "queued"},
    },
    ("PATCH", BASE + "/{interaction_id}"): lambda c: {
        "path": {"interaction_id": c.ids["interaction_id"]},
        "json": {"summary": "矩阵", "contact_reason_id": c.ids["contact_reason_id"]},
    },
    ("POST", BASE + "/{interaction_id}/articles"): lambda c: {
        "path": {"interaction_id": c.ids["interaction_id"]},
        "json": {"article_id": c.article_id},
    },
    ("GET", "/api/v1/contact-reasons"): lambda c: {},
    ("POST", "/api/v1/contact-reasons"): lambda c: {"json": {"code": _code(), "name": "新原因"}},
    ("PATCH", "/api/v1/contact-reasons/{reason_id}"): lambda c: {
        "path": {"reason_id": c.ids["contact_reason_id"]},
        "json": {"name": "改名", "position": 1},
    },
}

PER_CELL = {("POST", BASE + "/{interaction_id}/events"): _fresh_interaction}
