"""The routing decisions, as pure functions over plain values.

Who may take a contact, who is best for it, which waiting contact an agent who frees up should take
next: all of that is decided here, with no database and no clock. The database-backed router
(``routing.service``) loads the candidates, asks these functions and claims the winner atomically; the
simulator (``routing.sim``) keeps the same values in memory and asks the very same functions, so what is
simulated is what runs.

Times are POSIX seconds (floats): cheap to compare in the simulator's inner loop, and exact enough.

The rules, in the order they apply:
- an agent takes a contact only if present (available, or already on a contact with capacity left), a
  member of the contact's queue, speaking the queue's language, free of the rest rule, with capacity
  for the contact's channel, and not one who already declined or let this contact's offer ring out;
- skills: the queue requires skills at a minimum proficiency; after configured waits the requirement
  widens (bullseye): proficiencies drop by a step, and finally any member of the queue will do;
- sticky: while ``sticky_until`` has not passed, a contact waits for the customer's last agent only;
- the best agent for a contact: the sticky agent, then the best skill fit (lowest bullseye level the
  agent meets, then highest proficiency on the required skills), then the specialist (fewest skills, to
  keep generalists free for what only they can take), then the least occupied, then the longest idle;
- the next contact for an agent: the sticky one, then the highest priority (queue plus contact), then
  the longest waiting.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class Presence(enum.StrEnum):
    offline = "offline"
    available = "available"
    on_contact = "on_contact"
    after_contact = "after_contact"
    break_ = "break"
    training = "training"


# The states in which routing may hand an agent a (further) contact.
ROUTABLE = frozenset({Presence.available, Presence.on_contact})
# The states that count as a rest for the rest rule when they last long enough.
RESTING = frozenset({Presence.offline, Presence.break_, Presence.training})

# Capacity is counted per class of channel: a call, a chat, an email and a message (SMS, social, web
# form) load an agent differently.
CHANNEL_CLASSES = ("voice", "chat", "email", "message")
CHANNEL_CLASS = {
    "phone": "voice",
    "walk_in": "voice",
    "chat": "chat",
    "email": "email",
    "sms": "message",
    "social": "message",
    "web_form": "message",
}


def channel_class(channel: str) -> str:
    try:
        return CHANNEL_CLASS[channel]
    except KeyError:
        raise ValueError(f"unknown channel {channel!r}") from None


@dataclass(frozen=True, slots=True)
class Capacity:
    """How many contacts of each class an agent holds at once, and what blocks what."""

    voice: int = 1
    chat: int = 3
    email: int = 5
    message: int = 5
    # A call takes the agent's full attention: no chat, email or message is offered during one.
    voice_blocks_others: bool = True
    # An agent in the middle of chats or emails is not rung for a call.
    others_block_voice: bool = False

    def limit(self, cls: str) -> int:
        return int(getattr(self, cls))

    def allows(self, load: Mapping[str, int], cls: str) -> bool:
        """May one more contact of class ``cls`` be added to ``load``?"""
        if load.get(cls, 0) >= self.limit(cls):
            return False
        if cls != "voice" and self.voice_blocks_others and load.get("voice", 0) > 0:
            return False
        others_busy = any(load.get(c, 0) for c in CHANNEL_CLASSES if c != "voice")
        return not (cls == "voice" and self.others_block_voice and others_busy)

    def occupancy(self, load: Mapping[str, int]) -> float:
        """The share of the agent's capacity in use (the largest over classes): 0 idle, 1 full."""
        used = 0.0
        for cls in CHANNEL_CLASSES:
            limit = self.limit(cls)
            if limit > 0:
                used = max(used, load.get(cls, 0) / limit)
        return used


@dataclass(frozen=True, slots=True)
class RestRule:
    """After ``after_seconds`` continuously on line, a break of ``break_seconds`` before the next contact."""

    after_seconds: int = 7200
    break_seconds: int = 900

    def must_rest(self, on_line_since: float | None, now: float) -> bool:
        return self.after_seconds > 0 and on_line_since is not None and now - on_line_since >= self.after_seconds

    def on_line_since_after(self, on_line_since: float | None, rest_started_at: float | None, now: float) -> float:
        """The continuous-work start for an agent coming back at ``now`` from a rest begun at
        ``rest_started_at``: a long enough rest starts the count afresh, a short one does not."""
        if on_line_since is None or rest_started_at is None or now - rest_started_at >= self.break_seconds:
            return now
        return on_line_since


@dataclass(frozen=True, slots=True)
class SkillNeed:
    skill_id: int
    min_proficiency: int = 1


@dataclass(frozen=True, slots=True)
class BullseyeStep:
    """After ``after_seconds`` of waiting, lower every minimum proficiency by ``proficiency_drop``
    (never below 1); with ``any_member`` the skills no longer matter, any member of the queue will do."""

    after_seconds: int
    proficiency_drop: int = 1
    any_member: bool = False


def bullseye_steps(raw: Iterable[Mapping[str, Any]]) -> tuple[BullseyeStep, ...]:
    """The steps as a queue stores them (routing_queues.bullseye, a JSON list)."""
    return tuple(
        BullseyeStep(
            after_seconds=int(step["after_seconds"]),
            proficiency_drop=int(step.get("proficiency_drop", 1)),
            any_member=bool(step.get("any_member", False)),
        )
        for step in raw
    )


@dataclass(frozen=True, slots=True)
class QueueRule:
    id: int
    skills: tuple[SkillNeed, ...] = ()
    language: str | None = None
    priority: int = 0
    bullseye: tuple[BullseyeStep, ...] = ()
    sticky_seconds: int = 0
    # The requirement at each bullseye level, worked out once (decisions ask for it all the time).
    levels: tuple[tuple[SkillNeed, ...] | None, ...] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self._needs(level) for level in range(len(self.bullseye) + 1)))

    def level_at(self, waited: float) -> int:
        """The bullseye level a contact has reached after waiting ``waited`` seconds (0 = as configured).
        A step counts from a hair before its moment: ``(t + s) - t`` can come out just under ``s`` in
        floating point, and a review held exactly at a step's moment must see the step reached."""
        level = 0
        for step in self.bullseye:
            if waited + 1e-6 >= step.after_seconds:
                level += 1
            else:
                break
        return level

    def wait_for_level(self, level: int) -> int:
        """How long a contact waits before agents at ``level`` may take it."""
        return 0 if level == 0 else self.bullseye[level - 1].after_seconds

    def needs_at(self, level: int) -> tuple[SkillNeed, ...] | None:
        """The skill requirement at ``level``; None when any member will do."""
        return self.levels[level]

    def _needs(self, level: int) -> tuple[SkillNeed, ...] | None:
        drop = 0
        for step in self.bullseye[:level]:
            if step.any_member:
                return None
            drop += step.proficiency_drop
        return tuple(SkillNeed(n.skill_id, max(1, n.min_proficiency - drop)) for n in self.skills)

    def first_level(self, skills: Mapping[int, int]) -> int | None:
        """The lowest level at which an agent with ``skills`` meets the requirement (None: never)."""
        for level, needs in enumerate(self.levels):
            if needs is None or all(skills.get(n.skill_id, 0) >= n.min_proficiency for n in needs):
                return level
        return None

    def proficiency(self, skills: Mapping[int, int]) -> int:
        """The agent's summed proficiency on the skills this queue asks for."""
        return sum(skills.get(n.skill_id, 0) for n in self.skills)

    def member_rank(self, skills: Mapping[int, int]) -> tuple[int | None, int]:
        """Where an agent with ``skills`` stands in this queue by skill alone, as stored on the membership
        (rank_level, proficiency_order): the first two terms of the ranking key that do not change
        from contact to contact."""
        return self.first_level(skills), -self.proficiency(skills)


@dataclass(slots=True)
class AgentView:
    id: int
    presence: str = Presence.available
    skills: Mapping[int, int] = field(default_factory=dict)
    languages: frozenset[str] = frozenset()
    queues: frozenset[int] = frozenset()
    capacity: Capacity = field(default_factory=Capacity)
    load: dict[str, int] = field(default_factory=dict)
    # When the agent last had nothing to do (for longest idle first).
    idle_since: float = 0.0
    # Start of the current stretch on line without a long enough rest (for the rest rule).
    on_line_since: float | None = None


@dataclass(slots=True)
class ContactView:
    id: int
    queue_id: int
    channel_class: str
    priority: int = 0
    # When the contact started waiting: its wait (and its bullseye level) counts from here, also across
    # moves and overflows between queues.
    waiting_since: float = 0.0
    sticky_agent_id: int | None = None
    sticky_until: float | None = None
    # Agents who declined this contact or let its offer ring out: not offered it again.
    excluded_agents: frozenset[int] = frozenset()

    def sticky_for(self, now: float) -> int | None:
        if self.sticky_agent_id is not None and self.sticky_until is not None and now < self.sticky_until:
            return self.sticky_agent_id
        return None


def language_ok(queue: QueueRule, agent: AgentView) -> bool:
    return queue.language is None or queue.language in agent.languages


def agent_can_take_now(agent: AgentView, cls: str, rest: RestRule, now: float) -> bool:
    """Present, rested enough and with capacity for one more contact of class ``cls``."""
    return (
        agent.presence in ROUTABLE
        and not rest.must_rest(agent.on_line_since, now)
        and agent.capacity.allows(agent.load, cls)
    )


def fit_level(contact: ContactView, queue: QueueRule, agent: AgentView, now: float) -> int | None:
    """The bullseye level at which ``agent`` may take ``contact`` now, or None if they may not (skills,
    language, membership, sticky reservation, exclusion). Presence and capacity are checked apart."""
    if contact.queue_id not in agent.queues or agent.id in contact.excluded_agents:
        return None
    sticky = contact.sticky_for(now)
    if sticky is not None and sticky != agent.id:
        return None
    if not language_ok(queue, agent):
        return None
    level = queue.first_level(agent.skills)
    if level is None:
        return None
    if sticky == agent.id:
        return level  # the customer's own agent takes it at any level
    if level > queue.level_at(now - contact.waiting_since):
        return None
    return level


def _agent_key(contact: ContactView, queue: QueueRule, agent: AgentView, level: int, now: float) -> tuple:
    return (
        0 if contact.sticky_for(now) == agent.id else 1,
        level,
        -queue.proficiency(agent.skills),
        len(agent.skills),
        agent.capacity.occupancy(agent.load),
        agent.idle_since,
        agent.id,
    )


def rank_agents(
    contact: ContactView, queue: QueueRule, agents: Iterable[AgentView], rest: RestRule, now: float
) -> list[AgentView]:
    """The agents who may take ``contact`` now, best first."""
    ranked = []
    for agent in agents:
        if not agent_can_take_now(agent, contact.channel_class, rest, now):
            continue
        level = fit_level(contact, queue, agent, now)
        if level is not None:
            ranked.append((_agent_key(contact, queue, agent, level, now), agent))
    ranked.sort(key=lambda pair: pair[0])
    return [agent for _, agent in ranked]


def best_agent(
    contact: ContactView, queue: QueueRule, agents: Iterable[AgentView], rest: RestRule, now: float
) -> AgentView | None:
    best = None
    best_key = None
    for agent in agents:
        if not agent_can_take_now(agent, contact.channel_class, rest, now):
            continue
        level = fit_level(contact, queue, agent, now)
        if level is None:
            continue
        key = _agent_key(contact, queue, agent, level, now)
        if best_key is None or key < best_key:
            best, best_key = agent, key
    return best


def _contact_key(contact: ContactView, queue: QueueRule, agent: AgentView, now: float) -> tuple:
    return (
        0 if contact.sticky_for(now) == agent.id else 1,
        -(queue.priority + contact.priority),
        contact.waiting_since,
        contact.id,
    )


def rank_contacts(
    agent: AgentView,
    contacts: Iterable[ContactView],
    queues: Mapping[int, QueueRule],
    rest: RestRule,
    now: float,
) -> list[ContactView]:
    """The waiting contacts ``agent`` may take now, the one to take first at the head."""
    ranked = []
    for contact in contacts:
        queue = queues.get(contact.queue_id)
        if queue is None or not agent_can_take_now(agent, contact.channel_class, rest, now):
            continue
        if fit_level(contact, queue, agent, now) is not None:
            ranked.append((_contact_key(contact, queue, agent, now), contact))
    ranked.sort(key=lambda pair: pair[0])
    return [contact for _, contact in ranked]


def best_contact(
    agent: AgentView,
    contacts: Iterable[ContactView],
    queues: Mapping[int, QueueRule],
    rest: RestRule,
    now: float,
) -> ContactView | None:
    best = None
    best_key = None
    for contact in contacts:
        queue = queues.get(contact.queue_id)
        if queue is None or not agent_can_take_now(agent, contact.channel_class, rest, now):
            continue
        if fit_level(contact, queue, agent, now) is None:
            continue
        key = _contact_key(contact, queue, agent, now)
        if best_key is None or key < best_key:
            best, best_key = contact, key
    return best


def next_review_at(contact: ContactView, queue: QueueRule, now: float, *later: float | None) -> float | None:
    """When routing must look at a waiting contact again even if nothing else happens: its next bullseye
    step, the end of its sticky reservation, or any of ``later`` (overflow, maximum wait)."""
    moments = [t for t in later if t is not None and t > now]
    for step in queue.bullseye[queue.level_at(now - contact.waiting_since) :]:
        moments.append(contact.waiting_since + step.after_seconds)
    if contact.sticky_until is not None and contact.sticky_until > now:
        moments.append(contact.sticky_until)
    return min(moments) if moments else None


def expected_wait_seconds(position: int, agents_serving: int, average_handle_seconds: float) -> float:
    """Expected wait for the contact at ``position`` (1 = next): the contacts ahead of it, and itself,
    are served ``agents_serving`` at a time, each taking the average handle time."""
    if position <= 0:
        return 0.0
    if agents_serving <= 0:
        return float("inf")
    return position * average_handle_seconds / agents_serving


__all__ = [
    "CHANNEL_CLASS",
    "CHANNEL_CLASSES",
    "RESTING",
    "ROUTABLE",
    "AgentView",
    "BullseyeStep",
    "Capacity",
    "ContactView",
    "Presence",
    "QueueRule",
    "RestRule",
    "SkillNeed",
    "agent_can_take_now",
    "best_agent",
    "best_contact",
    "channel_class",
    "expected_wait_seconds",
    "fit_level",
    "language_ok",
    "next_review_at",
    "rank_agents",
    "rank_contacts",
]
