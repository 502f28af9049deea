"""API shapes of the phone channel: the PBX's call events (one model per type, chosen by ``type``), the
answers kefu gives the PBX, calls, extensions and PBXs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints, TypeAdapter, model_validator

from kefu.core.schemas import DbId, Name, RequestModel, ResponseModel, single_line

MAX_BATCH = 500
MAX_SEQ = 1_000_000

Id = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(single_line)]
Number = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(single_line)]
ExtensionText = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[0-9A-Za-z*#+._-]+$")]
Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Short = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(single_line)]
Digits = Annotated[str, StringConstraints(max_length=64, pattern=r"^[0-9*#]*$")]
Seq = Annotated[int, Field(ge=1, le=MAX_SEQ)]


def _recording_url(value: str) -> str:
    # Links are shown to staff: only web addresses, never javascript:, file: or data: ones.
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError("url must be an http or https address")
    return value


RecordingUrl = Annotated[
    str, StringConstraints(min_length=1, max_length=2000), AfterValidator(single_line), AfterValidator(_recording_url)
]
RecordingPath = Annotated[str, StringConstraints(min_length=1, max_length=1000), AfterValidator(single_line)]


class _Event(RequestModel):
    event_id: Id
    call_id: Id
    at: AwareDatetime
    # The call's events numbered 1, 2, 3... in the order the PBX emitted them (gaps are waited for).
    seq: Seq


def _one_agent(model: Any) -> Any:
    if model.extension is None and model.agent_id is None:
        raise ValueError("give extension or agent_id")
    return model


class CallNew(_Event):
    type: Literal["call_new"]
    caller: Number | None = None  # None: number withheld
    called: Number | None = None  # the number dialled (DNIS)
    direction: Literal["inbound", "outbound"] = "inbound"
    flow: Code | None = None  # the IVR flow to run (None: the flow bound to `called`, else the default)
    language: Annotated[str, StringConstraints(max_length=16, pattern=r"^[A-Za-z_-]+$")] | None = None


class IvrInput(_Event):
    type: Literal["ivr_input"]
    digits: Digits | None = None  # None: the caller typed nothing before the timeout


class Queued(_Event):
    type: Literal["queued"]
    queue: Code
    priority: Annotated[int, Field(ge=0, le=100)] = 0


class Ringing(_Event):
    type: Literal["ringing"]
    extension: ExtensionText | None = None
    agent_id: DbId | None = None

    _check = model_validator(mode="after")(_one_agent)


class Answered(_Event):
    type: Literal["answered"]
    # Both None: answered where it was ringing.
    extension: ExtensionText | None = None
    agent_id: DbId | None = None


class Transferred(_Event):
    type: Literal["transferred"]
    to_extension: ExtensionText | None = None
    to_queue: Code | None = None
    to_number: Number | None = None
    kind: Literal["blind", "attended"] = "blind"

    @model_validator(mode="after")
    def _one_target(self) -> Transferred:
        if sum(v is not None for v in (self.to_extension, self.to_queue, self.to_number)) != 1:
            raise ValueError("give exactly one of to_extension, to_queue, to_number")
        return self


class Held(_Event):
    type: Literal["held"]


class Unheld(_Event):
    type: Literal["unheld", "retrieved"]


class HungUp(_Event):
    type: Literal["hung_up"]
    cause: Short | None = None  # the PBX's cause (e.g. "16 normal clearing", "NO_ANSWER")
    by: Literal["caller", "agent", "system", "unknown"] = "unknown"


class RecordingAvailable(_Event):
    type: Literal["recording_available"]
    # A recording system apart from the PBX cannot number the call's events: seq is optional here.
    seq: Seq | None = None  # type: ignore[assignment]
    url: RecordingUrl | None = None
    path: RecordingPath | None = None
    duration_seconds: Annotated[int, Field(ge=0, le=86_400 * 7)] | None = None

    @model_validator(mode="after")
    def _somewhere(self) -> RecordingAvailable:
        if self.url is None and self.path is None:
            raise ValueError("give url or path")
        return self


CallEventIn = Annotated[
    CallNew | IvrInput | Queued | Ringing | Answered | Transferred | Held | Unheld | HungUp | RecordingAvailable,
    Field(discriminator="type"),
]
EVENT_TYPES = (
    "call_new",
    "ivr_input",
    "queued",
    "ringing",
    "answered",
    "transferred",
    "held",
    "unheld",
    "retrieved",
    "hung_up",
    "recording_available",
)


class EventBatch(RequestModel):
    events: Annotated[list[CallEventIn], Field(min_length=1, max_length=MAX_BATCH)]


EventIn: TypeAdapter[Any] = TypeAdapter(CallEventIn)
EventBody: TypeAdapter[Any] = TypeAdapter(EventBatch | CallEventIn)


class EventResult(ResponseModel):
    event_id: str
    call_id: str
    duplicate: bool  # delivered before: stored once, nothing changed
    waiting_for_seq: int | None = None  # an earlier event of the call has not arrived yet
    call_state: str
    instruction: dict[str, Any]


class BatchResult(ResponseModel):
    results: list[EventResult]


class Instruction(ResponseModel):
    call_id: str
    call_state: str
    instruction: dict[str, Any]


class CallOut(ResponseModel):
    id: int
    pbx: str
    call_id: str
    state: str
    direction: str | None
    caller: str | None
    called: str | None
    queue: str | None
    extension: str | None
    agent_id: int | None
    agent_name: str | None = None
    answered_by_id: int | None
    interaction_id: int | None
    customer_id: int | None = None
    customer_name: str | None = None
    started_at: datetime | None
    queued_at: datetime | None
    ringing_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None
    hangup_cause: str | None
    hangup_by: str | None
    held_seconds: int
    transfers: int
    digits: str | None
    recording_url: str | None
    recording_path: str | None
    recording_seconds: int | None
    applied_seq: int
    event_count: int


class CallEventOut(ResponseModel):
    event_id: str
    seq: int | None
    type: str
    at: datetime
    data: dict[str, Any]
    received_at: datetime
    deliveries: int
    outcome: str | None


class CallDetail(CallOut):
    events: list[CallEventOut]
    instruction: dict[str, Any]


class CallPage(ResponseModel):
    items: list[CallOut]
    next_cursor: str | None


class ExtensionIn(RequestModel):
    extension: ExtensionText


class ExtensionOut(ResponseModel):
    user_id: int
    username: str
    display_name: str
    extension: str
    updated_at: datetime


class PbxCreate(RequestModel):
    code: Code
    name: Name
    # Empty: kefu makes one (shown once in the answer).
    secret: Annotated[str, StringConstraints(min_length=24, max_length=128), AfterValidator(single_line)] | None = None


class PbxUpdate(RequestModel):
    name: Name | None = None
    active: bool | None = None
    new_secret: bool = False  # make a new secret (shown once); the old one stops working at once


class PbxOut(ResponseModel):
    id: int
    code: str
    name: str
    active: bool
    created_at: datetime
    updated_at: datetime


class PbxWithSecret(PbxOut):
    secret: str
