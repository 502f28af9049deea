"""A discrete-event simulation of the contact centre that drives the real routing decisions.

The simulator keeps agents and waiting contacts in memory as ``policy.AgentView`` / ``policy.ContactView``
and asks the functions of ``routing.policy`` exactly where the database router does:

- a contact arrives: the best agent among those who can take work now (``policy.best_agent``); if there is
  none it waits;
- an agent frees up (a contact ends, after-contact work ends, the agent logs in, a rest ends): the next
  waiting contact of the queues they belong to (``policy.best_contact``), repeated while capacity is left;
- at ``policy.next_review_at`` (a bullseye step, the end of a sticky reservation) a waiting contact is
  looked at again on its own;
- a contact whose patience runs out abandons.

Offers are accepted (after ``ring_seconds``, default 0). An index of the agents who can take work per
queue keeps an arrival from scanning every agent, and the candidate lists handed to the decision
functions leave out only candidates that provably cannot win (see ``_agent_candidates`` and
``_contact_candidates``; ``simulate(..., prune=False)`` hands over everyone and decides the same, which
a test checks). Virtual time is float seconds from 0.

Strategies compare routing rules on the same arrivals, patience and work content (each drawn from its own
random stream, so every strategy meets the same contacts):
- ``skills``: ``policy.best_agent`` / ``policy.best_contact``, what kefu runs;
- ``random``: uniformly random among the agents (contacts) that ``policy.fit_level`` and
  ``policy.agent_can_take_now`` allow;
- ``longest_idle``: the same eligibility, the longest idle agent and the longest waiting contact,
  proficiency ignored.

Model details (what the router leaves to the world):
- handle time = the contact's work content (exponential with mean 1, or 1 for ``fixed``) × the queue's
  mean handle time × the factor for the serving agent's proficiency on the queue's skills (their mean,
  rounded; 0 when the agent lacks them, as bullseye's "any member" allows), so proficient agents are faster;
- after-contact work keeps the contact's capacity slot; an agent with only wrap-up left is
  ``after_contact`` (not routable);
- a shift's end: the agent takes nothing new, finishes what they hold, then logs off;
- rest rule: an agent due a rest takes it as soon as they hold nothing, for ``break_seconds``;
- sticky: with ``customers`` > 0 a queue's contacts come from that many customers; a returning customer
  whose last agent is logged in is reserved for that agent for the queue's ``sticky_seconds``.

Statistics count the contacts that arrive in the window [warm-up, duration); arrivals go on after the
window until every one of those has been answered or has abandoned, so the last ones meet the same load
(``max_drain_seconds`` bounds that; contacts still waiting then are reported as ``unresolved``).

Definitions (the same as ``routing.erlang``): service level = answered within the queue's threshold ÷
offered (abandoned contacts count as not served in time, whenever they left); ASA = mean wait of answered
contacts; abandonment = abandoned ÷ offered; average abandon time = mean wait of abandoned contacts;
occupancy = time busy ÷ time staffed (available, on a contact or in after-contact work; breaks and
offline excluded) within the window, busy counting the share of capacity in use
(``Capacity.occupancy``); a queue's occupancy is that of the agents who are its members.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kefu.routing import policy
from kefu.routing.policy import (
    AgentView,
    BullseyeStep,
    Capacity,
    ContactView,
    Presence,
    QueueRule,
    RestRule,
    SkillNeed,
)

STRATEGIES = ("skills", "random", "longest_idle")
HANDLE_DISTRIBUTIONS = ("exponential", "fixed")
DEFINITIONS = {
    "service_level": "answered within the queue's threshold / offered (abandoned contacts count as missed)",
    "asa_seconds": "mean wait of answered contacts",
    "abandonment": "abandoned / offered",
    "average_abandon_seconds": "mean wait of abandoned contacts",
    "occupancy": "busy time / staffed time (breaks and offline excluded); for a queue: its member agents",
    "offered": "contacts arriving in [warmup_seconds, duration_seconds)",
}


class ScenarioError(ValueError):
    """A scenario that cannot be simulated; the message names the field."""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    rule: QueueRule
    name: str
    channel: str = "phone"
    service_level_seconds: float = 20.0
    # Arrivals: a constant rate, or one rate per interval (the last one holds after the list), or
    # explicit arrival times (optionally with a customer each), for deterministic scenarios.
    arrival_rate_per_hour: float = 0.0
    interval_seconds: float = 0.0
    rates_per_hour: tuple[float, ...] = ()
    arrivals_at: tuple[tuple[float, int | None], ...] = ()
    handle_seconds: float = 180.0
    handle_distribution: str = "exponential"
    # Handle-time factor by the agent's (rounded mean) proficiency on the queue's skills; missing: 1.
    proficiency_factors: Mapping[int, float] = field(default_factory=dict)
    patience_seconds: float | None = None
    acw_seconds: float = 0.0
    customers: int = 0

    @property
    def channel_class(self) -> str:
        return policy.channel_class(self.channel)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    id: int
    skills: Mapping[int, int]
    languages: frozenset[str]
    queues: frozenset[int]
    capacity: Capacity = field(default_factory=Capacity)
    # (login, logoff) virtual times; None = logged in for the whole run.
    shifts: tuple[tuple[float, float], ...] | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class Scenario:
    queues: tuple[QueueSpec, ...]
    agents: tuple[AgentSpec, ...]
    duration_seconds: float
    warmup_seconds: float = 0.0
    rest: RestRule = field(default_factory=lambda: RestRule(after_seconds=0))
    ring_seconds: float = 0.0
    seed: int = 1
    strategy: str = "skills"
    max_drain_seconds: float = 86_400.0
    name: str = "scenario"


# --- the engine ----------------------------------------------------------------------------------------

# Event kinds, in the order they are handled when simultaneous (ends before arrivals, so a contact
# arriving the moment an agent frees up finds that agent).
_LOGOFF, _HANDLE_END, _ACW_END, _REST_END, _LOGIN, _ACCEPT, _ABANDON, _REVIEW, _REST_DUE, _ARRIVAL = range(10)

_WAITING, _RINGING, _ANSWERED, _ABANDONED = range(4)
_STAFFED = frozenset({Presence.available, Presence.on_contact, Presence.after_contact})


class _Contact:
    __slots__ = ("view", "spec", "arrived", "work", "measured", "state", "review_at", "customer", "agent", "handle")

    def __init__(self, view: ContactView, spec: QueueSpec, work: float, measured: bool, customer: int | None) -> None:
        self.view = view
        self.spec = spec
        self.arrived = view.waiting_since
        self.work = work
        self.measured = measured
        self.state = _WAITING
        self.review_at: float | None = None
        self.customer = customer
        self.agent: _Agent | None = None
        self.handle = 0.0


class _Agent:
    __slots__ = (
        "view",
        "spec",
        "logged_in",
        "leaving",
        "resting",
        "rest_started_at",
        "rest_due_at",
        "logged_off_at",
        "active",
        "wrapping",
        "last_t",
        "staffed",
        "busy",
        "is_staffed",
        "share",
        "profile",
        "group",
    )

    def __init__(self, spec: AgentSpec) -> None:
        self.view = AgentView(
            id=spec.id,
            presence=Presence.offline,
            skills=dict(spec.skills),
            languages=spec.languages,
            queues=spec.queues,
            capacity=spec.capacity,
            load={},
        )
        self.spec = spec
        self.logged_in = False
        self.leaving = False
        self.resting = False
        self.rest_started_at: float | None = None
        self.rest_due_at: float | None = None
        self.logged_off_at: float | None = None
        self.active = 0
        self.wrapping = 0
        self.last_t = 0.0
        self.staffed = 0.0
        self.busy = 0.0
        self.is_staffed = False
        self.share = 0.0
        # Agents alike in everything routing looks at but idle time and id share a profile; with the
        # same load they share a group (see _agent_candidates).
        self.profile = 0  # set by _Run: the same number for alike agents
        self.group: tuple = ()


class _QueueStats:
    __slots__ = (
        "offered",
        "answered",
        "abandoned",
        "within",
        "wait_answered",
        "wait_abandoned",
        "handled_seconds",
        "offered_work",
    )

    def __init__(self) -> None:
        self.offered = 0
        self.answered = 0
        self.abandoned = 0
        self.within = 0
        self.wait_answered = 0.0
        self.wait_abandoned = 0.0
        self.handled_seconds = 0.0
        # The work the offered contacts bring at the queue's mean handle time (before proficiency).
        self.offered_work = 0.0


class _Run:
    def __init__(
        self, scenario: Scenario, strategy: str, prune: bool = True, trace: list[tuple[float, int, int]] | None = None
    ) -> None:
        # Every offer as (time, contact id, agent id), when asked for (tests compare it with the router).
        self.trace = trace
        if strategy not in STRATEGIES:
            raise ScenarioError(f"strategy: must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        self.sc = scenario
        self.strategy = strategy
        self.rest = scenario.rest
        self.ring = scenario.ring_seconds
        self.window = (scenario.warmup_seconds, scenario.duration_seconds)
        self.queues = {q.rule.id: q for q in scenario.queues}
        self.rules = {q.rule.id: q.rule for q in scenario.queues}
        self.agents = {a.id: _Agent(a) for a in scenario.agents}
        profiles: dict[tuple, int] = {}
        for agent in self.agents.values():
            spec = agent.spec
            alike = (tuple(sorted(spec.skills.items())), spec.languages, spec.queues, spec.capacity)
            agent.profile = profiles.setdefault(alike, len(profiles))
        self.waiting: dict[int, dict[int, ContactView]] = {qid: {} for qid in self.queues}
        self.takers: dict[int, dict[int, AgentView]] = {qid: {} for qid in self.queues}
        # Waiting contacts reserved (sticky) for an agent, by agent: see _contact_candidates.
        self.sticky_waiting: dict[int, dict[int, ContactView]] = {}
        self.prune = prune
        self.contacts: dict[int, _Contact] = {}
        self.stats = {qid: _QueueStats() for qid in self.queues}
        self.last_agent: dict[tuple[int, int], int] = {}
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.next_contact_id = 1
        self.unresolved_measured = 0
        self.now = 0.0
        seed = scenario.seed
        # One stream per queue for what the world does (arrivals, patience, work, customers), one for
        # the strategy's own coin: every strategy meets the same contacts.
        self.world = {qid: random.Random(f"{seed}:world:{qid}") for qid in self.queues}
        self.coin = random.Random(f"{seed}:strategy")
        self.factors = {
            (a.id, qid): self._factor(a, q)
            for a in scenario.agents
            for qid, q in self.queues.items()
            if qid in a.queues
        }

    @staticmethod
    def _factor(agent: AgentSpec, queue: QueueSpec) -> float:
        needs = queue.rule.skills
        if not needs or not queue.proficiency_factors:
            return 1.0
        level = round(queue.rule.proficiency(agent.skills) / len(needs))
        return queue.proficiency_factors.get(level, 1.0)

    # -- events

    def _push(self, at: float, kind: int, obj: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, kind, self.seq, obj))

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        for agent in self.agents.values():
            shifts = agent.spec.shifts
            if shifts is None:
                self._push(0.0, _LOGIN, agent)
            else:
                for login, logoff in shifts:
                    self._push(login, _LOGIN, agent)
                    self._push(logoff, _LOGOFF, agent)
        for qid, queue in self.queues.items():
            if queue.arrivals_at:
                for at, customer in queue.arrivals_at:
                    self._push(at, _ARRIVAL, (qid, customer))
            else:
                self._schedule_arrival(qid, 0.0)
        end_of_window = self.window[1]
        hard_stop = end_of_window + self.sc.max_drain_seconds
        heap = self.heap
        pop = heapq.heappop
        arrivals = 0
        while heap:
            at, kind, _, obj = heap[0]
            if at >= end_of_window and (self.unresolved_measured == 0 or at > hard_stop):
                break
            pop(heap)
            self.now = at
            if kind == _ARRIVAL:
                arrivals += 1
                self._arrive(obj)
            elif kind == _HANDLE_END:
                self._handle_end(obj)
            elif kind == _ACW_END:
                self._acw_end(obj)
            elif kind == _ABANDON:
                self._abandon(obj)
            elif kind == _REVIEW:
                self._review(obj)
            elif kind == _ACCEPT:
                self._answer(obj)
            elif kind == _LOGIN:
                self._login(obj)
            elif kind == _LOGOFF:
                self._logoff(obj)
            elif kind == _REST_END:
                self._rest_end(obj)
            elif kind == _REST_DUE:
                self._rest_due(obj)
        self.now = max(self.now, end_of_window)
        for agent in self.agents.values():
            self._account(agent)
        return self._report(arrivals, time.perf_counter() - started)

    def _schedule_arrival(self, qid: int, now: float) -> None:
        queue = self.queues[qid]
        rng = self.world[qid]
        if not queue.rates_per_hour:
            rate = queue.arrival_rate_per_hour / 3600.0
            if rate > 0:
                self._push(now + rng.expovariate(rate), _ARRIVAL, (qid, None))
            return
        # Piecewise-constant rates: draw in the current interval; past its end, start afresh at the
        # boundary with the next rate (exact, the exponential being memoryless).
        width = queue.interval_seconds
        rates = queue.rates_per_hour
        t = now
        while True:
            index = int(t // width)
            rate = rates[min(index, len(rates) - 1)] / 3600.0
            boundary = (index + 1) * width if index < len(rates) - 1 else math.inf
            if rate <= 0:
                if boundary == math.inf:
                    return
                t = boundary
                continue
            candidate = t + rng.expovariate(rate)
            if candidate < boundary:
                self._push(candidate, _ARRIVAL, (qid, None))
                return
            t = boundary

    # -- contacts

    def _arrive(self, payload: tuple[int, int | None]) -> None:
        qid, customer = payload
        now = self.now
        queue = self.queues[qid]
        rng = self.world[qid]
        if not queue.arrivals_at:
            self._schedule_arrival(qid, now)
            if queue.customers > 0:
                customer = rng.randrange(queue.customers)
        work = rng.expovariate(1.0) if queue.handle_distribution == "exponential" else 1.0
        patience = rng.expovariate(1.0 / queue.patience_seconds) if queue.patience_seconds else None
        view = ContactView(id=self.next_contact_id, queue_id=qid, channel_class=queue.channel_class, waiting_since=now)
        self.next_contact_id += 1
        if customer is not None and queue.rule.sticky_seconds > 0:
            last = self.last_agent.get((qid, customer))
            if last is not None and self.agents[last].logged_in:
                view.sticky_agent_id = last
                view.sticky_until = now + queue.rule.sticky_seconds
        measured = self.window[0] <= now < self.window[1]
        contact = _Contact(view, queue, work, measured, customer)
        self.contacts[view.id] = contact
        if measured:
            self.stats[qid].offered += 1
            self.stats[qid].offered_work += work * queue.handle_seconds
            self.unresolved_measured += 1
        if patience is not None:
            self._push(now + patience, _ABANDON, contact)
        agent = self._choose_agent(contact)
        if agent is not None:
            self._assign(agent, contact)
        else:
            self.waiting[qid][view.id] = view
            if view.sticky_agent_id is not None:
                self.sticky_waiting.setdefault(view.sticky_agent_id, {})[view.id] = view
            self._schedule_review(contact)

    def _unqueue(self, view: ContactView) -> None:
        del self.waiting[view.queue_id][view.id]
        if view.sticky_agent_id is not None:
            self.sticky_waiting[view.sticky_agent_id].pop(view.id, None)

    def _schedule_review(self, contact: _Contact) -> None:
        view, rule = contact.view, contact.spec.rule
        at = policy.next_review_at(view, rule, self.now)
        # In floating point (waiting_since + step) - waiting_since can fall a hair short of the step,
        # so at the moment given the level is not reached yet: look one representable instant later.
        while at is not None and (again := policy.next_review_at(view, rule, at)) is not None and again <= at:
            at = math.nextafter(at, math.inf)
        contact.review_at = at
        if at is not None:
            self._push(at, _REVIEW, contact)

    def _review(self, contact: _Contact) -> None:
        if contact.state != _WAITING or contact.review_at != self.now:
            return
        agent = self._choose_agent(contact)
        if agent is not None:
            self._unqueue(contact.view)
            self._assign(agent, contact)
        else:
            self._schedule_review(contact)

    def _abandon(self, contact: _Contact) -> None:
        if contact.state == _WAITING:
            self._unqueue(contact.view)
        elif contact.state == _RINGING:
            agent = contact.agent
            assert agent is not None
            agent.active -= 1
            self._unload(agent, contact)
            self._freed(agent)
        else:
            return
        contact.state = _ABANDONED
        del self.contacts[contact.view.id]
        if contact.measured:
            stats = self.stats[contact.view.queue_id]
            stats.abandoned += 1
            stats.wait_abandoned += self.now - contact.arrived
            self.unresolved_measured -= 1

    def _assign(self, agent: _Agent, contact: _Contact) -> None:
        if self.trace is not None:
            self.trace.append((self.now, contact.view.id, agent.view.id))
        self._account(agent)
        load = agent.view.load
        cls = contact.view.channel_class
        load[cls] = load.get(cls, 0) + 1
        agent.active += 1
        contact.agent = agent
        self._settle(agent)
        if self.ring > 0:
            contact.state = _RINGING
            self._push(self.now + self.ring, _ACCEPT, contact)
        else:
            self._answer(contact)

    def _answer(self, contact: _Contact) -> None:
        if contact.state == _ABANDONED:
            return
        now = self.now
        agent = contact.agent
        assert agent is not None
        contact.state = _ANSWERED
        qid = contact.view.queue_id
        if contact.measured:
            stats = self.stats[qid]
            wait = now - contact.arrived
            stats.answered += 1
            stats.wait_answered += wait
            if wait <= contact.spec.service_level_seconds:
                stats.within += 1
            self.unresolved_measured -= 1
        if contact.customer is not None:
            self.last_agent[(qid, contact.customer)] = agent.view.id
        spec = contact.spec
        contact.handle = contact.work * spec.handle_seconds * self.factors.get((agent.view.id, qid), 1.0)
        self._push(now + contact.handle, _HANDLE_END, contact)

    def _handle_end(self, contact: _Contact) -> None:
        agent = contact.agent
        assert agent is not None
        acw = contact.spec.acw_seconds
        if acw > 0:
            self._account(agent)
            agent.active -= 1
            agent.wrapping += 1
            self._settle(agent)
            self._push(self.now + acw, _ACW_END, contact)
        else:
            agent.active -= 1
            self._finish(agent, contact)

    def _acw_end(self, contact: _Contact) -> None:
        agent = contact.agent
        assert agent is not None
        agent.wrapping -= 1
        self._finish(agent, contact)

    def _finish(self, agent: _Agent, contact: _Contact) -> None:
        self._unload(agent, contact)
        lo, hi = self.window
        start = self.now - contact.handle - contact.spec.acw_seconds
        overlap = min(self.now, hi) - max(start, lo)
        if overlap > 0:
            self.stats[contact.view.queue_id].handled_seconds += overlap
        del self.contacts[contact.view.id]
        self._freed(agent)

    def _unload(self, agent: _Agent, contact: _Contact) -> None:
        """Free the contact's capacity slot (the caller has already taken it off active or wrapping)."""
        self._account(agent)
        agent.view.load[contact.view.channel_class] -= 1
        if agent.active == 0 and agent.wrapping == 0:
            agent.view.idle_since = self.now
        self._settle(agent)

    # -- agents

    def _freed(self, agent: _Agent) -> None:
        """The agent has room again: log off or rest if due, else take waiting contacts while capacity lasts."""
        if not agent.logged_in:
            return
        empty = agent.active == 0 and agent.wrapping == 0
        if agent.leaving:
            if empty:
                self._go_offline(agent)
            return
        if agent.resting:
            return
        if empty and self.rest.must_rest(agent.view.on_line_since, self.now):
            self._start_rest(agent)
            return
        view = agent.view
        takers = self.takers
        # Cheap first: the index knows whether the agent has room for any of their queues' channels.
        while any(view.id in takers[qid] for qid in view.queues if qid in takers):
            contact = self._choose_contact(agent)
            if contact is None:
                return
            self._unqueue(contact.view)
            self._assign(agent, contact)

    def _login(self, agent: _Agent) -> None:
        if agent.logged_in:
            agent.leaving = False
            self._settle(agent)
            self._freed(agent)
            return
        self._account(agent)
        now = self.now
        agent.logged_in = True
        agent.leaving = False
        view = agent.view
        view.on_line_since = self.rest.on_line_since_after(view.on_line_since, agent.logged_off_at, now)
        view.idle_since = now
        self._settle(agent)
        self._schedule_rest_due(agent)
        self._freed(agent)

    def _logoff(self, agent: _Agent) -> None:
        if not agent.logged_in:
            return
        if agent.active == 0 and agent.wrapping == 0:
            self._go_offline(agent)
        else:
            agent.leaving = True
            self._settle(agent)

    def _go_offline(self, agent: _Agent) -> None:
        self._account(agent)
        agent.logged_in = False
        agent.leaving = False
        agent.resting = False
        agent.rest_due_at = None
        agent.logged_off_at = self.now
        self._settle(agent)

    def _schedule_rest_due(self, agent: _Agent) -> None:
        after = self.rest.after_seconds
        since = agent.view.on_line_since
        if after > 0 and since is not None:
            agent.rest_due_at = since + after
            self._push(agent.rest_due_at, _REST_DUE, agent)

    def _rest_due(self, agent: _Agent) -> None:
        if agent.rest_due_at != self.now or not agent.logged_in or agent.resting or agent.leaving:
            return
        if agent.active == 0 and agent.wrapping == 0:
            self._start_rest(agent)
        # else: _freed starts the rest once the agent holds nothing

    def _start_rest(self, agent: _Agent) -> None:
        self._account(agent)
        agent.resting = True
        agent.rest_started_at = self.now
        agent.rest_due_at = None
        self._settle(agent)
        self._push(self.now + self.rest.break_seconds, _REST_END, agent)

    def _rest_end(self, agent: _Agent) -> None:
        if not agent.resting or not agent.logged_in:
            return
        self._account(agent)
        agent.resting = False
        view = agent.view
        view.on_line_since = self.rest.on_line_since_after(view.on_line_since, agent.rest_started_at, self.now)
        view.idle_since = self.now
        self._settle(agent)
        self._schedule_rest_due(agent)
        self._freed(agent)

    def _settle(self, agent: _Agent) -> None:
        """Set presence from the agent's state and keep the per-queue index of who can take work."""
        view = agent.view
        if not agent.logged_in:
            view.presence = Presence.offline
        elif agent.resting:
            view.presence = Presence.break_
        elif agent.active > 0:
            view.presence = Presence.on_contact
        elif agent.wrapping > 0:
            view.presence = Presence.after_contact
        else:
            view.presence = Presence.available
        agent.is_staffed = view.presence in _STAFFED
        agent.share = view.capacity.occupancy(view.load)
        load = view.load
        agent.group = (agent.profile, *(load.get(cls, 0) for cls in policy.CHANNEL_CLASSES))
        open_for_work = view.presence in policy.ROUTABLE and not agent.leaving
        for qid in view.queues:
            takers = self.takers.get(qid)
            if takers is None:
                continue
            if open_for_work and view.capacity.allows(view.load, self.queues[qid].channel_class):
                takers[view.id] = view
            else:
                takers.pop(view.id, None)

    def _account(self, agent: _Agent) -> None:
        lo, hi = self.window
        start = max(agent.last_t, lo)
        end = min(self.now, hi)
        if end > start and agent.is_staffed:
            agent.staffed += end - start
            agent.busy += (end - start) * agent.share
        agent.last_t = self.now

    # -- the routing decisions

    def _agent_candidates(self, contact: _Contact) -> Iterable[AgentView]:
        """The agents who can take work in the contact's queue that could be the one chosen.

        Unless ``prune`` is off, of the agents alike in skills, languages, queues, capacity and load only
        the longest idle (then lowest id) one that may take work now is kept, plus the contact's sticky
        or excluded agents as they are: for any other two alike agents every term of the ranking is equal
        up to idle time and id, so the kept one ranks first. Random choice needs them all."""
        takers = self.takers[contact.view.queue_id]
        if not self.prune or self.strategy == "random" or len(takers) < 2:
            return takers.values()
        view = contact.view
        special = view.excluded_agents
        sticky = view.sticky_agent_id
        check_rest = self.rest.after_seconds > 0
        cls = view.channel_class
        now = self.now
        kept: dict[tuple, AgentView] = {}
        extra = []
        agents = self.agents
        for candidate in takers.values():
            if candidate.id == sticky or candidate.id in special:
                extra.append(candidate)
                continue
            if check_rest and not policy.agent_can_take_now(candidate, cls, self.rest, now):
                continue
            group = agents[candidate.id].group
            current = kept.get(group)
            if current is None or (candidate.idle_since, candidate.id) < (current.idle_since, current.id):
                kept[group] = candidate
        if extra:
            return [*kept.values(), *extra]
        return kept.values()

    def _choose_agent(self, contact: _Contact) -> _Agent | None:
        view = contact.view
        rule = contact.spec.rule
        candidates = self._agent_candidates(contact)
        if not candidates:
            return None
        now = self.now
        if self.strategy == "skills":
            chosen = policy.best_agent(view, rule, candidates, self.rest, now)
        else:
            cls = view.channel_class
            eligible = [
                a
                for a in candidates
                if policy.agent_can_take_now(a, cls, self.rest, now)
                and policy.fit_level(view, rule, a, now) is not None
            ]
            if not eligible:
                return None
            if self.strategy == "random":
                chosen = eligible[self.coin.randrange(len(eligible))]
            else:
                chosen = min(eligible, key=lambda a: (a.idle_since, a.id))
        return None if chosen is None else self.agents[chosen.id]

    def _contact_candidates(self, agent: _Agent) -> list[ContactView]:
        """The waiting contacts of the agent's queues that could be the one to take.

        Unless ``prune`` is off, each queue's contacts are read in arrival order only up to the first plain
        one (no live sticky reservation, nobody excluded), plus any contact reserved for this agent.
        Nothing is lost: of two plain contacts in one queue the earlier has waited longer, so it has
        reached at least the same bullseye level (it fits whenever the later one fits) and ranks first
        on waiting time; every other term of the ranking is equal. Random choice needs them all."""
        now = self.now
        found: list[ContactView] = []
        prune = self.prune and self.strategy != "random"
        for qid in agent.view.queues:
            waiting = self.waiting.get(qid)
            if not waiting:
                continue
            if not prune:
                found.extend(waiting.values())
                continue
            for contact in waiting.values():
                found.append(contact)
                if not contact.excluded_agents and (contact.sticky_until is None or contact.sticky_until <= now):
                    break
        if prune:
            reserved = self.sticky_waiting.get(agent.view.id)
            if reserved:
                found.extend(reserved.values())
        return found

    def _choose_contact(self, agent: _Agent) -> _Contact | None:
        view = agent.view
        candidates = self._contact_candidates(agent)
        if not candidates:
            return None
        now = self.now
        if self.strategy == "skills":
            chosen = policy.best_contact(view, candidates, self.rules, self.rest, now)
        else:
            eligible = [
                c
                for c in candidates
                if policy.agent_can_take_now(view, c.channel_class, self.rest, now)
                and policy.fit_level(c, self.rules[c.queue_id], view, now) is not None
            ]
            if not eligible:
                return None
            if self.strategy == "random":
                chosen = eligible[self.coin.randrange(len(eligible))]
            else:
                chosen = min(eligible, key=lambda c: (c.waiting_since, c.id))
        return None if chosen is None else self.contacts[chosen.id]

    # -- the report

    def _report(self, arrivals: int, seconds: float) -> dict[str, Any]:
        member_busy: dict[int, float] = dict.fromkeys(self.queues, 0.0)
        member_staffed: dict[int, float] = dict.fromkeys(self.queues, 0.0)
        for agent in self.agents.values():
            for qid in agent.view.queues:
                if qid in member_busy:
                    member_busy[qid] += agent.busy
                    member_staffed[qid] += agent.staffed
        queues = {}
        total = _QueueStats()
        for qid, queue in self.queues.items():
            s = self.stats[qid]
            for name in _QueueStats.__slots__:
                setattr(total, name, getattr(total, name) + getattr(s, name))
            queues[queue.name] = _figures(s, member_busy[qid], member_staffed[qid])
            queues[queue.name]["service_level_seconds"] = queue.service_level_seconds
        busy = sum(a.busy for a in self.agents.values())
        staffed = sum(a.staffed for a in self.agents.values())
        overall = _figures(total, busy, staffed)
        overall["unresolved"] = self.unresolved_measured
        return {
            "scenario": self.sc.name,
            "strategy": self.strategy,
            "seed": self.sc.seed,
            "window_seconds": [self.window[0], self.window[1]],
            "simulated_contacts": arrivals,
            "wall_seconds": round(seconds, 3),
            "contacts_per_second": round(arrivals / seconds) if seconds > 0 else None,
            "overall": overall,
            "queues": queues,
            "definitions": DEFINITIONS,
        }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _figures(s: _QueueStats, busy: float, staffed: float) -> dict[str, Any]:
    return {
        "offered": s.offered,
        "answered": s.answered,
        "abandoned": s.abandoned,
        "answered_within_threshold": s.within,
        "service_level": _ratio(s.within, s.offered),
        "asa_seconds": _ratio(s.wait_answered, s.answered),
        "abandonment": _ratio(s.abandoned, s.offered),
        "average_abandon_seconds": _ratio(s.wait_abandoned, s.abandoned),
        "handled_seconds": round(s.handled_seconds, 3),
        "offered_work_seconds": round(s.offered_work, 3),
        "occupancy": _ratio(busy, staffed),
    }


def simulate(
    scenario: Scenario,
    strategy: str | None = None,
    *,
    prune: bool = True,
    trace: list[tuple[float, int, int]] | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` once with ``strategy`` (default: the scenario's) and return the JSON-ready report.
    ``prune=False`` hands every waiting contact to the decision (slower, same result: for tests);
    ``trace`` (a list) receives every offer as (time, contact id, agent id)."""
    return _Run(scenario, strategy or scenario.strategy, prune, trace).run()


def compare_strategies(scenario: Scenario, strategies: Sequence[str] = STRATEGIES) -> dict[str, Any]:
    """The same scenario (same contacts) under each strategy: a summary table and the full reports."""
    reports = {s: simulate(scenario, s) for s in strategies}
    table = {
        s: {k: r["overall"][k] for k in ("service_level", "asa_seconds", "abandonment", "occupancy", "offered")}
        for s, r in reports.items()
    }
    return {"scenario": scenario.name, "seed": scenario.seed, "table": table, "reports": reports}


# --- presets -------------------------------------------------------------------------------------------


def erlang_scenario(
    *,
    occupancy: float = 0.85,
    agents: int = 20,
    aht: float = 180.0,
    contacts: int = 100_000,
    seed: int = 1,
    patience: float | None = None,
    threshold: float = 20.0,
    warmup_contacts: int | None = None,
) -> Scenario:
    """One queue, one skill, Poisson arrivals at ``occupancy`` × ``agents`` / ``aht``, exponential handle
    times, exponential patience (or none): the Erlang C (A) model. About ``contacts`` are measured after a
    warm-up of ``warmup_contacts`` (default: a tenth, at least 1,000)."""
    if not occupancy > 0:
        raise ScenarioError(f"occupancy: must be positive, not {occupancy!r}")
    if patience is None and occupancy >= 1:
        raise ScenarioError("occupancy: must be below 1 without abandonment (the queue would grow for ever)")
    if agents < 1:
        raise ScenarioError(f"agents: must be at least 1, not {agents!r}")
    if not aht > 0:
        raise ScenarioError(f"aht: must be positive, not {aht!r}")
    if contacts < 1:
        raise ScenarioError(f"contacts: must be at least 1, not {contacts!r}")
    if patience is not None and not patience > 0:
        raise ScenarioError(f"patience: must be positive, not {patience!r}")
    if threshold < 0:
        raise ScenarioError(f"threshold: must not be negative, not {threshold!r}")
    rate = occupancy * agents / aht  # per second
    warm = warmup_contacts if warmup_contacts is not None else max(1000, contacts // 10)
    queue = QueueSpec(
        rule=QueueRule(id=1, skills=(SkillNeed(1, 1),)),
        name="erlang",
        service_level_seconds=threshold,
        arrival_rate_per_hour=rate * 3600.0,
        handle_seconds=aht,
        patience_seconds=patience,
    )
    staff = tuple(
        AgentSpec(id=i, skills={1: 3}, languages=frozenset(), queues=frozenset({1})) for i in range(1, agents + 1)
    )
    return Scenario(
        queues=(queue,),
        agents=staff,
        warmup_seconds=warm / rate,
        duration_seconds=(warm + contacts) / rate,
        seed=seed,
        name="erlang",
    )


MULTISKILL_LANGUAGES = ("zh", "en", "ja", "ko")
MULTISKILL_PRODUCTS = ("billing", "devices", "network")
MULTISKILL_FACTORS = {0: 2.0, 1: 1.6, 2: 1.3, 3: 1.0, 4: 0.8, 5: 0.65}


def multiskill_scenario(
    *, seed: int = 1, hours: float = 8.0, agents: int = 80, load: float = 1.1, patience: float | None = 300.0
) -> Scenario:
    """4 languages × 3 product lines = 12 phone queues. Each agent speaks 1-2 languages and knows 1-3
    products at proficiency 1-5 (drawn by demand: more agents for the busier languages and products); a
    queue asks for its product at proficiency 2, widening to 1 after 15 s and to any member after 60 s;
    handle times (mean 240 s at proficiency 3) scale with proficiency (``MULTISKILL_FACTORS``). ``load``
    scales the arrival rates: 1.0 offers ``0.8 × agents`` Erlangs at proficiency-3 handle times. The
    staff is drawn from ``seed``, so a seed fixes the whole scenario."""
    if hours <= 0:
        raise ScenarioError(f"hours: must be positive, not {hours!r}")
    if agents < 1:
        raise ScenarioError(f"agents: must be at least 1, not {agents!r}")
    if load <= 0:
        raise ScenarioError(f"load: must be positive, not {load!r}")
    rng = random.Random(f"{seed}:multiskill")
    language_weight = {"zh": 0.45, "en": 0.3, "ja": 0.15, "ko": 0.1}
    product_weight = {"billing": 0.45, "devices": 0.35, "network": 0.2}
    aht = 240.0
    bullseye = (BullseyeStep(15), BullseyeStep(60, any_member=True))
    queues = []
    qid = 0
    for lang in MULTISKILL_LANGUAGES:
        for pi, product in enumerate(MULTISKILL_PRODUCTS, start=1):
            qid += 1
            share = language_weight[lang] * product_weight[product]
            queues.append(
                QueueSpec(
                    rule=QueueRule(id=qid, skills=(SkillNeed(pi, 2),), language=lang, bullseye=bullseye),
                    name=f"{lang}-{product}",
                    arrival_rate_per_hour=load * share * agents * 0.8 * 3600.0 / aht,
                    handle_seconds=aht,
                    proficiency_factors=MULTISKILL_FACTORS,
                    patience_seconds=patience,
                )
            )
    staff = []
    for aid in range(1, agents + 1):
        langs = {rng.choices(MULTISKILL_LANGUAGES, weights=[language_weight[x] for x in MULTISKILL_LANGUAGES])[0]}
        if rng.random() < 0.4:
            langs.add(rng.choices(MULTISKILL_LANGUAGES, weights=[language_weight[x] for x in MULTISKILL_LANGUAGES])[0])
        count = rng.choices((1, 2, 3), weights=(0.3, 0.4, 0.3))[0]
        products = set()
        while len(products) < count:  # staffed by demand: more agents know the busier products
            products.add(rng.choices((1, 2, 3), weights=[product_weight[p] for p in MULTISKILL_PRODUCTS])[0])
        skills = {p: rng.randint(1, 5) for p in products}
        members = frozenset(
            q.rule.id for q in queues if q.rule.language in langs and q.rule.skills[0].skill_id in skills
        )
        staff.append(AgentSpec(id=aid, skills=skills, languages=frozenset(langs), queues=members))
    return Scenario(
        queues=tuple(queues),
        agents=tuple(staff),
        warmup_seconds=1800.0,
        duration_seconds=1800.0 + hours * 3600.0,
        seed=seed,
        name="multiskill",
    )


# --- scenario files ------------------------------------------------------------------------------------

_MISSING = object()


class _Reader:
    """Reads one JSON object, naming the field in every complaint (``queues[2].skills[0].skill``)."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{path or 'scenario'}: must be an object")
        self.data = data
        self.path = path
        self.known: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.known.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                raise ScenarioError(f"{self.where(key)}: is required")
            return default
        return self.data[key]

    def number(
        self, key: str, default: Any = _MISSING, *, minimum: float = 0.0, positive: bool = False
    ) -> float | None:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        return _number(value, self.where(key), minimum=minimum, positive=positive)

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> int:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        return _integer(value, self.where(key), minimum=minimum)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.where(key)}: must be true or false")
        return value

    def text(self, key: str, default: Any = _MISSING, *, choices: Sequence[str] | None = None) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise ScenarioError(f"{self.where(key)}: must be a string")
        if choices is not None and value not in choices:
            raise ScenarioError(f"{self.where(key)}: must be one of {', '.join(choices)}, not {value!r}")
        return value

    def items(self, key: str, default: Any = _MISSING) -> list[Any]:
        value = self.raw(key, default)
        if not isinstance(value, list):
            raise ScenarioError(f"{self.where(key)}: must be a list")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.known)
        if unknown:
            raise ScenarioError(f"{self.where(unknown[0])}: unknown field")


def _number(value: Any, where: str, *, minimum: float = 0.0, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f"{where}: must be a number")
    if positive and not value > 0:
        raise ScenarioError(f"{where}: must be positive, not {value!r}")
    if value < minimum:
        raise ScenarioError(f"{where}: must be at least {minimum:g}, not {value!r}")
    return float(value)


def _integer(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(f"{where}: must be an integer")
    if minimum is not None and value < minimum:
        raise ScenarioError(f"{where}: must be at least {minimum}, not {value!r}")
    return value


def _queue_from(data: Any, path: str) -> QueueSpec:
    r = _Reader(data, path)
    qid = r.integer("id", minimum=1)
    skills = []
    for i, item in enumerate(r.items("skills", [])):
        s = _Reader(item, f"{r.where('skills')}[{i}]")
        skills.append(SkillNeed(s.integer("skill", minimum=1), s.integer("min_proficiency", 1, minimum=1)))
        s.done()
    steps = []
    for i, item in enumerate(r.items("bullseye", [])):
        s = _Reader(item, f"{r.where('bullseye')}[{i}]")
        after = s.integer("after_seconds", minimum=0)
        if steps and after <= steps[-1].after_seconds:
            raise ScenarioError(f"{s.where('after_seconds')}: must be later than the step before")
        steps.append(BullseyeStep(after, s.integer("proficiency_drop", 1, minimum=0), s.boolean("any_member", False)))
        s.done()
    language = r.raw("language", None)
    if language is not None and not isinstance(language, str):
        raise ScenarioError(f"{r.where('language')}: must be a string")
    channel = r.text("channel", "phone", choices=tuple(policy.CHANNEL_CLASS))
    rule = QueueRule(
        id=qid,
        skills=tuple(skills),
        language=language,
        priority=r.integer("priority", 0),
        bullseye=tuple(steps),
        sticky_seconds=r.integer("sticky_seconds", 0, minimum=0),
    )
    rate = r.number("arrival_rate_per_hour", None)
    rates = r.raw("rates_per_hour", None)
    explicit = r.raw("arrivals_at", None)
    sources = (("arrival_rate_per_hour", rate), ("rates_per_hour", rates), ("arrivals_at", explicit))
    given = [name for name, value in sources if value is not None]
    if len(given) != 1:
        raise ScenarioError(
            f"{path}: give exactly one of arrival_rate_per_hour, rates_per_hour, arrivals_at"
            + (f" (got {', '.join(given)})" if given else "")
        )
    interval = 0.0
    rate_list: tuple[float, ...] = ()
    if rates is not None:
        if not isinstance(rates, list) or not rates:
            raise ScenarioError(f"{r.where('rates_per_hour')}: must be a non-empty list of numbers")
        rate_list = tuple(_number(v, f"{r.where('rates_per_hour')}[{i}]") for i, v in enumerate(rates))
        interval = r.number("interval_seconds", positive=True)
    arrivals: list[tuple[float, int | None]] = []
    if explicit is not None:
        if not isinstance(explicit, list):
            raise ScenarioError(f"{r.where('arrivals_at')}: must be a list")
        for i, item in enumerate(explicit):
            where = f"{r.where('arrivals_at')}[{i}]"
            if isinstance(item, dict):
                a = _Reader(item, where)
                arrivals.append((a.number("at"), a.integer("customer", None, minimum=0)))
                a.done()
            else:
                arrivals.append((_number(item, where), None))
    patience = r.number("patience_seconds", None, positive=True)
    factors: dict[int, float] = {}
    raw_factors = r.raw("proficiency_factors", {})
    if not isinstance(raw_factors, dict):
        raise ScenarioError(f"{r.where('proficiency_factors')}: must be an object of proficiency -> factor")
    for key, value in raw_factors.items():
        where = f"{r.where('proficiency_factors')}.{key}"
        if not str(key).isdigit() or int(key) > 10:
            raise ScenarioError(f"{where}: the key must be a proficiency 0-10")
        factors[int(key)] = _number(value, where, positive=True)
    spec = QueueSpec(
        rule=rule,
        name=r.text("name", f"queue-{qid}"),
        channel=channel,
        service_level_seconds=r.number("service_level_seconds", 20.0),
        arrival_rate_per_hour=rate or 0.0,
        interval_seconds=interval,
        rates_per_hour=rate_list,
        arrivals_at=tuple(sorted(arrivals, key=lambda pair: pair[0])),
        handle_seconds=r.number("handle_seconds", positive=True),
        handle_distribution=r.text("handle_distribution", "exponential", choices=HANDLE_DISTRIBUTIONS),
        proficiency_factors=factors,
        patience_seconds=patience,
        acw_seconds=r.number("acw_seconds", 0.0),
        customers=r.integer("customers", 0, minimum=0),
    )
    r.known.add("interval_seconds")
    r.done()
    return spec


def _agents_from(data: Any, path: str, queue_ids: set[int]) -> list[AgentSpec]:
    r = _Reader(data, path)
    first = r.integer("id", minimum=1)
    count = r.integer("count", 1, minimum=1)
    raw_skills = r.raw("skills", {})
    if not isinstance(raw_skills, dict):
        raise ScenarioError(f"{r.where('skills')}: must be an object of skill id -> proficiency")
    skills = {}
    for key, value in raw_skills.items():
        where = f"{r.where('skills')}.{key}"
        if not str(key).isdigit():
            raise ScenarioError(f"{where}: the key must be a skill id")
        skills[int(key)] = _integer(value, where, minimum=1)
    languages = r.items("languages", [])
    for i, lang in enumerate(languages):
        if not isinstance(lang, str):
            raise ScenarioError(f"{r.where('languages')}[{i}]: must be a string")
    queues = r.items("queues")
    for i, qid in enumerate(queues):
        _integer(qid, f"{r.where('queues')}[{i}]")
        if qid not in queue_ids:
            raise ScenarioError(f"{r.where('queues')}[{i}]: no queue with id {qid}")
    raw_capacity = r.raw("capacity", {})
    c = _Reader(raw_capacity, r.where("capacity"))
    defaults = Capacity()
    capacity = Capacity(
        voice=c.integer("voice", defaults.voice, minimum=0),
        chat=c.integer("chat", defaults.chat, minimum=0),
        email=c.integer("email", defaults.email, minimum=0),
        message=c.integer("message", defaults.message, minimum=0),
        voice_blocks_others=c.boolean("voice_blocks_others", defaults.voice_blocks_others),
        others_block_voice=c.boolean("others_block_voice", defaults.others_block_voice),
    )
    c.done()
    shifts = None
    raw_shifts = r.raw("shifts", None)
    if raw_shifts is not None:
        if not isinstance(raw_shifts, list):
            raise ScenarioError(f"{r.where('shifts')}: must be a list of [login, logoff] pairs")
        shifts = []
        for i, pair in enumerate(raw_shifts):
            where = f"{r.where('shifts')}[{i}]"
            if not isinstance(pair, list) or len(pair) != 2:
                raise ScenarioError(f"{where}: must be a [login, logoff] pair of seconds")
            login, logoff = _number(pair[0], where), _number(pair[1], where)
            if logoff <= login:
                raise ScenarioError(f"{where}: the logoff must come after the login")
            if shifts and login < shifts[-1][1]:
                raise ScenarioError(f"{where}: overlaps the shift before")
            shifts.append((login, logoff))
    name = r.text("name", "")
    r.done()
    return [
        AgentSpec(
            id=first + n,
            skills=skills,
            languages=frozenset(languages),
            queues=frozenset(queues),
            capacity=capacity,
            shifts=None if shifts is None else tuple(shifts),
            name=name,
        )
        for n in range(count)
    ]


def scenario_from_dict(data: Any) -> Scenario:
    """Build and check a scenario from its JSON form; ``ScenarioError`` names the first bad field.

    The form: ``{"duration_seconds", "warmup_seconds", "seed", "strategy", "ring_seconds",
    "max_drain_seconds", "name", "rest": {"after_seconds", "break_seconds"}, "queues": [...],
    "agents": [...]}``. A queue: ``id``, ``name``, ``channel``, ``language``, ``priority``, ``skills``
    ([{"skill", "min_proficiency"}]), ``bullseye`` ([{"after_seconds", "proficiency_drop", "any_member"}]),
    ``sticky_seconds``, ``customers``, ``service_level_seconds``, one of ``arrival_rate_per_hour`` /
    ``rates_per_hour`` (with ``interval_seconds``) / ``arrivals_at`` (seconds, or {"at", "customer"}),
    ``handle_seconds``, ``handle_distribution`` (exponential, fixed), ``proficiency_factors``
    ({"3": 1.0, ...}), ``patience_seconds`` (null: nobody abandons), ``acw_seconds``. An agent: ``id``,
    ``count`` (that many alike, consecutive ids), ``name``, ``skills`` ({"skill id": proficiency}),
    ``languages``, ``queues`` (queue ids), ``capacity``, ``shifts`` ([[login, logoff], ...]; omitted:
    always logged in)."""
    r = _Reader(data, "")
    raw_queues = r.items("queues")
    if not raw_queues:
        raise ScenarioError("queues: must list at least one queue")
    queues = [_queue_from(item, f"queues[{i}]") for i, item in enumerate(raw_queues)]
    seen: set[int] = set()
    for i, q in enumerate(queues):
        if q.rule.id in seen:
            raise ScenarioError(f"queues[{i}].id: {q.rule.id} is used twice")
        seen.add(q.rule.id)
    raw_agents = r.items("agents")
    agents: list[AgentSpec] = []
    for i, item in enumerate(raw_agents):
        agents.extend(_agents_from(item, f"agents[{i}]", seen))
    agent_ids: set[int] = set()
    for agent in agents:
        if agent.id in agent_ids:
            raise ScenarioError(f"agents: agent id {agent.id} is used twice")
        agent_ids.add(agent.id)
    duration = r.number("duration_seconds", positive=True)
    warmup = r.number("warmup_seconds", 0.0)
    if warmup >= duration:
        raise ScenarioError("warmup_seconds: must be shorter than duration_seconds")
    rest = RestRule(after_seconds=0)
    raw_rest = r.raw("rest", None)
    if raw_rest is not None:
        rr = _Reader(raw_rest, "rest")
        rest = RestRule(rr.integer("after_seconds", minimum=0), rr.integer("break_seconds", minimum=0))
        rr.done()
    scenario = Scenario(
        queues=tuple(queues),
        agents=tuple(agents),
        duration_seconds=duration,
        warmup_seconds=warmup,
        rest=rest,
        ring_seconds=r.number("ring_seconds", 0.0),
        seed=r.integer("seed", 1),
        strategy=r.text("strategy", "skills", choices=STRATEGIES),
        max_drain_seconds=r.number("max_drain_seconds", 86_400.0),
        name=r.text("name", "scenario"),
    )
    r.done()
    return scenario


def with_seed(scenario: Scenario, seed: int) -> Scenario:
    """The same scenario with another random seed."""
    return dataclasses.replace(scenario, seed=seed)


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario JSON file (see ``scenario_from_dict``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return scenario_from_dict(data)


__all__ = [
    "DEFINITIONS",
    "STRATEGIES",
    "AgentSpec",
    "QueueSpec",
    "Scenario",
    "ScenarioError",
    "compare_strategies",
    "erlang_check",
    "erlang_scenario",
    "load_scenario",
    "multiskill_scenario",
    "scenario_from_dict",
    "simulate",
    "with_seed",
]


# --- the check against queueing theory -------------------------------------------------------------------


def erlang_check(
    *,
    occupancy: float,
    agents: int,
    aht: float,
    contacts: int,
    replications: int = 10,
    seed: int = 1,
    threshold: float = 20.0,
    patience: float | None = None,
) -> dict[str, Any]:
    """Simulate the Erlang C (with ``patience``: Erlang A) queue in ``replications`` independent runs of
    ``contacts`` measured contacts each (seeds ``seed``, ``seed + 1``, ...) and set the result beside theory.

    Near full load the mean wait of a finite run swings with the load the run happened to draw (at
    occupancy 0.95 a run of 20,000 contacts misses ASA by about 20 % either way, a consequence of the
    queue's long memory, not of the router), so besides the plain mean over replications (``simulated``)
    the report gives a control-variate estimate (``adjusted``): each replication's figure regressed on
    its realised offered load per agent, read off at the nominal occupancy (the load's expectation is an
    input, not a result of theory). Standard errors come from the spread over replications."""
    import numpy as np

    from kefu.routing import erlang

    if replications < 3:
        raise ScenarioError(f"replications: must be at least 3, not {replications!r}")
    rate = occupancy * agents / aht
    theory = (
        erlang.erlang_c_figures(agents, rate, aht, threshold)
        if patience is None
        else erlang.erlang_a_figures(agents, rate, aht, patience, threshold)
    )
    keys = ("service_level", "asa_seconds", "abandonment", "average_abandon_seconds", "occupancy")
    rows = []
    loads = []
    simulated = 0
    wall = 0.0
    for r in range(replications):
        scenario = erlang_scenario(
            occupancy=occupancy,
            agents=agents,
            aht=aht,
            contacts=contacts,
            seed=seed + r,
            patience=patience,
            threshold=threshold,
        )
        report = simulate(scenario)
        overall = report["overall"]
        rows.append([overall[k] or 0.0 for k in keys])
        window = scenario.duration_seconds - scenario.warmup_seconds
        loads.append(overall["offered_work_seconds"] / window / agents - occupancy)
        simulated += report["simulated_contacts"]
        wall += report["wall_seconds"]
    values = np.asarray(rows)
    design = np.column_stack([np.ones(replications), np.asarray(loads)])
    plain = {}
    adjusted = {}
    for i, key in enumerate(keys):
        column = values[:, i]
        plain[key] = float(column.mean())
        plain[f"{key}_se"] = float(column.std(ddof=1) / math.sqrt(replications))
        coef, *_ = np.linalg.lstsq(design, column, rcond=None)
        residual = column - design @ coef
        # Standard error of the intercept of a one-regressor least-squares fit.
        dof = max(replications - 2, 1)
        sigma2 = float(residual @ residual) / dof
        cov = sigma2 * np.linalg.inv(design.T @ design)
        adjusted[key] = float(coef[0])
        adjusted[f"{key}_se"] = float(math.sqrt(cov[0, 0]))
    expected = theory.as_dict()

    def differences(sim: dict[str, float]) -> dict[str, float]:
        return {
            "service_level_points": 100.0 * (sim["service_level"] - expected["service_level"]),
            "asa_relative": sim["asa_seconds"] / expected["asa_seconds"] - 1.0 if expected["asa_seconds"] else 0.0,
            "abandonment_points": 100.0 * (sim["abandonment"] - expected["abandonment"]),
        }

    return {
        "model": "erlang_c" if patience is None else "erlang_a",
        "occupancy": occupancy,
        "agents": agents,
        "aht_seconds": aht,
        "threshold_seconds": threshold,
        "patience_seconds": patience,
        "replications": replications,
        "contacts_per_replication": contacts,
        "theory": {k: expected[k] for k in ("probability_of_wait", *keys)},
        "simulated": plain,
        "adjusted": adjusted,
        "difference_simulated": differences(plain),
        "difference_adjusted": differences(adjusted),
        "simulated_contacts": simulated,
        "contacts_per_second": round(simulated / wall) if wall > 0 else None,
    }
