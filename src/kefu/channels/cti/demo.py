"""Demo data for the phone channel: the demo agents' extensions and one finished call from a known customer
(so the call list, the call's timeline and the customer's history show something). Idempotent."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.cti import service
from kefu.channels.cti.models import Call, Extension
from kefu.channels.cti.schemas import EventIn
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity.models import User

DEMO_EXTENSIONS = (("agent", "8001"), ("agent2", "8002"))
DEMO_CALL_ID = "demo-call-1"
_SYSTEM = Principal(user_id=None, username="demo", roles=frozenset({"admin"}), via="system")


async def load_cti_demo(db: AsyncSession, settings: Any) -> None:
    for username, extension in DEMO_EXTENSIONS:
        user_id = await db.scalar(select(User.id).where(User.username == username))
        taken = await db.scalar(select(Extension.user_id).where(Extension.extension == extension))
        if user_id is not None and taken is None and await db.get(Extension, user_id) is None:
            await service.set_extension(db, _SYSTEM, user_id, extension)
    if await db.scalar(select(Call.id).where(Call.call_id == DEMO_CALL_ID)) is not None:
        return
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    script = [
        ("call_new", 0, {"caller": "138 1234 5678", "called": "4008001234"}),
        ("ringing", 8, {"extension": "8001"}),
        ("answered", 12, {}),
        ("held", 70, {}),
        ("unheld", 95, {}),
        ("hung_up", 260, {"by": "caller", "cause": "normal_clearing"}),
    ]
    bodies = [
        EventIn.validate_python(
            {
                "event_id": f"{DEMO_CALL_ID}-{seq}",
                "call_id": DEMO_CALL_ID,
                "seq": seq,
                "type": type_,
                "at": (start + timedelta(seconds=offset)).isoformat(),
                **fields,
            }
        )
        for seq, (type_, offset, fields) in enumerate(script, start=1)
    ]
    # The demo call was routed by the PBX itself: kefu's IVR is not asked.
    quiet = settings.model_copy(update={"cti_ivr": False, "cti_default_queue": ""})
    await service.receive(db, quiet, service.DEFAULT_PBX, bodies)
