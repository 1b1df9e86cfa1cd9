"""Off-peak calling windows in the hotline's time zone: weekdays, Chinese working days, holidays,
quiet hours, closures, capacity. Pure: takes dates and rules, returns UTC intervals.

Day types come from the `holidays` package: a public holiday uses the `holiday` windows, and so does
a weekend day inside a holiday block (Sunday 2026-02-15, first day of the Spring Festival break); a
working day (including a weekend day worked in exchange for a holiday, e.g. Saturday 2026-02-14 in
China, or a date listed in `extra_workdays`) uses the working-day windows, any other day the rest-day
windows. Wall-clock times are turned into UTC with zoneinfo, so a window across a DST change is as
long as the clock says it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class EmptyRange(ValueError):
    """A time range that starts where it ends ('12:00-12:00')."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: time
    end: time   # end <= start means the range runs past midnight

    @classmethod
    def parse(cls, text: str) -> TimeRange:
        try:
            a, b = (x.strip() for x in text.split("-"))
            r = cls(time.fromisoformat(a), time.fromisoformat("00:00" if b == "24:00" else b))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a time range such as '12:00-13:30'") from exc
        if r.start == r.end and b != "24:00":
            raise EmptyRange(f"{text!r} is an empty window (all day is '00:00-24:00')")
        return r

    def minutes(self) -> tuple[int, int]:
        """(start, end) in minutes from the day's midnight; end past 1440 for a range across midnight."""
        a, b = self.start.hour * 60 + self.start.minute, self.end.hour * 60 + self.end.minute
        return a, b if b > a else b + 1440

    def overlaps(self, other: TimeRange) -> bool:
        """True if the two ranges share some minutes of the clock (across midnight too)."""
        a, b = self.minutes()
        c, d = other.minutes()
        return any(a < d + k and c + k < b for k in (-1440, 0, 1440))

    def inside(self, others: Sequence[TimeRange]) -> bool:
        """True if every minute of this range falls in one of `others` (quiet hours, say)."""
        a, b = self.minutes()
        covered = [(c + k, d + k) for c, d in (o.minutes() for o in others) for k in (-1440, 0, 1440)]
        return not _subtract_minutes([(a, b)], covered)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, slots=True)
class Capacity:
    """Callbacks a window can take: fixed, or floating agents × minutes ÷ average handle time."""

    fixed: int | None = None
    agents: int = 1
    handle_time: timedelta = timedelta(minutes=6)

    def of(self, length: timedelta) -> int:
        if self.fixed is not None:
            return self.fixed
        return int(self.agents * length.total_seconds() // self.handle_time.total_seconds())


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime       # UTC
    end: datetime         # UTC
    capacity: int
    day: date             # local date it belongs to
    day_type: str         # workday | restday | holiday
    label: str            # e.g. "12:00-13:30"

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def contains(self, when: datetime) -> bool:
        return self.start <= when < self.end


@dataclass(frozen=True)
class ScheduleRules:
    tz: ZoneInfo
    workday: tuple[TimeRange, ...] = ()
    restday: tuple[TimeRange, ...] = ()
    holiday: tuple[TimeRange, ...] = ()
    #: per-weekday override of the working-day windows (e.g. longer on Fridays)
    weekdays: dict[str, tuple[TimeRange, ...]] = field(default_factory=dict)
    quiet: tuple[TimeRange, ...] = ()
    closures: tuple[tuple[datetime, datetime], ...] = ()   # UTC intervals
    capacity: Capacity = Capacity(fixed=20)
    country: str | None = "CN"
    subdivision: str | None = None
    #: dates worked whatever the calendar says (a year's 调休 weekends the holidays package lacks)
    extra_workdays: frozenset[date] = frozenset()

    @cached_property
    def _calendar(self):  # type: ignore[no-untyped-def]
        if not self.country:
            return None
        from .holiday_calendar import HolidayCalendar  # the holidays package, kept out of process

        return HolidayCalendar(self.country, self.subdivision, self.extra_workdays)

    def day_type(self, d: date) -> str:
        cal = self._calendar
        if cal is None:
            return "workday" if d.weekday() < 5 or d in self.extra_workdays else "restday"
        return cal.day_type(d)

    def holiday_name(self, d: date) -> str | None:
        cal = self._calendar
        return None if cal is None else cal.holiday_name(d)

    def swapped_workday(self, d: date) -> bool:
        """A weekend day worked (调休: in exchange for a day off in a holiday block, or listed in extra_workdays)."""
        return d.weekday() >= 5 and self.day_type(d) == "workday"

    def provisional_years(self, first: date, last: date) -> list[int]:
        """Years from `first` to `last` whose worked weekends the holidays package does not know."""
        from .holiday_calendar import provisional_years

        return provisional_years(self.country, self.subdivision, first, last)

    def why_no_windows(self, d: date) -> str:
        """Why local day `d` has no window: no windows configured for its day type, quiet hours, closures."""
        kind, ranges = self.ranges_for(d)
        if not ranges:
            return f"no {kind} windows configured"
        intervals = [local_interval(d, r, self.tz) for r in ranges]
        quiet = [local_interval(d + timedelta(days=k), q, self.tz) for q in self.quiet for k in (-1, 0, 1)]
        if not subtract(intervals, quiet):
            return "quiet hours"
        if not subtract(intervals, list(self.closures)):
            return "closure"
        if not subtract(intervals, [*quiet, *self.closures]):
            return "quiet hours and closure"
        return ""

    def ranges_for(self, d: date) -> tuple[str, tuple[TimeRange, ...]]:
        kind = self.day_type(d)
        if kind == "holiday":
            return kind, self.holiday
        day = DAYS[d.weekday()]
        if kind == "workday":
            # a weekend day worked in exchange for a holiday gets the working-day windows
            return kind, self.weekdays.get(day, self.workday) if d.weekday() < 5 else self.workday
        return kind, self.weekdays.get(day, self.restday) if d.weekday() >= 5 else self.restday

    def windows(self, start: datetime, end: datetime) -> list[Window]:
        """Every window overlapping [start, end), in time order, with quiet hours and closures cut out."""
        first = start.astimezone(self.tz).date() - timedelta(days=1)
        last = end.astimezone(self.tz).date()
        out: list[Window] = []
        d = first
        while d <= last:
            kind, ranges = self.ranges_for(d)
            for r in ranges:
                for a, b in self._cut(local_interval(d, r, self.tz), d):
                    if b <= start or a >= end or b <= a:
                        continue
                    out.append(Window(a, b, self.capacity.of(b - a), d, kind, str(r)))
            d += timedelta(days=1)
        out.sort(key=lambda w: w.start)
        return out

    def _cut(self, interval: tuple[datetime, datetime], d: date) -> list[tuple[datetime, datetime]]:
        blocks = [local_interval(d + timedelta(days=k), q, self.tz) for q in self.quiet for k in (-1, 0, 1)]
        blocks += list(self.closures)
        return subtract([interval], blocks)

    def is_quiet(self, when: datetime) -> bool:
        d = when.astimezone(self.tz).date()
        return any(a <= when < b for q in self.quiet for k in (-1, 0) for a, b in [local_interval(d + timedelta(days=k),
                                                                                             q, self.tz)])


def local_interval(d: date, r: TimeRange, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The range as it falls on day `d` in `tz` (one running past midnight ends the next day)."""
    a = _local(d, r.start, tz)
    end_day = d if r.end > r.start else d + timedelta(days=1)
    return a, _local(end_day, r.end, tz)


def _local(d: date, t: time, tz: ZoneInfo) -> datetime:
    """A wall-clock time as UTC. In a DST gap (02:30 that never happens) the clock's own reading
    after the jump is used; in an overlap (01:30 twice) the first one."""
    naive = datetime.combine(d, t)
    aware = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if aware.astimezone(tz).replace(tzinfo=None) == naive:
        return aware
    # in a gap: the window starts when the clock jumps, i.e. the first instant whose wall time is later
    earlier = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    lo, hi = min(earlier, aware), max(earlier, aware)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0) if hi.microsecond == 0 else hi


def subtract(intervals: Iterable[tuple[datetime, datetime]],
             blocks: Sequence[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out = list(intervals)
    for ba, bb in blocks:
        nxt: list[tuple[datetime, datetime]] = []
        for a, b in out:
            if bb <= a or ba >= b:
                nxt.append((a, b))
                continue
            if a < ba:
                nxt.append((a, ba))
            if bb < b:
                nxt.append((bb, b))
        out = nxt
    return [(a, b) for a, b in out if b > a]



def _subtract_minutes(intervals: list[tuple[int, int]], blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = intervals
    for ba, bb in blocks:
        out = [piece for a, b in out
               for piece in (((a, b),) if bb <= a or ba >= b else ((a, min(b, ba)), (max(a, bb), b)))
               if piece[1] > piece[0]]
    return out
