"""A bad CALLBACKD_* value is reported against its variable, not the file, with the form lists and tables take."""

from __future__ import annotations

from pathlib import Path

import pytest

from callback_queue.errors import ConfigError
from daemon.settings import load_settings

CDR = '[sources.cdr]\npath = "Master.csv"\n'


def _error(cfg: Path, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env=env)
    return str(info.value)


def test_a_list_given_as_a_bare_word_names_the_variable_and_the_array_form(tmp_path: Path) -> None:
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(CDR)
    msg = _error(cfg, {"CALLBACKD_SOURCES__CDR__INBOUND_CONTEXTS": "hotline-did"})
    assert msg.splitlines()[0] == "invalid configuration from the environment:"   # not "in callbackd.toml"
    assert str(cfg) not in msg
    line = msg.splitlines()[1]
    assert line.startswith("  sources.cdr.inbound_contexts: Input should be a valid list")
    assert "from CALLBACKD_SOURCES__CDR__INBOUND_CONTEXTS" in line
    assert "read as a TOML array" in line and "'[\"hotline-did\"]'" in line
    # ... and the form it names works
    s = load_settings(cfg, env={"CALLBACKD_SOURCES__CDR__INBOUND_CONTEXTS": '["hotline-did"]'})
    assert s.sources.cdr is not None and s.sources.cdr.inbound_contexts == ["hotline-did"]


def test_tables_and_lists_of_tables_get_their_own_form(tmp_path: Path) -> None:
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text("")
    msg = _error(cfg, {"CALLBACKD_SMS__HOTLINE_NAME": "12345", "CALLBACKD_SOURCES__AMI": "pbx1"})
    hotline = next(x for x in msg.splitlines() if x.startswith("  sms.hotline_name:"))
    assert "from CALLBACKD_SMS__HOTLINE_NAME" in hotline and "TOML inline table" in hotline
    ami = next(x for x in msg.splitlines() if x.startswith("  sources.ami:"))
    assert "from CALLBACKD_SOURCES__AMI" in ami and "'[{ key = \"value\" }]'" in ami


def test_file_and_environment_errors_are_told_apart(tmp_path: Path) -> None:
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text("[detect]\nthreshold = 0\n")
    msg = _error(cfg, {"CALLBACKD_QUEUE__LEASE": "soon"})
    lines = msg.splitlines()
    assert lines[0] == f"invalid configuration in {cfg} and from the environment:"
    threshold = next(x for x in lines if x.startswith("  detect.threshold:"))
    assert "(got 0)" in threshold and "CALLBACKD_" not in threshold
    lease = next(x for x in lines if x.startswith("  queue.lease:"))
    assert "(got 'soon' from CALLBACKD_QUEUE__LEASE)" in lease
    # only the file at fault: the header names the file alone, as before
    assert _error(cfg, {}).splitlines()[0] == f"invalid configuration in {cfg}:"


def test_a_table_made_only_by_a_variable_says_so_when_it_lacks_a_required_key(tmp_path: Path) -> None:
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text("")
    msg = _error(cfg, {"CALLBACKD_SOURCES__CDR__INBOUND_CONTEXTS": '["hotline-did"]'})
    assert msg.splitlines() == [
        "invalid configuration from the environment:",
        "  sources.cdr.path: required setting is missing "
        "([sources.cdr] is set only by CALLBACKD_SOURCES__CDR__INBOUND_CONTEXTS)",
    ]
