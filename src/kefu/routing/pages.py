"""Routing pages: the supervisors' live view.

``/routing/live`` renders the queues, the waiting contacts and the agents on the server (first paint);
routing-live.js then keeps it current by fetching ``/routing/live/panel`` (the same template's panel)
shortly after every ``routing.presence`` / ``routing.entry`` event on /ws and every few seconds, and
ticks the clocks in between. One template renders both, so the page and its updates never disagree.
Moving a contact or an agent between queues goes through the REST API (``/api/v1/routing/...``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.policy import Principal, allows, authorize
from kefu.db.session import get_db
from kefu.routing import live
from kefu.routing.policy import channel_class
from kefu.web.pages import render

router = APIRouter(prefix="", tags=["routing"], include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]
# How often the page fetches the panel without an event (the clocks tick in the browser meanwhile).
REFRESH_SECONDS = 5


def duration(seconds: int | None) -> str:
    """m:ss under an hour, h:mm:ss beyond (the same format routing-live.js ticks in)."""
    if seconds is None:
        return "—"
    hours, rest = divmod(max(0, int(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _context(principal: Principal, view: live.LiveSnapshot) -> dict[str, Any]:
    queues = {q.id: q for q in view.queues}
    return {
        "view": view,
        "queues_by_id": queues,
        "agents_by_id": {a.user_id: a for a in view.agents},
        # A contact moves only to another queue of its channel class (the router refuses the rest).
        "move_targets": {
            q.id: [queues[t] for t in view.queue_ids_by_channel_class.get(channel_class(q.channel), []) if t != q.id]
            for q in view.queues
        },
        "can_move_contacts": allows(principal, "routing_entry", "update"),
        "can_move_agents": allows(principal, "routing_agent", "update"),
        "duration": duration,
        "refresh_seconds": REFRESH_SECONDS,
    }


@router.get("/routing/live")
async def live_page(request: Request, db: Db, principal: Principal = authorize("routing_live", "read")) -> Response:
    view = await live.snapshot(db, principal)
    return render(request, "routing/live.html", principal, **_context(principal, view))


@router.get("/routing/live/panel")
async def live_panel(request: Request, db: Db, principal: Principal = authorize("routing_live", "read")) -> Response:
    """The live view's panel alone, for routing-live.js to swap in."""
    view = await live.snapshot(db, principal)
    return render(request, "routing/_live_panel.html", principal, **_context(principal, view))
