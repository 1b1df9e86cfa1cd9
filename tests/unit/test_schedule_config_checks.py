"""[schedule] mistakes that used to pass `config check`: a subdivision the country does not have, overlapping
windows, an empty window, a window wholly inside quiet hours, extra working days that are not dates."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from callback_queue.errors import ConfigError
from callback_queue.windows import EmptyRange, ScheduleRules, TimeRange
from daemon.settings import load_settings

SH = ZoneInfo("Asia/Shanghai")


def _error(tmp_path: Path, schedule: str) -> str:
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f"[schedule]\n{schedule}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    return str(info.value)


def _ok(tmp_path: Path, schedule: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f"[schedule]\n{schedule}\n", encoding="utf-8")
    return load_settings(cfg, env={}).schedule


def test_a_subdivision_the_country_does_not_have_is_refused_with_the_choices(tmp_path: Path) -> None:
    msg = _error(tmp_path, 'subdivision = "BJ"')
    assert "schedule.subdivision: the holidays package has no subdivision 'BJ' for CN; CN has none: leave " \
           "subdivision unset" in msg
    msg = _error(tmp_path, 'country = "US"\nsubdivision = "ZZ"')
    assert "schedule.subdivision:" in msg and "valid: " in msg and "NY" in msg
    assert "schedule.subdivision: a subdivision needs a country" in _error(tmp_path, 'country = ""\n'
                                                                                     'subdivision = "NY"')
    assert _ok(tmp_path, 'country = "US"\nsubdivision = "NY"').subdivision == "NY"


def test_overlapping_windows_are_refused(tmp_path: Path) -> None:
    msg = _error(tmp_path, 'workday = ["12:00-13:30", "13:00-14:00"]')
    assert "schedule.workday: windows overlap: '12:00-13:30' and '13:00-14:00'" in msg
    msg = _error(tmp_path, 'quiet_hours = []\n[schedule.weekdays]\nfri = ["23:00-01:00", "00:30-02:00"]')
    assert "schedule.weekdays.fri: windows overlap: '23:00-01:00' and '00:30-02:00'" in msg  # across midnight
    assert _ok(tmp_path, 'workday = ["12:00-13:30", "13:30-14:00"]').workday == ["12:00-13:30", "13:30-14:00"]


def test_an_empty_window_is_refused_and_all_day_is_00_to_24(tmp_path: Path) -> None:
    msg = _error(tmp_path, 'holiday = ["12:00-12:00"]')
    assert "schedule.holiday: '12:00-12:00' is an empty window" in msg and "'00:00-24:00'" in msg
    assert "is an empty window" in _error(tmp_path, 'quiet_hours = []\nrestday = ["00:00-00:00"]')
    assert _ok(tmp_path, 'quiet_hours = []\nrestday = ["00:00-24:00"]').restday == ["00:00-24:00"]
    with pytest.raises(EmptyRange):
        TimeRange.parse("08:15-08:15")


def test_a_window_wholly_inside_quiet_hours_is_refused(tmp_path: Path) -> None:
    msg = _error(tmp_path, 'workday = ["12:00-13:30", "22:00-23:00"]\nquiet_hours = ["21:00-08:30"]')
    assert "workday '22:00-23:00': entirely inside quiet_hours ['21:00-08:30']" in msg
    msg = _error(tmp_path, '[schedule.weekdays]\nsat = ["06:00-07:00"]')
    assert "weekdays.sat '06:00-07:00': entirely inside quiet_hours" in msg
    # partly inside: cut, not refused
    assert _ok(tmp_path, 'workday = ["20:00-22:00"]').workday == ["20:00-22:00"]


def test_extra_workdays_must_be_dates(tmp_path: Path) -> None:
    msg = _error(tmp_path, 'extra_workdays = ["2027-02-20", "12:00-13:30", "2027-02-30"]')
    assert "schedule.extra_workdays: '12:00-13:30' and '2027-02-30' are not dates such as '2027-02-20'" in msg
    assert _ok(tmp_path, 'extra_workdays = ["2027-02-20"]').extra_workdays == ["2027-02-20"]


def test_time_range_overlap_and_inside() -> None:
    P = TimeRange.parse
    assert P("12:00-13:30").overlaps(P("13:00-14:00"))
    assert not P("12:00-13:30").overlaps(P("13:30-14:00"))
    assert P("23:00-01:00").overlaps(P("00:30-02:00"))
    assert P("00:00-24:00").overlaps(P("05:00-06:00"))
    assert P("22:00-23:00").inside([P("21:00-08:30")]) and P("06:00-07:00").inside([P("21:00-08:30")])
    assert not P("20:00-23:00").inside([P("21:00-08:30")])
    assert P("20:00-23:00").inside([P("21:00-08:30"), P("19:00-21:00")])
    assert not P("06:00-07:00").inside([])


def test_why_a_day_has_no_windows() -> None:
    R = TimeRange.parse
    closure = (datetime(2026, 11, 29, tzinfo=SH).astimezone(UTC), datetime(2026, 11, 30, tzinfo=SH).astimezone(UTC))
    rules = ScheduleRules(tz=SH, workday=(R("12:00-13:00"),), restday=(R("10:00-11:00"),), holiday=(),
                          quiet=(R("21:00-08:30"),), closures=(closure,))
    assert rules.why_no_windows(date(2026, 11, 29)) == "closure"
    assert rules.why_no_windows(date(2026, 10, 4)) == "no holiday windows configured"
    assert rules.why_no_windows(date(2026, 11, 30)) == ""
    night = ScheduleRules(tz=SH, workday=(R("22:00-23:00"),), quiet=(R("21:00-08:30"),))
    assert night.why_no_windows(date(2026, 11, 30)) == "quiet hours"


def test_the_daemon_plans_with_extra_workdays() -> None:
    from datetime import date

    from daemon.app import schedule_rules
    from daemon.settings import Settings

    s = Settings.model_validate({"daemon": {"timezone": "Asia/Shanghai"},
                                 "schedule": {"workday": ["12:00-13:30"], "extra_workdays": ["2027-02-20"]}})
    rules = schedule_rules(s)
    assert rules.extra_workdays == frozenset({date(2027, 2, 20)})
