"""The database-backed router: presence, enqueueing, offers as leases, and the decisions themselves.

Routing runs again whenever something changes who can take what: a contact is enqueued, an agent
becomes available, capacity frees up, an offer is declined or rings out, skills or queue memberships
change, and (from the periodic sweep) when a waiting contact reaches a bullseye step, its sticky
reservation ends, it should overflow or it has waited the maximum.

Each decision loads the candidates with one query, asks ``routing.policy`` (the same functions the
simulator uses) who is best, and claims the pair with two compare-and-set UPDATEs in one transaction:
the entry (still waiting, same version) and the agent (still present, still with capacity). Whoever
loses a race simply sees zero rows updated and tries the next candidate. Locks are always taken entry
first, agent second. Offers are leases with an expiry: if the process holding one dies, the sweep of any
other process finds it expired and routes the contact again.

Times inside are aware UTC datetimes; ``now`` can be passed in (tests, the simulator's database mode).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    all_,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import Grouping

from kefu.core import audit
from kefu.core.errors import Conflict, Forbidden, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.db.base import UTCDateTime, utcnow
from kefu.identity.models import AgentLanguage, AgentSkill, TeamMember, User
from kefu.identity.service import actor_of
from kefu.routing import policy
from kefu.routing.models import (
    AgentState,
    AgentStateChange,
    Assignment,
    CapacityAssignment,
    CapacityProfile,
    EntryState,
    MaxWaitAction,
    Offer,
    OfferOutcome,
    QueueMember,
    QueueSkill,
    RoutingEntry,
    RoutingQueue,
)
from kefu.routing.policy import Presence

log = logging.getLogger(__name__)

OFFER_EVENT = "routing.offer"  # to the agent: a contact is ringing for you
OFFER_GONE_EVENT = "routing.offer_gone"  # to the agent: that offer was withdrawn or rang out
PRESENCE_EVENT = "routing.presence"  # to the agent and supervisors: a presence change
ENTRY_EVENT = "routing.entry"  # to supervisors and channels: a contact entered/left a queue, max-wait action
SUPERVISOR_ROLES = ("supervisor", "admin")

# How many waiting contacts per queue an agent's decision looks at (more are read only if every one of
# these is excluded for the agent, which takes an agent who declined that many).
CONTACTS_PER_QUEUE = 4
MAX_CONTACTS_PER_QUEUE = 1024
SWEEP_BATCH = 200


@dataclass(frozen=True)
class RoutingConfig:
    rest: policy.RestRule = field(default_factory=policy.RestRule)
    missed_offers_limit: int = 2


_config = RoutingConfig()


def configure(settings: Any) -> None:
    """Take the rest rule and the missed-offer limit from the process's settings (at app start)."""
    global _config  # noqa: PLW0603 - one routing configuration per process, from its settings
    _config = RoutingConfig(
        rest=policy.RestRule(settings.routing_rest_after_seconds, settings.routing_rest_break_seconds),
        missed_offers_limit=settings.routing_missed_offers_limit,
    )


def config() -> RoutingConfig:
    return _config


def _ts(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _dt(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


# --- queues as decision rules ------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueInfo:
    """A queue as routing uses it: the decision rule plus what the database router needs besides."""

    row_id: int
    code: str
    channel: str
    rule: policy.QueueRule
    offer_timeout_seconds: int
    after_contact_seconds: int
    overflow_queue_id: int | None
    overflow_after_seconds: int | None
    max_wait_seconds: int | None
    max_wait_action: str
    calendar_id: int | None
    closed_action: str
    active: bool

    @property
    def channel_class(self) -> str:
        return policy.channel_class(self.channel)


# Queue rules are read on every decision but change a few times a day: each process keeps them for
# QUEUE_CACHE_SECONDS. A change made in this process is seen at once (invalidate_queues); other
# processes see it within that time.
QUEUE_CACHE_SECONDS = 1.0
_queue_cache: dict[tuple[str, int], tuple[float, QueueInfo]] = {}


def invalidate_queues() -> None:
    _queue_cache.clear()


async def load_queues(db: AsyncSession, queue_ids: Iterable[int] | None = None) -> dict[int, QueueInfo]:
    """Queue rules by id (the given ones, from the cache when fresh), or all queues (always read)."""
    if queue_ids is None:
        return await _read_queues(db, None)
    wanted = sorted(set(queue_ids))
    # Keyed by the engine too: tests and benchmarks run several databases in one process.
    engine_key = str(db.bind.url)
    now = time.monotonic()
    found: dict[int, QueueInfo] = {}
    missing = []
    for queue_id in wanted:
        cached = _queue_cache.get((engine_key, queue_id))
        if cached is not None and now - cached[0] < QUEUE_CACHE_SECONDS:
            found[queue_id] = cached[1]
        else:
            missing.append(queue_id)
    if missing:
        read = await _read_queues(db, missing)
        for queue_id, info in read.items():
            _queue_cache[(engine_key, queue_id)] = (now, info)
        found.update(read)
    return found


async def _read_queues(db: AsyncSession, queue_ids: Iterable[int] | None) -> dict[int, QueueInfo]:
    """Queue rules by id (all queues, or the given ones), in two queries."""
    query = select(RoutingQueue)
    skills_query = select(QueueSkill)
    if queue_ids is not None:
        wanted = sorted(set(queue_ids))
        if not wanted:
            return {}
        query = query.where(RoutingQueue.id.in_(wanted))
        skills_query = skills_query.where(QueueSkill.queue_id.in_(wanted))
    needs: dict[int, list[policy.SkillNeed]] = {}
    for row in (await db.scalars(skills_query.order_by(QueueSkill.queue_id, QueueSkill.skill_id))).all():
        needs.setdefault(row.queue_id, []).append(policy.SkillNeed(row.skill_id, row.min_proficiency))
    found = {}
    for q in (await db.scalars(query)).all():
        found[q.id] = QueueInfo(
            row_id=q.id,
            code=q.code,
            channel=q.channel,
            rule=policy.QueueRule(
                id=q.id,
                skills=tuple(needs.get(q.id, ())),
                language=q.language,
                priority=q.priority,
                bullseye=policy.bullseye_steps(q.bullseye or ()),
                sticky_seconds=q.sticky_seconds,
            ),
            offer_timeout_seconds=q.offer_timeout_seconds,
            after_contact_seconds=q.after_contact_seconds,
            overflow_queue_id=q.overflow_queue_id,
            overflow_after_seconds=q.overflow_after_seconds,
            max_wait_seconds=q.max_wait_seconds,
            max_wait_action=q.max_wait_action,
            calendar_id=q.calendar_id,
            closed_action=q.closed_action,
            active=q.active,
        )
    return found


async def queue_by_code(db: AsyncSession, code: str) -> RoutingQueue:
    queue = await db.scalar(select(RoutingQueue).where(RoutingQueue.code == code))
    if queue is None:
        raise Invalid("queue does not name a routing queue", {"field": "queue", "queue": code})
    return queue


# --- agents as decision values -----------------------------------------------------------------------
LOAD_COLUMNS = {cls: f"load_{cls}" for cls in policy.CHANNEL_CLASSES}
CAP_COLUMNS = {cls: f"cap_{cls}" for cls in policy.CHANNEL_CLASSES}


def capacity_of(state: AgentState) -> policy.Capacity:
    return policy.Capacity(
        voice=state.cap_voice,
        chat=state.cap_chat,
        email=state.cap_email,
        message=state.cap_message,
        voice_blocks_others=state.voice_blocks_others,
        others_block_voice=state.others_block_voice,
    )


def load_of(state: AgentState) -> dict[str, int]:
    return {cls: getattr(state, LOAD_COLUMNS[cls]) for cls in policy.CHANNEL_CLASSES}


def _agent_view(
    state: AgentState | Any, skills: dict[int, int], languages: frozenset[str], queues: frozenset[int]
) -> policy.AgentView:
    return policy.AgentView(
        id=state.user_id,
        presence=state.presence,
        skills=skills,
        languages=languages,
        queues=queues,
        capacity=capacity_of(state),
        load=load_of(state),
        idle_since=state.idle_since.timestamp(),
        on_line_since=_ts(state.on_line_since),
    )


def _capacity_clause(cls: str, zero: Any = 0) -> Any:
    """SQL twin of policy.Capacity.allows for agent_states rows (the claim's guard). ``zero``: bound, or
    written into the statement (_inline)."""
    load = getattr(AgentState, LOAD_COLUMNS[cls])
    cap = getattr(AgentState, CAP_COLUMNS[cls])
    clause = load < cap
    if cls == "voice":
        others = AgentState.load_chat + AgentState.load_email + AgentState.load_message
        clause = and_(clause, or_(AgentState.others_block_voice.is_(False), others == zero))
    else:
        clause = and_(clause, or_(AgentState.voice_blocks_others.is_(False), AgentState.load_voice == zero))
    return clause


# The decisions' statements are built once per shape, with bind parameters for everything that varies:
# building and compiling a SQLAlchemy statement in Python costs several times what the database spends
# running it, and a decision runs five of them.
_statements: dict[tuple[Any, ...], Any] = {}


def _statement(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    found = _statements.get(key)
    if found is None:
        found = _statements[key] = build()
    return found


def _routable_clause(cls: str, rest: bool, *, written: bool = False) -> Any:
    """SQL twin of policy.agent_can_take_now: present, with capacity for ``cls`` and, with the rest rule
    on, on line since after the bind parameter ``rest_cutoff``. ``written``: the presences and the zero
    written into the statement (see _inline), for the ranking of many agents: bound, the planner costs
    them by default selectivities; written, by the statistics, and the ranking keeps its generic plan
    (bound, PostgreSQL planned it anew on every arrival: 0.6 ms, and a worse plan when the statistics
    lagged). The single-agent claims keep them bound: their plans do better that way."""
    presences = [p.value for p in policy.ROUTABLE]
    if written:
        clause = and_(AgentState.presence.in_([_inline_word(p) for p in presences]), _capacity_clause(cls, _inline(0)))
    else:
        clause = and_(AgentState.presence.in_(presences), _capacity_clause(cls))
    if rest:
        cutoff = bindparam("rest_cutoff", type_=UTCDateTime())
        clause = and_(clause, or_(AgentState.on_line_since.is_(None), AgentState.on_line_since > cutoff))
    return clause


def _rest_params(now: datetime, cfg: RoutingConfig) -> dict[str, Any]:
    if cfg.rest.after_seconds > 0:
        return {"rest_cutoff": now - timedelta(seconds=cfg.rest.after_seconds)}
    return {}


# --- presence ----------------------------------------------------------------------------------------
async def _resolved_capacity(db: AsyncSession, user_id: int) -> CapacityProfile | None:
    """The agent's own profile, else their team's (the lowest team id if several), else None (defaults)."""
    own_team = select(TeamMember.team_id).where(TeamMember.user_id == user_id)
    return await db.scalar(
        select(CapacityProfile)
        .join(CapacityAssignment, CapacityAssignment.profile_id == CapacityProfile.id)
        .where(or_(CapacityAssignment.user_id == user_id, CapacityAssignment.team_id.in_(own_team)))
        # The agent's own assignment (team_id NULL) sorts first, then teams by id.
        .order_by(CapacityAssignment.team_id.is_not(None), CapacityAssignment.team_id)
        .limit(1)
    )


def _apply_capacity(state: AgentState, profile: CapacityProfile | None) -> None:
    defaults = policy.Capacity()
    source: Any = profile if profile is not None else defaults
    for cls in policy.CHANNEL_CLASSES:
        setattr(state, CAP_COLUMNS[cls], getattr(source, cls))
    state.voice_blocks_others = source.voice_blocks_others
    state.others_block_voice = source.others_block_voice


async def refresh_capacity(db: AsyncSession, user_ids: Iterable[int]) -> None:
    """Copy the resolved capacity profile onto the agents' state rows (after a profile change)."""
    for user_id in sorted(set(user_ids)):
        state = await db.get(AgentState, user_id, with_for_update=True)
        if state is not None:
            _apply_capacity(state, await _resolved_capacity(db, user_id))
    await db.flush()


async def _staff_agent(db: AsyncSession, user_id: int) -> None:
    found = await db.scalar(select(User.id).where(User.id == user_id, User.is_active))
    if found is None:
        raise NotFound("agent")


async def agent_state(
    db: AsyncSession, user_id: int, *, for_update: bool = False, now: datetime | None = None
) -> AgentState:
    """The agent's routing state, created (offline, with their capacity) on first use."""
    state = await db.get(AgentState, user_id, with_for_update=for_update, populate_existing=for_update)
    if state is not None:
        return state
    await _staff_agent(db, user_id)
    now = now or utcnow()
    row = AgentState(user_id=user_id)
    _apply_capacity(row, await _resolved_capacity(db, user_id))
    values = {c: getattr(row, c) for c in (*LOAD_COLUMNS.values(), *CAP_COLUMNS.values()) if c.startswith("cap_")}
    # ON CONFLICT DO NOTHING: two first requests of one agent in two processes create one row.
    insert = postgresql.insert if db.bind.dialect.name == "postgresql" else sqlite.insert
    await db.execute(
        insert(AgentState)
        .values(
            user_id=user_id,
            presence=Presence.offline,
            since=now,
            idle_since=now,
            rest_started_at=now,
            voice_blocks_others=row.voice_blocks_others,
            others_block_voice=row.others_block_voice,
            **values,
        )
        .on_conflict_do_nothing(index_elements=["user_id"])
    )
    state = await db.get(AgentState, user_id, with_for_update=for_update, populate_existing=True)
    assert state is not None
    return state


def _record_presence(
    db: AsyncSession, state: AgentState, presence: str, reason: str | None, now: datetime, by: int | None
) -> None:
    previous = state.presence
    db.add(
        AgentStateChange(
            user_id=state.user_id, presence=presence, reason=reason, previous=previous, at=now, changed_by_id=by
        )
    )
    cfg = _config
    if presence in policy.RESTING and previous not in policy.RESTING:
        state.rest_started_at = now
    if presence in policy.ROUTABLE and previous not in policy.ROUTABLE and previous != Presence.after_contact:
        state.on_line_since = _dt(
            cfg.rest.on_line_since_after(_ts(state.on_line_since), _ts(state.rest_started_at), now.timestamp())
        )
    if presence == Presence.available:
        # Idle from now: back from a break, or the last contact (and its after-contact work) is done.
        state.idle_since = now
    state.presence = presence
    state.reason = reason
    state.since = now
    state.version += 1
    if presence != Presence.after_contact:
        state.after_contact_until = None
    publish_on_commit(
        db,
        Event(
            PRESENCE_EVENT,
            {"user_id": state.user_id, "presence": presence, "reason": reason, "since": now.isoformat()},
            user_ids=(state.user_id,),
            roles=SUPERVISOR_ROLES,
        ),
    )


# The presences an agent (or a supervisor for them) may choose; on_contact is routing's to set.
CHOOSABLE = (Presence.offline, Presence.available, Presence.break_, Presence.training, Presence.after_contact)
BREAK_REASONS = ("rest", "meal", "meeting", "coaching", "personal", "technical", "missed_offers", "other")


def _total_load(state: AgentState) -> int:
    return sum(load_of(state).values())


async def set_presence(
    db: AsyncSession,
    principal: Principal,
    user_id: int,
    presence: str,
    *,
    reason: str | None = None,
    now: datetime | None = None,
) -> AgentState:
    """Change an agent's presence (their own, or anyone's for a supervisor) and route if they are free."""
    now = now or utcnow()
    if user_id != principal.user_id and not principal.has_role(*SUPERVISOR_ROLES):
        raise Forbidden("only supervisors change another agent's presence")
    if presence not in CHOOSABLE:
        raise Invalid("presence is not one an agent can choose", {"field": "presence", "allowed": list(CHOOSABLE)})
    if presence == Presence.break_:
        if reason is None:
            raise Invalid("a break needs a reason", {"field": "reason", "allowed": list(BREAK_REASONS)})
        if reason not in BREAK_REASONS:
            raise Invalid("unknown break reason", {"field": "reason", "allowed": list(BREAK_REASONS)})
    elif reason is not None:
        raise Invalid("only a break has a reason", {"field": "reason"})
    if presence == Presence.after_contact:
        raise Invalid("after-contact work starts when a contact ends", {"field": "presence"})
    if presence not in policy.ROUTABLE:
        # Entries before the agent's row, as everywhere: the offers ringing for them go back first.
        await _withdraw_offers_of(db, user_id, now)
    state = await agent_state(db, user_id, for_update=True, now=now)
    load = _total_load(state)
    if presence == Presence.offline and await _holds_contacts(db, user_id):
        raise Conflict("finish or transfer your contacts before signing out of routing", {"contacts": load})
    target = presence
    if presence == Presence.available:
        if state.presence in policy.ROUTABLE:
            return state  # already taking contacts
        # Back from a break with contacts still open (a chat kept during the break): on contact.
        target = Presence.on_contact if load > 0 else Presence.available
        # Capacity is copied when the row is made and whenever a profile or a team changes
        # (refresh_capacity), not here: becoming available is on the hot path.
        state.missed_offers = 0
    elif state.presence == presence and state.reason == reason:
        return state
    _record_presence(db, state, target, reason, now, principal.user_id)
    await db.flush()
    if target in policy.ROUTABLE:
        await route_agent(db, user_id, now=now)
    return state


async def _holds_contacts(db: AsyncSession, user_id: int) -> bool:
    found = await db.scalar(
        select(RoutingEntry.interaction_id)
        .where(RoutingEntry.agent_id == user_id, RoutingEntry.state == EntryState.assigned)
        .limit(1)
    )
    return found is not None


# --- enqueueing --------------------------------------------------------------------------------------
@dataclass
class EnqueueResult:
    entry: EntryRow
    created: bool
    offer: OfferMade | None = None
    action: str | None = None  # a closed queue's action, taken at once


async def _last_agent_of(db: AsyncSession, customer_id: int | None, before: datetime) -> int | None:
    if customer_id is None:
        return None
    return await db.scalar(
        select(Assignment.agent_id)
        .join(RoutingEntry, RoutingEntry.interaction_id == Assignment.interaction_id)
        .where(RoutingEntry.customer_id == customer_id, Assignment.started_at < before)
        .order_by(Assignment.started_at.desc())
        .limit(1)
    )


def _entry_insert_stamped(names: tuple[str, ...]) -> Any:
    """PostgreSQL: insert a routing entry (columns ``names``, parameters ``p_<column>``) unless the contact
    has one already, and stamp its interaction queued. Returns (entries inserted, interactions stamped)."""
    from kefu.interactions import service as interactions

    entries = RoutingEntry.__table__
    inserted = (
        postgresql.insert(entries)
        .values({entries.c[name]: bindparam(f"p_{name}", type_=entries.c[name].type) for name in names})
        .on_conflict_do_nothing(index_elements=[entries.c.interaction_id])
        .returning(entries.c.interaction_id)
        .cte("inserted")
    )
    stamped = (
        interactions.routing_stamp_update(
            "queued",
            select(inserted.c.interaction_id).scalar_subquery(),
            bindparam("p_entered_at", type_=entries.c.entered_at.type),
            queue=bindparam("p_queue"),
        )
        .returning(literal(1))
        .cte("stamped")
    )
    return select(
        select(func.count()).select_from(inserted).scalar_subquery().label("inserted"),
        select(func.count()).select_from(stamped).scalar_subquery().label("stamped"),
    )


# What a new contact's entry holds when the decision in _arrival_statement offers it at once (the values
# the claim would write); otherwise the values it was given.
_ARRIVAL_DECIDED = ("state", "offer_agent_id", "offer_expires_at", "offers_made", "review_at", "version")


def _arrival_statement(names: tuple[str, ...], shape: tuple[Any, ...]) -> Any:
    """PostgreSQL: a new contact's whole decision in one statement (data-modifying CTEs), as enqueue then
    route_contact would make it in two:

    ``pick`` locks the best agent who can take the contact now (the ranking query, see
    _candidates_statement); ``inserted`` writes the entry (unless the contact has one already), offered
    to that agent or, with nobody picked, waiting until its review moment (``p_review_at``);
    ``reserved`` gives the agent one more contact, only for an entry just written; ``made`` writes the
    offer; ``stamped`` stamps the interaction queued and, with an offer, offered.

    Parameters: the entry's columns ``names`` as ``p_<column>`` (those in _ARRIVAL_DECIDED are computed
    here), the ranking's, ``p_expires_at``, ``p_review_at``, ``p_queue``. Returns (entries inserted,
    agent the entry was offered to, agent reserved, offer id, level, sticky, interactions stamped)."""
    from kefu.interactions import service as interactions

    entries, agents = RoutingEntry.__table__, AgentState.__table__
    cls, rest = shape[3], shape[4]
    pick = _candidates_statement(*shape, pick=True).cte("pick")
    offered = select(pick.c.user_id).exists()
    decided = {
        "state": case((offered, literal(EntryState.offered)), else_=literal(EntryState.waiting)),
        "offer_agent_id": select(pick.c.user_id).scalar_subquery(),
        "offer_expires_at": case((offered, bindparam("p_expires_at", type_=UTCDateTime())), else_=null()),
        "offers_made": case((offered, literal(1)), else_=literal(0)),
        "review_at": case((offered, null()), else_=bindparam("p_review_at", type_=UTCDateTime())),
        "version": case((offered, literal(1)), else_=literal(0)),
    }
    columns = [name for name in names if name not in decided] + list(decided)
    row = [decided[name] if name in decided else bindparam(f"p_{name}", type_=entries.c[name].type) for name in columns]
    inserted = (
        postgresql.insert(entries)
        .from_select([entries.c[name] for name in columns], select(*row))
        .on_conflict_do_nothing(index_elements=[entries.c.interaction_id])
        .returning(entries.c.interaction_id, entries.c.offer_agent_id)
        .cte("inserted")
    )
    reserved = (
        _agent_reserved(cls, rest, agents.c.user_id == select(inserted.c.offer_agent_id).scalar_subquery())
        .returning(agents.c.user_id)
        .cte("reserved")
    )
    made_from = _offer_columns(reserved.c.user_id, pick.c.level, pick.c.sticky)
    made = _offer_inserted(made_from, reserved.join(pick, true()))
    stamped = (
        interactions.routing_queued_offered_update(
            select(inserted.c.interaction_id).scalar_subquery(),
            bindparam("p_entered_at", type_=entries.c.entered_at.type),
            queue=bindparam("p_queue"),
            offered=select(reserved.c.user_id).exists(),
        )
        .returning(literal(1))
        .cte("stamped")
    )
    return select(
        select(func.count()).select_from(inserted).scalar_subquery().label("inserted"),
        select(inserted.c.offer_agent_id).scalar_subquery().label("offered_to"),
        select(reserved.c.user_id).scalar_subquery().label("reserved"),
        select(made.c.id).scalar_subquery().label("offer_id"),
        select(pick.c.level).scalar_subquery().label("level"),
        select(pick.c.sticky).scalar_subquery().label("sticky"),
        select(func.count()).select_from(stamped).scalar_subquery().label("stamped"),
    )


async def _arrive(
    db: AsyncSession,
    entry: EntryRow,
    values: dict[str, Any],
    queue: QueueInfo,
    now: datetime,
) -> EnqueueResult:
    """PostgreSQL, a contact routed as it is queued: _arrival_statement, then the events. An existing entry
    is returned as it is (nothing was changed)."""
    shape, ranking = _candidates_query("postgresql", entry, queue, now, _config)
    names = tuple(values)
    statement = _statement(("arrival", names, shape), lambda: _arrival_statement(names, shape))
    expires = now + timedelta(seconds=queue.offer_timeout_seconds)
    review_at = _review_moment(entry, queue, now)
    params = {f"p_{name}": value for name, value in values.items() if name not in _ARRIVAL_DECIDED}
    params.update(ranking, p_expires_at=expires, p_review_at=review_at, p_queue=queue.code, p_offered_at=now)
    row = (await db.execute(statement, params)).one()
    if not row.inserted:
        existing = await _entry_row(db, entry.interaction_id)
        assert existing is not None  # the conflict proves the row is there
        return EnqueueResult(existing, False)
    _entry_event(db, entry, "queued")
    result = EnqueueResult(entry, True)
    if row.offer_id is not None:
        choice = Choice(row.reserved, row.level, row.sticky)
        result.offer = _offer_made(db, entry, queue, choice, row.offer_id, now, expires)
    elif row.offered_to is not None:
        # Offered to an agent the reservation then refused: cannot happen while the pick holds the
        # agent's row (same conditions, same row version); handled all the same, never leaving the
        # contact marked offered to nobody.
        await _untake(db, entry)
        await _set_review_at(db, entry, review_at)
    else:
        _seen(entry, review_at=review_at)
    return result


async def enqueue(
    db: AsyncSession,
    interaction_id: int,
    queue_id: int,
    *,
    channel: str,
    customer_id: int | None,
    priority: int = 0,
    now: datetime | None = None,
    route: bool = True,
) -> EnqueueResult:
    """Put a contact in a queue and route it. Enqueueing the same contact again returns its entry."""
    from kefu.interactions import service as interactions

    now = now or utcnow()
    in_one_statement = db.bind.dialect.name == "postgresql"
    if not in_one_statement:
        # PostgreSQL finds out in the insert itself (ON CONFLICT DO NOTHING): no read on the hot path.
        existing = await _entry_row(db, interaction_id)
        if existing is not None:
            return EnqueueResult(existing, False)
    queues = await load_queues(db, [queue_id])
    queue = queues.get(queue_id)
    if queue is None or not queue.active:
        raise Invalid("the queue does not exist or is not active", {"field": "queue"})
    cls = policy.channel_class(channel)
    if cls != queue.channel_class:
        raise Invalid(
            "the contact's channel does not match the queue's", {"field": "queue", "queue_channel": queue.channel}
        )
    sticky_agent = sticky_until = None
    if queue.rule.sticky_seconds > 0:
        sticky_agent = await _last_agent_of(db, customer_id, now)
        if sticky_agent is not None:
            present = await db.scalar(select(AgentState.presence).where(AgentState.user_id == sticky_agent))
            if present is None or present == Presence.offline:
                sticky_agent = None  # nobody to wait for
            else:
                sticky_until = now + timedelta(seconds=queue.rule.sticky_seconds)
    values = {
        "interaction_id": interaction_id,
        "queue_id": queue_id,
        "channel_class": cls,
        "state": EntryState.waiting,
        "priority": priority,
        "priority_order": -(queue.rule.priority + priority),
        "customer_id": customer_id,
        "entered_at": now,
        "waiting_since": now,
        "queue_entered_at": now,
        "sticky_agent_id": sticky_agent,
        "sticky_until": sticky_until,
        "excluded_agents": [],
        "review_at": now,
        "offers_made": 0,
        "version": 0,
    }
    entry = EntryRow(**{name: values[name] for name in EntryRow.__slots__})  # type: ignore[attr-defined]
    closed_matters = queue.calendar_id is not None and queue.closed_action != MaxWaitAction.keep
    if in_one_statement and route and not closed_matters:
        # The whole decision in one round trip.
        return await _arrive(db, entry, values, queue, now)
    if in_one_statement:
        # The entry and the interaction's "queued" stamp in one round trip (a data-modifying CTE).
        params = {f"p_{name}": value for name, value in values.items()}
        params["p_queue"] = queue.code
        names = tuple(values)
        statement = _statement(("entry_insert_stamped", names), lambda: _entry_insert_stamped(names))
        inserted = (await db.execute(statement, params)).one().inserted
        if not inserted:
            existing = await _entry_row(db, interaction_id)
            assert existing is not None  # the conflict proves the row is there
            return EnqueueResult(existing, False)
    else:
        # A constant INSERT executed with the row as parameters: built and compiled once.
        await db.execute(_statement(("entry_insert",), lambda: insert(RoutingEntry.__table__)), values)
        await interactions.routing_stamp(db, interaction_id, "queued", now, queue=queue.code)
    _entry_event(db, entry, "queued")
    result = EnqueueResult(entry, True)
    if closed_matters:
        from kefu.tickets import calendar

        if not calendar.is_business_time(await calendar.load_calendar(db, queue.calendar_id), now):
            row = await db.get(RoutingEntry, interaction_id, populate_existing=True)
            assert row is not None
            result.action = await _take_action(db, row, queue, queue.closed_action, now, why="closed")
            return result
    if route:
        result.offer = await route_contact(db, interaction_id, now=now, entry=entry)
    return result


def _entry_event(db: AsyncSession, entry: RoutingEntry | EntryRow, what: str, **extra: Any) -> None:
    publish_on_commit(
        db,
        Event(
            ENTRY_EVENT,
            {"interaction_id": entry.interaction_id, "queue_id": entry.queue_id, "what": what, **extra},
            roles=SUPERVISOR_ROLES,
        ),
    )


# --- the decisions -----------------------------------------------------------------------------------
@dataclass(slots=True)
class EntryRow:
    """The columns of a routing entry the decisions read, as plain values: the hot paths read entries with
    Core statements (an ORM identity map per entry costs more than the rest of a decision)."""

    interaction_id: int
    queue_id: int
    channel_class: str
    state: str
    priority: int
    waiting_since: datetime
    queue_entered_at: datetime
    sticky_agent_id: int | None
    sticky_until: datetime | None
    excluded_agents: list[int]
    version: int
    offers_made: int
    review_at: datetime | None


ENTRY_COLUMNS = tuple(RoutingEntry.__table__.c[name] for name in EntryRow.__slots__)  # type: ignore[attr-defined]
AGENT_COLUMNS = tuple(AgentState.__table__.c)


def _entry_rows(rows: Any) -> list[EntryRow]:
    return [EntryRow(*row) for row in rows]


async def _entry_row(db: AsyncSession, interaction_id: int) -> EntryRow | None:
    statement = _statement(
        ("entry_row",), lambda: select(*ENTRY_COLUMNS).where(RoutingEntry.interaction_id == bindparam("p_id"))
    )
    found = _entry_rows(await db.execute(statement, {"p_id": interaction_id}))
    return found[0] if found else None


def contact_view(entry: RoutingEntry | EntryRow) -> policy.ContactView:
    return policy.ContactView(
        id=entry.interaction_id,
        queue_id=entry.queue_id,
        channel_class=entry.channel_class,
        priority=entry.priority,
        waiting_since=entry.waiting_since.timestamp(),
        sticky_agent_id=entry.sticky_agent_id,
        sticky_until=_ts(entry.sticky_until),
        excluded_agents=frozenset(entry.excluded_agents or ()),
    )


# How many agents a contact's decision reads: the SQL below orders the candidates exactly as
# policy._agent_key does, so the best is among the first; a few more cover agents a claim loses.
AGENTS_PER_DECISION = 8


def _occupancy_sql(dialect: str) -> Any:
    """SQL twin of policy.Capacity.occupancy: the largest load/limit share over the channel classes."""
    shares = []
    for cls in policy.CHANNEL_CLASSES:
        load = getattr(AgentState, LOAD_COLUMNS[cls])
        cap = getattr(AgentState, CAP_COLUMNS[cls])
        # Both sides float: an integer divisor would make PostgreSQL divide in NUMERIC, per row.
        shares.append(case((cap > 0, cast(load, Float) / cast(cap, Float)), else_=literal(0.0, Float)))
    greatest = func.greatest if dialect == "postgresql" else func.max
    return greatest(*shares)


def _inline(value: int) -> Any:
    """An integer written into the statement, not bound: for what is fixed per cached statement (its
    LIMIT, the skills and levels of a queue's shape). PostgreSQL plans a prepared statement once, for
    any parameters, only while that plan looks no dearer than planning each execution; it costs a bound
    LIMIT as a tenth of the rows and a bound comparison by default selectivities, and planned the
    decisions' statements anew on every execution, taking longer than running them."""
    return literal_column(str(int(value)))


def _inline_word(value: str) -> Any:
    """A fixed word of the code (a presence, a state) written into the statement, for the reason above."""
    assert value.isidentifier(), value  # never text from outside
    return literal_column(f"'{value}'")


def _not_among(dialect: str, column: Any, name: str) -> Any:
    """``column`` is none of the ids in the list parameter ``name``. PostgreSQL: an array parameter, not
    an expanding IN list, so the statement's text (its prepared plan, SQLAlchemy's rendering) stays the
    same whatever the number of ids; SQLite has no arrays."""
    if dialect == "postgresql":
        return column != all_(bindparam(name, type_=postgresql.ARRAY(BigInteger())))
    return column.not_in(bindparam(name, expanding=True))


def _candidates_statement(
    dialect: str,
    needs: tuple[policy.SkillNeed, ...],
    levels: tuple[Any, ...],
    cls: str,
    rest: bool,
    sticky: bool,
    language: bool,
    *,
    pick: bool = False,
) -> Any:
    """The ranking query for one queue's requirement shape (see _candidate_agents); what varies per
    decision is bound: queue_id, reached, sticky_id, language, excluded, rest_cutoff.

    ``pick`` (PostgreSQL): instead of the best few agents' rows, lock the best agent whom no other
    transaction holds (FOR UPDATE SKIP LOCKED: rows are locked in ranking order, a held one is passed
    over, one changed since the snapshot is checked again) and return its id, bullseye level and
    whether it is the sticky agent."""
    proficiency: dict[int, Any] = {}
    # The candidates' skills ride along: PostgreSQL evaluates this subquery for the few rows the LIMIT
    # keeps, after the sort.
    query = select(*AGENT_COLUMNS, _skills_text(dialect).label("skills_text")).join(
        QueueMember,
        and_(QueueMember.user_id == AgentState.user_id, QueueMember.queue_id == bindparam("queue_id")),
    )
    for need in needs:
        held = aliased(AgentSkill)
        query = query.outerjoin(held, and_(held.user_id == AgentState.user_id, held.skill_id == _inline(need.skill_id)))
        proficiency[need.skill_id] = func.coalesce(held.proficiency, _inline(0))
    whens = []
    for level, level_needs in enumerate(levels):
        met = (
            and_(true(), *(proficiency[n.skill_id] >= _inline(n.min_proficiency) for n in level_needs))
            if level_needs is not None
            else true()
        )
        whens.append((met, _inline(level)))
    # (A bare integer in ORDER BY would name a column by position: these two stay bound.)
    level_sql = case(*whens, else_=None) if whens else literal(0)
    query = query.where(_routable_clause(cls, rest, written=True), level_sql.is_not(None))
    # A reserved (sticky) contact: only the customer's agent, at any level.
    query = query.where(
        AgentState.user_id == bindparam("sticky_id") if sticky else level_sql <= bindparam("reached", type_=Integer())
    )
    if language:
        query = query.where(
            select(AgentLanguage.user_id)
            .where(AgentLanguage.user_id == AgentState.user_id, AgentLanguage.language == bindparam("language"))
            .exists()
        )
    query = query.where(_not_among(dialect, AgentState.user_id, "excluded"))
    occupancy = _occupancy_sql(dialect)
    # The policy's order (level, proficiency, fewest skills, least occupied, longest idle, id); its
    # first two terms as stored on the membership (refresh_member_ranks), so that the membership index
    # hands the members over best first and only the first groups are sorted (PostgreSQL: incremental
    # sort under the LIMIT).
    query = query.order_by(
        QueueMember.rank_level.asc().nulls_last(),
        QueueMember.proficiency_order,
        AgentState.skill_count,
        occupancy,
        AgentState.idle_since,
        AgentState.user_id,
    )
    if pick:
        # With a sticky reservation the only candidate is the customer's own agent.
        chosen = (AgentState.user_id, level_sql.label("level"), literal(sticky, Boolean()).label("sticky"))
        locked = query.with_only_columns(*chosen).limit(_inline(1))
        return locked.with_for_update(of=AgentState.__table__, skip_locked=True)
    return query.limit(_inline(AGENTS_PER_DECISION))


def _candidates_query(
    dialect: str, entry: RoutingEntry | EntryRow, queue: QueueInfo, now: datetime, cfg: RoutingConfig
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The shape of the ranking query for this contact (what its statement is built and cached by) and
    its parameters (what varies per decision)."""
    rule = queue.rule
    sticky = entry.sticky_agent_id if entry.sticky_until is not None and entry.sticky_until > now else None
    shape = (
        dialect,
        rule.skills,
        rule.levels,
        entry.channel_class,
        cfg.rest.after_seconds > 0,
        sticky is not None,
        rule.language is not None,
    )
    params: dict[str, Any] = {
        "queue_id": queue.row_id,
        "excluded": list(entry.excluded_agents or ()),
        **_rest_params(now, cfg),
    }
    if sticky is not None:
        params["sticky_id"] = sticky
    else:
        params["reached"] = rule.level_at((now - entry.waiting_since).total_seconds())
    if rule.language is not None:
        params["language"] = rule.language
    return shape, params


def _candidate_views(rows: Iterable[Any], queue: QueueInfo) -> list[policy.AgentView]:
    languages = frozenset([queue.rule.language]) if queue.rule.language is not None else frozenset()
    member_of = frozenset([queue.row_id])
    return [_agent_view(row, _parsed_skills(row.skills_text), languages, member_of) for row in rows]


async def _candidate_agents(
    db: AsyncSession, entry: RoutingEntry | EntryRow, queue: QueueInfo, now: datetime, cfg: RoutingConfig
) -> list[policy.AgentView]:
    """The best few members of the queue for this contact, best first, in one statement: presence,
    capacity, rest, language, exclusions and the skill requirement at the contact's bullseye level are
    checked in SQL, and the rows are ordered by the policy's own key (sticky, level, proficiency on the
    queue's skills, fewest skills, least occupied, longest idle, id), their skills alongside. The policy
    re-ranks them: SQL narrows, the policy decides."""
    shape, params = _candidates_query(db.bind.dialect.name, entry, queue, now, cfg)
    statement = _statement(("candidates", *shape), lambda: _candidates_statement(*shape))
    return _candidate_views(await db.execute(statement, params), queue)


async def route_contact(
    db: AsyncSession,
    interaction_id: int,
    *,
    now: datetime | None = None,
    cfg: RoutingConfig | None = None,
    entry: EntryRow | None = None,
) -> OfferMade | None:
    """Offer a waiting contact to the best agent who can take it now; None if nobody can (its next review
    moment is then set so the sweep comes back to it). ``entry``: the row as just written (saves a read)."""
    now = now or utcnow()
    cfg = cfg or _config
    if entry is None:
        entry = await _entry_row(db, interaction_id)
    if entry is None or entry.state != EntryState.waiting:
        return None
    queue = (await load_queues(db, [entry.queue_id]))[entry.queue_id]
    contact = contact_view(entry)
    agents = await _candidate_agents(db, entry, queue, now, cfg)
    sticky_agent = contact.sticky_for(now.timestamp())
    choices = [
        Choice(agent.id, queue.rule.first_level(agent.skills) or 0, sticky_agent == agent.id)
        for agent in policy.rank_agents(contact, queue.rule, agents, cfg.rest, now.timestamp())
    ]
    if choices:
        offer, still_waiting = await _claim(db, entry, queue, choices, now, cfg)
        if offer is not None:
            return offer
        if not still_waiting:
            return None  # another process took the contact
    moment = _review_moment(entry, queue, now)
    if moment != entry.review_at:
        await _set_review_at(db, entry, moment)
    return None


async def _set_review_at(db: AsyncSession, entry: RoutingEntry | EntryRow, moment: datetime | None) -> None:
    """When the sweep should look at a waiting contact again. Skipped if the entry changed or someone else
    holds its row: they are deciding about this contact right now."""
    await db.execute(
        update(RoutingEntry)
        .where(
            RoutingEntry.interaction_id.in_(
                _unlocked(db.bind.dialect.name, RoutingEntry.interaction_id, entry.interaction_id)
            ),
            RoutingEntry.state == EntryState.waiting,
            RoutingEntry.version == entry.version,
        )
        .values(review_at=moment)
        .execution_options(synchronize_session=False)
    )
    _seen(entry, review_at=moment)


# Two decisions running at once can miss each other: a contact enqueued while an agent becomes available
# in another transaction sees no agent, and the agent sees no contact (neither sees the other's
# uncommitted row). So the sweep takes a second look at every new contact, and at every agent who just
# became available, this long afterwards.
SECOND_LOOK = timedelta(seconds=2)


def _review_moment(entry: RoutingEntry | EntryRow, queue: QueueInfo, now: datetime) -> datetime | None:
    later = []
    if now < entry.queue_entered_at + SECOND_LOOK:
        later.append((entry.queue_entered_at + SECOND_LOOK).timestamp())
    if queue.overflow_queue_id is not None and queue.overflow_after_seconds is not None:
        later.append((entry.queue_entered_at + timedelta(seconds=queue.overflow_after_seconds)).timestamp())
    if queue.max_wait_seconds is not None and queue.max_wait_action != MaxWaitAction.keep:
        later.append((entry.waiting_since + timedelta(seconds=queue.max_wait_seconds)).timestamp())
    return _dt(policy.next_review_at(contact_view(entry), queue.rule, now.timestamp(), *later))


def _unlocked(dialect: str, key: Any, value: Any) -> Any:
    """The row ``key == value`` unless another transaction holds it (PostgreSQL: FOR UPDATE SKIP LOCKED).

    A decision never waits for a row someone else is deciding about: it moves on to the next candidate.
    That keeps lock waits out of the claim entirely, so decisions cannot deadlock with each other or
    with accepts, hang-ups and sweeps, whatever order they touch entries and agents in. (SQLite has one
    writer at a time and ignores the clause.)"""
    return _skip_locked(dialect, select(key).where(key == value))


def _skip_locked(dialect: str, query: Any) -> Any:
    # On PostgreSQL several processes decide and sweep at once: rows another one holds are skipped, not
    # waited for. SQLite has one writer at a time anyway.
    return query.with_for_update(skip_locked=True) if dialect == "postgresql" else query


@dataclass(frozen=True)
class OfferMade:
    """An offer just made (the row is in routing_offers; the lease is on the entry)."""

    id: int
    interaction_id: int
    queue_id: int
    agent_id: int
    offered_at: datetime
    expires_at: datetime
    level: int
    sticky: bool


@dataclass(frozen=True, slots=True)
class Choice:
    """An agent a claim may offer the contact to, and what that offer records."""

    agent_id: int
    level: int
    sticky: bool


def _offer_values(entry: RoutingEntry | EntryRow, choice: Choice, now: datetime, expires: datetime) -> dict[str, Any]:
    return {
        "interaction_id": entry.interaction_id,
        "queue_id": entry.queue_id,
        "agent_id": choice.agent_id,
        "offered_at": now,
        "expires_at": expires,
        "level": choice.level,
        "sticky": choice.sticky,
    }


def _entry_taken(dialect: str, agent_id: Any) -> Any:
    """The compare-and-set on the entry (still waiting, same version, nobody else holding it) that marks it
    offered to ``agent_id``. Bind parameters are named unlike any column: Core adds a parameter named like
    a column of an UPDATE's table to its SET clause."""
    entries = RoutingEntry.__table__
    return (
        update(entries)
        .where(
            entries.c.interaction_id.in_(
                _unlocked(dialect, entries.c.interaction_id, bindparam("p_interaction_id", type_=BigInteger()))
            ),
            entries.c.state == EntryState.waiting,
            entries.c.version == bindparam("p_version"),
        )
        .values(
            state=EntryState.offered,
            offer_agent_id=agent_id,
            offer_expires_at=bindparam("p_expires_at", type_=UTCDateTime()),
            offers_made=entries.c.offers_made + 1,
            review_at=null(),
            version=entries.c.version + 1,
        )
    )


def _agent_reserved(cls: str, rest: bool, where: Any) -> Any:
    """One more contact of class ``cls`` on the agent row(s) ``where``, if still routable with capacity."""
    agents = AgentState.__table__
    load = agents.c[LOAD_COLUMNS[cls]]
    return (
        update(agents)
        .where(where, _routable_clause(cls, rest))
        .values({load: load + 1, agents.c.version: agents.c.version + 1})
    )


def _offer_columns(agent_id: Any, level: Any, sticky: Any) -> dict[str, Any]:
    return {
        "interaction_id": bindparam("p_interaction_id", type_=BigInteger()),
        "queue_id": bindparam("p_queue_id", type_=BigInteger()),
        "agent_id": agent_id,
        "offered_at": bindparam("p_offered_at", type_=UTCDateTime()),
        "expires_at": bindparam("p_expires_at", type_=UTCDateTime()),
        "level": level,
        "sticky": sticky,
    }


def _offer_inserted(made_from: dict[str, Any], source: Any = None) -> Any:
    """The CTE ``made``: the offer row from ``made_from`` (column -> expression over ``source``, if any),
    returning its id and interaction."""
    offers = Offer.__table__
    values = select(*made_from.values())
    if source is not None:
        values = values.select_from(source)
    return (
        insert(offers).from_select(list(made_from), values).returning(offers.c.id, offers.c.interaction_id).cte("made")
    )


def _offer_written(made_from: dict[str, Any]) -> tuple[Any, Any]:
    """The last two steps of a PostgreSQL claim, as CTEs: the offer row from ``made_from`` (column ->
    expression), and the interaction's first "offered" time stamped."""
    from kefu.interactions import service as interactions

    made = _offer_inserted(made_from)
    stamped = (
        interactions.routing_stamp_update(
            "offered", select(made.c.interaction_id).scalar_subquery(), made_from["offered_at"]
        )
        .returning(literal(1))
        .cte("stamped")
    )
    return made, stamped


def _claim_statement(cls: str, rest: bool) -> Any:
    """PostgreSQL: a whole claim in one statement (data-modifying CTEs). ``pick`` locks the first of the
    ranked agents (``p_agent_ids``, best first) who is still routable with capacity and whom no other
    transaction holds; only then is the entry taken, the agent reserved, the offer written and the
    interaction's first "offered" time stamped, each step only if the one before returned its row.

    Several decisions running at once often rank the same agents first: a locked or filled-up agent is
    skipped inside the statement, instead of costing a failed claim, a give-back and another round trip.
    Returns (agents picked, entries taken, offer id, agent id)."""

    agents = AgentState.__table__
    ids = bindparam("p_agent_ids", type_=postgresql.ARRAY(BigInteger()))
    pick = (
        select(agents.c.user_id)
        .where(agents.c.user_id == any_(ids), _routable_clause(cls, rest))
        .order_by(func.array_position(ids, agents.c.user_id))
        .limit(1)
        .with_for_update(skip_locked=True)
        .cte("pick")
    )
    picked = select(pick.c.user_id).scalar_subquery()
    taken = (
        _entry_taken("postgresql", picked)
        .where(select(pick.c.user_id).exists())
        .returning(RoutingEntry.__table__.c.interaction_id)
        .cte("taken")
    )
    reserved = (
        _agent_reserved(cls, rest, and_(agents.c.user_id == picked, select(taken.c.interaction_id).exists()))
        .returning(agents.c.user_id)
        .cte("reserved")
    )
    position = func.array_position(ids, reserved.c.user_id)
    # Parenthesized: a bare "$1::INTEGER[][n]" would read as a type.
    levels = Grouping(bindparam("p_levels", type_=postgresql.ARRAY(Integer())))
    stickies = Grouping(bindparam("p_stickies", type_=postgresql.ARRAY(Boolean())))
    made_from = _offer_columns(reserved.c.user_id, levels[position], stickies[position])
    made, stamped = _offer_written(made_from)
    return select(
        select(func.count()).select_from(pick).scalar_subquery(),
        select(func.count()).select_from(taken).scalar_subquery(),
        select(made.c.id).scalar_subquery(),
        select(reserved.c.user_id).scalar_subquery(),
        select(func.count()).select_from(stamped).scalar_subquery(),
    )


def _claim_steps(dialect: str, cls: str, rest: bool) -> tuple[Any, Any]:
    """SQLite (one writer at a time, no data-modifying CTEs): the entry's and the agent's compare-and-set
    as two statements, run one after the other for one agent."""
    agent_id = bindparam("p_agent_id", type_=BigInteger())
    agents = AgentState.__table__
    return (
        _entry_taken(dialect, agent_id),
        _agent_reserved(cls, rest, agents.c.user_id.in_(_unlocked(dialect, agents.c.user_id, agent_id))),
    )


def _claim_params(
    entry: RoutingEntry | EntryRow, values: dict[str, Any], now: datetime, cfg: RoutingConfig
) -> dict[str, Any]:
    params = {f"p_{name}": value for name, value in values.items()}
    params.update(p_version=entry.version, **_rest_params(now, cfg))
    return params


async def _claim_in_one_statement(
    db: AsyncSession,
    entry: RoutingEntry | EntryRow,
    choices: Sequence[Choice],
    now: datetime,
    expires: datetime,
    cfg: RoutingConfig,
) -> tuple[bool, Choice | None, int | None]:
    """PostgreSQL: one round trip whatever the number of agents tried. Returns (entry taken, the agent's
    choice, offer id); (False, choice, None) means the contact went elsewhere, (False, None, None) that
    none of the agents could take it."""
    rest = cfg.rest.after_seconds > 0
    statement = _statement(("claim", entry.channel_class, rest), lambda: _claim_statement(entry.channel_class, rest))
    params = _claim_params(entry, _offer_values(entry, choices[0], now, expires), now, cfg)
    del params["p_agent_id"], params["p_level"], params["p_sticky"]
    params.update(
        p_agent_ids=[c.agent_id for c in choices],
        p_levels=[c.level for c in choices],
        p_stickies=[c.sticky for c in choices],
    )
    picked, taken, offer_id, agent_id, _stamped = (await db.execute(statement, params)).one()
    if not picked:
        return False, None, None
    chosen = next(c for c in choices if c.agent_id == agent_id) if agent_id is not None else choices[0]
    return bool(taken), chosen, offer_id


async def _claim_step_by_step(
    db: AsyncSession,
    entry: RoutingEntry | EntryRow,
    choices: Sequence[Choice],
    now: datetime,
    expires: datetime,
    cfg: RoutingConfig,
) -> tuple[bool, Choice | None, int | None]:
    """SQLite: the same as _claim_in_one_statement, one agent after the other."""
    rest = cfg.rest.after_seconds > 0
    dialect = db.bind.dialect.name
    key = ("claim_steps", dialect, entry.channel_class, rest)
    taken, reserved = _statement(key, lambda: _claim_steps(dialect, entry.channel_class, rest))
    for choice in choices:
        values = _offer_values(entry, choice, now, expires)
        params = _claim_params(entry, values, now, cfg)
        if (await db.execute(taken, params)).rowcount != 1:
            return False, choice, None
        if (await db.execute(reserved, params)).rowcount == 1:
            return True, choice, await db.scalar(insert(Offer.__table__).values(values).returning(Offer.__table__.c.id))
        await _untake(db, entry)  # this agent changed meanwhile: the next one
    return False, None, None


async def _untake(db: AsyncSession, entry: RoutingEntry | EntryRow) -> None:
    """Give back an entry this transaction took for an agent it then could not reserve (we hold its row)."""
    await db.execute(
        update(RoutingEntry)
        .where(RoutingEntry.interaction_id == entry.interaction_id)
        .values(
            state=EntryState.waiting,
            offer_agent_id=None,
            offer_expires_at=None,
            offers_made=RoutingEntry.offers_made - 1,
            version=RoutingEntry.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    _seen(entry, version=entry.version + 2)  # taken (+1), given back (+1)


async def _claim(
    db: AsyncSession,
    entry: RoutingEntry | EntryRow,
    queue: QueueInfo,
    choices: Sequence[Choice],
    now: datetime,
    cfg: RoutingConfig,
) -> tuple[OfferMade | None, bool]:
    """Offer ``entry`` to the first of ``choices`` (best first) who can take it now: the entry's and the
    agent's compare-and-set both succeed, or nothing is changed. Returns the offer (or None) and whether
    the contact is still waiting (nobody could take it, rather than someone else taking the contact)."""
    from kefu.interactions import service as interactions

    expires = now + timedelta(seconds=queue.offer_timeout_seconds)
    in_one_statement = db.bind.dialect.name == "postgresql"
    claim = _claim_in_one_statement if in_one_statement else _claim_step_by_step
    taken, choice, offer_id = await claim(db, entry, choices, now, expires, cfg)
    if choice is None:
        return None, True  # none of them could take it: the contact still waits
    if not taken:
        return None, False  # the contact went elsewhere (or another transaction holds it)
    if offer_id is None:
        # Taken, but the agent we hold failed the capacity guard: cannot happen while the pick holds the
        # agent's row; handled all the same, never leaving the contact marked offered to nobody.
        await _untake(db, entry)
        return None, True
    if not in_one_statement:
        await interactions.routing_stamp(db, entry.interaction_id, "offered", now)
    return _offer_made(db, entry, queue, choice, offer_id, now, expires), True


def _offer_made(
    db: AsyncSession,
    entry: RoutingEntry | EntryRow,
    queue: QueueInfo,
    choice: Choice,
    offer_id: int,
    now: datetime,
    expires: datetime,
) -> OfferMade:
    """After a successful claim: the entry as written, and the offer event for the agent's desk."""
    _seen(
        entry,
        state=EntryState.offered,
        offer_agent_id=choice.agent_id,
        offer_expires_at=expires,
        offers_made=entry.offers_made + 1,
        review_at=None,
        version=entry.version + 1,
    )
    publish_on_commit(
        db,
        Event(
            OFFER_EVENT,
            {
                "interaction_id": entry.interaction_id,
                "queue_id": entry.queue_id,
                "queue": queue.code,
                "channel": queue.channel,
                "expires_at": expires.isoformat(),
                "timeout_seconds": queue.offer_timeout_seconds,
            },
            user_ids=(choice.agent_id,),
        ),
    )
    return OfferMade(id=offer_id, **_offer_values(entry, choice, now, expires))


def _agent_claim_statement(heads: int, depth: int, rest: bool) -> Any:
    """PostgreSQL: an agent's decision in one statement (data-modifying CTEs), as _waiting_for,
    policy.rank_contacts and a claim would make it in several.

    ``pick`` locks the best waiting contact the agent may take now, held by no other transaction:
    among the heads of the agent's eligible queues (``p_queue_ids``, see _waiting_statement) and those
    reserved for the agent, minus those tried (``skip``) and those the agent declined, in the policy's
    order (reserved for the agent first, then priority, longest waiting, id). Then the agent gets one
    more contact of that one's channel class if they still can take it (``reserved``), the entry is
    taken, the offer written and the interaction stamped, each only if the step before returned its row.

    Returns (contacts picked, agents reserved, offer id, heads the agent declined, then the picked
    entry's columns as they were before: EntryRow's fields, its queue's position in ``p_queue_ids``,
    whether it was reserved for the agent)."""
    entries, agents = RoutingEntry.__table__, AgentState.__table__
    # Named unlike any column: Core adds a parameter named like a column of an UPDATE's table (say
    # interactions.agent_id) to its SET clause.
    agent_id = bindparam("p_agent_id", type_=BigInteger())
    now = bindparam("p_now", type_=UTCDateTime())
    queue_ids = bindparam("p_queue_ids", type_=postgresql.ARRAY(BigInteger()))
    candidates = _heads_union(heads, depth, agent_id, now)
    declined = entries.c.excluded_agents.op("@>", return_type=Boolean())(func.jsonb_build_array(agent_id))
    # Reserved for this agent (never NULL: an entry without a reservation has NULLs there).
    mine = func.coalesce(and_(entries.c.sticky_agent_id == agent_id, entries.c.sticky_until > now), false())
    position = func.array_position(queue_ids, entries.c.queue_id)
    pick = (
        select(*ENTRY_COLUMNS, position.label("position"), mine.label("mine"))
        .where(
            entries.c.interaction_id.in_(select(candidates.c.interaction_id)),
            _not_among("postgresql", entries.c.interaction_id, "skip"),
            entries.c.state == EntryState.waiting,
            position.is_not(None),
            ~declined,
        )
        .order_by(case((mine, 0), else_=1), entries.c.priority_order, entries.c.waiting_since, entries.c.interaction_id)
        .limit(_inline(1))
        .with_for_update(of=entries, skip_locked=True)
        .cte("pick")
    )
    picked_class = select(pick.c.channel_class).scalar_subquery()
    # One more contact of the picked one's class, if the agent can still take one of that class.
    loads = {
        agents.c[LOAD_COLUMNS[cls]]: agents.c[LOAD_COLUMNS[cls]] + case((picked_class == cls, 1), else_=0)
        for cls in policy.CHANNEL_CLASSES
    }
    routable = or_(*(and_(picked_class == cls, _routable_clause(cls, rest)) for cls in policy.CHANNEL_CLASSES))
    reserved = (
        update(agents)
        .where(agents.c.user_id.in_(_unlocked("postgresql", agents.c.user_id, agent_id)), routable)
        .values({**loads, agents.c.version: agents.c.version + 1})
        .returning(agents.c.user_id)
        .cte("reserved")
    )
    at = select(pick.c.position).scalar_subquery()
    expires = Grouping(bindparam("p_expires", type_=postgresql.ARRAY(DateTime(timezone=True))))[at]
    taken = (
        update(entries)
        .where(
            entries.c.interaction_id == select(pick.c.interaction_id).scalar_subquery(),
            select(reserved.c.user_id).exists(),
        )
        .values(
            state=EntryState.offered,
            offer_agent_id=agent_id,
            offer_expires_at=expires,
            offers_made=entries.c.offers_made + 1,
            review_at=null(),
            version=entries.c.version + 1,
        )
        .returning(entries.c.interaction_id, entries.c.queue_id)
        .cte("taken")
    )
    levels = Grouping(bindparam("p_levels", type_=postgresql.ARRAY(Integer())))
    made_from = _offer_columns(agent_id, levels[at], select(pick.c.mine).scalar_subquery())
    made_from.update(interaction_id=taken.c.interaction_id, queue_id=taken.c.queue_id, expires_at=expires)
    made, stamped = _offer_written(made_from)
    declined_heads = (
        select(func.count())
        .select_from(entries)
        .where(entries.c.interaction_id.in_(select(candidates.c.interaction_id)), declined)
        .scalar_subquery()
    )
    one = select(literal(1).label("one")).subquery("one")
    return select(
        select(func.count()).select_from(pick).scalar_subquery().label("picked"),
        select(func.count()).select_from(reserved).scalar_subquery().label("reserved"),
        select(made.c.id).scalar_subquery().label("offer_id"),
        declined_heads.label("declined_heads"),
        select(func.count()).select_from(stamped).scalar_subquery().label("stamped"),
        *(pick.c[name] for name in EntryRow.__slots__),  # type: ignore[attr-defined]
        pick.c.position,
        pick.c.mine,
    ).select_from(one.outerjoin(pick, true()))


def _seen(entry: RoutingEntry | EntryRow, **values: Any) -> None:
    """Record what a Core UPDATE just wrote to the entry's row. On an ORM entry the values are set as
    loaded (not dirty, so no second UPDATE); on a plain row, only the fields it has."""
    if isinstance(entry, RoutingEntry):
        for name, value in values.items():
            set_committed_value(entry, name, value)
        return
    for name, value in values.items():
        if hasattr(entry, name):
            setattr(entry, name, value)


def _aggregated(dialect: str, expression: Any, where: Any) -> Any:
    """A comma-separated list of ``expression`` over the rows matching ``where``, as a scalar subquery."""
    joined = func.string_agg(expression, ",") if dialect == "postgresql" else func.group_concat(expression, ",")
    return select(joined).where(where).scalar_subquery()


def _skills_text(dialect: str) -> Any:
    """The agent's skills as "skill:proficiency,..." (a scalar subquery on the agent's row)."""
    return _aggregated(
        dialect,
        cast(AgentSkill.skill_id, String) + ":" + cast(AgentSkill.proficiency, String),
        AgentSkill.user_id == AgentState.user_id,
    )


def _parsed_skills(text: str | None) -> dict[int, int]:
    skills = {}
    for pair in (text or "").split(","):
        if pair:
            skill_id, _, level = pair.partition(":")
            skills[int(skill_id)] = int(level)
    return skills


def _agent_with_facts_statement(dialect: str) -> Any:
    """The agent's routing row and, in the same round trip, their skills, languages and queues (as
    "skill:proficiency", "language" and "queue" lists): decisions read nothing else about the agent."""
    uid = AgentState.user_id
    return select(
        *AGENT_COLUMNS,
        _skills_text(dialect),
        _aggregated(dialect, AgentLanguage.language, AgentLanguage.user_id == uid),
        _aggregated(dialect, cast(QueueMember.queue_id, String), QueueMember.user_id == uid),
    ).where(uid == bindparam("user_id"))


async def _agent_with_facts(db: AsyncSession, user_id: int) -> tuple[Any, policy.AgentView | None]:
    """(the agent's routing row, the agent as policy sees them); (None, None) without a routing row."""
    dialect = db.bind.dialect.name
    statement = _statement(("agent_with_facts", dialect), lambda: _agent_with_facts_statement(dialect))
    row = (await db.execute(statement, {"user_id": user_id})).first()
    if row is None:
        return None, None
    skills_text, languages_text, queues_text = row[-3:]
    skills = _parsed_skills(skills_text)
    languages = frozenset(text for text in (languages_text or "").split(",") if text)
    queues = frozenset(int(text) for text in (queues_text or "").split(",") if text)
    return row, _agent_view(row, skills, languages, queues)


def _heads_union(heads: int, depth: int, agent_id: Any, now: Any) -> Any:
    """The ids of the heads of ``heads`` queues (``queue_<i>``, each an index range scan, LIMIT ``depth``,
    of the contacts that waited since ``since_<i>``) and of the contacts reserved for the agent at ``now``.
    ``agent_id`` and ``now`` are the caller's bind parameters: SQLAlchemy matches a cached statement's
    parameters by object, and two of one name in one statement would be confused."""
    parts = []
    for i in range(heads):
        parts.append(
            select(RoutingEntry.interaction_id)
            .where(
                RoutingEntry.queue_id == bindparam(f"queue_{i}", type_=BigInteger()),
                RoutingEntry.state == EntryState.waiting,
                RoutingEntry.waiting_since <= bindparam(f"since_{i}", type_=UTCDateTime()),
                or_(RoutingEntry.sticky_until.is_(None), RoutingEntry.sticky_until <= now),
            )
            .order_by(RoutingEntry.priority_order, RoutingEntry.waiting_since)
            .limit(_inline(depth))
            .subquery()
        )
    reserved = select(RoutingEntry.interaction_id).where(
        RoutingEntry.sticky_agent_id == agent_id,
        RoutingEntry.state == EntryState.waiting,
        RoutingEntry.sticky_until > now,
    )
    return union_all(*(select(part.c.interaction_id) for part in parts), reserved).subquery()


def _waiting_statement(dialect: str, heads: int, depth: int) -> Any:
    """The entries of _heads_union, minus those already tried (``skip``)."""
    candidates = _heads_union(
        heads, depth, bindparam("p_agent_id", type_=BigInteger()), bindparam("p_now", type_=UTCDateTime())
    )
    return select(*ENTRY_COLUMNS).where(
        RoutingEntry.interaction_id.in_(select(candidates.c.interaction_id)),
        _not_among(dialect, RoutingEntry.interaction_id, "skip"),
    )


def _heads_params(
    agent: policy.AgentView,
    queues: dict[int, QueueInfo],
    now: datetime,
    cfg: RoutingConfig,
    skip: set[int],
    depth: int,
) -> tuple[dict[str, Any], list[tuple[QueueInfo, int]], int]:
    """_heads_union's parameters for this agent (``p_agent_id``, ``p_now``, ``queue_<i>``, ``since_<i>``,
    ``skip``); the queues whose heads it reads, with the agent's bullseye level in each: those active, in
    a language the agent speaks, of a channel class the agent can take now, whose skill requirement the
    agent meets at some level; and how deep it reads each queue."""
    params: dict[str, Any] = {"p_now": now, "p_agent_id": agent.id, "skip": sorted(skip)}
    eligible = []
    for queue in queues.values():
        if not queue.active or not policy.language_ok(queue.rule, agent):
            continue
        if not policy.agent_can_take_now(agent, queue.channel_class, cfg.rest, now.timestamp()):
            continue
        level = queue.rule.first_level(agent.skills)
        if level is None:
            continue
        params[f"queue_{len(eligible)}"] = queue.row_id
        params[f"since_{len(eligible)}"] = now - timedelta(seconds=queue.rule.wait_for_level(level))
        eligible.append((queue, level))
    return params, eligible, (depth or CONTACTS_PER_QUEUE) + len(skip)


async def _waiting_for(
    db: AsyncSession,
    agent: policy.AgentView,
    queues: dict[int, QueueInfo],
    now: datetime,
    cfg: RoutingConfig,
    skip: set[int],
    depth: int = 0,
) -> list[EntryRow]:
    """The waiting contacts the agent could take: per queue they serve, the head of the queue among
    those that have waited long enough for the agent's bullseye level, plus any reserved for them. One
    statement: a UNION ALL of one index range scan per queue."""
    params, eligible, depth = _heads_params(agent, queues, now, cfg, skip, depth)
    if not eligible:
        return []  # nothing the agent could take now: the contacts reserved for them must wait too
    dialect, heads = db.bind.dialect.name, len(eligible)
    statement = _statement(("waiting", dialect, heads, depth), lambda: _waiting_statement(dialect, heads, depth))
    return _entry_rows(await db.execute(statement, params))


@dataclass(slots=True)
class AgentClaim:
    """What _claim_for_agent did: the offer made (or None), the contact it picked (offered or, when the
    agent could not be reserved, not), and how many heads the agent had declined."""

    offer: OfferMade | None
    picked: int | None
    agent_reserved: bool
    declined_heads: int


async def _claim_for_agent(
    db: AsyncSession,
    agent: policy.AgentView,
    queues: dict[int, QueueInfo],
    now: datetime,
    cfg: RoutingConfig,
    skip: set[int],
    depth: int,
) -> AgentClaim | None:
    """PostgreSQL: route_agent's round in one statement (_agent_claim_statement). None: no queue the
    agent could take a contact from now."""
    params, eligible, depth = _heads_params(agent, queues, now, cfg, skip, depth)
    if not eligible:
        return None
    rest = cfg.rest.after_seconds > 0
    heads = len(eligible)
    statement = _statement(("agent_claim", heads, depth, rest), lambda: _agent_claim_statement(heads, depth, rest))
    expires = [now + timedelta(seconds=queue.offer_timeout_seconds) for queue, _ in eligible]
    params.update(
        p_queue_ids=[queue.row_id for queue, _ in eligible],
        p_levels=[level for _, level in eligible],
        p_expires=expires,
        p_offered_at=now,
        **_rest_params(now, cfg),
    )
    row = (await db.execute(statement, params)).one()
    if not row.picked:
        return AgentClaim(None, None, True, row.declined_heads)
    entry = EntryRow(*(getattr(row, name) for name in EntryRow.__slots__))  # type: ignore[attr-defined]
    if row.offer_id is None:
        return AgentClaim(None, entry.interaction_id, bool(row.reserved), row.declined_heads)
    queue, level = eligible[row.position - 1]
    choice = Choice(agent.id, level, bool(row.mine))
    offer = _offer_made(db, entry, queue, choice, row.offer_id, now, expires[row.position - 1])
    return AgentClaim(offer, entry.interaction_id, True, row.declined_heads)


def _can_take_more(agent: policy.AgentView, queues: dict[int, QueueInfo], cfg: RoutingConfig, now: datetime) -> bool:
    return any(
        policy.agent_can_take_now(agent, q.channel_class, cfg.rest, now.timestamp())
        for q in queues.values()
        if q.active
    )


async def _agent_row(db: AsyncSession, user_id: int) -> Any:
    statement = _statement(
        ("agent_row",), lambda: select(*AGENT_COLUMNS).where(AgentState.user_id == bindparam("user_id"))
    )
    return (await db.execute(statement, {"user_id": user_id})).first()


async def route_agent(
    db: AsyncSession, user_id: int, *, now: datetime | None = None, cfg: RoutingConfig | None = None
) -> list[OfferMade]:
    """Offer an agent who has capacity the best waiting contacts, until they are full or none is left."""
    now = now or utcnow()
    cfg = cfg or _config
    offers: list[OfferMade] = []
    skip: set[int] = set()
    state, agent = await _agent_with_facts(db, user_id)
    if state is None or agent is None or state.presence not in policy.ROUTABLE:
        return offers
    queues = await load_queues(db, agent.queues)
    rules = {q: i.rule for q, i in queues.items()}
    depth = CONTACTS_PER_QUEUE
    postgres = db.bind.dialect.name == "postgresql"
    while _can_take_more(agent, queues, cfg, now):
        if postgres:
            # Reading, ranking and claiming in one statement.
            claim = await _claim_for_agent(db, agent, queues, now, cfg, skip, depth)
            if claim is None:
                return offers
            if claim.offer is not None:
                offers.append(claim.offer)
                skip.add(claim.offer.interaction_id)
                cls = queues[claim.offer.queue_id].channel_class
                agent.load[cls] = agent.load.get(cls, 0) + 1
                continue
            if claim.picked is None:
                if claim.declined_heads and depth < MAX_CONTACTS_PER_QUEUE:
                    depth *= 4  # the heads of a queue were all declined by this agent: look deeper
                    continue
                return offers
            skip.add(claim.picked)  # not tried again: each round skips more, the loop ends
            agent_ok = claim.agent_reserved
        else:  # SQLite, one writer at a time: read the heads, rank them, claim the best
            entries = await _waiting_for(db, agent, queues, now, cfg, skip, depth)
            ranked = policy.rank_contacts(agent, [contact_view(e) for e in entries], rules, cfg.rest, now.timestamp())
            if not ranked:
                if any(user_id in e.excluded_agents for e in entries) and depth < MAX_CONTACTS_PER_QUEUE:
                    # The heads of a queue were all declined by this agent: look deeper before giving up.
                    depth *= 4
                    continue
                return offers
            entry = next(e for e in entries if e.interaction_id == ranked[0].id)
            queue = queues[entry.queue_id]
            sticky = ranked[0].sticky_for(now.timestamp()) == user_id
            choice = Choice(user_id, queue.rule.first_level(agent.skills) or 0, sticky)
            claimed, _still_waiting = await _claim(db, entry, queue, [choice], now, cfg)
            skip.add(entry.interaction_id)  # offered or lost: not tried again (the loop ends)
            if claimed is not None:
                agent.load[entry.channel_class] = agent.load.get(entry.channel_class, 0) + 1
                offers.append(claimed)
                continue
            agent_ok = False
        if not agent_ok:
            # The agent changed (left, filled up) meanwhile, or might have: read them again.
            state = await _agent_row(db, user_id)
            if state is None or state.presence not in policy.ROUTABLE:
                return offers
            agent.presence, agent.load = state.presence, load_of(state)
    return offers


# --- offers ------------------------------------------------------------------------------------------
async def _live_offer(db: AsyncSession, interaction_id: int, agent_id: int) -> Offer | None:
    return await db.scalar(
        select(Offer).where(Offer.interaction_id == interaction_id, Offer.agent_id == agent_id, Offer.outcome.is_(None))
    )


async def _release(db: AsyncSession, agent_id: int, cls: str, *, missed: bool = False) -> AgentState | None:
    load = getattr(AgentState, LOAD_COLUMNS[cls])
    values: dict[Any, Any] = {load: load - 1, AgentState.version: AgentState.version + 1}
    if missed:
        values[AgentState.missed_offers] = AgentState.missed_offers + 1
    await db.execute(
        update(AgentState)
        .where(AgentState.user_id == agent_id, load > 0)
        .values(values)
        .execution_options(synchronize_session=False)
    )
    return await db.get(AgentState, agent_id, populate_existing=True)


async def accept_offer(
    db: AsyncSession, principal: Principal, interaction_id: int, *, now: datetime | None = None
) -> RoutingEntry:
    """The agent takes the contact ringing for them: it becomes theirs and pops on their desktop."""
    from kefu.interactions import service as interactions

    now = now or utcnow()
    agent_id = principal.user_id
    if agent_id is None:
        raise Forbidden("sign in to take contacts")
    entry = await db.get(RoutingEntry, interaction_id, with_for_update=True, populate_existing=True)
    if entry is None or entry.offer_agent_id != agent_id or entry.state != EntryState.offered:
        raise Conflict("this contact is not offered to you (any more)", {"interaction_id": interaction_id})
    assert entry.offer_expires_at is not None
    if entry.offer_expires_at <= now:
        raise Conflict("the offer rang out", {"interaction_id": interaction_id})
    entry.state = EntryState.assigned
    entry.agent_id = agent_id
    entry.offer_agent_id = None
    entry.offer_expires_at = None
    entry.answered_at = now
    entry.review_at = None
    entry.version += 1
    offer = await _live_offer(db, interaction_id, agent_id)
    if offer is not None:
        offer.outcome = OfferOutcome.accepted
        offer.decided_at = now
    db.add(
        Assignment(
            interaction_id=interaction_id,
            agent_id=agent_id,
            queue_id=entry.queue_id,
            channel_class=entry.channel_class,
            started_at=now,
        )
    )
    state = await agent_state(db, agent_id, for_update=True, now=now)
    state.missed_offers = 0
    if state.presence == Presence.available:
        _record_presence(db, state, Presence.on_contact, None, now, agent_id)
    await db.flush()
    await interactions.routing_answered(db, interaction_id, agent_id, now)
    _entry_event(db, entry, "answered", agent_id=agent_id)
    return entry


async def _give_back(
    db: AsyncSession, entry: RoutingEntry, outcome: str, now: datetime, *, exclude: bool = True
) -> int | None:
    """End the live offer on ``entry`` (held locked by the caller) and put it back to waiting."""
    agent_id = entry.offer_agent_id
    if agent_id is None:
        return None
    offer = await _live_offer(db, entry.interaction_id, agent_id)
    if offer is not None:
        offer.outcome = outcome
        offer.decided_at = now
    entry.state = EntryState.waiting
    entry.offer_agent_id = None
    entry.offer_expires_at = None
    if exclude:
        entry.excluded_agents = sorted({*(entry.excluded_agents or ()), agent_id})
    if entry.sticky_agent_id == agent_id:
        entry.sticky_until = None  # the preferred agent passed: do not keep the customer waiting for them
    entry.review_at = now
    entry.version += 1
    await db.flush()
    state = await _release(db, agent_id, entry.channel_class, missed=outcome == OfferOutcome.timeout)
    publish_on_commit(
        db,
        Event(OFFER_GONE_EVENT, {"interaction_id": entry.interaction_id, "outcome": outcome}, user_ids=(agent_id,)),
    )
    if (
        outcome == OfferOutcome.timeout
        and state is not None
        and state.missed_offers >= _config.missed_offers_limit
        and state.presence in policy.ROUTABLE
    ):
        # Not ready: an agent who lets offers ring out is probably away from the desk.
        await _withdraw_offers_of(db, agent_id, now)
        _record_presence(db, state, Presence.break_, "missed_offers", now, None)
        await db.flush()
    return agent_id


async def reject_offer(
    db: AsyncSession, principal: Principal, interaction_id: int, *, now: datetime | None = None
) -> RoutingEntry:
    now = now or utcnow()
    entry = await db.get(RoutingEntry, interaction_id, with_for_update=True, populate_existing=True)
    if entry is None or entry.offer_agent_id != principal.user_id or entry.state != EntryState.offered:
        raise Conflict("this contact is not offered to you (any more)", {"interaction_id": interaction_id})
    agent_id = await _give_back(db, entry, OfferOutcome.rejected, now)
    await route_contact(db, interaction_id, now=now)
    if agent_id is not None:
        await route_agent(db, agent_id, now=now)
    return entry


async def _withdraw_offers_of(db: AsyncSession, agent_id: int, now: datetime) -> list[int]:
    """Cancel the offers ringing for an agent who leaves routing; the contacts are routed again."""
    ids = list(
        (
            await db.scalars(
                select(RoutingEntry.interaction_id).where(
                    RoutingEntry.offer_agent_id == agent_id, RoutingEntry.state == EntryState.offered
                )
            )
        ).all()
    )
    withdrawn = []
    for interaction_id in ids:
        # SKIP LOCKED: the caller may hold the agent's row, and whoever holds the entry (an accept, a
        # hang-up) may be waiting for it; an offer skipped here is being decided, or rings out later.
        entry = await db.scalar(
            _skip_locked(
                db.bind.dialect.name, select(RoutingEntry).where(RoutingEntry.interaction_id == interaction_id)
            ).execution_options(populate_existing=True)
        )
        if entry is not None and entry.state == EntryState.offered and entry.offer_agent_id == agent_id:
            await _give_back(db, entry, OfferOutcome.cancelled, now, exclude=False)
            withdrawn.append(interaction_id)
    return withdrawn


async def lock_entry(db: AsyncSession, interaction_id: int) -> None:
    """Take the contact's routing row lock now (if it is in routing), before its interaction row: the
    order every routing transaction uses, so a hang-up racing an accept waits instead of deadlocking."""
    query = select(RoutingEntry.interaction_id).where(RoutingEntry.interaction_id == interaction_id)
    await db.execute(query.with_for_update())


# --- contacts ending ---------------------------------------------------------------------------------
async def interaction_ended(db: AsyncSession, interaction_id: int, event: str, at: datetime) -> None:
    """The interactions service calls this when a contact ends or is abandoned: it leaves routing and its
    agent's capacity frees up (after-contact work first, if the queue has it)."""
    entry = await db.get(RoutingEntry, interaction_id, with_for_update=True, populate_existing=True)
    if entry is None or entry.state == EntryState.ended:
        return
    now = at  # the channel's moment: capacity frees up when the contact ended
    freed: int | None = None
    if entry.state == EntryState.offered:
        freed = await _give_back(db, entry, OfferOutcome.cancelled, now, exclude=False)
    was_assigned = entry.state == EntryState.assigned
    entry.state = EntryState.ended
    entry.outcome = "handled" if was_assigned else "abandoned"
    entry.ended_at = at
    entry.review_at = None
    entry.version += 1
    await db.flush()
    _entry_event(db, entry, entry.outcome)
    if was_assigned and entry.agent_id is not None:
        await _finish_assignment(db, entry, at, now)
    elif freed is not None:
        await route_agent(db, freed, now=now)


async def _finish_assignment(db: AsyncSession, entry: RoutingEntry, at: datetime, now: datetime) -> None:
    agent_id = entry.agent_id
    assert agent_id is not None
    await db.execute(
        update(Assignment)
        .where(
            Assignment.interaction_id == entry.interaction_id,
            Assignment.agent_id == agent_id,
            Assignment.released_at.is_(None),
        )
        .values(released_at=at)
        .execution_options(synchronize_session=False)
    )
    state = await _release(db, agent_id, entry.channel_class)
    if state is None:
        return
    if _total_load(state) == 0 and state.presence == Presence.on_contact:
        queue = (await load_queues(db, [entry.queue_id])).get(entry.queue_id)
        acw = queue.after_contact_seconds if queue is not None else 0
        if acw > 0:
            _record_presence(db, state, Presence.after_contact, None, now, None)
            state.after_contact_until = now + timedelta(seconds=acw)
        else:
            _record_presence(db, state, Presence.available, None, now, None)
        await db.flush()
    if state.presence in policy.ROUTABLE:
        await route_agent(db, agent_id, now=now)


async def end_after_contact_work(db: AsyncSession, user_id: int, *, now: datetime | None = None) -> bool:
    """After-contact work ends (the agent is done early, or the time limit passed): available again."""
    now = now or utcnow()
    state = await db.get(AgentState, user_id, with_for_update=True, populate_existing=True)
    if state is None or state.presence != Presence.after_contact:
        return False
    _record_presence(db, state, Presence.available, None, now, None)
    await db.flush()
    await route_agent(db, user_id, now=now)
    return True


# --- the sweep ---------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    expired_offers: int = 0
    reviewed: int = 0
    offers: int = 0
    actions: int = 0
    after_contact_ended: int = 0

    def add(self, other: SweepResult) -> None:
        for name in ("expired_offers", "reviewed", "offers", "actions", "after_contact_ended"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def items(self) -> int:
        return self.expired_offers + self.reviewed + self.after_contact_ended


async def _due_items(db: AsyncSession, now: datetime, batch: int) -> list[tuple[str, int]]:
    """What the sweep has to do now, without taking any lock: (kind, id) pairs."""
    expired = (
        await db.scalars(
            select(RoutingEntry.interaction_id)
            .where(RoutingEntry.state == EntryState.offered, RoutingEntry.offer_expires_at <= now)
            .order_by(RoutingEntry.offer_expires_at)
            .limit(batch)
        )
    ).all()
    acw_done = (
        await db.scalars(
            select(AgentState.user_id)
            .where(AgentState.presence == Presence.after_contact, AgentState.after_contact_until <= now)
            .limit(batch)
        )
    ).all()
    due = (
        await db.scalars(
            select(RoutingEntry.interaction_id)
            .where(RoutingEntry.state == EntryState.waiting, RoutingEntry.review_at <= now)
            .order_by(RoutingEntry.review_at)
            .limit(batch)
        )
    ).all()
    just_available = (
        await db.scalars(
            select(AgentState.user_id)
            .where(
                AgentState.presence.in_([p.value for p in policy.ROUTABLE]),
                AgentState.since <= now - SECOND_LOOK,
                AgentState.since > now - 3 * SECOND_LOOK,
            )
            .limit(batch)
        )
    ).all()
    return (
        [("offer", i) for i in expired]
        + [("acw", u) for u in acw_done]
        + [("review", i) for i in due]
        + [("agent", u) for u in just_available]
    )


async def sweep_item(db: AsyncSession, kind: str, item_id: int, now: datetime) -> SweepResult:
    """One piece of the sweep, re-checked under its lock (another process may have done it already)."""
    result = SweepResult()
    if kind == "agent":
        result.offers += len(await route_agent(db, item_id, now=now))
        return result
    if kind == "acw":
        if await end_after_contact_work(db, item_id, now=now):
            result.after_contact_ended += 1
        return result
    base = select(RoutingEntry).where(RoutingEntry.interaction_id == item_id)
    if kind == "offer":
        base = base.where(RoutingEntry.state == EntryState.offered, RoutingEntry.offer_expires_at <= now)
    else:
        base = base.where(RoutingEntry.state == EntryState.waiting, RoutingEntry.review_at <= now)
    entry = await db.scalar(_skip_locked(db.bind.dialect.name, base).execution_options(populate_existing=True))
    if entry is None:
        return result
    if kind == "offer":
        agent_id = await _give_back(db, entry, OfferOutcome.timeout, now)
        result.expired_offers += 1
        if await route_contact(db, entry.interaction_id, now=now) is not None:
            result.offers += 1
        if agent_id is not None:
            await route_agent(db, agent_id, now=now)
        return result
    result.reviewed += 1
    if await _due_action(db, entry, now):
        result.actions += 1
    elif await route_contact(db, entry.interaction_id, now=now) is not None:
        result.offers += 1
    return result


async def sweep(db: AsyncSession, *, now: datetime | None = None, batch: int = SWEEP_BATCH) -> SweepResult:
    """Expired offers back to routing, after-contact work past its limit ended, waiting contacts whose
    review moment came (bullseye step, sticky end, overflow, maximum wait) routed or acted on; all in the
    caller's transaction (tests, one process). Several processes use ``sweep_in_steps``."""
    now = now or utcnow()
    result = SweepResult()
    for kind, item_id in await _due_items(db, now, batch):
        result.add(await sweep_item(db, kind, item_id, now))
    return result


async def sweep_in_steps(factory: Any, *, now: datetime | None = None, batch: int = SWEEP_BATCH) -> SweepResult:
    """The sweep with one short transaction per item, as every app process runs it: an item never waits
    behind another's locks while holding its own, so concurrent sweeps cannot deadlock, and a failure
    (a lost race) costs one item, which the next round picks up."""
    async with factory() as db, db.begin():
        items = await _due_items(db, now or utcnow(), batch)
    result = SweepResult()
    for kind, item_id in items:
        try:
            async with factory() as db, db.begin():
                # The clock read per item: a long pass must not hand out leases that are already old.
                result.add(await sweep_item(db, kind, item_id, now or utcnow()))
        except Conflict:
            log.info("routing sweep item lost a race", extra={"kind": kind, "id": item_id})
    return result


async def _due_action(db: AsyncSession, entry: RoutingEntry, now: datetime) -> bool:
    queue = (await load_queues(db, [entry.queue_id]))[entry.queue_id]
    if (
        queue.max_wait_seconds is not None
        and queue.max_wait_action != MaxWaitAction.keep
        and now - entry.waiting_since >= timedelta(seconds=queue.max_wait_seconds)
    ):
        await _take_action(db, entry, queue, queue.max_wait_action, now, why="max_wait")
        return True
    if (
        queue.overflow_queue_id is not None
        and queue.overflow_after_seconds is not None
        and now - entry.queue_entered_at >= timedelta(seconds=queue.overflow_after_seconds)
    ):
        await _move(db, entry, queue.overflow_queue_id, now, why="overflow")
        return True
    return False


async def _take_action(
    db: AsyncSession, entry: RoutingEntry, queue: QueueInfo, action: str, now: datetime, *, why: str
) -> str:
    """Apply a queue's maximum-wait or closed action to a waiting contact."""
    if action == MaxWaitAction.overflow and queue.overflow_queue_id is not None:
        await _move(db, entry, queue.overflow_queue_id, now, why=why)
        return action
    work_order_id = None
    if action in (MaxWaitAction.work_order, MaxWaitAction.callback):
        work_order_id = await _work_order_for(db, entry, queue, action, why)
    entry.state = EntryState.ended
    entry.outcome = f"{why}:{action}"
    entry.ended_at = now
    entry.review_at = None
    entry.version += 1
    await db.flush()
    _entry_event(db, entry, why, action=action, work_order_id=work_order_id)
    return action


async def _work_order_for(db: AsyncSession, entry: RoutingEntry, queue: QueueInfo, action: str, why: str) -> int:
    from kefu.interactions import service as interactions
    from kefu.tickets import service as tickets
    from kefu.tickets.schemas import WorkOrderCreate

    system = Principal(user_id=None, username="routing", roles=frozenset({"admin"}), via="system")
    title = (
        f"回电请求 / Callback request ({queue.code})"
        if action == MaxWaitAction.callback
        else f"未接通的联系 / Contact not reached ({queue.code})"
    )
    data = WorkOrderCreate(
        type="request",
        priority="normal",
        title=title,
        description=f"queue={queue.code} reason={why}",
        customer_id=entry.customer_id,
        team_id=await db.scalar(select(RoutingQueue.team_id).where(RoutingQueue.id == queue.row_id)),
        tags=["callback"] if action == MaxWaitAction.callback else ["missed_contact"],
    )
    work_order = await tickets.create_work_order(db, system, data)
    await interactions.link_work_order(db, entry.interaction_id, work_order.id)
    return work_order.id


async def _move(db: AsyncSession, entry: RoutingEntry, queue_id: int, now: datetime, *, why: str) -> None:
    """Move a waiting (or ringing) contact to another queue; its wait clock keeps running."""
    target = (await load_queues(db, [queue_id])).get(queue_id)
    if target is None or not target.active:
        raise Invalid("the target queue does not exist or is not active", {"field": "queue_id"})
    if target.channel_class != entry.channel_class:
        raise Invalid("the target queue serves another channel", {"field": "queue_id"})
    if entry.state == EntryState.offered:
        await _give_back(db, entry, OfferOutcome.cancelled, now, exclude=False)
    previous = entry.queue_id
    entry.queue_id = queue_id
    entry.priority_order = -(target.rule.priority + entry.priority)
    entry.queue_entered_at = now
    entry.review_at = now
    entry.version += 1
    await db.flush()
    _entry_event(db, entry, why, from_queue_id=previous)
    await route_contact(db, entry.interaction_id, now=now)


async def move_contact(
    db: AsyncSession, principal: Principal, interaction_id: int, queue_id: int, *, now: datetime | None = None
) -> RoutingEntry:
    """A supervisor moves a waiting contact to another queue."""
    now = now or utcnow()
    entry = await db.get(RoutingEntry, interaction_id, with_for_update=True, populate_existing=True)
    if entry is None:
        raise NotFound("routing entry")
    if entry.state not in (EntryState.waiting, EntryState.offered):
        raise Conflict("only a waiting contact can be moved", {"state": entry.state})
    if entry.queue_id == queue_id:
        return entry
    await _move(db, entry, queue_id, now, why="moved")
    await audit.record(
        db,
        actor_of(principal),
        "routing.contact.move",
        object_type="interaction",
        object_id=interaction_id,
        details={"queue_id": queue_id},
    )
    return entry


async def set_priority(
    db: AsyncSession, principal: Principal, interaction_id: int, priority: int, *, now: datetime | None = None
) -> RoutingEntry:
    now = now or utcnow()
    entry = await db.get(RoutingEntry, interaction_id, with_for_update=True, populate_existing=True)
    if entry is None:
        raise NotFound("routing entry")
    if entry.state != EntryState.waiting:
        raise Conflict("only a waiting contact's priority can change", {"state": entry.state})
    queue = (await load_queues(db, [entry.queue_id]))[entry.queue_id]
    entry.priority = priority
    entry.priority_order = -(queue.rule.priority + priority)
    entry.version += 1
    await db.flush()
    await route_contact(db, interaction_id, now=now)
    return entry


# --- memberships and skills change -------------------------------------------------------------------
async def refresh_member_ranks(
    db: AsyncSession, *, queue_ids: Iterable[int] | None = None, user_ids: Iterable[int] | None = None
) -> int:
    """Store on the memberships (of the given queues and/or agents; all when neither is given) where each
    agent stands in the queue by skill (QueueMember.rank_level, .proficiency_order), from the queue's
    rule and the agent's skills as this transaction sees them. Every change of either calls it; returns
    how many memberships changed."""
    chosen = []
    if queue_ids is not None:
        chosen.append(QueueMember.queue_id.in_(sorted(set(queue_ids))))
    if user_ids is not None:
        chosen.append(QueueMember.user_id.in_(sorted(set(user_ids))))
    members = (
        await db.execute(
            select(QueueMember.queue_id, QueueMember.user_id, QueueMember.rank_level, QueueMember.proficiency_order)
            .where(*chosen)
            .order_by(QueueMember.queue_id, QueueMember.user_id)
        )
    ).all()
    if not members:
        return 0
    queue_ids = sorted({m.queue_id for m in members})
    # The queues' rows locked: a requirement changed meanwhile (update_queue holds its row) is waited for
    # and then read, so that a skill change and a requirement change made at once cannot leave a rank
    # computed from the old rule (or, the other way round, from the old skills). Exclusive, so that a
    # transaction going on to lock the queue for update (adding members) never waits for another that
    # holds it shared; NO KEY, so that contacts still enter the queue meanwhile (their foreign key).
    await db.execute(select(RoutingQueue.id).where(RoutingQueue.id.in_(queue_ids)).with_for_update(key_share=True))
    rules = await _read_queues(db, queue_ids)
    skills: dict[int, dict[int, int]] = {}
    held = select(AgentSkill.user_id, AgentSkill.skill_id, AgentSkill.proficiency).where(
        AgentSkill.user_id.in_(select(QueueMember.user_id).where(*chosen))
    )
    for user_id, skill_id, proficiency in await db.execute(held):
        skills.setdefault(user_id, {})[skill_id] = proficiency
    changed = []
    for m in members:
        level, order = rules[m.queue_id].rule.member_rank(skills.get(m.user_id, {}))
        if (level, order) != (m.rank_level, m.proficiency_order):
            changed.append({"q": m.queue_id, "u": m.user_id, "level": level, "order": order})
    if changed:
        # Core, not the ORM's bulk update by primary key: a membership removed meanwhile by another
        # transaction is simply not updated (the ORM would raise on the missing row).
        await db.execute(
            update(QueueMember.__table__)
            .where(QueueMember.queue_id == bindparam("q"), QueueMember.user_id == bindparam("u"))
            .values(rank_level=bindparam("level"), proficiency_order=bindparam("order")),
            changed,
        )
    return len(changed)


async def set_memberships(
    db: AsyncSession,
    principal: Principal,
    user_id: int,
    add: Sequence[int] = (),
    remove: Sequence[int] = (),
    *,
    now: datetime | None = None,
) -> list[int]:
    """Move an agent between queues (add to some, remove from others); returns the queues they serve."""
    await _staff_agent(db, user_id)
    known = set((await db.scalars(select(RoutingQueue.id).where(RoutingQueue.id.in_([*add, *remove])))).all())
    missing = sorted((set(add) | set(remove)) - known)
    if missing:
        raise Invalid("unknown queue", {"field": "queues", "queue_ids": missing})
    if set(add) & set(remove):
        raise Invalid("a queue cannot be added and removed at once", {"field": "queues"})
    if remove:
        await db.execute(delete(QueueMember).where(QueueMember.user_id == user_id, QueueMember.queue_id.in_(remove)))
    have = set((await db.scalars(select(QueueMember.queue_id).where(QueueMember.user_id == user_id))).all())
    joined = sorted(set(add) - have)
    for queue_id in joined:
        db.add(QueueMember(queue_id=queue_id, user_id=user_id))
    await db.flush()
    if joined:
        await refresh_member_ranks(db, queue_ids=joined, user_ids=[user_id])
    await audit.record(
        db,
        actor_of(principal),
        "routing.agent.queues",
        object_type="user",
        object_id=user_id,
        details={"add": list(add), "remove": list(remove)},
    )
    await agent_changed(db, user_id, now=now)
    return sorted((await db.scalars(select(QueueMember.queue_id).where(QueueMember.user_id == user_id))).all())


async def agent_changed(db: AsyncSession, user_id: int, *, now: datetime | None = None) -> list[OfferMade]:
    """Skills, languages or queues of an agent changed: routing runs again for them."""
    return await route_agent(db, user_id, now=now)


# --- queue position, live view -----------------------------------------------------------------------
@dataclass
class Position:
    interaction_id: int
    queue_id: int
    state: str
    position: int
    waited_seconds: int
    expected_wait_seconds: int | None


async def average_handle_seconds(db: AsyncSession, queue_id: int, now: datetime, default: int) -> float:
    """The mean handle time of the queue's contacts released in the last hour (the default if none)."""
    since = now - timedelta(hours=1)
    rows = (
        await db.execute(
            select(Assignment.started_at, Assignment.released_at)
            .where(Assignment.queue_id == queue_id, Assignment.released_at >= since)
            .limit(500)
        )
    ).all()
    if not rows:
        return float(default)
    return sum((r.released_at - r.started_at).total_seconds() for r in rows) / len(rows)


async def position_of(db: AsyncSession, interaction_id: int, *, now: datetime | None = None) -> Position:
    now = now or utcnow()
    entry = await db.get(RoutingEntry, interaction_id)
    if entry is None:
        raise NotFound("routing entry")
    if entry.state not in (EntryState.waiting, EntryState.offered):
        return Position(interaction_id, entry.queue_id, entry.state, 0, 0, 0)
    ahead = await db.scalar(
        select(func.count())
        .select_from(RoutingEntry)
        .where(
            RoutingEntry.queue_id == entry.queue_id,
            RoutingEntry.state == EntryState.waiting,
            or_(
                RoutingEntry.priority_order < entry.priority_order,
                and_(
                    RoutingEntry.priority_order == entry.priority_order,
                    or_(
                        RoutingEntry.waiting_since < entry.waiting_since,
                        and_(
                            RoutingEntry.waiting_since == entry.waiting_since,
                            RoutingEntry.interaction_id < entry.interaction_id,
                        ),
                    ),
                ),
            ),
        )
    )
    position = int(ahead or 0) + 1
    serving = await db.scalar(
        select(func.count())
        .select_from(QueueMember)
        .join(AgentState, AgentState.user_id == QueueMember.user_id)
        .where(
            QueueMember.queue_id == entry.queue_id,
            AgentState.presence.in_([Presence.available, Presence.on_contact, Presence.after_contact]),
        )
    )
    default = await db.scalar(select(RoutingQueue.expected_handle_seconds).where(RoutingQueue.id == entry.queue_id))
    aht = await average_handle_seconds(db, entry.queue_id, now, int(default or 180))
    expected = policy.expected_wait_seconds(position, int(serving or 0), aht)
    waited = int((now - entry.waiting_since).total_seconds())
    if entry.state == EntryState.offered:
        position, expected = 0, 0.0
    return Position(
        interaction_id,
        entry.queue_id,
        entry.state,
        position,
        max(0, waited),
        None if expected == float("inf") else int(round(expected)),
    )


__all__ = [
    "CHOOSABLE",
    "BREAK_REASONS",
    "EnqueueResult",
    "Position",
    "QueueInfo",
    "RoutingConfig",
    "SweepResult",
    "accept_offer",
    "agent_changed",
    "agent_state",
    "configure",
    "end_after_contact_work",
    "enqueue",
    "interaction_ended",
    "invalidate_queues",
    "load_queues",
    "move_contact",
    "position_of",
    "refresh_capacity",
    "reject_offer",
    "route_agent",
    "route_contact",
    "set_memberships",
    "set_presence",
    "set_priority",
    "sweep",
    "sweep_in_steps",
    "sweep_item",
]
