"""`config check` prints the effective configuration as TOML that loads back: no null inside a list of
tables (it printed `routes = [{"prefix": "", ..., "language": null}]`), lists of tables as [[a.b]], keys
such as "recall.en" quoted."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from daemon.cli import _toml, cli
from daemon.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]

FULL = """
[daemon]
state_dir = "{tmp}"

[[sources.ami]]
name = "pbx1"
host = "10.0.0.5"
username = "callbackd"
secret = "s3cret"

[[sources.ami]]
name = "pbx2"
username = "callbackd"
secret_file = "{tmp}/pbx2_secret"

[schedule]
workday = ["12:00-13:30"]
quiet_hours = ["21:00-08:30"]
weekdays = {{ sat = ["10:00-11:00"] }}
capacity = {{ fixed = 10 }}

[sms]
templates = {{ "recall.en" = "{{hotline}}: \\"rate us\\" {{link}}" }}

[[sms.routes]]
prefix = "+1"
sender = "console"
language = "en"

[[sms.routes]]
prefix = ""
sender = "console"
"""


def _without_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_without_none(x) for x in v if x is not None]
    return v


def _check(cfg: Path) -> dict[str, Any]:
    r = CliRunner().invoke(cli, ["config", "check", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    parsed = tomllib.loads(r.output)   # the whole output, its header comment included
    assert parsed == _without_none(load_settings(cfg).redacted())
    return parsed


@pytest.mark.parametrize("which", ["empty", "shipped"])
def test_default_configuration_prints_as_toml(tmp_path: Path, which: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("" if which == "empty" else (ROOT / "config" / "callbackd.toml").read_text(encoding="utf-8"),
                   encoding="utf-8")
    parsed = _check(cfg)
    assert parsed["sms"]["routes"] == [{"prefix": "", "sender": "console"}]


def test_lists_of_tables_schedule_and_dotted_keys_print_as_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(FULL.format(tmp=tmp_path), encoding="utf-8")
    (tmp_path / "pbx2_secret").write_text("other-secret\n", encoding="utf-8")
    parsed = _check(cfg)
    assert [a["name"] for a in parsed["sources"]["ami"]] == ["pbx1", "pbx2"]
    assert "s3cret" not in str(parsed) and "other-secret" not in str(parsed)
    assert parsed["sms"]["routes"][0] == {"prefix": "+1", "sender": "console", "language": "en"}
    assert "language" not in parsed["sms"]["routes"][1]
    assert parsed["sms"]["templates"] == {"recall.en": '{hotline}: "rate us" {link}'}
    assert parsed["schedule"]["weekdays"] == {"sat": ["10:00-11:00"]}
    # and the printed configuration is one the daemon takes back
    again = tmp_path / "again.toml"
    again.write_text(CliRunner().invoke(cli, ["config", "check", "--config", str(cfg)]).output, encoding="utf-8")
    assert load_settings(again).sms.routes == load_settings(cfg).sms.routes


def test_inline_values_leave_none_out() -> None:
    out = _toml({"a": {"x": [{"k": 1, "n": None}], "m": [[1, None]], "e": {}}})
    assert tomllib.loads(out) == {"a": {"x": [{"k": 1}], "m": [[1]], "e": {}}}
