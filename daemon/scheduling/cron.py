"""Standard five-field cron expressions and the pure function that finds their next run.

Fields: minute hour day-of-month month day-of-week. Each field takes `*`, numbers, ranges
`a-b`, steps `*/n`, `a-b/n` and `a/n` (a through the field's end), and comma lists of these;
months and weekdays also take English three-letter names (`jan`, `mon-fri`). Sunday is 0 or 7.
The macros @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly are accepted.

Day matching follows vixie cron: when the day-of-month or the day-of-week field starts with
`*`, a day must match both fields (so the starred one only narrows by its step); when both
are restricted, a day matches if EITHER field matches ("0 0 1 * mon" runs on the 1st and on
every Monday).

`next_run` never reads the clock: it works on the wall-clock time of the datetime it is
given (naive = local time) and always returns a moment strictly after it; `previous_run`
returns the latest run at or before a moment (built on `next_run`, so both agree). Across daylight
saving changes a wall time that is repeated runs once (its first occurrence), and a wall
time that does not exist runs at the first minute after the gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from cairn.store.errors import InvalidArgumentError

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Longest day-of-month each month can have (February in leap years).
_MONTH_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# How far ahead next_run searches before deciding an expression cannot match.
_SEARCH_YEARS = 30


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTH_NAMES, 1),
    _Field("day-of-week", 0, 7, _DAY_NAMES, 0),
)


@dataclass(frozen=True)
class CronExpr:
    """A parsed cron expression: the allowed values of each field (weekdays 0-6, Sunday 0)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_star: bool
    weekdays_star: bool

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        """Parse `text`; raise InvalidArgumentError naming the bad field."""
        if not isinstance(text, str):
            raise InvalidArgumentError(f"expected a cron expression string, got {text!r}")
        spec = _MACROS.get(text.strip().lower(), text)
        fields = spec.split()
        if len(fields) != 5:
            raise InvalidArgumentError(
                f"invalid cron expression '{text}': expected 5 fields "
                f"(minute hour day-of-month month day-of-week), got {len(fields)}"
            )
        values = [_parse_field(part, spec, text) for part, spec in zip(fields, _FIELDS, strict=True)]
        weekdays = frozenset(day % 7 for day in values[4])
        expr = cls(
            text=text.strip(),
            minutes=values[0],
            hours=values[1],
            days=values[2],
            months=values[3],
            weekdays=weekdays,
            days_star=fields[2].startswith("*"),
            weekdays_star=fields[4].startswith("*"),
        )
        expr._check_satisfiable()
        return expr

    def _check_satisfiable(self) -> None:
        # Only a restricted day-of-month under the AND rule can exclude every date ("30 2").
        if self.weekdays_star and not self.days_star:
            longest = max(_MONTH_MAX_DAYS[month - 1] for month in self.months)
            if min(self.days) > longest:
                raise InvalidArgumentError(f"invalid cron expression '{self.text}': it never matches a date")

    def matches_day(self, day: date) -> bool:
        """True if the cron runs on `day` (month, day-of-month and day-of-week rule)."""
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.days_star or self.weekdays_star:
            return dom and dow
        return dom or dow

    def matches(self, moment: datetime) -> bool:
        """True if the wall-clock minute of `moment` is one the cron runs at."""
        return moment.minute in self.minutes and moment.hour in self.hours and self.matches_day(moment.date())

    def __str__(self) -> str:
        return self.text


def _parse_field(text: str, field: _Field, whole: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, field, whole))
    return frozenset(values)


def _parse_item(item: str, field: _Field, whole: str) -> range:
    def bad(reason: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"invalid cron expression '{whole}': {field.name} '{item}': {reason}")

    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise bad("step must be a positive number")
        step = int(step_text)
    if base == "*":
        low, high = field.low, field.high if field.name != "day-of-week" else 6
    elif "-" in base:
        start_text, _, end_text = base.partition("-")
        low, high = _value(start_text, field, bad), _value(end_text, field, bad)
        if low > high:
            raise bad("range start is after its end")
    else:
        low = _value(base, field, bad)
        # "a/n" means a through the end of the field; a lone value is just itself.
        high = (field.high if field.name != "day-of-week" else 6) if slash else low
        if slash and low > high:
            high = low
    return range(low, high + 1, step)


def _value(text: str, field: _Field, bad) -> int:
    lowered = text.lower()
    if lowered in field.names:
        return field.names.index(lowered) + field.name_base
    if not text.isdigit():
        names = " or a name" if field.names else ""
        raise bad(f"expected a number from {field.low} to {field.high}{names}")
    number = int(text)
    if not field.low <= number <= field.high:
        raise bad(f"{number} is outside {field.low}-{field.high}")
    return number


def next_run(expr: CronExpr, after: datetime, tz: tzinfo | None = None) -> datetime:
    """Return the first moment strictly after `after` at which `expr` runs.

    The wall clock used is `tz` if given (a naive `after` is then taken to be in `tz`), else
    `after`'s own tzinfo, else local time (naive in, naive out).
    """
    if tz is not None:
        after = after.astimezone(tz) if after.tzinfo is not None else after.replace(tzinfo=tz)
    after_ts = after.timestamp()
    start = after.replace(second=0, microsecond=0, fold=0) + timedelta(minutes=1)
    hours = sorted(expr.hours)
    minutes = sorted(expr.minutes)
    day = start.date()
    last_day = date(min(start.year + _SEARCH_YEARS, 9999), 12, 31)
    while day <= last_day:
        if expr.matches_day(day):
            first = (start.hour, start.minute) if day == start.date() else (0, 0)
            for hour in hours:
                if hour < first[0]:
                    continue
                for minute in minutes:
                    if (hour, minute) < first:
                        continue
                    wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=after.tzinfo)
                    found = _instant_after(wall, after_ts)
                    if found is not None:
                        return found
        day += timedelta(days=1)
    raise InvalidArgumentError(f"cron expression '{expr.text}' has no run in the next {_SEARCH_YEARS} years")


def previous_run(expr: CronExpr, before: datetime, tz: tzinfo | None = None) -> datetime | None:
    """Return the latest moment at or before `before` at which `expr` runs (None: none in
    the last _SEARCH_YEARS years). The wall clock is chosen as in `next_run`.

    The look-back window doubles from two minutes until it holds a run, then the runs inside
    it are walked forward, so a dense cron costs a few steps and a yearly one a few dozen."""
    if tz is not None:
        before = before.astimezone(tz) if before.tzinfo is not None else before.replace(tzinfo=tz)
    before_ts = before.timestamp()
    window = timedelta(minutes=2)
    limit = timedelta(days=366 * _SEARCH_YEARS)
    while True:
        found = next_run(expr, before - window)
        if found.timestamp() <= before_ts:
            while True:
                later = next_run(expr, found)
                if later.timestamp() > before_ts:
                    return found
                found = later
        if window >= limit:
            return None
        window = min(window * 2, limit)  # the last window is the whole limit, as documented


def _instant_after(wall: datetime, after_ts: float) -> datetime | None:
    """`wall` (or the end of the DST gap it falls in) if that instant is after `after_ts`."""
    moment = wall
    while not _exists(moment):
        moment += timedelta(minutes=1)
    if moment.timestamp() <= after_ts:
        return None
    return moment


def _exists(wall: datetime) -> bool:
    """False for wall-clock times skipped by a daylight-saving jump."""
    back = datetime.fromtimestamp(wall.timestamp(), wall.tzinfo)
    return back.replace(tzinfo=None, fold=0) == wall.replace(tzinfo=None, fold=0)
