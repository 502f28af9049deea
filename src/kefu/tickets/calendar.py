"""Business calendars: working hours per weekday in a time zone, holidays and make-up working days (调休).

Pure functions over a loaded ``Calendar`` (no database, no clock): they walk day by day, never minute
by minute, so adding 30 business days costs about 45 small steps. Local wall-clock intervals become
UTC per day through ``zoneinfo``, so a working day that contains a daylight-saving change is as long
as it really is (a 00:00-24:00 day on 2026-03-08 in New York has 23 hours).

``None`` stands for "no calendar": every second of every day is business time (24x7, days end at
midnight UTC).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.tickets.models import BusinessCalendar, CalendarDay

Interval = tuple[int, int]  # seconds after local midnight: [start, end)
DAY_SECONDS = 86_400
# A calendar walk gives up after this many days without finding enough business time: only a
# calendar whose every weekday is empty could get there, and validation refuses those.
MAX_WALK_DAYS = 366 * 20

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")


class CalendarError(ValueError):
    """Weekly hours or day hours that do not describe working intervals."""


def parse_hhmm(text: Any) -> int:
    if not isinstance(text, str) or not _HHMM.match(text):
        raise CalendarError(f"{text!r} is not a time of day HH:MM (00:00 to 24:00)")
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


def format_hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def parse_intervals(raw: Any) -> tuple[Interval, ...]:
    """``[["09:00", "12:00"], ["13:30", "18:00"]]`` -> seconds; each start before its end, in order,
    not overlapping."""
    if not isinstance(raw, (list, tuple)):
        raise CalendarError("working hours are a list of [start, end] pairs")
    if len(raw) > 24:
        raise CalendarError("at most 24 working intervals a day")
    intervals: list[Interval] = []
    for pair in raw:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise CalendarError("each working interval is a pair [start, end]")
        start, end = parse_hhmm(pair[0]), parse_hhmm(pair[1])
        if start >= end:
            raise CalendarError(f"{pair[0]}-{pair[1]}: the start must be before the end")
        if intervals and start < intervals[-1][1]:
            raise CalendarError(f"{pair[0]}-{pair[1]}: intervals must be in order and must not overlap")
        intervals.append((start, end))
    return tuple(intervals)


def validate_weekly_hours(raw: Any) -> dict[str, list[list[str]]]:
    """Checks ``{"0": [["09:00", "18:00"]], ...}`` (Monday "0" .. Sunday "6"; a missing day is a day
    off) and returns it normalised. At least one weekday must have working hours."""
    if not isinstance(raw, Mapping):
        raise CalendarError("weekly hours map weekdays '0' (Monday) to '6' (Sunday) to intervals")
    unknown = set(raw) - {str(d) for d in range(7)}
    if unknown:
        raise CalendarError(f"unknown weekdays {sorted(map(str, unknown))}: use '0' (Monday) to '6' (Sunday)")
    normalised: dict[str, list[list[str]]] = {}
    for day in range(7):
        intervals = parse_intervals(raw.get(str(day), []))
        normalised[str(day)] = [[format_hhmm(s), format_hhmm(e)] for s, e in intervals]
    if not any(normalised.values()):
        raise CalendarError("a calendar needs working hours on at least one weekday")
    return normalised


def validate_day_hours(raw: Any) -> list[list[str]]:
    return [[format_hhmm(s), format_hhmm(e)] for s, e in parse_intervals(raw or [])]


def time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarError(f"unknown time zone {name!r}") from None


@dataclass(frozen=True)
class Calendar:
    """A loaded business calendar. ``workdays`` are make-up working days with their own hours (empty
    hours in the table mean Monday's, resolved on loading); ``holidays`` are days off."""

    tz: ZoneInfo
    weekly: tuple[tuple[Interval, ...], ...]  # Monday .. Sunday
    holidays: frozenset[date] = frozenset()
    workdays: Mapping[date, tuple[Interval, ...]] = field(default_factory=dict)
    id: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.weekly) != 7:
            raise CalendarError("weekly hours need seven weekdays")
        if not any(self.weekly):
            raise CalendarError("a calendar needs working hours on at least one weekday")

    @classmethod
    def build(
        cls,
        time_zone_name: str,
        weekly_hours: Mapping[str, Any],
        *,
        holidays: Iterable[date] = (),
        workdays: Mapping[date, Sequence[Any]] | None = None,
        id: int | None = None,  # noqa: A002 - the calendar's row id
        name: str = "",
    ) -> Calendar:
        normalised = validate_weekly_hours(weekly_hours)
        weekly = tuple(parse_intervals(normalised[str(d)]) for d in range(7))
        made_up = {day: parse_intervals(hours) or weekly[0] for day, hours in (workdays or {}).items()}
        return cls(time_zone(time_zone_name), weekly, frozenset(holidays) - set(made_up), made_up, id, name)

    @classmethod
    def from_rows(cls, row: BusinessCalendar, days: Iterable[CalendarDay]) -> Calendar:
        days = list(days)
        return cls.build(
            row.time_zone,
            row.weekly_hours,
            holidays=[d.day for d in days if d.kind == "holiday"],
            workdays={d.day: d.hours for d in days if d.kind == "workday"},
            id=row.id,
            name=row.name,
        )

    def intervals_on(self, day: date) -> tuple[Interval, ...]:
        """Local working intervals of ``day``: a make-up workday's, none on a holiday, else the weekday's."""
        if day in self.workdays:
            return self.workdays[day]
        if day in self.holidays:
            return ()
        return self.weekly[day.weekday()]

    def utc_intervals_on(self, day: date) -> list[tuple[datetime, datetime]]:
        result = []
        for start, end in self.intervals_on(day):
            a, b = self._utc(day, start), self._utc(day, end)
            if a < b:  # an interval inside a skipped daylight-saving hour has no length
                result.append((a, b))
        return result

    def _utc(self, day: date, seconds: int) -> datetime:
        if seconds >= DAY_SECONDS:
            day, seconds = day + timedelta(days=1), seconds - DAY_SECONDS
        local = datetime.combine(day, time(seconds // 3600, seconds % 3600 // 60), tzinfo=self.tz)
        return local.astimezone(UTC)

    def local_date(self, moment: datetime) -> date:
        return moment.astimezone(self.tz).date()


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)  # the database hands back naive UTC on some backends
    return moment.astimezone(UTC)


def _days_from(cal: Calendar, moment: datetime, *, backwards: bool = False) -> Iterator[date]:
    day = cal.local_date(moment)
    step = timedelta(days=-1 if backwards else 1)
    for _ in range(MAX_WALK_DAYS):
        yield day
        day += step
    raise CalendarError("the calendar has no business time within twenty years")


def add_business_seconds(cal: Calendar | None, start: datetime, seconds: int) -> datetime:
    """The moment ``seconds`` of business time after ``start`` (negative: before it). When the time
    runs out exactly at the end of a working interval, that end is the answer (not the next start)."""
    start = _utc(start)
    if cal is None or seconds == 0:
        return start + timedelta(seconds=seconds)
    if seconds < 0:
        return _subtract_business_seconds(cal, start, -seconds)
    left = timedelta(seconds=seconds)
    for day in _days_from(cal, start):
        for a, b in cal.utc_intervals_on(day):
            if b <= start:
                continue
            a = max(a, start)
            if b - a >= left:
                return a + left
            left -= b - a
    raise AssertionError("unreachable")  # pragma: no cover


def _subtract_business_seconds(cal: Calendar, end: datetime, seconds: int) -> datetime:
    left = timedelta(seconds=seconds)
    for day in _days_from(cal, end, backwards=True):
        for a, b in reversed(cal.utc_intervals_on(day)):
            if a >= end:
                continue
            b = min(b, end)
            if b - a >= left:
                return b - left
            left -= b - a
    raise AssertionError("unreachable")  # pragma: no cover


def business_seconds_between(cal: Calendar | None, a: datetime, b: datetime) -> int:
    """Business seconds from ``a`` to ``b``; negative when ``b`` is before ``a``."""
    a, b = _utc(a), _utc(b)
    if b < a:
        return -business_seconds_between(cal, b, a)
    if cal is None:
        return int((b - a).total_seconds())
    total = timedelta()
    last = cal.local_date(b)
    for day in _days_from(cal, a):
        if day > last:
            break
        for start, end in cal.utc_intervals_on(day):
            overlap = min(end, b) - max(start, a)
            if overlap > timedelta():
                total += overlap
    return int(total.total_seconds())


def is_business_time(cal: Calendar | None, moment: datetime) -> bool:
    moment = _utc(moment)
    if cal is None:
        return True
    return any(a <= moment < b for a, b in cal.utc_intervals_on(cal.local_date(moment)))


def is_business_day(cal: Calendar | None, day: date) -> bool:
    return cal is None or bool(cal.utc_intervals_on(day))


def add_business_days(cal: Calendar | None, start: datetime, n: int) -> datetime:
    """The end of the working hours of the ``n``-th business day after the day of ``start`` (in the
    calendar's time zone): "3个工作日内" sent on a Friday is due at the close of Wednesday. Without a
    calendar every day counts and ends at midnight UTC."""
    if n < 1:
        raise ValueError("n counts following business days: at least 1")
    start = _utc(start)
    if cal is None:
        return datetime.combine(start.date() + timedelta(days=n + 1), time(), tzinfo=UTC)
    counted = 0
    for day in _days_from(cal, start):
        if day == cal.local_date(start):
            continue
        intervals = cal.utc_intervals_on(day)
        if intervals:
            counted += 1
            if counted == n:
                return intervals[-1][1]
    raise AssertionError("unreachable")  # pragma: no cover


def add_calendar_days(cal: Calendar | None, start: datetime, n: int) -> datetime:
    """The end (local midnight) of the ``n``-th day after the day of ``start``, working or not."""
    if n < 1:
        raise ValueError("n counts following days: at least 1")
    start = _utc(start)
    tz = cal.tz if cal is not None else UTC
    local_day = start.astimezone(tz).date() + timedelta(days=n + 1)
    return datetime.combine(local_day, time(), tzinfo=tz).astimezone(UTC)


# --- loading ------------------------------------------------------------------------------------
async def load_calendar(db: AsyncSession, calendar_id: int | None) -> Calendar | None:
    """The calendar with its exception days, or None (24x7) for no id or a vanished row."""
    if calendar_id is None:
        return None
    row = await db.get(BusinessCalendar, calendar_id)
    if row is None:
        return None
    days = (await db.scalars(select(CalendarDay).where(CalendarDay.calendar_id == calendar_id))).all()
    return Calendar.from_rows(row, days)
