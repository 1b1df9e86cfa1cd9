"""`callbackd doctor`: every check passes on a good installation; each problem is named with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.cli import cli

pytestmark = pytest.mark.usefixtures("clean_cli_env")


def config(tmp: Path, url: str, qlog: Path) -> Path:
    cfg = tmp / "callbackd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp / "state"}"\n[store]\nurl = "{url}"\n[http]\nport = 0\n'
                   f'[sources.queue_log]\npath = "{qlog}"\n')
    return cfg


def test_a_good_installation(tmp_path: Path, store_url: str):
    qlog = tmp_path / "queue_log"
    qlog.write_text("")
    r = CliRunner().invoke(cli, ["doctor", "--config", str(config(tmp_path, store_url, qlog))])
    assert r.exit_code == 0, r.output
    assert "✓ database:" in r.output and "schema current" in r.output
    assert "✓ queue_log file:" in r.output and "all good" in r.output
    if "postgresql" in store_url:
        assert "✓ clock: agrees with the database" in r.output


def test_problems_are_named_with_what_to_do(tmp_path: Path):
    empty_db = f"sqlite:///{tmp_path / 'empty.db'}"
    r = CliRunner().invoke(cli, ["doctor", "--config", str(config(tmp_path, empty_db, tmp_path / "nope" / "q"))])
    assert r.exit_code == 1
    assert "✗ database:" in r.output and "run `callbackd db upgrade`" in r.output
    assert "✗ queue_log file:" in r.output and "check [sources.queue_log] path" in r.output
    assert "2 problems found" in r.output


def test_an_unreachable_database(tmp_path: Path):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    r = CliRunner().invoke(cli, ["doctor", "--config", str(config(tmp_path, url, tmp_path / "q"))])
    assert r.exit_code == 1
    assert "✗ database: postgresql+psycopg://nobody@127.0.0.1:1/none" in r.output
    assert "check [store] url" in r.output


def test_a_bad_config_is_a_failed_check(tmp_path: Path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[detect]\nthreshold = 0\n")
    r = CliRunner().invoke(cli, ["doctor", "--config", str(cfg)])
    assert r.exit_code == 1 and "✗ config:" in r.output and "detect.threshold" in r.output
