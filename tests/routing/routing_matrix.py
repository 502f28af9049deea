"""Access-matrix examples for the routing routes (see tests/core/test_access_matrix.py).

The queues made here have no available member (agents are set to training), so nothing the cells do
offers the waiting contact to anyone: accept/reject answer 409 for every allowed role, which is what an
allowed caller without a ringing offer gets."""

from __future__ import annotations

import uuid
from typing import Any

from kefu.core.policy import Principal
from kefu.interactions import service as interactions
from kefu.routing import queues

SYSTEM = Principal(user_id=None, username="matrix", roles=frozenset({"admin"}), via="session")
R = "/api/v1/routing"


def _code() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, int]:
    agent = await world["make"].user("agent")
    async with app.state.session_factory() as db, db.begin():
        first = await queues.create_queue(db, SYSTEM, {"code": _code(), "name": "矩阵队列", "channel": "phone"})
        second = await queues.create_queue(db, SYSTEM, {"code": _code(), "name": "矩阵队列二", "channel": "phone"})
        profile = await queues.create_profile(db, SYSTEM, {"name": _code()})
        view, _ = await interactions.create_interaction(
            db, SYSTEM, interactions.NewInteraction(channel="phone", queue=first.queue.code)
        )
    return {
        "routing_queue_id": first.queue.id,
        "routing_queue2_id": second.queue.id,
        "routing_profile_id": profile.profile.id,
        "routing_entry_id": view.interaction.id,
        "routing_agent_id": agent.id,
    }


async def _own_history(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    # Agents may read their own presence history only: each role asks for its own.
    user = world["users"].get(role)
    return {"history_user_id": user.id if user is not None else world["victim"].id}


EXAMPLES = {
    ("GET", R + "/queues"): lambda c: {},
    ("POST", R + "/queues"): lambda c: {"json": {"code": _code(), "name": "新队列", "channel": "chat"}},
    ("GET", R + "/queues/{queue_id}"): lambda c: {"path": {"queue_id": c.ids["routing_queue_id"]}},
    ("PATCH", R + "/queues/{queue_id}"): lambda c: {
        "path": {"queue_id": c.ids["routing_queue_id"]},
        "json": {"name": "矩阵队列改", "sl_threshold_seconds": 30},
    },
    ("GET", R + "/queues/{queue_id}/members"): lambda c: {"path": {"queue_id": c.ids["routing_queue_id"]}},
    ("PUT", R + "/queues/{queue_id}/members"): lambda c: {
        "path": {"queue_id": c.ids["routing_queue_id"]},
        "json": {"user_ids": []},
    },
    ("GET", R + "/capacity-profiles"): lambda c: {},
    ("POST", R + "/capacity-profiles"): lambda c: {"json": {"name": _code(), "chat": 2}},
    ("PATCH", R + "/capacity-profiles/{profile_id}"): lambda c: {
        "path": {"profile_id": c.ids["routing_profile_id"]},
        "json": {"email": 4},
    },
    ("PUT", R + "/capacity-assignments"): lambda c: {
        "json": {"team_id": c.team_id, "profile_id": c.ids["routing_profile_id"]}
    },
    ("GET", R + "/presence/me"): lambda c: {},
    ("PUT", R + "/presence/me"): lambda c: {"json": {"presence": "training"}},
    ("PUT", R + "/agents/{user_id}/presence"): lambda c: {
        "path": {"user_id": c.ids["routing_agent_id"]},
        "json": {"presence": "training"},
    },
    ("PUT", R + "/agents/{user_id}/queues"): lambda c: {
        "path": {"user_id": c.ids["routing_agent_id"]},
        "json": {"add": [c.ids["routing_queue2_id"]]},
    },
    ("GET", R + "/agents/{user_id}/state-changes"): lambda c: {
        "path": {"user_id": c.ids["history_user_id"]},
        "params": {"limit": 5},
    },
    ("GET", R + "/offers/mine"): lambda c: {},
    ("POST", R + "/offers/{interaction_id}/accept"): lambda c: {"path": {"interaction_id": c.ids["routing_entry_id"]}},
    ("POST", R + "/offers/{interaction_id}/reject"): lambda c: {"path": {"interaction_id": c.ids["routing_entry_id"]}},
    ("GET", R + "/entries"): lambda c: {"params": {"limit": 5}},
    ("GET", R + "/entries/{interaction_id}/position"): lambda c: {
        "path": {"interaction_id": c.ids["routing_entry_id"]}
    },
    ("POST", R + "/entries/{interaction_id}/move"): lambda c: {
        "path": {"interaction_id": c.ids["routing_entry_id"]},
        "json": {"queue_id": c.ids["routing_queue2_id"]},
    },
    ("PATCH", R + "/entries/{interaction_id}"): lambda c: {
        "path": {"interaction_id": c.ids["routing_entry_id"]},
        "json": {"priority": 5},
    },
    ("GET", R + "/live"): lambda c: {},
    ("GET", "/routing/live"): lambda c: {},
    ("GET", "/routing/live/panel"): lambda c: {},
}

PER_CELL = {("GET", R + "/agents/{user_id}/state-changes"): _own_history}

# Configuration pages (kefu.routing.admin_pages): forms posted like a browser does.
EXAMPLES.update(
    {
        ("GET", "/routing/queues"): lambda c: {},
        ("GET", "/routing/queues/new"): lambda c: {},
        ("POST", "/routing/queues"): lambda c: {"data": {"code": _code(), "name": "页面队列", "channel": "chat"}},
        ("GET", "/routing/queues/{queue_id}"): lambda c: {"path": {"queue_id": c.ids["routing_queue_id"]}},
        ("POST", "/routing/queues/{queue_id}"): lambda c: {
            "path": {"queue_id": c.ids["routing_queue_id"]},
            "data": {"name": "矩阵队列页面改", "sl_threshold_seconds": "25"},
        },
        ("POST", "/routing/queues/{queue_id}/members/add"): lambda c: {
            "path": {"queue_id": c.ids["routing_queue2_id"]},
            "data": {"user_ids[]": str(c.ids["routing_agent_id"])},
        },
        ("POST", "/routing/queues/{queue_id}/members/remove"): lambda c: {
            "path": {"queue_id": c.ids["routing_queue2_id"]},
            "data": {"user_ids[]": str(c.ids["routing_agent_id"])},
        },
        ("GET", "/routing/capacity"): lambda c: {},
        ("POST", "/routing/capacity"): lambda c: {"data": {"name": _code(), "chat": "2"}},
        ("POST", "/routing/capacity/{profile_id}"): lambda c: {
            "path": {"profile_id": c.ids["routing_profile_id"]},
            "data": {"email": "4"},
        },
        ("POST", "/routing/capacity/assignments"): lambda c: {
            "data": {"team_id": str(c.team_id), "profile_id": str(c.ids["routing_profile_id"])}
        },
    }
)
