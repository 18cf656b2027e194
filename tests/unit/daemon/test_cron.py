"""Cron parsing and the pure next-run computation."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cairn.daemon.scheduling.cron import CronExpr, next_run
from cairn.store.errors import InvalidArgumentError


def nxt(expr: str, after: datetime) -> datetime:
    return next_run(CronExpr.parse(expr), after)


def runs(expr: str, after: datetime, count: int) -> list[datetime]:
    parsed = CronExpr.parse(expr)
    found = []
    for _ in range(count):
        after = next_run(parsed, after)
        found.append(after)
    return found


def test_fields_lists_ranges_steps_and_names():
    expr = CronExpr.parse("*/15 9-17/4 1,15 jan-mar,DEC mon-fri")
    assert expr.minutes == {0, 15, 30, 45}
    assert expr.hours == {9, 13, 17}
    assert expr.days == {1, 15}
    assert expr.months == {1, 2, 3, 12}
    assert expr.weekdays == {1, 2, 3, 4, 5}


def test_start_slash_step_runs_to_the_end_of_the_field():
    assert CronExpr.parse("5/20 * * * *").minutes == {5, 25, 45}


def test_sunday_is_both_0_and_7():
    assert CronExpr.parse("0 0 * * 7").weekdays == {0}
    assert CronExpr.parse("0 0 * * 0").weekdays == {0}
    assert CronExpr.parse("0 0 * * 5-7").weekdays == {5, 6, 0}
    # 2024-06-02 is a Sunday.
    assert nxt("0 0 * * 7", datetime(2024, 6, 1, 12, 0, tzinfo=UTC)) == datetime(2024, 6, 2, tzinfo=UTC)
    assert nxt("0 0 * * sun", datetime(2024, 6, 1, 12, 0, tzinfo=UTC)) == datetime(2024, 6, 2, tzinfo=UTC)


def test_macros():
    assert CronExpr.parse("@hourly").minutes == {0}
    assert nxt("@weekly", datetime(2024, 6, 1, tzinfo=UTC)) == datetime(2024, 6, 2, tzinfo=UTC)
    assert nxt("@yearly", datetime(2024, 6, 1, tzinfo=UTC)) == datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("60 * * * *", "minute '60': 60 is outside 0-59"),
        ("* 24 * * *", "hour '24'"),
        ("* * 0 * *", "day-of-month '0'"),
        ("* * * 13 *", "month '13'"),
        ("* * * * 8", "day-of-week '8'"),
        ("*/0 * * * *", "step must be a positive number"),
        ("5-1 * * * *", "range start is after its end"),
        ("* * * foo *", "month 'foo'"),
        ("* * * * funday", "day-of-week 'funday'"),
        ("1,,2 * * * *", "minute ''"),
        ("0 0 30 2 *", "never matches"),
        ("0 0 31 4,6 *", "never matches"),
        ("", "expected 5 fields"),
    ],
)
def test_invalid_expressions_name_the_field(text, fragment):
    with pytest.raises(InvalidArgumentError) as caught:
        CronExpr.parse(text)
    assert fragment in caught.value.message


def test_next_run_is_strictly_after():
    at = datetime(2024, 5, 5, 10, 0, tzinfo=UTC)
    assert nxt("0 10 * * *", at) == datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
    assert nxt("* * * * *", at) == datetime(2024, 5, 5, 10, 1, tzinfo=UTC)
    # Seconds into the minute do not make that minute eligible again.
    assert nxt("* * * * *", at.replace(second=59, microsecond=999)) == datetime(2024, 5, 5, 10, 1, tzinfo=UTC)


def test_every_fifteen_minutes_across_an_hour():
    got = runs("*/15 * * * *", datetime(2024, 5, 5, 10, 40, tzinfo=UTC), 3)
    assert got == [datetime(2024, 5, 5, 10, 45, tzinfo=UTC), datetime(2024, 5, 5, 11, 0, tzinfo=UTC),
                   datetime(2024, 5, 5, 11, 15, tzinfo=UTC)]


def test_month_ends():
    # The 31st skips months without one.
    got = runs("0 0 31 * *", datetime(2024, 1, 31, 0, 0, tzinfo=UTC), 3)
    assert got == [datetime(2024, 3, 31, tzinfo=UTC), datetime(2024, 5, 31, tzinfo=UTC),
                   datetime(2024, 7, 31, tzinfo=UTC)]
    # Year rollover.
    assert nxt("0 0 1 * *", datetime(2024, 12, 15, tzinfo=UTC)) == datetime(2025, 1, 1, tzinfo=UTC)
    assert nxt("59 23 31 12 *", datetime(2024, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2025, 12, 31, 23, 59, tzinfo=UTC)


def test_leap_years():
    assert nxt("0 0 29 2 *", datetime(2023, 3, 1, tzinfo=UTC)) == datetime(2024, 2, 29, tzinfo=UTC)
    assert nxt("0 0 29 2 *", datetime(2024, 2, 29, tzinfo=UTC)) == datetime(2028, 2, 29, tzinfo=UTC)
    # 2100 is not a leap year: from 2096 the next 29 February is in 2104.
    assert nxt("0 0 29 2 *", datetime(2096, 3, 1, tzinfo=UTC)) == datetime(2104, 2, 29, tzinfo=UTC)
    # Last day of February in a leap year is the 29th, so "28" runs the day before.
    assert nxt("0 12 28 2 *", datetime(2024, 2, 1, tzinfo=UTC)) == datetime(2024, 2, 28, 12, tzinfo=UTC)


def test_day_of_month_or_day_of_week_when_both_are_restricted():
    # 2024-06-01 is a Saturday; "1st of the month OR Monday".
    got = runs("0 0 1 * mon", datetime(2024, 5, 31, tzinfo=UTC), 4)
    assert got == [datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 3, tzinfo=UTC),
                   datetime(2024, 6, 10, tzinfo=UTC), datetime(2024, 6, 17, tzinfo=UTC)]


def test_starred_day_field_means_and():
    # Day-of-month "*" leaves only the weekday restriction.
    got = runs("0 0 * * mon", datetime(2024, 5, 31, tzinfo=UTC), 2)
    assert got == [datetime(2024, 6, 3, tzinfo=UTC), datetime(2024, 6, 10, tzinfo=UTC)]
    # Day-of-week "*" leaves only the day-of-month restriction.
    assert runs("0 0 13 * *", datetime(2024, 5, 31, tzinfo=UTC), 1) == [datetime(2024, 6, 13, tzinfo=UTC)]
    # A starred step ("*/2", vixie's DOM_STAR) also selects the AND rule: odd days that are Mondays.
    got = runs("0 0 */2 * 1", datetime(2024, 6, 1, tzinfo=UTC), 2)
    assert got == [datetime(2024, 6, 3, tzinfo=UTC), datetime(2024, 6, 17, tzinfo=UTC)]


def test_explicit_timezone_and_conversion():
    berlin = ZoneInfo("Europe/Berlin")
    # 01:30 UTC is 03:30 in Berlin (summer time); 04:00 Berlin is next.
    got = next_run(CronExpr.parse("0 4 * * *"), datetime(2024, 6, 1, 1, 30, tzinfo=UTC), tz=berlin)
    assert got == datetime(2024, 6, 1, 4, 0, tzinfo=berlin)
    assert got.utcoffset() == timedelta(hours=2)
    # A naive datetime with tz is taken to be in tz.
    assert next_run(CronExpr.parse("0 4 * * *"), datetime(2024, 6, 1, 3, 59), tz=berlin) == datetime(
        2024, 6, 1, 4, 0, tzinfo=berlin)


def test_daylight_saving_gap_runs_at_the_end_of_the_gap():
    berlin = ZoneInfo("Europe/Berlin")
    # 2024-03-31 02:00 -> 03:00 in Berlin: 02:30 does not exist that day.
    got = nxt("30 2 * * *", datetime(2024, 3, 30, 12, 0, tzinfo=berlin))
    assert got == datetime(2024, 3, 31, 3, 0, tzinfo=berlin)
    assert nxt("30 2 * * *", got) == datetime(2024, 4, 1, 2, 30, tzinfo=berlin)
    # Every-15-minutes runs once for the whole gap, not four times.
    got = runs("*/15 * * * *", datetime(2024, 3, 31, 1, 40, tzinfo=berlin), 3)
    assert got == [datetime(2024, 3, 31, 1, 45, tzinfo=berlin), datetime(2024, 3, 31, 3, 0, tzinfo=berlin),
                   datetime(2024, 3, 31, 3, 15, tzinfo=berlin)]


def test_daylight_saving_repeat_runs_once():
    berlin = ZoneInfo("Europe/Berlin")
    # 2024-10-27 03:00 CEST -> 02:00 CET: 02:30 happens twice, the job runs at the first.
    first = nxt("30 2 * * *", datetime(2024, 10, 27, 0, 0, tzinfo=berlin))
    assert first == datetime(2024, 10, 27, 2, 30, tzinfo=berlin)
    assert first.utcoffset() == timedelta(hours=2)
    assert nxt("30 2 * * *", first) == datetime(2024, 10, 28, 2, 30, tzinfo=berlin)
    # Later in the repeated hour (02:45 CET) the 02:30 of that day is behind us.
    second_pass = datetime(2024, 10, 27, 2, 45, fold=1, tzinfo=berlin)
    assert nxt("30 2 * * *", second_pass) == datetime(2024, 10, 28, 2, 30, tzinfo=berlin)


@pytest.fixture
def local_tz():
    def use(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    old = os.environ.get("TZ")
    yield use
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_naive_datetimes_use_local_time(local_tz):
    local_tz("America/New_York")
    got = nxt("0 3 * * *", datetime(2024, 6, 1, 12, 0))
    assert got == datetime(2024, 6, 2, 3, 0)
    assert got.tzinfo is None
    # 2024-03-10 02:00 -> 03:00 in New York: the 02:30 run moves to 03:00 local.
    assert nxt("30 2 * * *", datetime(2024, 3, 9, 12, 0)) == datetime(2024, 3, 10, 3, 0)


def test_parse_keeps_text_and_matches():
    expr = CronExpr.parse("  0 3 * * 0 ")
    assert str(expr) == "0 3 * * 0"
    assert expr.matches(datetime(2024, 6, 2, 3, 0))
    assert not expr.matches(datetime(2024, 6, 2, 3, 1))
    assert not expr.matches(datetime(2024, 6, 3, 3, 0))
