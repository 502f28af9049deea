"""API shapes of business calendars, SLA policies, work-order SLA clocks and escalations."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator, model_validator

from kefu.core.schemas import DbId, Name, RequestModel, ResponseModel, TimeZone, multi_line, single_line
from kefu.tickets.calendar import CalendarError, validate_day_hours, validate_weekly_hours

HHMM = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")]
HoursPair = Annotated[list[HHMM], Field(min_length=2, max_length=2)]  # [start, end]
DayHours = Annotated[list[HoursPair], Field(max_length=24)]
Weekday = Literal["0", "1", "2", "3", "4", "5", "6"]
WeeklyHours = dict[Weekday, DayHours]
DayName = Annotated[str, StringConstraints(max_length=128), AfterValidator(single_line)]
Note = Annotated[str, StringConstraints(max_length=4000), AfterValidator(multi_line)]
RequiredNote = Annotated[str, StringConstraints(min_length=1, max_length=4000), AfterValidator(multi_line)]
WorkOrderType = Literal["inquiry", "complaint", "suggestion", "fault", "request"]
Priority = Literal["low", "normal", "high", "urgent"]
# Targets in business seconds: a minute to a (business) year.
TargetSeconds = Annotated[int, Field(ge=60, le=366 * 86_400)]
WarnSeconds = Annotated[int, Field(ge=0, le=366 * 86_400)]


def _weekly(value: Any) -> Any:
    if value is None:
        return value
    try:
        return validate_weekly_hours(value)
    except CalendarError as exc:
        raise ValueError(str(exc)) from None


# --- calendars ------------------------------------------------------------------------------------
class CalendarCreate(RequestModel):
    name: Name
    time_zone: TimeZone = "Asia/Shanghai"
    weekly_hours: WeeklyHours

    @field_validator("weekly_hours")
    @classmethod
    def _check_weekly(cls, value: Any) -> Any:
        return _weekly(value)


class CalendarUpdate(RequestModel):
    name: Name | None = None
    time_zone: TimeZone | None = None
    weekly_hours: WeeklyHours | None = None

    @field_validator("weekly_hours")
    @classmethod
    def _check_weekly(cls, value: Any) -> Any:
        return _weekly(value)


class CalendarDayIn(RequestModel):
    day: date
    kind: Literal["holiday", "workday"]
    name: DayName = ""
    # For a make-up workday: its hours; empty means Monday's hours.
    hours: DayHours = []

    @model_validator(mode="after")
    def _hours(self) -> CalendarDayIn:
        if self.kind == "holiday" and self.hours:
            raise ValueError("a holiday has no working hours")
        try:
            validate_day_hours(self.hours)
        except CalendarError as exc:
            raise ValueError(str(exc)) from None
        return self


class CalendarDaysReplace(RequestModel):
    """Every exception day of ``year`` (those not listed are removed)."""

    year: Annotated[int, Field(ge=1970, le=2200)]
    days: Annotated[list[CalendarDayIn], Field(max_length=366)]

    @model_validator(mode="after")
    def _same_year(self) -> CalendarDaysReplace:
        if any(d.day.year != self.year for d in self.days):
            raise ValueError(f"every day must be in {self.year}")
        if len({d.day for d in self.days}) != len(self.days):
            raise ValueError("a day is listed twice")
        return self


class CalendarDayOut(ResponseModel):
    day: date
    kind: str
    name: str
    hours: list[list[str]]


class CalendarOut(ResponseModel):
    id: int
    name: str
    time_zone: str
    weekly_hours: dict[str, list[list[str]]]
    days: list[CalendarDayOut]
    created_at: datetime
    updated_at: datetime


# --- policies -------------------------------------------------------------------------------------
class PolicyCreate(RequestModel):
    name: Name
    work_order_type: WorkOrderType | None = None
    priority: Priority | None = None
    team_id: DbId | None = None
    calendar_id: DbId | None = None
    first_response_seconds: TargetSeconds | None = None
    resolution_seconds: TargetSeconds | None = None
    warn_before_seconds: WarnSeconds = 3600
    active: bool = True

    @model_validator(mode="after")
    def _a_target(self) -> PolicyCreate:
        if self.first_response_seconds is None and self.resolution_seconds is None:
            raise ValueError("a policy needs a first-response or a resolution target")
        return self


class PolicyUpdate(RequestModel):
    """Only the fields sent change; send null to clear a match field, the calendar or a target."""

    name: Name | None = None
    work_order_type: WorkOrderType | None = None
    priority: Priority | None = None
    team_id: DbId | None = None
    calendar_id: DbId | None = None
    first_response_seconds: TargetSeconds | None = None
    resolution_seconds: TargetSeconds | None = None
    warn_before_seconds: WarnSeconds | None = None
    active: bool | None = None

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class PolicyOut(ResponseModel):
    id: int
    name: str
    work_order_type: str | None
    priority: str | None
    team_id: int | None
    calendar_id: int | None
    first_response_seconds: int | None
    resolution_seconds: int | None
    warn_before_seconds: int
    active: bool
    created_at: datetime
    updated_at: datetime


# --- a work order's clocks ------------------------------------------------------------------------
class ClockOut(ResponseModel):
    target: str
    due_at: datetime | None
    stopped_at: datetime | None
    remaining_seconds: int | None  # business seconds; negative when overdue
    breached: bool


class SlaEventOut(ResponseModel):
    id: int
    target: str
    kind: str
    due_at: datetime
    recorded_at: datetime


class WorkOrderSlaOut(BaseModel):
    work_order_id: int
    policy_id: int | None
    policy_name: str | None
    calendar_id: int | None
    paused: bool
    paused_at: datetime | None
    clocks: list[ClockOut]
    events: list[SlaEventOut]


# --- escalations ----------------------------------------------------------------------------------
class EscalateIn(RequestModel):
    to_team_id: DbId
    deadline_days: Annotated[int, Field(ge=1, le=365)]
    business_days: bool = True
    note: Note = ""


class ReturnIn(RequestModel):
    note: RequiredNote


class CancelIn(RequestModel):
    note: Note = ""


class EscalationOut(ResponseModel):
    id: int
    work_order_id: int
    work_order_number: str
    from_team_id: int | None
    to_team_id: int
    deadline_days: int
    business_days: bool
    due_at: datetime
    state: str
    overdue: bool
    note: str
    sent_by_id: int | None
    sent_at: datetime
    returned_by_id: int | None
    returned_at: datetime | None
    return_note: str | None


class EscalationPage(BaseModel):
    items: list[EscalationOut]
    # Newest first: pass as before_id for the next page; None on the last page.
    next_before_id: int | None


class CloseRateOut(BaseModel):
    team_id: int
    start: datetime
    end: datetime
    total: int
    returned_in_time: int
    returned_late: int
    open_overdue: int
    open_not_due: int
    # returned_in_time / (total - open_not_due); None when nothing is decided yet.
    close_rate: float | None
