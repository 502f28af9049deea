"""API shapes of routing: queues, members, capacity profiles, presence, offers and entries.

The ranges here are the configuration service's (``routing.queues``), so the API refuses early what the
service would refuse anyway; cross-field rules (bullseye order, overflow, maximum wait) are the
service's alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, field_validator, model_validator

from kefu.core.schemas import DbId, Name, RequestModel, ResponseModel, single_line
from kefu.routing import policy, queues, service
from kefu.routing.models import AgentState, AgentStateChange, EntryState, MaxWaitAction, RoutingEntry

ChannelName = Literal[tuple(policy.CHANNEL_CLASS)]  # type: ignore[valid-type]
ActionName = Literal[MaxWaitAction.ALL]  # type: ignore[valid-type]
EntryStateName = Literal[EntryState.ALL]  # type: ignore[valid-type]
PresenceName = Literal[tuple(p.value for p in service.CHOOSABLE)]  # type: ignore[valid-type]
BreakReason = Literal[service.BREAK_REASONS]  # type: ignore[valid-type]

QueueCode = Annotated[
    str,
    StringConstraints(min_length=1, max_length=queues.CODE_MAX, pattern=queues.CODE_PATTERN),
    AfterValidator(single_line),
]
QueueLanguage = Annotated[
    str, StringConstraints(min_length=2, max_length=queues.LANGUAGE_MAX, pattern=queues.LANGUAGE_PATTERN)
]


def _ranged(field: str) -> Any:
    low, high = queues.RANGES[field]
    return Annotated[int, Field(ge=low, le=high)]


Priority = _ranged("priority")
SlPercent = _ranged("sl_target_percent")
SlThreshold = _ranged("sl_threshold_seconds")
StickySeconds = _ranged("sticky_seconds")
OfferTimeout = _ranged("offer_timeout_seconds")
AfterContact = _ranged("after_contact_seconds")
HandleSeconds = _ranged("expected_handle_seconds")
OverflowAfter = _ranged("overflow_after_seconds")
MaxWait = _ranged("max_wait_seconds")


class BullseyeStepIn(RequestModel):
    after_seconds: Annotated[int, Field(ge=queues.BULLSEYE_AFTER[0], le=queues.BULLSEYE_AFTER[1])]
    proficiency_drop: Annotated[int, Field(ge=queues.BULLSEYE_DROP[0], le=queues.BULLSEYE_DROP[1])] = 1
    any_member: bool = False


class QueueSkillIn(RequestModel):
    skill_id: DbId
    min_proficiency: Annotated[int, Field(ge=queues.PROFICIENCY[0], le=queues.PROFICIENCY[1])] = 1


Bullseye = Annotated[list[BullseyeStepIn], Field(max_length=queues.BULLSEYE_MAX_STEPS)]
QueueSkills = Annotated[list[QueueSkillIn], Field(max_length=queues.MAX_QUEUE_SKILLS)]


class _QueueFields(RequestModel):
    @field_validator("skills", check_fields=False)
    @classmethod
    def _distinct(cls, value: list[QueueSkillIn] | None) -> list[QueueSkillIn] | None:
        if value is not None and len({s.skill_id for s in value}) != len(value):
            raise ValueError("each skill may appear once")
        return value


class QueueCreate(_QueueFields):
    code: QueueCode
    name: Name
    channel: ChannelName
    language: QueueLanguage | None = None
    priority: Priority = 0
    sl_target_percent: SlPercent = 80
    sl_threshold_seconds: SlThreshold = 20
    bullseye: Bullseye = []
    sticky_seconds: StickySeconds = 0
    offer_timeout_seconds: OfferTimeout = 20
    after_contact_seconds: AfterContact = 0
    expected_handle_seconds: HandleSeconds = 180
    overflow_queue_id: DbId | None = None
    overflow_after_seconds: OverflowAfter | None = None
    max_wait_seconds: MaxWait | None = None
    max_wait_action: ActionName = MaxWaitAction.keep
    calendar_id: DbId | None = None
    closed_action: ActionName = MaxWaitAction.keep
    team_id: DbId | None = None
    active: bool = True
    skills: QueueSkills = []


class QueueUpdate(_QueueFields):
    """Only the fields sent change; ``skills`` replaces the whole requirement set."""

    code: QueueCode | None = None
    name: Name | None = None
    channel: ChannelName | None = None
    language: QueueLanguage | None = None
    priority: Priority | None = None
    sl_target_percent: SlPercent | None = None
    sl_threshold_seconds: SlThreshold | None = None
    bullseye: Bullseye | None = None
    sticky_seconds: StickySeconds | None = None
    offer_timeout_seconds: OfferTimeout | None = None
    after_contact_seconds: AfterContact | None = None
    expected_handle_seconds: HandleSeconds | None = None
    overflow_queue_id: DbId | None = None
    overflow_after_seconds: OverflowAfter | None = None
    max_wait_seconds: MaxWait | None = None
    max_wait_action: ActionName | None = None
    calendar_id: DbId | None = None
    closed_action: ActionName | None = None
    team_id: DbId | None = None
    active: bool | None = None
    skills: QueueSkills | None = None


class QueueSkillOut(ResponseModel):
    skill_id: int
    min_proficiency: int


class BullseyeStepOut(ResponseModel):
    after_seconds: int
    proficiency_drop: int
    any_member: bool


class QueueOut(ResponseModel):
    id: int
    code: str
    name: str
    channel: str
    channel_class: str
    language: str | None
    priority: int
    sl_target_percent: int
    sl_threshold_seconds: int
    bullseye: list[BullseyeStepOut]
    sticky_seconds: int
    offer_timeout_seconds: int
    after_contact_seconds: int
    expected_handle_seconds: int
    overflow_queue_id: int | None
    overflow_after_seconds: int | None
    max_wait_seconds: int | None
    max_wait_action: str
    calendar_id: int | None
    closed_action: str
    team_id: int | None
    active: bool
    skills: list[QueueSkillOut]
    member_count: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, view: queues.QueueView) -> QueueOut:
        q = view.queue
        return cls(
            **{name: getattr(q, name) for name in queues.QUEUE_FIELDS if name != "bullseye"},
            id=q.id,
            channel_class=policy.channel_class(q.channel),
            bullseye=[BullseyeStepOut(**_step(step)) for step in q.bullseye or ()],
            skills=[QueueSkillOut(skill_id=s.skill_id, min_proficiency=s.min_proficiency) for s in view.skills],
            member_count=view.member_count,
            created_at=q.created_at,
            updated_at=q.updated_at,
        )


def _step(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "after_seconds": int(raw["after_seconds"]),
        "proficiency_drop": int(raw.get("proficiency_drop", 1)),
        "any_member": bool(raw.get("any_member", False)),
    }


class MembersReplace(RequestModel):
    user_ids: Annotated[list[DbId], Field(max_length=queues.MAX_MEMBERS)]


class MemberOut(ResponseModel):
    user_id: int
    display_name: str
    presence: str


# --- capacity ----------------------------------------------------------------------------------------
VoiceLimit = Annotated[int, Field(ge=0, le=queues.CAPACITY_LIMITS["voice"][1])]
ChatLimit = Annotated[int, Field(ge=0, le=queues.CAPACITY_LIMITS["chat"][1])]
EmailLimit = Annotated[int, Field(ge=0, le=queues.CAPACITY_LIMITS["email"][1])]
MessageLimit = Annotated[int, Field(ge=0, le=queues.CAPACITY_LIMITS["message"][1])]


class CapacityProfileCreate(RequestModel):
    name: Name
    voice: VoiceLimit = 1
    chat: ChatLimit = 3
    email: EmailLimit = 5
    message: MessageLimit = 5
    voice_blocks_others: bool = True
    others_block_voice: bool = False


class CapacityProfileUpdate(RequestModel):
    name: Name | None = None
    voice: VoiceLimit | None = None
    chat: ChatLimit | None = None
    email: EmailLimit | None = None
    message: MessageLimit | None = None
    voice_blocks_others: bool | None = None
    others_block_voice: bool | None = None


class CapacityProfileOut(ResponseModel):
    id: int
    name: str
    voice: int
    chat: int
    email: int
    message: int
    voice_blocks_others: bool
    others_block_voice: bool
    team_ids: list[int]
    user_ids: list[int]

    @classmethod
    def of(cls, view: queues.ProfileView) -> CapacityProfileOut:
        p = view.profile
        return cls(
            id=p.id,
            **{f: getattr(p, f) for f in queues.PROFILE_FIELDS},
            team_ids=view.team_ids,
            user_ids=view.user_ids,
        )


class CapacityAssignmentIn(RequestModel):
    """Exactly one of team_id and user_id; profile_id null removes the assignment."""

    team_id: DbId | None = None
    user_id: DbId | None = None
    profile_id: DbId | None

    @model_validator(mode="after")
    def _one_owner(self) -> CapacityAssignmentIn:
        if (self.team_id is None) == (self.user_id is None):
            raise ValueError("give exactly one of team_id and user_id")
        return self


class CapacityAssignmentOut(ResponseModel):
    team_id: int | None
    user_id: int | None
    profile_id: int | None
    refreshed_user_ids: list[int]


# --- presence ----------------------------------------------------------------------------------------
class PresenceIn(RequestModel):
    presence: PresenceName
    reason: BreakReason | None = None


class PresenceOut(ResponseModel):
    user_id: int
    presence: str
    reason: str | None
    since: datetime
    seconds_in_state: int
    after_contact_until: datetime | None
    missed_offers: int
    loads: dict[str, int]
    caps: dict[str, int]
    voice_blocks_others: bool
    others_block_voice: bool
    queue_ids: list[int]

    @classmethod
    def of(cls, state: AgentState, queue_ids: list[int], now: datetime) -> PresenceOut:
        return cls(
            user_id=state.user_id,
            presence=state.presence,
            reason=state.reason,
            since=state.since,
            seconds_in_state=max(0, int((now - state.since).total_seconds())),
            after_contact_until=state.after_contact_until,
            missed_offers=state.missed_offers,
            loads=service.load_of(state),
            caps={cls_: getattr(state, service.CAP_COLUMNS[cls_]) for cls_ in policy.CHANNEL_CLASSES},
            voice_blocks_others=state.voice_blocks_others,
            others_block_voice=state.others_block_voice,
            queue_ids=queue_ids,
        )


class AgentQueuesIn(RequestModel):
    add: Annotated[list[DbId], Field(max_length=200)] = []
    remove: Annotated[list[DbId], Field(max_length=200)] = []


class AgentQueuesOut(ResponseModel):
    user_id: int
    queue_ids: list[int]


class StateChangeOut(ResponseModel):
    id: int
    user_id: int
    presence: str
    reason: str | None
    previous: str | None
    at: datetime
    changed_by_id: int | None

    @classmethod
    def of(cls, row: AgentStateChange) -> StateChangeOut:
        return cls.model_validate(row)


class StateChangePage(ResponseModel):
    items: list[StateChangeOut]
    next_before_id: int | None


# --- offers and entries ------------------------------------------------------------------------------
class OfferOut(ResponseModel):
    interaction_id: int
    queue_id: int
    queue_code: str
    channel: str
    offered_at: datetime
    expires_at: datetime
    seconds_left: int

    @classmethod
    def of(cls, view: queues.OfferView, now: datetime) -> OfferOut:
        return cls(
            interaction_id=view.interaction_id,
            queue_id=view.queue_id,
            queue_code=view.queue_code,
            channel=view.channel,
            offered_at=view.offered_at,
            expires_at=view.expires_at,
            seconds_left=max(0, int((view.expires_at - now).total_seconds())),
        )


class EntryOut(ResponseModel):
    interaction_id: int
    queue_id: int
    channel_class: str
    state: str
    priority: int
    customer_id: int | None
    entered_at: datetime
    waiting_since: datetime
    queue_entered_at: datetime
    offer_agent_id: int | None
    offer_expires_at: datetime | None
    agent_id: int | None
    offers_made: int
    answered_at: datetime | None
    outcome: str | None
    ended_at: datetime | None

    @classmethod
    def of(cls, entry: RoutingEntry) -> EntryOut:
        return cls.model_validate(entry)


class EntryPage(ResponseModel):
    items: list[EntryOut]
    next_after_id: int | None


class PositionOut(ResponseModel):
    interaction_id: int
    queue_id: int
    state: str
    position: int
    waited_seconds: int
    expected_wait_seconds: int | None


class MoveIn(RequestModel):
    queue_id: DbId


class EntryUpdate(RequestModel):
    priority: Priority
