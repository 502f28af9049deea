"""The phone channel's rules: signed call events from PBXs, the call projection, routing instructions,
the interaction timeline and screen pops. The only writer of the ``cti_*`` tables.

Events are stored once per (pbx, event_id). A call's row is recomputed from all its stored events
(``project``) whenever one arrives, in the PBX's order: ``seq`` (1, 2, 3... per call), with ``at`` and a
per-type rank only for the events that carry no seq (a recording reported by a separate system). So a
call delivered twice, or out of order, ends in the same row.

What an event *does* (an IVR step, queueing through ``channels.intake`` and ``kefu.routing``, a timeline
fact on the interaction, a screen pop) is done once, when every event before it in ``seq`` has arrived:
facts written to the interaction are never overwritten, so applying "hung up" before a late "answered"
would record an abandoned call for good. Events past a gap wait ``cti_gap_seconds`` for the missing ones
(``sweep_gaps``), then apply anyway, so a lost event delays a call, never stops it.

Interaction timeline from call facts: queued -> routing enqueue (a kefu routing queue) or ``queued``
(the PBX's own queue); ringing -> offered (and a screen pop to that agent); answered -> routing's
accept (a kefu offer) or ``answered``; hung up -> ``ended`` after an answer, ``abandoned`` before one.
Timeline facts carry the PBX's ``at`` (never later than now), so KPIs use the PBX's times.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, false, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels import intake
from kefu.channels.cti.models import Call, CallEvent, CallState, Extension, Pbx
from kefu.channels.cti.schemas import PbxCreate, PbxUpdate
from kefu.core import audit, signing
from kefu.core.errors import ApiError, Conflict, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.db.base import dialect_insert, utcnow
from kefu.identity.models import STAFF_ROLES, User, UserRole
from kefu.identity.service import actor_of
from kefu.interactions import service as interactions
from kefu.interactions.models import Interaction
from kefu.routing.models import EntryState, RoutingEntry

log = logging.getLogger(__name__)

DEFAULT_PBX = "default"
CHANNEL = "phone"
# Ties between events without seq at the same moment: the order they happen in a call.
RANK = {
    "call_new": 0,
    "ivr_input": 1,
    "queued": 2,
    "ringing": 3,
    "answered": 4,
    "held": 5,
    "unheld": 6,
    "retrieved": 6,
    "transferred": 7,
    "hung_up": 8,
    "recording_available": 9,
}


# --- signatures ------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int | str, payload: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of ``f"{timestamp}."`` + payload (the raw body; for a GET, the path):
    the scheme of every signed request to kefu (``kefu.core.signing``)."""
    return signing.signature(secret, timestamp, payload)


async def pbx_secret(db: AsyncSession, settings: Any, code: str) -> str | None:
    """The active secret of PBX ``code`` (the table first; "default" falls back to KEFU_CTI_SECRET)."""
    row = await db.scalar(select(Pbx).where(Pbx.code == code))
    if row is not None:
        return row.secret if row.active else None
    if code == DEFAULT_PBX and settings.cti_secret:
        return str(settings.cti_secret)
    return None


class Unsigned(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthenticated", message)


async def verify(
    db: AsyncSession,
    settings: Any,
    *,
    pbx: str | None,
    timestamp: str | None,
    signature: str | None,
    payload: bytes,
    now: datetime | None = None,
) -> str:
    """The PBX a request comes from, or ``Unsigned`` (401). Stale timestamps are refused (replays);
    signatures are compared in constant time; the reason a check failed is not told (nor logged with
    the secret)."""
    code = pbx or DEFAULT_PBX
    if len(code) > 64:
        raise Unsigned("unknown PBX")
    if not timestamp or not signature:
        raise Unsigned("sign the request (X-Kefu-Timestamp, X-Kefu-Signature)")
    secret = await pbx_secret(db, settings, code)
    given = signature.strip().lower()
    if not given.startswith(signing.SCHEME):
        given = signing.SCHEME + given  # some PBX scripts send the bare hex digest
    try:
        # Checked even for an unknown PBX (against a throwaway key): the answer takes the same time.
        signing.verify(
            secret or secrets.token_hex(16),
            timestamp,
            given,
            payload,
            now=(now or utcnow()).timestamp(),
            tolerance_seconds=settings.cti_max_skew_seconds,
        )
    except signing.SignatureProblem as problem:
        if problem.code == "stale":
            raise Unsigned("the request timestamp is too old or in the future") from None
        if problem.code == "malformed" and problem.header == signing.TIMESTAMP_HEADER:
            raise Unsigned("X-Kefu-Timestamp must be Unix seconds") from None
        log.warning("cti request with a bad signature refused", extra={"pbx": code[:64]})
        raise Unsigned("bad signature") from None
    if secret is None:
        log.warning("cti request from an unknown or inactive PBX refused", extra={"pbx": code[:64]})
        raise Unsigned("bad signature")
    return code


# --- the projection --------------------------------------------------------------------------------
def _order_key(event: CallEvent) -> tuple[Any, ...]:
    return (
        event.seq if event.seq is not None else float("inf"),
        event.at,
        RANK.get(event.type, 99),
        event.event_id,
    )


@dataclass
class CallFacts:
    """A call as its events so far tell it (a pure fold: the same events give the same facts)."""

    state: str = CallState.new
    direction: str | None = None
    caller: str | None = None
    called: str | None = None
    queue: str | None = None
    extension: str | None = None
    agent_id: int | None = None
    answered_by_id: int | None = None
    started_at: datetime | None = None
    queued_at: datetime | None = None
    ringing_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    hangup_cause: str | None = None
    hangup_by: str | None = None
    held_seconds: int = 0
    held_since: datetime | None = None
    transfers: int = 0
    digits: list[str] = field(default_factory=list)
    recording_url: str | None = None
    recording_path: str | None = None
    recording_seconds: int | None = None
    last_event_at: datetime | None = None
    language: str | None = None

    COLUMNS = (
        "state",
        "language",
        "direction",
        "caller",
        "called",
        "queue",
        "extension",
        "agent_id",
        "answered_by_id",
        "started_at",
        "queued_at",
        "ringing_at",
        "answered_at",
        "ended_at",
        "hangup_cause",
        "hangup_by",
        "held_seconds",
        "transfers",
        "recording_url",
        "recording_path",
        "recording_seconds",
        "last_event_at",
    )

    def _end_hold(self, at: datetime) -> None:
        if self.held_since is not None:
            self.held_seconds += max(0, int((at - self.held_since).total_seconds()))
            self.held_since = None

    def apply(self, type_: str, at: datetime, data: dict[str, Any]) -> None:
        self.last_event_at = at if self.last_event_at is None else max(self.last_event_at, at)
        if type_ == "recording_available":
            self.recording_url = data.get("url") or self.recording_url
            self.recording_path = data.get("path") or self.recording_path
            if data.get("duration_seconds") is not None:
                self.recording_seconds = data["duration_seconds"]
            return
        ended = self.state == CallState.ended
        if type_ == "call_new":
            self.started_at = self.started_at or at
            self.direction = data.get("direction") or "inbound"
            self.caller = data.get("caller")
            self.called = data.get("called")
            self.language = data.get("language")
            if self.state == CallState.new and self.direction == "inbound":
                self.state = CallState.ivr
        elif type_ == "ivr_input":
            self.digits.append(data.get("digits") or "-")
            if self.state == CallState.new:
                self.state = CallState.ivr
        elif type_ == "queued":
            self.queue = data.get("queue")
            self.queued_at = self.queued_at or at
            if not ended:
                self.state = CallState.queued
        elif type_ == "ringing":
            self.extension = data.get("extension") or self.extension
            self.agent_id = data.get("_agent_id")
            self.ringing_at = self.ringing_at or at
            if not ended:
                self.state = CallState.ringing
        elif type_ == "answered":
            if data.get("extension") or data.get("agent_id"):
                self.extension = data.get("extension") or self.extension
                self.agent_id = data.get("_agent_id")
            self.answered_at = self.answered_at or at
            self.answered_by_id = self.answered_by_id or self.agent_id
            if not ended:
                self.state = CallState.talking
        elif type_ == "held":
            if not ended and self.held_since is None:
                self.held_since = at
                self.state = CallState.held
        elif type_ in ("unheld", "retrieved"):
            self._end_hold(at)
            if not ended and self.state == CallState.held:
                self.state = CallState.talking
        elif type_ == "transferred":
            self.transfers += 1
            self._end_hold(at)
            if data.get("to_extension"):
                self.extension = data["to_extension"]
                self.agent_id = data.get("_agent_id")
                if not ended:
                    self.state = CallState.ringing
            elif data.get("to_queue"):
                self.queue = data["to_queue"]
                self.extension = None
                self.agent_id = None
                if not ended:
                    self.state = CallState.queued
            else:
                self.extension = None
                self.agent_id = None
        elif type_ == "hung_up":
            self._end_hold(at)
            self.ended_at = self.ended_at or at
            self.hangup_cause = data.get("cause")
            self.hangup_by = data.get("by")
            self.state = CallState.ended


def project(events: Iterable[CallEvent]) -> CallFacts:
    facts = CallFacts()
    for event in sorted(events, key=_order_key):
        facts.apply(event.type, event.at, event.data)
    return facts


def _store_facts(call: Call, facts: CallFacts) -> None:
    for name in CallFacts.COLUMNS:
        setattr(call, name, getattr(facts, name))
    call.digits = ",".join(facts.digits)[:255] or None


# --- receiving events ------------------------------------------------------------------------------
@dataclass
class Received:
    event_id: str
    call: Call
    duplicate: bool


async def _locked_call(db: AsyncSession, pbx: str, call_id: str) -> Call:
    """The call's row, made if new, locked for this transaction (one writer per call at a time)."""
    now = utcnow()
    await db.execute(
        dialect_insert(db)(Call)
        .values(pbx=pbx, call_id=call_id, state=CallState.new, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["pbx", "call_id"])
    )
    call = await db.scalar(
        select(Call)
        .where(Call.pbx == pbx, Call.call_id == call_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert call is not None
    return call


async def _resolve_agent(db: AsyncSession, extension: str | None, agent_id: int | None) -> int | None:
    """The staff user behind an event's agent_id or extension (None: unknown, recorded as given)."""
    if agent_id is not None:
        found = await db.scalar(
            select(User.id).where(
                User.id == agent_id,
                User.is_active.is_(True),
                User.id.in_(select(UserRole.user_id).where(UserRole.role.in_([str(r) for r in STAFF_ROLES]))),
            )
        )
        return found
    if extension is not None:
        return await db.scalar(
            select(Extension.user_id)
            .join(User, User.id == Extension.user_id)
            .where(Extension.extension == extension, User.is_active.is_(True))
        )
    return None


def _same(stored: CallEvent, call: Call, body: Any) -> bool:
    return stored.call_row_id == call.id and stored.type == body.type and stored.seq == body.seq


async def _store_event(db: AsyncSession, call: Call, pbx: str, body: Any) -> bool:
    """Store one event; False if it was stored before (a redelivery)."""
    found = await db.scalar(select(CallEvent).where(CallEvent.pbx == pbx, CallEvent.event_id == body.event_id))
    if found is not None:
        if not _same(found, call, body):
            raise Conflict(
                "event_id was used before for another event",
                {"event_id": body.event_id, "call_id": body.call_id},
            )
        found.deliveries += 1
        return False
    if body.seq is not None:
        taken = await db.scalar(
            select(CallEvent.event_id).where(CallEvent.call_row_id == call.id, CallEvent.seq == body.seq)
        )
        if taken is not None:
            raise Conflict(
                "another event of this call has this seq",
                {"event_id": body.event_id, "seq": body.seq, "other_event_id": taken},
            )
    data = body.model_dump(mode="json", exclude={"event_id", "call_id", "at", "seq", "type"}, exclude_none=True)
    if body.type in ("ringing", "answered") or (body.type == "transferred" and body.to_extension):
        # The agent behind the extension as it is mapped when the event arrives (later mapping changes
        # do not rewrite history).
        extension = getattr(body, "extension", None) or getattr(body, "to_extension", None)
        agent = await _resolve_agent(db, extension, getattr(body, "agent_id", None))
        if agent is not None:
            data["_agent_id"] = agent
    db.add(
        CallEvent(
            pbx=pbx,
            event_id=body.event_id,
            call_row_id=call.id,
            seq=body.seq,
            type=body.type,
            at=body.at,
            data=data,
            received_at=utcnow(),
        )
    )
    await db.flush()
    return True


async def receive(db: AsyncSession, settings: Any, pbx: str, bodies: Sequence[Any]) -> list[Received]:
    """Store and apply a batch of events in the caller's transaction (all or nothing). Calls are locked in
    a fixed order (by call id), so two batches touching the same calls cannot deadlock."""
    by_call: dict[str, list[int]] = {}
    for index, body in enumerate(bodies):
        by_call.setdefault(body.call_id, []).append(index)
    results: dict[int, Received] = {}
    for call_id in sorted(by_call):
        call = await _locked_call(db, pbx, call_id)
        for index in by_call[call_id]:
            stored = await _store_event(db, call, pbx, bodies[index])
            results[index] = Received(bodies[index].event_id, call, not stored)
        await advance(db, settings, call)
    return [results[i] for i in range(len(bodies))]


# --- applying events -------------------------------------------------------------------------------
async def _events_of(db: AsyncSession, call: Call) -> list[CallEvent]:
    rows = await db.scalars(select(CallEvent).where(CallEvent.call_row_id == call.id))
    return sorted(rows.all(), key=_order_key)


async def advance(db: AsyncSession, settings: Any, call: Call, *, skip_gaps: bool = False) -> None:
    """Recompute the call from all its events and apply every event whose predecessors are all here
    (``skip_gaps``: also those past a gap, after the gap timeout). The caller holds the call's lock."""
    events = await _events_of(db, call)
    facts = CallFacts()
    now = utcnow()
    for event in events:
        due = event.outcome is None and (
            event.seq is None or event.seq == call.applied_seq + 1 or (skip_gaps and event.seq > call.applied_seq)
        )
        if event.outcome is None and event.seq is not None and event.seq <= call.applied_seq:
            event.outcome = "late"  # its gap was skipped: shown on the call, nothing done
        if due:
            await _effect(db, settings, call, facts, event, min(event.at, now))
            event.outcome = "applied"
            if event.seq is not None:
                call.applied_seq = event.seq
        facts.apply(event.type, event.at, event.data)
    waiting = any(e.outcome is None for e in events)
    call.gap_since = (call.gap_since or now) if waiting else None
    _store_facts(call, facts)
    call.event_count = len(events)
    call.updated_at = now
    await db.flush()


async def sweep_gaps(db: AsyncSession, settings: Any, *, now: datetime | None = None, batch: int = 100) -> int:
    """Apply the events that waited longer than the gap timeout for a missing predecessor."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.cti_gap_seconds)
    ids = list(
        (
            await db.scalars(
                select(Call.id)
                .where(Call.gap_since.is_not(None), Call.gap_since <= cutoff)
                .order_by(Call.id)
                .limit(batch)
            )
        ).all()
    )
    done = 0
    for call_id in ids:
        query = select(Call).where(Call.id == call_id, Call.gap_since.is_not(None)).with_for_update()
        if db.bind.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        call = await db.scalar(query.execution_options(populate_existing=True))
        if call is None:
            continue
        log.warning("cti call applied past a gap in its events", extra={"call_id": call.call_id, "pbx": call.pbx})
        await advance(db, settings, call, skip_gaps=True)
        done += 1
    return done


# --- what each event does ----------------------------------------------------------------------------
def _external_id(call: Call) -> str:
    return call.call_id if call.pbx == DEFAULT_PBX else f"{call.pbx}:{call.call_id}"


def _phone(value: str | None) -> str | None:
    from kefu.customers.identities import normalize_identity

    if not value:
        return None
    try:
        return normalize_identity("phone", value)
    except Invalid:
        return None  # "anonymous", "unknown", a SIP URI: no identity, the call is still taken


async def _interaction(db: AsyncSession, call: Call) -> Interaction | None:
    if call.interaction_id is None:
        return None
    return await db.get(Interaction, call.interaction_id, populate_existing=True)


async def _ensure_interaction(db: AsyncSession, call: Call, facts: CallFacts, at: datetime) -> Interaction:
    """The call's interaction, received through the one intake path when the call first reaches a queue
    or an agent (calls that end in the IVR are not contacts with an agent)."""
    found = await _interaction(db, call)
    if found is not None:
        return found
    number = _phone(facts.caller)
    result = await intake.receive_contact(
        db,
        intake.InboundContact(
            channel=CHANNEL,
            external_id=_external_id(call),
            identity_kind="phone" if number else None,
            identity_value=number,
            arrived_at=min(facts.started_at or at, at),
            attributes={"pbx": call.pbx, "call_id": call.call_id, "called": facts.called, "cti_call": call.id},
        ),
    )
    call.interaction_id = result.interaction.id
    return result.interaction


async def _entry(db: AsyncSession, interaction_id: int) -> RoutingEntry | None:
    return await db.get(RoutingEntry, interaction_id, populate_existing=True)


async def _routing_queue(db: AsyncSession, code: str) -> Any:
    """The active kefu routing queue for voice named ``code``, or None (a queue of the PBX's own)."""
    from kefu.routing import service as routing
    from kefu.routing.policy import channel_class

    try:
        queue = await routing.queue_by_code(db, code)
    except Invalid:
        return None
    if not queue.active or channel_class(queue.channel) != channel_class(CHANNEL):
        return None
    return queue


async def _guarded(what: str, call: Call, coro: Any) -> Any:
    """A timeline write refused by the interactions or routing rules (a fact out of order with the
    contact's history) is logged and skipped: the PBX's event is stored either way, and refusing it
    would only make the PBX retry forever."""
    try:
        return await coro
    except (Invalid, Conflict) as exc:
        log.warning(
            "cti event effect skipped", extra={"what": what, "call_id": call.call_id, "reason": exc.message[:200]}
        )
        return None


async def _queue(db: AsyncSession, call: Call, facts: CallFacts, code: str, at: datetime, priority: int) -> None:
    from kefu.routing import service as routing

    interaction = await _ensure_interaction(db, call, facts, at)
    if interaction.answered_at is not None or interaction.ended_at is not None or interaction.abandoned_at is not None:
        return  # a transfer back to a queue after an answer: kept on the call, not routed again
    queue = await _routing_queue(db, code)
    if queue is None:
        if interaction.queued_at is None:
            await _guarded(
                "queued",
                call,
                interactions.record_event(db, intake.CHANNEL_PRINCIPAL, interaction.id, "queued", at=at),
            )
        return
    if await _entry(db, interaction.id) is None:
        await _guarded(
            "enqueue",
            call,
            routing.enqueue(
                db,
                interaction.id,
                queue.id,
                channel=CHANNEL,
                customer_id=interaction.customer_id,
                priority=priority,
                now=at,
            ),
        )


async def _pop(db: AsyncSession, call: Call, facts: CallFacts, interaction: Interaction, agent_id: int) -> None:
    """Screen pop: the desk of the agent the call rings at shows who is calling (after the commit)."""
    from kefu.customers import service as customers

    number = _phone(facts.caller)
    customer = await customers.find_by_identity(db, "phone", number) if number else None
    publish_on_commit(
        db,
        Event(
            interactions.POP_EVENT,
            {
                "interaction_id": interaction.id,
                "customer_id": customer.id if customer is not None else interaction.customer_id,
                "channel": CHANNEL,
                "identity": {"kind": "phone", "value": number} if number else None,
                "customer_name": customer.display_name if customer is not None else None,
            },
            user_ids=(agent_id,),
        ),
    )


def _unfinished(interaction: Interaction) -> bool:
    return interaction.ended_at is None and interaction.abandoned_at is None


async def _ringing(db: AsyncSession, call: Call, facts: CallFacts, agent_id: int | None, at: datetime) -> None:
    if agent_id is None:
        return  # an extension nobody is mapped to: recorded on the call only
    interaction = await _ensure_interaction(db, call, facts, at)
    entry = await _entry(db, interaction.id)
    kefu_offer = entry is not None and entry.state == EntryState.offered and entry.offer_agent_id == agent_id
    popped = False
    if (
        not kefu_offer
        and (entry is None or entry.state == EntryState.ended)
        and interaction.offered_at is None
        and interaction.answered_at is None
        and _unfinished(interaction)
    ):
        # Routed by the PBX itself: the timeline still says when and to whom it was offered.
        before = interaction.agent_id
        done = await _guarded(
            "offered",
            call,
            interactions.record_event(
                db, intake.CHANNEL_PRINCIPAL, interaction.id, "offered", at=at, agent_id=agent_id
            ),
        )
        popped = done is not None and before != agent_id  # record_event pops when the agent changes
    if not popped and _unfinished(interaction):
        await _pop(db, call, facts, interaction, agent_id)


async def _answered(db: AsyncSession, call: Call, facts: CallFacts, agent_id: int | None, at: datetime) -> None:
    from kefu.routing import service as routing

    if agent_id is None:
        return
    interaction = await _ensure_interaction(db, call, facts, at)
    if interaction.answered_at is not None or not _unfinished(interaction):
        return  # answered again after a transfer: the first answer is the contact's
    entry = await _entry(db, interaction.id)
    if entry is not None and entry.state == EntryState.offered and entry.offer_agent_id == agent_id:
        agent = Principal(user_id=agent_id, username="cti", roles=frozenset({"agent"}), via="system")
        if await _guarded("accept", call, routing.accept_offer(db, agent, interaction.id, now=at)) is not None:
            return
    if entry is not None and entry.state == EntryState.assigned:
        return  # accepted on the desk already
    if interaction.offered_at is None:
        await _guarded(
            "offered",
            call,
            interactions.record_event(
                db, intake.CHANNEL_PRINCIPAL, interaction.id, "offered", at=at, agent_id=agent_id
            ),
        )
    await _guarded(
        "answered",
        call,
        interactions.record_event(db, intake.CHANNEL_PRINCIPAL, interaction.id, "answered", at=at, agent_id=agent_id),
    )


async def _hung_up(db: AsyncSession, call: Call, at: datetime) -> None:
    interaction = await _interaction(db, call)
    if interaction is None or not _unfinished(interaction):
        return
    fact = "ended" if interaction.answered_at is not None else "abandoned"
    await _guarded(fact, call, interactions.record_event(db, intake.CHANNEL_PRINCIPAL, interaction.id, fact, at=at))


async def _ivr_step(db: AsyncSession, call: Call, facts: CallFacts, step: Any, at: datetime) -> None:
    call.ivr_state = dict(step.state or {})
    call.ivr_instruction = dict(step.instruction or {})
    call.ivr_done = bool(step.done)
    if step.queue:
        priority = (step.instruction or {}).get("priority") or 0
        await _queue(db, call, facts, step.queue, at, int(priority))


def _ivr_context(call: Call, facts: CallFacts, language: str | None, at: datetime) -> Any:
    from kefu.channels.ivr import engine

    return engine.CallContext(
        call_id=call.call_id, caller=facts.caller, called=facts.called, language=language or "zh_CN", now=at
    )


async def _call_new(
    db: AsyncSession, settings: Any, call: Call, facts: CallFacts, data: dict[str, Any], at: datetime
) -> None:
    from kefu.channels.ivr import engine

    if data.get("direction", "inbound") != "inbound":
        return
    step = None
    if settings.cti_ivr:
        try:
            step = await engine.start(
                db, settings, data.get("flow"), _ivr_context(call, facts, data.get("language"), at)
            )
        except (NotImplementedError, ApiError, LookupError) as exc:
            log.warning("cti call without an IVR flow", extra={"call_id": call.call_id, "reason": str(exc)[:200]})
    if step is not None:
        await _ivr_step(db, call, facts, step, at)
    elif settings.cti_default_queue:
        await _queue(db, call, facts, settings.cti_default_queue, at, 0)


async def _ivr_input(
    db: AsyncSession, settings: Any, call: Call, facts: CallFacts, digits: str | None, at: datetime
) -> None:
    from kefu.channels.ivr import engine

    if call.ivr_state is None or call.ivr_done:
        return  # the PBX's own IVR: the digits are recorded on the call
    try:
        context = _ivr_context(call, facts, facts.language, at)
        step = await engine.advance(db, settings, context, dict(call.ivr_state), digits)
    except (NotImplementedError, ApiError, LookupError) as exc:
        log.warning("cti IVR step failed", extra={"call_id": call.call_id, "reason": str(exc)[:200]})
        return
    await _ivr_step(db, call, facts, step, at)


async def _effect(
    db: AsyncSession, settings: Any, call: Call, facts: CallFacts, event: CallEvent, at: datetime
) -> None:
    """What ``event`` does, given the call as the events before it tell it (``facts``)."""
    data = event.data
    # The facts including this event: a call_new's caller is needed by what it starts.
    after = CallFacts(**{k: getattr(facts, k) for k in facts.__dataclass_fields__})
    after.digits = list(facts.digits)
    after.apply(event.type, event.at, data)
    if event.type == "call_new":
        await _call_new(db, settings, call, after, data, at)
    elif event.type == "ivr_input":
        await _ivr_input(db, settings, call, after, data.get("digits"), at)
    elif event.type == "queued":
        await _queue(db, call, after, data["queue"], at, int(data.get("priority") or 0))
    elif event.type == "ringing":
        await _ringing(db, call, after, data.get("_agent_id"), at)
    elif event.type == "answered":
        await _answered(db, call, after, after.agent_id, at)
    elif event.type == "transferred":
        if data.get("to_queue") and after.answered_at is None:
            await _queue(db, call, after, data["to_queue"], at, 0)
    elif event.type == "hung_up":
        await _hung_up(db, call, at)


# --- instructions for the PBX ----------------------------------------------------------------------
async def extension_of(db: AsyncSession, user_id: int | None) -> str | None:
    if user_id is None:
        return None
    return await db.scalar(select(Extension.extension).where(Extension.user_id == user_id))


_ACTION_OF_OUTCOME = {"voicemail": "voicemail", "callback": "callback", "work_order": "callback"}


async def instruction_for(db: AsyncSession, call: Call, *, now: datetime | None = None) -> dict[str, Any]:
    """What the PBX should do with the call now. Routing's decision wins over the IVR's last step once the
    call is in a kefu queue: ring the offered agent's extension, keep the caller queued, or the queue's
    closed/maximum-wait action."""
    now = now or utcnow()
    if call.state == CallState.ended:
        return {"action": "none", "reason": "ended"}
    if call.answered_at is not None:
        return {"action": "none", "reason": "connected"}
    entry = await _entry(db, call.interaction_id) if call.interaction_id is not None else None
    if entry is not None:
        from kefu.routing.models import RoutingQueue

        queue_code = await db.scalar(select(RoutingQueue.code).where(RoutingQueue.id == entry.queue_id))
        if entry.state == EntryState.offered:
            extension = await extension_of(db, entry.offer_agent_id)
            if extension is not None:
                remaining = int(((entry.offer_expires_at or now) - now).total_seconds())
                return {
                    "action": "ring",
                    "extension": extension,
                    "agent_id": entry.offer_agent_id,
                    "timeout_seconds": max(1, remaining),
                    "queue": queue_code,
                }
        if entry.state == EntryState.assigned:
            extension = await extension_of(db, entry.agent_id)
            if extension is not None:
                return {"action": "ring", "extension": extension, "agent_id": entry.agent_id, "queue": queue_code}
        if entry.state in (EntryState.waiting, EntryState.offered, EntryState.assigned):
            return {"action": "queue", "queue": queue_code}
        action = (entry.outcome or "").partition(":")[2]
        if action in _ACTION_OF_OUTCOME:
            return {"action": _ACTION_OF_OUTCOME[action], "queue": queue_code}
        return {"action": "hangup", "reason": entry.outcome or "ended"}
    if call.ivr_instruction:
        return dict(call.ivr_instruction)
    return {"action": "none"}


async def call_by_call_id(db: AsyncSession, pbx: str, call_id: str) -> Call:
    call = await db.scalar(select(Call).where(Call.pbx == pbx, Call.call_id == call_id))
    if call is None:
        raise NotFound("call")
    return call


def waiting_for(call: Call) -> int | None:
    return call.applied_seq + 1 if call.gap_since is not None else None


# --- reading calls ---------------------------------------------------------------------------------
def _visible(principal: Principal) -> Any:
    """Staff see every call (as they see every interaction; the matrix keeps others out)."""
    return true() if principal.is_authenticated else false()


@dataclass
class CallView:
    call: Call
    agent_name: str | None = None
    customer_id: int | None = None
    customer_name: str | None = None
    events: list[CallEvent] = field(default_factory=list)


def _cursor(text: str | None) -> tuple[datetime, int] | None:
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text.encode()).decode()
        at_text, _, id_text = raw.partition("~")
        return datetime.fromisoformat(at_text).astimezone(UTC), int(id_text)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("cursor is not valid; use next_cursor from the previous page", {"field": "cursor"}) from None


def encode_cursor(call: Call) -> str:
    return base64.urlsafe_b64encode(f"{call.created_at.isoformat()}~{call.id}".encode()).decode()


async def _views(db: AsyncSession, calls: list[Call]) -> list[CallView]:
    from kefu.customers.models import Customer

    agent_ids = {c.agent_id or c.answered_by_id for c in calls} - {None}
    names = (
        dict((await db.execute(select(User.id, User.display_name).where(User.id.in_(agent_ids)))).all())
        if agent_ids
        else {}
    )
    interaction_ids = {c.interaction_id for c in calls} - {None}
    customers: dict[int, tuple[int | None, str | None]] = {}
    if interaction_ids:
        rows = await db.execute(
            select(Interaction.id, Interaction.customer_id, Customer.display_name)
            .outerjoin(Customer, Customer.id == Interaction.customer_id)
            .where(Interaction.id.in_(interaction_ids))
        )
        customers = {row[0]: (row[1], row[2]) for row in rows}
    views = []
    for c in calls:
        customer_id, customer_name = customers.get(c.interaction_id or -1, (None, None))
        views.append(CallView(c, names.get(c.agent_id or c.answered_by_id or -1), customer_id, customer_name))
    return views


async def list_calls(
    db: AsyncSession,
    principal: Principal,
    *,
    state: str | None = None,
    agent_id: int | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> list[CallView]:
    """Newest first (by when kefu first heard of the call)."""
    stmt = select(Call).where(_visible(principal))
    if state is not None:
        stmt = stmt.where(Call.state == state)
    if agent_id is not None:
        stmt = stmt.where(or_(Call.agent_id == agent_id, Call.answered_by_id == agent_id))
    position = _cursor(cursor)
    if position is not None:
        at, last_id = position
        stmt = stmt.where(or_(Call.created_at < at, and_(Call.created_at == at, Call.id < last_id)))
    stmt = stmt.order_by(Call.created_at.desc(), Call.id.desc()).limit(limit)
    return await _views(db, list((await db.scalars(stmt)).all()))


async def get_call(db: AsyncSession, principal: Principal, call_row_id: int) -> CallView:
    call = await db.scalar(select(Call).where(Call.id == call_row_id, _visible(principal)))
    if call is None:
        raise NotFound("call")
    view = (await _views(db, [call]))[0]
    view.events = await _events_of(db, call)
    return view


# --- extensions ------------------------------------------------------------------------------------
@dataclass
class ExtensionView:
    user_id: int
    username: str
    display_name: str
    extension: str
    updated_at: datetime


async def list_extensions(db: AsyncSession) -> list[ExtensionView]:
    rows = await db.execute(
        select(Extension.user_id, User.username, User.display_name, Extension.extension, Extension.updated_at)
        .join(User, User.id == Extension.user_id)
        .order_by(Extension.extension)
    )
    return [ExtensionView(*row) for row in rows]


async def staff_choices(db: AsyncSession, limit: int = 1000) -> list[tuple[int, str, str]]:
    """Active staff (id, username, display name) for the extension form, by name."""
    rows = await db.execute(
        select(User.id, User.username, User.display_name)
        .where(
            User.is_active.is_(True),
            User.id.in_(select(UserRole.user_id).where(UserRole.role.in_([str(r) for r in STAFF_ROLES]))),
        )
        .order_by(User.display_name, User.id)
        .limit(limit)
    )
    return [tuple(row) for row in rows]  # type: ignore[misc]


async def set_extension(db: AsyncSession, principal: Principal, user_id: int, extension: str) -> ExtensionView:
    user = await db.scalar(
        select(User).where(
            User.id == user_id,
            User.id.in_(select(UserRole.user_id).where(UserRole.role.in_([str(r) for r in STAFF_ROLES]))),
        )
    )
    if user is None:
        raise NotFound("staff user")
    holder = await db.scalar(select(Extension.user_id).where(Extension.extension == extension))
    if holder is not None and holder != user_id:
        raise Conflict("this extension belongs to another agent", {"field": "extension", "user_id": holder})
    row = await db.get(Extension, user_id, with_for_update=True)
    before = row.extension if row is not None else None
    if row is None:
        row = Extension(user_id=user_id, extension=extension, updated_at=utcnow())
        db.add(row)
    else:
        row.extension = extension
        row.updated_at = utcnow()
    try:
        await db.flush()
    except Exception as exc:  # the same extension given to two agents at once
        from sqlalchemy.exc import IntegrityError

        if isinstance(exc, IntegrityError):
            raise Conflict("this extension belongs to another agent", {"field": "extension"}) from None
        raise
    await audit.record(
        db,
        actor_of(principal),
        "cti_extension.set",
        object_type="user",
        object_id=user_id,
        details={"before": before, "after": extension},
    )
    return ExtensionView(user.id, user.username, user.display_name, row.extension, row.updated_at)


async def remove_extension(db: AsyncSession, principal: Principal, user_id: int) -> None:
    row = await db.get(Extension, user_id, with_for_update=True)
    if row is None:
        raise NotFound("extension")
    await db.delete(row)
    await audit.record(
        db,
        actor_of(principal),
        "cti_extension.remove",
        object_type="user",
        object_id=user_id,
        details={"before": row.extension},
    )


# --- PBXs ------------------------------------------------------------------------------------------
def new_secret() -> str:
    return secrets.token_urlsafe(32)


async def list_pbxs(db: AsyncSession) -> list[Pbx]:
    return list((await db.scalars(select(Pbx).order_by(Pbx.code))).all())


async def create_pbx(db: AsyncSession, principal: Principal, body: PbxCreate) -> Pbx:
    if await db.scalar(select(Pbx.id).where(Pbx.code == body.code)) is not None:
        raise Conflict("a PBX with this code exists", {"field": "code"})
    pbx = Pbx(code=body.code, name=body.name, secret=body.secret or new_secret(), active=True)
    db.add(pbx)
    await db.flush()
    await audit.record(
        db, actor_of(principal), "cti_pbx.create", object_type="cti_pbx", object_id=pbx.id, details={"code": pbx.code}
    )
    return pbx


async def update_pbx(db: AsyncSession, principal: Principal, pbx_id: int, body: PbxUpdate) -> tuple[Pbx, bool]:
    pbx = await db.get(Pbx, pbx_id, with_for_update=True)
    if pbx is None:
        raise NotFound("PBX")
    changes: dict[str, Any] = {}
    if body.name is not None:
        pbx.name = changes["name"] = body.name
    if body.active is not None:
        pbx.active = changes["active"] = body.active
    if body.new_secret:
        pbx.secret = new_secret()
        changes["secret"] = "renewed"  # never the secret itself
    pbx.updated_at = utcnow()
    await db.flush()
    await audit.record(
        db, actor_of(principal), "cti_pbx.update", object_type="cti_pbx", object_id=pbx.id, details=changes
    )
    return pbx, body.new_secret
