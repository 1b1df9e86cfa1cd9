"""`callbackd schedule preview` shows every day - its type, holiday name, 调休 mark and why it has no windows -
from any date, far ahead; years the holidays package lacks the official schedule of are named (preview, doctor)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from callback_queue.clock import FakeClock
from callback_queue.store import Store
from daemon.cli import cli
from daemon.doctor import calendar_results
from daemon.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_cli_env")


def _settings(**schedule: object) -> Settings:
    return Settings.model_validate({"daemon": {"timezone": "Asia/Shanghai"},
                                    "schedule": {"holiday": [], "capacity": {"fixed": 3}, **schedule}})


def test_every_day_is_listed_with_why_it_has_no_windows(store: Store, clock: FakeClock) -> None:
    from daemon.schedule_preview import build

    # the clock is Friday 2026-11-27: Saturday 28, Sunday 29 (closed), Monday 30
    data = build(_settings(closures=["2026-11-29"]), store, clock.now(), days=3, start=date(2026, 11, 28))
    days = {d["date"]: d for d in data["days"]}
    assert list(days) == ["2026-11-28", "2026-11-29", "2026-11-30"]
    assert days["2026-11-29"]["windows"] == [] and days["2026-11-29"]["no_windows"] == "closure"
    assert days["2026-11-28"]["no_windows"] is None and len(days["2026-11-28"]["windows"]) == 2


def test_spring_festival_ahead_holiday_names_and_worked_saturdays(store: Store, clock: FakeClock) -> None:
    from daemon.schedule_preview import build

    data = build(_settings(), store, clock.now(), days=16, start=date(2026, 2, 13))
    days = {d["date"]: d for d in data["days"]}
    assert len(days) == 16 and data["from"] == "2026-02-13" and data["to"] == "2026-02-28"
    sat = days["2026-02-14"]
    assert (sat["type"], sat["swapped_workday"], sat["holiday"]) == ("workday", True, None)
    assert sat["windows"] and all(w["past"] for w in sat["windows"])   # before the clock's now
    for d in range(15, 24):   # the whole break, weekends included
        day = days[f"2026-02-{d}"]
        assert (day["type"], day["windows"]) == ("holiday", []), day
        assert day["holiday"] and day["no_windows"] == "no holiday windows configured"
    assert days["2026-02-15"]["holiday"] == days["2026-02-17"]["holiday"]   # the Sunday takes the block's name
    assert days["2026-02-28"]["swapped_workday"] and not days["2026-02-13"]["swapped_workday"]


def test_provisional_years_are_warned_about(store: Store, clock: FakeClock) -> None:
    from daemon.schedule_preview import build

    data = build(_settings(), store, clock.now(), days=3, start=date(2040, 1, 1))
    assert data["provisional_years"] == [2040]
    assert data["warnings"][0].startswith("2040: the State Council schedule is not in holidays ")
    assert build(_settings(), store, clock.now(), days=3, start=date(2026, 3, 2))["warnings"] == []


def test_the_cli_from_and_a_long_range(tmp_path: Path, store_url: str) -> None:
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\ntimezone = "Asia/Shanghai"\n'
                   f'[store]\nurl = "{store_url}"\n[schedule]\nholiday = []\nclosures = ["2026-03-03"]\n',
                   encoding="utf-8")
    r = CliRunner().invoke(cli, ["schedule", "preview", "--config", str(cfg), "--from", "2026-02-13", "--days", "400",
                                 "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert len(data["days"]) == 400 and data["to"] == (date(2026, 2, 13) + timedelta(days=399)).isoformat()
    assert 2027 in data["provisional_years"]
    r = CliRunner().invoke(cli, ["schedule", "preview", "--config", str(cfg), "--from", "2026-02-13", "--days", "20"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any("2026-02-14 sat" in x and "调休" in x for x in lines)
    assert any("2026-02-15 sun" in x and "│ holiday " in x and "│ -" in x for x in lines)   # listed, no window
    assert "no holiday windows" in r.output
    assert any("2026-03-03 tue" in x and "no windows: closure" in x for x in lines)
    r = CliRunner().invoke(cli, ["schedule", "preview", "--config", str(cfg), "--days", "401"])
    assert r.exit_code == 2 and "401" in r.output


def test_doctor_names_a_year_without_the_official_schedule() -> None:
    sc = _settings().schedule
    got = list(calendar_results(sc, date(2026, 11, 27)))     # 60 days ahead reach 2027
    assert [(x.name, x.ok, x.warning) for x in got] == [("calendar", True, True)]
    assert got[0].detail.startswith("2027: the State Council schedule is not in holidays")
    got = list(calendar_results(sc, date(2026, 3, 1)))
    assert [(x.ok, x.warning) for x in got] == [(True, False)] and "known to 2026-04-30" in got[0].detail
    assert list(calendar_results(None, date(2026, 3, 1))) == []
