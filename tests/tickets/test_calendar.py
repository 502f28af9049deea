"""Business calendars: pure functions over weekly hours, holidays and make-up workdays (调休), in zones."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from kefu.tickets.calendar import (
    Calendar,
    CalendarError,
    add_business_days,
    add_business_seconds,
    add_calendar_days,
    business_seconds_between,
    is_business_time,
    validate_weekly_hours,
)

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")
WEEKDAYS_9_18 = {str(d): [["09:00", "18:00"]] for d in range(5)}
LUNCH = {str(d): [["09:00", "12:00"], ["13:30", "18:00"]] for d in range(5)}
HOUR = 3600


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SH)


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)


def guoqing() -> Calendar:
    """国庆 2026-10-01..07 off, with Sunday 2026-09-27 (Monday's hours) and Saturday 2026-10-10 (own
    hours) worked instead."""
    return Calendar.build(
        "Asia/Shanghai",
        WEEKDAYS_9_18,
        holidays=[date(2026, 10, 1) + timedelta(days=i) for i in range(7)],
        workdays={date(2026, 9, 27): [], date(2026, 10, 10): [["10:00", "16:00"]]},
    )


def test_no_calendar_is_24x7() -> None:
    start = datetime(2026, 5, 1, 23, 0, tzinfo=UTC)
    assert add_business_seconds(None, start, 2 * HOUR) == datetime(2026, 5, 2, 1, 0, tzinfo=UTC)
    assert business_seconds_between(None, start, start + timedelta(days=2)) == 2 * 86_400
    assert is_business_time(None, start)
    assert add_business_days(None, start, 3) == datetime(2026, 5, 5, tzinfo=UTC)


def test_across_a_weekend() -> None:
    cal = Calendar.build("Asia/Shanghai", WEEKDAYS_9_18)
    friday_4pm = sh(2026, 6, 5, 16, 0)
    assert add_business_seconds(cal, friday_4pm, 4 * HOUR) == sh(2026, 6, 8, 11, 0)
    assert business_seconds_between(cal, friday_4pm, sh(2026, 6, 8, 11, 0)) == 4 * HOUR
    # Starting outside working hours counts from the next opening.
    assert add_business_seconds(cal, sh(2026, 6, 6, 12, 0), HOUR) == sh(2026, 6, 8, 10, 0)
    # Running out exactly at closing time ends there, not at the next opening.
    assert add_business_seconds(cal, sh(2026, 6, 5, 9, 0), 9 * HOUR) == sh(2026, 6, 5, 18, 0)
    assert not is_business_time(cal, sh(2026, 6, 6, 10, 0))
    assert is_business_time(cal, sh(2026, 6, 5, 9, 0))
    assert not is_business_time(cal, sh(2026, 6, 5, 18, 0))


def test_negative_and_reversed() -> None:
    cal = Calendar.build("Asia/Shanghai", WEEKDAYS_9_18)
    monday_11 = sh(2026, 6, 8, 11, 0)
    assert add_business_seconds(cal, monday_11, -4 * HOUR) == sh(2026, 6, 5, 16, 0)
    assert business_seconds_between(cal, monday_11, sh(2026, 6, 5, 16, 0)) == -4 * HOUR


def test_lunch_break() -> None:
    cal = Calendar.build("Asia/Shanghai", LUNCH)
    assert add_business_seconds(cal, sh(2026, 6, 8, 11, 0), 2 * HOUR) == sh(2026, 6, 8, 14, 30)
    assert business_seconds_between(cal, sh(2026, 6, 8, 11, 0), sh(2026, 6, 8, 14, 30)) == 2 * HOUR
    assert not is_business_time(cal, sh(2026, 6, 8, 12, 30))
    # 7.5 h a day: a full day from the opening ends at closing.
    assert add_business_seconds(cal, sh(2026, 6, 8, 9, 0), int(7.5 * HOUR)) == sh(2026, 6, 8, 18, 0)


def test_holiday_week_with_make_up_days() -> None:
    cal = guoqing()
    # Friday 2026-09-25 17:00 + 2 h: Saturday is off, Sunday 09-27 is a make-up day with Monday's hours.
    assert add_business_seconds(cal, sh(2026, 9, 25, 17, 0), 2 * HOUR) == sh(2026, 9, 27, 10, 0)
    # Wednesday 09-30 17:00 + 2 h: the whole holiday week and the weekend after it (Sat 10-03, Sun 10-04
    # are inside it) are skipped; next business time is Thursday 10-08.
    assert add_business_seconds(cal, sh(2026, 9, 30, 17, 0), 2 * HOUR) == sh(2026, 10, 8, 10, 0)
    # Saturday 10-10 works 10:00-16:00 (its own hours).
    assert add_business_seconds(cal, sh(2026, 10, 9, 17, 0), 2 * HOUR) == sh(2026, 10, 10, 11, 0)
    assert is_business_time(cal, sh(2026, 10, 10, 15, 59))
    assert not is_business_time(cal, sh(2026, 10, 10, 16, 30))
    assert not is_business_time(cal, sh(2026, 10, 2, 10, 0))
    # 09-28 .. 10-10: 09-28, 09-29, 09-30, 10-08, 10-09 (9 h each) + 10-10 (6 h).
    assert business_seconds_between(cal, sh(2026, 9, 28, 0, 0), sh(2026, 10, 11, 0, 0)) == (5 * 9 + 6) * HOUR


def test_business_days_deadline() -> None:
    cal = guoqing()
    # "3个工作日内" sent Wednesday 09-30: Thursday 10-08, Friday 10-09, Saturday 10-10 (make-up, closes 16:00).
    assert add_business_days(cal, sh(2026, 9, 30, 10, 0), 3) == sh(2026, 10, 10, 16, 0)
    plain = Calendar.build("Asia/Shanghai", LUNCH)
    # Sent on a Friday: due at the close of Wednesday.
    assert add_business_days(plain, sh(2026, 6, 5, 10, 0), 3) == sh(2026, 6, 10, 18, 0)
    # Sent on a Sunday: Monday is the first following business day.
    assert add_business_days(plain, sh(2026, 6, 7, 10, 0), 1) == sh(2026, 6, 8, 18, 0)
    assert add_calendar_days(plain, sh(2026, 6, 5, 10, 0), 3) == sh(2026, 6, 9, 0, 0)
    with pytest.raises(ValueError):
        add_business_days(plain, sh(2026, 6, 5, 10, 0), 0)


def test_non_china_zone() -> None:
    cal = Calendar.build("Europe/Berlin", WEEKDAYS_9_18)
    # 09:00 in Berlin in summer is 07:00 UTC.
    start = datetime(2026, 6, 8, 6, 0, tzinfo=UTC)
    assert add_business_seconds(cal, start, HOUR) == datetime(2026, 6, 8, 8, 0, tzinfo=UTC)
    # A Shanghai calendar on the same UTC instant is already in its afternoon.
    shanghai = Calendar.build("Asia/Shanghai", WEEKDAYS_9_18)
    assert add_business_seconds(shanghai, start, HOUR) == datetime(2026, 6, 8, 7, 0, tzinfo=UTC)


def test_daylight_saving_change() -> None:
    round_the_clock = Calendar.build("America/New_York", {str(d): [["00:00", "24:00"]] for d in range(7)})
    # Sunday 2026-03-08 has 23 hours in New York.
    assert business_seconds_between(round_the_clock, ny(2026, 3, 8, 0, 0), ny(2026, 3, 9, 0, 0)) == 23 * HOUR
    office = Calendar.build("America/New_York", WEEKDAYS_9_18)
    friday = ny(2026, 3, 6, 17, 0)  # EST, 22:00 UTC
    monday_10 = ny(2026, 3, 9, 10, 0)  # EDT, 14:00 UTC
    assert add_business_seconds(office, friday, 2 * HOUR) == monday_10
    assert monday_10.astimezone(UTC).hour == 14 and friday.astimezone(UTC).hour == 22
    assert business_seconds_between(office, friday, monday_10) == 2 * HOUR
    # Working hours inside the skipped hour have no length; the rest of the day counts.
    odd = Calendar.build("America/New_York", {"6": [["01:00", "04:00"]]})
    assert business_seconds_between(odd, ny(2026, 3, 8, 0, 0), ny(2026, 3, 9, 0, 0)) == 2 * HOUR


def test_long_spans_walk_days_not_minutes() -> None:
    cal = guoqing()
    start = sh(2026, 9, 1, 9, 0)
    # 09-01..09-30: 22 weekdays + make-up Sunday 09-27 = 23 business days; then 10-08, 10-09, 10-10
    # (make-up, 6 h), 10-12 .. 10-15: the 30th business day after 08-31 closes 2026-10-15 18:00.
    assert add_business_days(cal, sh(2026, 8, 31, 12, 0), 30) == sh(2026, 10, 15, 18, 0)
    # 270 h: 23 * 9 + 9 + 9 + 6 + 4 * 9 = 267 h by 10-15 18:00, 3 h more on Friday 10-16.
    due = add_business_seconds(cal, start, 30 * 9 * HOUR)
    assert due == sh(2026, 10, 16, 12, 0)
    assert business_seconds_between(cal, start, due) == 30 * 9 * HOUR
    # Ten years of business time still answers at once (about 3,700 day steps).
    far = add_business_seconds(cal, start, 10 * 250 * 9 * HOUR)
    assert business_seconds_between(cal, start, far) == 10 * 250 * 9 * HOUR


@pytest.mark.parametrize(
    "weekly",
    [
        {"0": [["09:00", "08:00"]]},
        {"0": [["09:00", "12:00"], ["11:00", "13:00"]]},
        {"0": [["13:00", "14:00"], ["09:00", "10:00"]]},
        {"0": [["9:00", "18:00"]]},
        {"0": [["09:00", "24:01"]]},
        {"7": [["09:00", "18:00"]]},
        {"0": [["09:00"]]},
        {"0": "09:00-18:00"},
        {},
        {"0": []},
        [],
    ],
)
def test_invalid_weekly_hours(weekly: object) -> None:
    with pytest.raises(CalendarError):
        validate_weekly_hours(weekly)


def test_weekly_hours_normalised() -> None:
    assert validate_weekly_hours({"0": [["09:00", "12:00"], ["12:00", "24:00"]]})["0"] == [
        ["09:00", "12:00"],
        ["12:00", "24:00"],
    ]
    assert validate_weekly_hours({"0": [("09:00", "18:00")]})["6"] == []
    with pytest.raises(CalendarError):
        Calendar.build("Mars/Olympus", WEEKDAYS_9_18)
