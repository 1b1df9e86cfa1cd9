"""A misspelt key gets "did you mean" from the settings of its own table; every bad [schedule] entry is named
in one run, not only the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from callback_queue.errors import ConfigError
from daemon.settings import load_settings


def _error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env=env or {})
    return str(info.value).splitlines()[1:]


def _line(lines: list[str], field: str) -> str:
    return next(x for x in lines if x.startswith(f"  {field}:"))


@pytest.mark.parametrize(("toml", "field", "meant"), [
    ("[detect]\ntreshold = 3\n", "detect.treshold", "threshold"),
    ("[detect]\nThreshold = 3\n", "detect.Threshold", "threshold"),
    ("[detct]\nthreshold = 3\n", "detct", "detect"),
    ("[schedule]\nworkdays = []\n", "schedule.workdays", "workday"),                 # an optional table
    ("[schedule.capacity]\nagent = 3\n", "schedule.capacity.agent", "agents"),       # a table in it
    ("[[sources.ami]]\nname = 'pbx1'\nhostt = 'x'\nusername = 'u'\nsecret = 's'\n",  # a list of tables
     "sources.ami.0.hostt", "host"),
    ("[retry.rules.busy]\ndela = '1m'\ntimes = 1\n", "retry.rules.busy.dela", "delay"),  # a table of tables
    ("[sms]\nroute = []\n", "sms.route", "routes"),
])
def test_an_unknown_key_close_to_a_setting_of_its_table_gets_did_you_mean(tmp_path: Path, toml: str, field: str,
                                                                           meant: str) -> None:
    line = _line(_error(tmp_path, toml), field)
    assert line.startswith(f"  {field}: unknown setting")
    assert line.endswith(f"; did you mean '{meant}'?")


def test_no_suggestion_when_nothing_is_close_nor_from_another_table(tmp_path: Path) -> None:
    lines = _error(tmp_path, "[detect]\nzzzzzz = 1\n[queue]\nthreshold = 3\n")
    assert _line(lines, "detect.zzzzzz") == "  detect.zzzzzz: unknown setting (got 1)"
    assert _line(lines, "queue.threshold") == "  queue.threshold: unknown setting (got 3)"   # detect's, not queue's


def test_origin_is_not_suggested_as_a_setting(tmp_path: Path) -> None:
    assert _line(_error(tmp_path, "origins = 'x'\n"), "origins") == "  origins: unknown setting (got 'x')"


def test_a_misspelt_variable_is_told_the_variable_it_meant(tmp_path: Path) -> None:
    line = _line(_error(tmp_path, "", {"CALLBACKD_DETECT__TRESHOLD": "3"}), "detect.treshold")
    assert line == ("  detect.treshold: unknown setting (got 3 from CALLBACKD_DETECT__TRESHOLD); "
                    "did you mean 'threshold' (CALLBACKD_DETECT__THRESHOLD)?")


def test_every_bad_schedule_entry_is_reported_at_once(tmp_path: Path) -> None:
    lines = _error(tmp_path, '[schedule]\nworkday = ["25:00-26:00", "12:00-13:00", "xx"]\n'
                             'quiet_hours = ["21:00-xx"]\n'
                             'closures = ["2026-13-01", "2026-10-01", "2026-12-24T18:00/later"]\n'
                             'weekdays = { fri = ["1-2"] }\n')
    assert _line(lines, "schedule.workday").startswith(
        "  schedule.workday: '25:00-26:00' and 'xx' are not time ranges such as '12:00-13:30'")
    assert _line(lines, "schedule.quiet_hours").startswith(
        "  schedule.quiet_hours: '21:00-xx' is not a time range such as '12:00-13:30'")
    assert _line(lines, "schedule.closures").startswith(
        "  schedule.closures: '2026-13-01' and '2026-12-24T18:00/later' are not dates or start/end ranges")
    assert _line(lines, "schedule.weekdays.fri")
    assert len(lines) == 4


def test_three_bad_entries_are_listed_with_commas(tmp_path: Path) -> None:
    line = _line(_error(tmp_path, '[schedule.learned]\nallowed = ["a", "08:00-20:00", "b", "c"]\n'),
                 "schedule.learned.allowed")
    assert line.startswith("  schedule.learned.allowed: 'a', 'b' and 'c' are not time ranges")


def test_dialer_refuses_a_misspelt_key_and_a_dialer_table_that_is_not_a_table(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dialer]\nkindd = "ami"\n')
    with pytest.raises(ConfigError, match=r"dialer: unknown setting 'kindd'; did you mean 'kind'\?"):
        load_settings(cfg, env={})
    cfg.write_text('[dialer]\nami = 3\n')
    with pytest.raises(ConfigError, match=r"\[dialer.ami\] must be a table"):
        load_settings(cfg, env={})
    cfg.write_text('[dialer]\nkind = "manual"\n[dialer.ami]\npbx = "a"\n')
    assert load_settings(cfg, env={}).dialer.model_extra == {"ami": {"pbx": "a"}}


def test_origin_is_not_a_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('origin = "elsewhere"\n')
    with pytest.raises(ConfigError, match=r"origin: unknown setting"):
        load_settings(cfg, env={})
    cfg.write_text("")
    assert load_settings(cfg, env={}).origin == str(cfg)
