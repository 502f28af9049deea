"""Routing tables: queues and their skill requirements, capacity profiles, agent presence with its
history, the contacts waiting in routing and every offer made.

The correctness rules across processes live in the shape of these tables:
- ``routing_entries`` holds one row per contact in routing; an offer is a lease on that row
  (``offer_agent_id`` and ``offer_expires_at``), taken by a compare-and-set UPDATE, so two processes can
  never offer one contact twice, and a lease left behind by a dead process simply expires.
- ``agent_states`` holds each agent's load per channel class next to their limits; a contact is added
  only by an UPDATE whose WHERE re-checks presence and capacity, so no agent is ever over capacity.
- Every lock is taken in the same order (entry, then agent), so concurrent decisions cannot deadlock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, TimestampMixin, UTCDateTime, utcnow


class MaxWaitAction:
    """What happens to a contact that waited the queue's maximum, or arrived while it is closed."""

    work_order = "work_order"  # a work order is opened for it, the customer is told we will come back
    callback = "callback"  # a callback is requested (a work order of type request, marked callback)
    voicemail = "voicemail"  # the channel plays the voicemail prompt (the PBX records it)
    overflow = "overflow"  # moves on to the overflow queue
    keep = "keep"  # keeps waiting (chat and email queues)

    ALL = ("work_order", "callback", "voicemail", "overflow", "keep")


class EntryState:
    waiting = "waiting"
    offered = "offered"
    assigned = "assigned"  # an agent accepted; the entry stays until the contact ends
    ended = "ended"  # left routing: handled, abandoned, timed out to another action
    ALL = ("waiting", "offered", "assigned", "ended")


class OfferOutcome:
    accepted = "accepted"
    rejected = "rejected"
    timeout = "timeout"
    cancelled = "cancelled"  # the customer hung up, a supervisor moved the contact
    ALL = ("accepted", "rejected", "timeout", "cancelled")


class CapacityProfile(IdMixin, TimestampMixin, Base):
    """How many contacts of each channel class an agent holds at once; set on a team (its members'
    default) or on one agent (overrides the team's)."""

    __tablename__ = "routing_capacity_profiles"

    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    voice: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    chat: Mapped[int] = mapped_column(Integer, default=3, nullable=False)
    email: Mapped[int] = mapped_column(Integer, default=5, nullable=False)
    message: Mapped[int] = mapped_column(Integer, default=5, nullable=False)
    voice_blocks_others: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    others_block_voice: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)

    __table_args__ = (
        CheckConstraint("voice BETWEEN 0 AND 1", name="voice_range"),
        CheckConstraint("chat BETWEEN 0 AND 20 AND email BETWEEN 0 AND 50 AND message BETWEEN 0 AND 50", name="limits"),
    )


class CapacityAssignment(Base):
    """Which profile applies to a team's members or to one agent (exactly one of team/user)."""

    __tablename__ = "routing_capacity_assignments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    profile_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("routing_capacity_profiles.id", ondelete="CASCADE"), nullable=False
    )
    team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("teams.id", ondelete="CASCADE"), unique=True)
    user_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), unique=True)

    __table_args__ = (CheckConstraint("(team_id IS NULL) <> (user_id IS NULL)", name="one_owner"),)


class RoutingQueue(IdMixin, TimestampMixin, Base):
    __tablename__ = "routing_queues"

    code: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    language: Mapped[str | None] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # Service-level target: sl_target_percent of contacts answered within sl_threshold_seconds.
    sl_target_percent: Mapped[int] = mapped_column(Integer, default=80, nullable=False)
    sl_threshold_seconds: Mapped[int] = mapped_column(Integer, default=20, nullable=False)
    # [{"after_seconds": 30, "proficiency_drop": 1, "any_member": false}, ...] in increasing order.
    bullseye: Mapped[list[dict[str, Any]]] = mapped_column(JsonDoc, default=list, nullable=False)
    sticky_seconds: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    offer_timeout_seconds: Mapped[int] = mapped_column(Integer, default=20, nullable=False)
    after_contact_seconds: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # Average handle time assumed for expected-wait estimates until real contacts give one.
    expected_handle_seconds: Mapped[int] = mapped_column(Integer, default=180, nullable=False)
    overflow_queue_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("routing_queues.id", ondelete="SET NULL"))
    overflow_after_seconds: Mapped[int | None] = mapped_column(Integer)
    max_wait_seconds: Mapped[int | None] = mapped_column(Integer)
    max_wait_action: Mapped[str] = mapped_column(String(16), default=MaxWaitAction.keep, nullable=False)
    # Opening hours: a business calendar (None: always open) and what to do when closed.
    calendar_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("business_calendars.id", ondelete="SET NULL"))
    closed_action: Mapped[str] = mapped_column(String(16), default=MaxWaitAction.keep, nullable=False)
    team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("teams.id", ondelete="SET NULL"))
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)


class QueueSkill(Base):
    __tablename__ = "routing_queue_skills"

    queue_id: Mapped[int] = mapped_column(BigId, ForeignKey("routing_queues.id", ondelete="CASCADE"), primary_key=True)
    skill_id: Mapped[int] = mapped_column(BigId, ForeignKey("skills.id", ondelete="CASCADE"), primary_key=True)
    min_proficiency: Mapped[int] = mapped_column(Integer, default=1, nullable=False)

    __table_args__ = (CheckConstraint("min_proficiency BETWEEN 1 AND 5", name="proficiency_range"),)


class QueueMember(Base):
    """The agents who serve a queue (supervisors move agents between queues by changing these)."""

    __tablename__ = "routing_queue_members"

    queue_id: Mapped[int] = mapped_column(BigId, ForeignKey("routing_queues.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    # Where the agent stands in this queue's order by skill, kept by service.refresh_member_ranks whenever
    # the agent's skills or the queue's requirement change: the first bullseye level at which the agent
    # is eligible (policy.QueueRule.first_level; None: never) and minus the agent's summed proficiency on
    # the queue's skills (so that ascending order puts the most proficient first, as priority_order
    # does). With the index below, a contact's ranking reads the queue's best members first and sorts
    # only the first groups by load and idle time, instead of ranking every member on every arrival.
    # Eligibility is always decided on the agents' skills themselves: these only order.
    rank_level: Mapped[int | None] = mapped_column(Integer)
    proficiency_order: Mapped[int] = mapped_column(Integer, default=0, server_default="0", nullable=False)

    __table_args__ = (
        Index("ix_routing_queue_members_user", "user_id"),
        Index("ix_routing_queue_members_rank", "queue_id", "rank_level", "proficiency_order"),
    )


class AgentState(Base):
    """One row per agent who has ever signed in to routing: presence, load and limits, rest-rule clock."""

    __tablename__ = "agent_states"

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    presence: Mapped[str] = mapped_column(String(16), default="offline", nullable=False)
    reason: Mapped[str | None] = mapped_column(String(64))
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    # End of after-contact work (the time limit); the sweep makes the agent available then.
    after_contact_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    idle_since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    on_line_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rest_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    missed_offers: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    load_voice: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    load_chat: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    load_email: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    load_message: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    cap_voice: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    cap_chat: Mapped[int] = mapped_column(Integer, default=3, nullable=False)
    cap_email: Mapped[int] = mapped_column(Integer, default=5, nullable=False)
    cap_message: Mapped[int] = mapped_column(Integer, default=5, nullable=False)
    voice_blocks_others: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    others_block_voice: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    version: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # How many skills the agent has, kept by database triggers on agent_skills (migration 0012); the
    # ranking query orders by it.
    skill_count: Mapped[int] = mapped_column(Integer, server_default="0", nullable=False)

    __table_args__ = (
        CheckConstraint(
            "load_voice >= 0 AND load_chat >= 0 AND load_email >= 0 AND load_message >= 0", name="load_not_negative"
        ),
        Index("ix_agent_states_presence", "presence"),
    )


class AgentStateChange(IdMixin, Base):
    """Append-only: every presence change with its time (time in state, occupancy, adherence later)."""

    __tablename__ = "agent_state_changes"

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    presence: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(String(64))
    previous: Mapped[str | None] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    changed_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (Index("ix_agent_state_changes_user_at", "user_id", "at"),)


class RoutingEntry(Base):
    """A contact in routing. The offer lease lives on this row (see the module docstring)."""

    __tablename__ = "routing_entries"

    interaction_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("interactions.id", ondelete="CASCADE"), primary_key=True
    )
    queue_id: Mapped[int] = mapped_column(BigId, ForeignKey("routing_queues.id", ondelete="RESTRICT"), nullable=False)
    channel_class: Mapped[str] = mapped_column(String(16), nullable=False)
    state: Mapped[str] = mapped_column(String(16), default=EntryState.waiting, nullable=False)
    priority: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # Minus the effective priority (queue's plus the contact's): lower is served first, so the
    # next-contact query is one ascending index scan on both databases.
    priority_order: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    customer_id: Mapped[int | None] = mapped_column(BigId)
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    # The wait clock: kept across moves and overflows, so the bullseye and the SL count the whole wait.
    waiting_since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    queue_entered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    sticky_agent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    sticky_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    offer_agent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    offer_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    agent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    excluded_agents: Mapped[list[int]] = mapped_column(JsonDoc, default=list, nullable=False)
    offers_made: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # When routing must look at this waiting contact again on its own (bullseye step, sticky end,
    # overflow, maximum wait); the sweep picks up entries whose moment has come.
    review_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(32))
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=0, nullable=False)

    __table_args__ = (
        # The next contact for an agent: waiting in a queue, highest priority, longest waiting.
        Index("ix_routing_entries_next", "queue_id", "state", "priority_order", "waiting_since"),
        Index("ix_routing_entries_sticky", "sticky_agent_id", "state"),
        Index("ix_routing_entries_queue_entered", "queue_id", "entered_at"),
        Index("ix_routing_entries_review", "state", "review_at"),
        Index("ix_routing_entries_offer_expiry", "state", "offer_expires_at"),
        Index("ix_routing_entries_agent", "agent_id", "state"),
        # The live view's "today": entries still open, or ended since midnight.
        Index("ix_routing_entries_state_ended", "state", "ended_at"),
    )


class Offer(IdMixin, Base):
    """Append-only record of every offer (an offer row is decided once: accepted, rejected, timeout,
    cancelled). The live lease is on the entry; this is the history reports and tests read."""

    __tablename__ = "routing_offers"

    interaction_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("interactions.id", ondelete="CASCADE"), nullable=False
    )
    queue_id: Mapped[int] = mapped_column(BigId, ForeignKey("routing_queues.id", ondelete="CASCADE"), nullable=False)
    agent_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    offered_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    outcome: Mapped[str | None] = mapped_column(String(16))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The bullseye level the agent was taken at (0 = full requirement) and whether by stickiness.
    level: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    sticky: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)

    __table_args__ = (
        Index("ix_routing_offers_interaction", "interaction_id"),
        Index("ix_routing_offers_agent", "agent_id", "offered_at"),
    )


class Assignment(IdMixin, Base):
    """Append-only: an accepted contact held by an agent from ``started_at`` until ``released_at``.
    Capacity checks and tests read the intervals; reports read handle times from interactions."""

    __tablename__ = "routing_assignments"

    interaction_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("interactions.id", ondelete="CASCADE"), nullable=False
    )
    agent_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    queue_id: Mapped[int] = mapped_column(BigId, ForeignKey("routing_queues.id", ondelete="CASCADE"), nullable=False)
    channel_class: Mapped[str] = mapped_column(String(16), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_routing_assignments_agent", "agent_id", "released_at"),
        Index("ix_routing_assignments_queue", "queue_id", "released_at"),
    )


__all__ = [
    "AgentState",
    "AgentStateChange",
    "Assignment",
    "CapacityAssignment",
    "CapacityProfile",
    "EntryState",
    "MaxWaitAction",
    "Offer",
    "OfferOutcome",
    "QueueMember",
    "QueueSkill",
    "RoutingEntry",
    "RoutingQueue",
]
