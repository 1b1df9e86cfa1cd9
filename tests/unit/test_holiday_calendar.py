"""Day types computed in a child process match the holidays package's own answers; the weekend days of a
holiday block are holidays; years without the official schedule are flagged."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest

from callback_queue import holiday_calendar as hc
from callback_queue.windows import ScheduleRules


@pytest.mark.parametrize(("country", "subdiv", "year"), [("CN", None, 2026), ("US", "NY", 2024)])
def test_child_matches_in_process(country: str, subdiv: str | None, year: int) -> None:
    child = hc._in_child(country, subdiv, year)
    assert child == hc._compute(country, subdiv, year)
    assert len(child.letters) == (366 if year % 4 == 0 else 365) + 2 * hc.MARGIN
    assert child.names  # the year's holiday names come back too


def test_chinese_new_year_2026_and_its_worked_saturday() -> None:
    cal = hc.HolidayCalendar("CN")
    # Saturday 2026-02-14 is worked in exchange for the Spring Festival; the break runs from Sunday the 15th
    assert [cal.day_type(date(2026, 2, d)) for d in (13, 14, 15, 16, 17)] == [
        "workday", "workday", "holiday", "holiday", "holiday"]
    assert ScheduleRules(tz=ZoneInfo("Asia/Shanghai")).day_type(date(2026, 10, 1)) == "holiday"


def _types(cal: hc.HolidayCalendar, first: date, last: date) -> dict[str, str]:
    out, d = {}, first
    while d <= last:
        out[d.isoformat()] = cal.day_type(d)
        d += timedelta(days=1)
    return out


def test_weekend_days_inside_a_holiday_block_are_holidays() -> None:
    cal = hc.HolidayCalendar("CN")
    # Spring Festival 2026: the official break is Feb 15-23 (the package marks only 16-20 and 23)
    spring = _types(cal, date(2026, 2, 14), date(2026, 2, 24))
    assert spring == {"2026-02-14": "workday", **{f"2026-02-{d}": "holiday" for d in range(15, 24)},
                      "2026-02-24": "workday"}
    assert cal.day_type(date(2026, 2, 28)) == "workday"    # the other worked Saturday stays a working day
    # Qingming 2026: Apr 4-6 (Saturday the 4th is not statutory)
    assert _types(cal, date(2026, 4, 3), date(2026, 4, 7)) == {
        "2026-04-03": "workday", "2026-04-04": "holiday", "2026-04-05": "holiday", "2026-04-06": "holiday",
        "2026-04-07": "workday"}
    # National Day 2026: Oct 1-7, Sunday the 4th included; Saturday the 10th is worked
    assert [cal.day_type(date(2026, 10, d)) for d in range(1, 12)] == ["holiday"] * 7 + [
        "workday", "workday", "workday", "restday"]
    # New Year 2027: Friday the 1st and the weekend after it, across the year boundary
    assert _types(cal, date(2026, 12, 31), date(2027, 1, 4)) == {
        "2026-12-31": "workday", "2027-01-01": "holiday", "2027-01-02": "holiday", "2027-01-03": "holiday",
        "2027-01-04": "workday"}
    # an ordinary weekend far from any holiday is unchanged
    assert _types(cal, date(2026, 3, 13), date(2026, 3, 16)) == {
        "2026-03-13": "workday", "2026-03-14": "restday", "2026-03-15": "restday", "2026-03-16": "workday"}


def test_a_weekend_day_in_a_block_takes_the_blocks_name() -> None:
    cal = hc.HolidayCalendar("CN")
    assert cal.holiday_name(date(2026, 2, 15)) == cal.holiday_name(date(2026, 2, 17))
    assert cal.holiday_name(date(2026, 10, 4)) == cal.holiday_name(date(2026, 10, 1))
    assert cal.holiday_name(date(2026, 3, 14)) is None


def test_extra_workdays_are_worked_and_split_a_block() -> None:
    # 2027's schedule is not in the package: an admin adds a worked Sunday by hand
    cal = hc.HolidayCalendar("CN", workdays=[date(2027, 1, 3)])
    assert _types(cal, date(2027, 1, 1), date(2027, 1, 3)) == {
        "2027-01-01": "holiday", "2027-01-02": "holiday", "2027-01-03": "workday"}
    # a listed date is worked even where the package says holiday
    assert hc.HolidayCalendar("CN", workdays=[date(2026, 10, 2)]).day_type(date(2026, 10, 2)) == "workday"
    rules = ScheduleRules(tz=ZoneInfo("Asia/Shanghai"), extra_workdays=frozenset({date(2027, 1, 3)}))
    assert rules.day_type(date(2027, 1, 3)) == "workday" and rules.swapped_workday(date(2027, 1, 3))
    no_country = ScheduleRules(tz=ZoneInfo("UTC"), country=None, extra_workdays=frozenset({date(2026, 12, 5)}))
    assert no_country.day_type(date(2026, 12, 5)) == "workday"
    assert no_country.day_type(date(2026, 12, 6)) == "restday"


def test_years_without_the_state_council_schedule_are_provisional() -> None:
    assert not hc.year_data("CN", None, 2026).provisional     # 2026's notice is in the package
    assert hc.year_data("CN", None, 2027).provisional
    assert hc.provisional_years("CN", None, date(2026, 12, 1), date(2027, 2, 1)) == [2027]
    assert hc.provisional_years("CN", None, date(2026, 1, 1), date(2026, 12, 31)) == []
    assert hc.provisional_years(None, None, date(2026, 1, 1), date(2030, 1, 1)) == []
    # a calendar without yearly swapped days (the US) is never provisional
    assert hc.provisional_years("US", None, date(2026, 1, 1), date(2030, 1, 1)) == []
    msg = hc.provisional_warning(2027, "CN")
    assert msg.startswith("2027: the State Council schedule is not in holidays 0.")
    assert "[schedule] extra_workdays" in msg and "调休" in msg


def test_the_daemon_logs_each_provisional_year_once() -> None:
    from types import SimpleNamespace

    import structlog
    from structlog.testing import capture_logs

    sc = SimpleNamespace(country="CN", subdivision=None, horizon=timedelta(days=60))
    with capture_logs() as logs:
        assert hc.log_provisional(structlog.get_logger(), sc, date(2026, 11, 27)) == [2027]
    assert [(x["event"], x["year"], x["log_level"]) for x in logs] == [("calendar.provisional", 2027, "warning")]
    with capture_logs() as logs:
        assert hc.log_provisional(structlog.get_logger(), SimpleNamespace(**{**vars(sc), "horizon": timedelta(
            days=7)}), date(2026, 11, 27)) == []
        assert hc.log_provisional(structlog.get_logger(), None, date(2026, 11, 27)) == []
    assert logs == []


def test_the_daemon_does_not_import_holidays() -> None:
    """The memory win: the parent keeps letters and names, the package stays in the child."""
    code = ("import sys; from datetime import date; from callback_queue.holiday_calendar import HolidayCalendar;"
            "c = HolidayCalendar('CN'); assert c.day_type(date(2026, 2, 15)) == 'holiday';"
            "assert c.holiday_name(date(2026, 2, 15)); assert c.provisional(2027);"
            "assert 'holidays' not in sys.modules, 'holidays imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_unknown_country_and_subdivision_are_clear_errors() -> None:
    with pytest.raises(hc.UnknownCalendar, match="no calendar for 'XX'"):
        hc._in_child("XX", None, 2026)
    with pytest.raises(hc.UnknownCalendar, match="ZZ.*valid: .*NY"):
        hc._in_child("US", "ZZ", 2026)
    with pytest.raises(hc.UnknownCalendar, match="no subdivision 'BJ' for CN; CN has none"):
        hc._in_child("CN", "BJ", 2026)
    with pytest.raises(ValueError, match="no calendar"):
        hc.check_country("XX")
