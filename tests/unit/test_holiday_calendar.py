"""Day types computed in a child process match the holidays package's own answers."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import pytest

from callback_queue import holiday_calendar as hc
from callback_queue.windows import ScheduleRules


@pytest.mark.parametrize(("country", "subdiv", "year"), [("CN", None, 2026), ("US", "NY", 2024)])
def test_child_matches_in_process(country: str, subdiv: str | None, year: int) -> None:
    child = hc._in_child(country, subdiv, year)
    assert child == hc._compute(country, subdiv, year)
    assert len(child) == (366 if year % 4 == 0 else 365)


def test_chinese_new_year_2026_and_its_worked_saturday() -> None:
    cal = hc.HolidayCalendar("CN")
    # Saturday 2026-02-14 is worked in exchange for the Spring Festival; the 16th and 17th are holidays
    assert [cal.day_type(date(2026, 2, d)) for d in (13, 14, 15, 16, 17)] == [
        "workday", "workday", "restday", "holiday", "holiday"]
    assert ScheduleRules(tz=ZoneInfo("Asia/Shanghai")).day_type(date(2026, 10, 1)) == "holiday"


def test_unknown_country_and_subdivision_are_clear_errors() -> None:
    with pytest.raises(hc.UnknownCalendar, match="no calendar for 'XX'"):
        hc._in_child("XX", None, 2026)
    with pytest.raises(hc.UnknownCalendar, match="ZZ"):
        hc._in_child("US", "ZZ", 2026)
    with pytest.raises(ValueError, match="no calendar"):
        hc.check_country("XX")
