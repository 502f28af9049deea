"""Helpers for the phone-channel tests: PBXs with secrets, signed requests, a scripted IVR (the engine's
contract), realistic call scenarios and a snapshot of everything an event can change."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select

from kefu.channels.cti import service
from kefu.channels.cti.models import Call, CallEvent
from kefu.channels.cti.schemas import EventBatch, EventBody
from kefu.channels.ivr import engine
from kefu.core.events import bind_bus
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.interactions.models import Interaction
from kefu.routing import service as routing
from kefu.routing.models import RoutingEntry, RoutingQueue

SYSTEM = Principal(user_id=None, username="cti-test", roles=frozenset({"admin"}), via="session")
EVENTS = "/api/v1/cti/events"


def uid(prefix: str = "c") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def new_mobile() -> str:
    return f"+86139{uuid.uuid4().int % 10**8:08d}"


async def customer_named(app: Any, number: str, name: str) -> int:
    from kefu.customers import service as customers

    async with app.state.session_factory() as db, db.begin():
        customer, _ = await customers.resolve_or_create(db, SYSTEM, "phone", number, display_name=name)
        return customer.id


async def make_pbx(app: Any, code: str | None = None) -> tuple[str, str]:
    from kefu.channels.cti.schemas import PbxCreate

    async with app.state.session_factory() as db, db.begin():
        pbx = await service.create_pbx(db, SYSTEM, PbxCreate(code=code or uid("pbx"), name="测试交换机"))
        return pbx.code, pbx.secret


def signed_headers(pbx: str, secret: str, payload: bytes, *, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(at if at is not None else time.time()))
    return {
        "X-Kefu-Pbx": pbx,
        "X-Kefu-Timestamp": timestamp,
        "X-Kefu-Signature": service.sign(secret, timestamp, payload),
        "Content-Type": "application/json",
    }


def body_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


async def post_signed(client: httpx.AsyncClient, pbx: str, secret: str, payload: Any) -> httpx.Response:
    raw = body_bytes(payload)
    return await client.post(EVENTS, content=raw, headers=signed_headers(pbx, secret, raw))


def event(call_id: str, seq: int | None, type_: str, at: datetime, **fields: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"event_id": uid("e"), "call_id": call_id, "type": type_, "at": at.isoformat()}
    if seq is not None:
        found["seq"] = seq
    found.update(fields)
    return found


# --- a scripted IVR: the engine's contract, deterministic --------------------------------------------
class ScriptedIvr:
    """Menu: "1" -> play a message and hang up, "3" (or anything else) -> the queue ``queue``."""

    def __init__(self, queue: str) -> None:
        self.queue = queue

    async def start(self, db: Any, settings: Any, flow_code: str | None, call: Any) -> Any:
        return engine.IvrStep(
            instruction={"action": "collect", "text": "请按键", "max_digits": 1, "min_digits": 1},
            state={"node": "menu", "started": call.now.isoformat()},
        )

    async def advance(self, db: Any, settings: Any, call: Any, state: dict[str, Any], digits: str | None) -> Any:
        if digits == "1":
            return engine.IvrStep(instruction={"action": "hangup", "text": "再见"}, state={"node": "bye"}, done=True)
        return engine.IvrStep(
            instruction={"action": "queue", "queue": self.queue, "priority": 0},
            state={"node": "queue", "digits": digits},
            queue=self.queue,
            done=True,
        )


def use_ivr(monkeypatch: Any, app: Any, ivr: ScriptedIvr | None) -> None:
    if ivr is None:
        monkeypatch.setattr(app.state.settings, "cti_ivr", False)
        return
    monkeypatch.setattr(app.state.settings, "cti_ivr", True)
    monkeypatch.setattr(engine, "start", ivr.start)
    monkeypatch.setattr(engine, "advance", ivr.advance)


# --- delivering events straight to the service (the HTTP path is tested on its own) ------------------
async def deliver(app: Any, pbx: str, events: list[dict[str, Any]]) -> list[service.Received]:
    parsed = EventBody.validate_python({"events": events} if len(events) > 1 else events[0])
    bodies = parsed.events if isinstance(parsed, EventBatch) else [parsed]
    async with app.state.session_factory() as db, db.begin():
        bind_bus(db, app.state.event_bus)
        return await service.receive(db, app.state.settings, pbx, bodies)


# --- the world a scenario runs in -----------------------------------------------------------------
@dataclass
class World:
    pbx: str
    t0: datetime
    queue: RoutingQueue
    agents: dict[str, Any] = field(default_factory=dict)  # label -> User
    extensions: dict[str, str] = field(default_factory=dict)  # label -> extension

    def label_of(self, user_id: int | None) -> str | None:
        if user_id is None:
            return None
        for label, user in self.agents.items():
            if user.id == user_id:
                return label
        return f"other:{user_id}"

    def at(self, seconds: float) -> datetime:
        return self.t0 + timedelta(seconds=seconds)


async def make_world(app: Any, make: Any, pbx: str, t0: datetime, *, available: tuple[str, ...] = ("A",)) -> World:
    """A fresh queue with agents A and B (and C, who is in no queue), each with an extension; the agents in
    ``available`` are signed in to routing as available just before t0."""
    from kefu.routing.models import QueueMember

    async with app.state.session_factory() as db, db.begin():
        queue = RoutingQueue(code=uid("q"), name="电话队列", channel="phone", offer_timeout_seconds=60)
        db.add(queue)
        await db.flush()
    world = World(pbx=pbx, t0=t0, queue=queue)
    for label in ("A", "B", "C"):
        user = await make.user("agent")
        world.agents[label] = user
        world.extensions[label] = f"8{uuid.uuid4().int % 10**7:07d}"
        async with app.state.session_factory() as db, db.begin():
            await service.set_extension(db, SYSTEM, user.id, world.extensions[label])
            if label != "C":
                db.add(QueueMember(queue_id=queue.id, user_id=user.id))
    routing.invalidate_queues()
    for label in available:
        user = world.agents[label]
        principal = Principal(user_id=user.id, username=user.username, roles=frozenset({"agent"}), via="session")
        async with app.state.session_factory() as db, db.begin():
            await routing.set_presence(db, principal, user.id, "available", now=t0 - timedelta(seconds=30))
    return world


# --- scenarios: (name, IVR?, events in the PBX's order) ------------------------------------------------
def scenario(name: str, world: World, call_id: str, caller: str) -> tuple[list[dict[str, Any]], bool]:
    ext = world.extensions
    at = world.at
    if name == "ivr_queue_ring_answer_transfer_hangup":
        events = [
            ("call_new", 0, {"caller": caller, "called": "4008001234"}),
            ("ivr_input", 6, {"digits": "3"}),
            ("ringing", 7, {"extension": ext["A"]}),
            ("answered", 12, {}),
            ("held", 40, {}),
            ("unheld", 55, {}),
            ("transferred", 70, {"to_extension": ext["B"]}),
            ("ringing", 71, {"extension": ext["B"]}),
            ("answered", 75, {}),
            ("hung_up", 130, {"cause": "normal_clearing", "by": "caller"}),
            ("recording_available", 131, {"url": "https://rec.example.test/r/1.wav", "duration_seconds": 118}),
        ]
        ivr = True
    elif name == "abandoned_in_queue":
        events = [
            ("call_new", 0, {"caller": caller, "called": "4008001234"}),
            ("queued", 2, {"queue": world.queue.code}),
            ("hung_up", 50, {"cause": "normal_clearing", "by": "caller"}),
        ]
        ivr = False
    elif name == "pbx_routed":
        events = [
            ("call_new", 0, {"caller": caller, "called": "4008005678"}),
            ("ringing", 1, {"extension": ext["C"]}),
            ("answered", 5, {}),
            ("hung_up", 65, {"cause": "normal_clearing", "by": "agent"}),
        ]
        ivr = False
    elif name == "recording_late":
        events = [
            ("call_new", 0, {"caller": caller, "called": "4008009999"}),
            ("queued", 1, {"queue": "pbx-own-sales"}),
            ("ringing", 20, {"extension": ext["C"]}),
            ("answered", 24, {}),
            ("hung_up", 90, {"by": "caller"}),
        ]
        ivr = False
    else:  # pragma: no cover
        raise ValueError(name)
    built = [event(call_id, i + 1, type_, at(offset), **fields) for i, (type_, offset, fields) in enumerate(events)]
    if name == "recording_late":
        # From a recording system that cannot number the call's events: no seq, minutes later.
        built.append(event(call_id, None, "recording_available", at(600), path="/var/spool/asterisk/monitor/x.wav"))
    return built, ivr


SCENARIOS = ("ivr_queue_ring_answer_transfer_hangup", "abandoned_in_queue", "pbx_routed", "recording_late")

_CALL_FIELDS = (
    "state",
    "direction",
    "called",
    "queue",
    "extension",
    "started_at",
    "queued_at",
    "ringing_at",
    "answered_at",
    "ended_at",
    "hangup_cause",
    "hangup_by",
    "held_seconds",
    "transfers",
    "digits",
    "recording_url",
    "recording_path",
    "recording_seconds",
    "ivr_state",
    "ivr_instruction",
    "ivr_done",
    "applied_seq",
    "gap_since",
    "event_count",
    "last_event_at",
)
_INTERACTION_FIELDS = (
    "channel",
    "direction",
    "state",
    "identity_kind",
    "arrived_at",
    "queued_at",
    "offered_at",
    "answered_at",
    "abandoned_at",
    "ended_at",
    "wrap_up_ended_at",
)


async def snapshot(app: Any, world: World, pbx: str, call_id: str) -> dict[str, Any]:
    """Everything the call's events decided, with the run's own ids replaced by what they stand for."""
    async with app.state.session_factory() as db:
        call = await db.scalar(select(Call).where(Call.pbx == pbx, Call.call_id == call_id))
        assert call is not None
        found: dict[str, Any] = {f"call.{name}": getattr(call, name) for name in _CALL_FIELDS}
        found["call.caller_known"] = call.caller is not None
        found["call.agent"] = world.label_of(call.agent_id)
        found["call.answered_by"] = world.label_of(call.answered_by_id)
        events = await service._events_of(db, call)  # noqa: SLF001 - the test reads the stored events
        found["events"] = sorted((e.seq or 0, e.type, e.outcome) for e in events)
        found["instruction"] = await service.instruction_for(db, call, now=world.t0)
        if call.interaction_id is None:
            found["interaction"] = None
            return found
        interaction = await db.get(Interaction, call.interaction_id)
        assert interaction is not None
        for name in _INTERACTION_FIELDS:
            found[f"interaction.{name}"] = getattr(interaction, name)
        found["interaction.queue"] = "Q" if interaction.queue == world.queue.code else interaction.queue
        found["interaction.agent"] = world.label_of(interaction.agent_id)
        found["interaction.customer"] = interaction.customer_id is not None
        found["interaction.case"] = interaction.work_order_id is not None
        entry = await db.get(RoutingEntry, interaction.id)
        found["routing"] = (
            None
            if entry is None
            else (entry.state, entry.outcome, world.label_of(entry.agent_id), world.label_of(entry.offer_agent_id))
        )
        return found


async def event_rows(app: Any, pbx: str, call_id: str) -> list[CallEvent]:
    async with app.state.session_factory() as db:
        call = await db.scalar(select(Call).where(Call.pbx == pbx, Call.call_id == call_id))
        return [] if call is None else await service._events_of(db, call)  # noqa: SLF001


def past(hours: float = 2) -> datetime:
    return utcnow().replace(microsecond=0) - timedelta(hours=hours)
