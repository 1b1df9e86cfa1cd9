"""Windows in the hotline's time zone: day types, Spring Festival, quiet hours, DST, capacity."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from callback_queue.windows import Capacity, ScheduleRules, TimeRange

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")


def R(*texts: str) -> tuple[TimeRange, ...]:
    return tuple(TimeRange.parse(t) for t in texts)


def local(ws, tz):
    return [(w.day.isoformat(), w.day_type, f"{w.start.astimezone(tz):%H:%M}", f"{w.end.astimezone(tz):%H:%M}")
            for w in ws]


def days(start: date, n: int, tz=SH):
    a = datetime.combine(start, time(0), tzinfo=tz)
    return a.astimezone(UTC), (a + timedelta(days=n)).astimezone(UTC)


def test_spring_festival_2026_and_the_substituted_working_day():
    rules = ScheduleRules(tz=SH, workday=R("12:00-13:30"), restday=R("10:00-11:00"), holiday=())
    got = local(rules.windows(*days(date(2026, 2, 13), 12)), SH)
    assert got == [
        ("2026-02-13", "workday", "12:00", "13:30"),   # Friday
        ("2026-02-14", "workday", "12:00", "13:30"),   # Saturday worked in exchange for the 20th
        # 15th (Sunday) to 23rd: the break - holidays, days off and the weekends inside it -> no windows
        ("2026-02-24", "workday", "12:00", "13:30"),
    ]
    assert rules.day_type(date(2026, 2, 17)) == "holiday"
    assert [rules.day_type(date(2026, 2, d)) for d in (15, 21, 22)] == ["holiday"] * 3
    assert rules.day_type(date(2026, 2, 28)) == "workday"  # another substituted Saturday


def test_holiday_windows_can_be_configured():
    rules = ScheduleRules(tz=SH, workday=R("12:00-13:00"), holiday=R("15:00-16:00"))
    got = local(rules.windows(*days(date(2026, 10, 1), 1)), SH)
    assert got == [("2026-10-01", "holiday", "15:00", "16:00")]


def test_quiet_hours_cut_windows_and_closures_remove_them():
    rules = ScheduleRules(tz=SH, workday=R("19:00-22:00", "07:00-09:00"), quiet=R("21:00-08:30"),
                          closures=((datetime(2026, 3, 4, tzinfo=SH).astimezone(UTC),
                                     datetime(2026, 3, 5, tzinfo=SH).astimezone(UTC)),))
    got = local(rules.windows(*days(date(2026, 3, 3), 3)), SH)
    assert got == [
        ("2026-03-03", "workday", "08:30", "09:00"),
        ("2026-03-03", "workday", "19:00", "21:00"),
        # 4 March closed
        ("2026-03-05", "workday", "08:30", "09:00"),
        ("2026-03-05", "workday", "19:00", "21:00"),
    ]
    assert rules.is_quiet(datetime(2026, 3, 3, 23, 0, tzinfo=SH))
    assert not rules.is_quiet(datetime(2026, 3, 3, 12, 0, tzinfo=SH))


def test_dst_gap_and_overlap_in_new_york():
    rules = ScheduleRules(tz=NY, country="US", workday=R("01:00-04:00"), restday=R("01:00-04:00"),
                          capacity=Capacity(agents=1, handle_time=timedelta(minutes=10)))
    spring = rules.windows(datetime(2026, 3, 8, 0, tzinfo=UTC), datetime(2026, 3, 9, 0, tzinfo=UTC))
    [w] = [w for w in spring if w.day == date(2026, 3, 8)]
    assert (w.start, w.end) == (datetime(2026, 3, 8, 6, tzinfo=UTC), datetime(2026, 3, 8, 8, tzinfo=UTC))
    assert w.length == timedelta(hours=2) and w.capacity == 12   # the clock skips 02:00-03:00
    fall = rules.windows(datetime(2026, 11, 1, 0, tzinfo=UTC), datetime(2026, 11, 2, 0, tzinfo=UTC))
    [w] = [w for w in fall if w.day == date(2026, 11, 1)]
    assert w.length == timedelta(hours=4) and w.capacity == 24    # 01:00-02:00 happens twice
    # a window that starts inside the gap begins when the clock reaches it
    gap = ScheduleRules(tz=NY, country="US", restday=R("02:30-04:00"))
    [w] = [w for w in gap.windows(datetime(2026, 3, 8, tzinfo=UTC), datetime(2026, 3, 9, tzinfo=UTC))
           if w.day == date(2026, 3, 8)]
    assert w.start.astimezone(NY).hour == 3 and w.end == datetime(2026, 3, 8, 8, tzinfo=UTC)


def test_no_dst_in_shanghai():
    rules = ScheduleRules(tz=SH, workday=R("02:00-03:00"), restday=R("02:00-03:00"), holiday=R("02:00-03:00"))
    ws = rules.windows(datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert len(ws) >= 364
    assert {(w.start.astimezone(UTC).hour, w.length) for w in ws} == {(18, timedelta(hours=1))}


@pytest.mark.parametrize(("cap", "length", "expected"), [
    (Capacity(fixed=7), timedelta(hours=3), 7),
    (Capacity(agents=2, handle_time=timedelta(minutes=6)), timedelta(minutes=90), 30),
    (Capacity(agents=0), timedelta(hours=1), 0),
])
def test_capacity(cap, length, expected):
    assert cap.of(length) == expected


def test_time_range_parsing():
    assert str(TimeRange.parse("18:30-20:30")) == "18:30-20:30"
    with pytest.raises(ValueError, match="time range"):
        TimeRange.parse("18:30")
