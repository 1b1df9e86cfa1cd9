"""SMS templates are checked with the settings (config check, start, reload all refuse a bad one), and a
component whose reload fails is said to run its old setup (no `daemon.reloaded` as if all went well)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from structlog.testing import capture_logs

from callback_queue.clock import FakeClock
from daemon.cli import cli
from daemon.settings import Settings, load_settings

BAD = '[sms]\ntemplates = { "recall.zh-CN" = "您好 没有链接", "recal.fr" = "x", "followup.en" = "{name}: {link}" }\n'


def test_config_check_names_every_bad_template(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(BAD, encoding="utf-8")
    r = CliRunner().invoke(cli, ["config", "check", "--config", str(cfg)])
    assert r.exit_code == 78, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("  sms.templates:"))
    assert "template 'recall.zh-CN' must contain {link}" in line
    assert "template 'recal.fr': keys are <kind>.<lang>" in line
    assert "template 'followup.en' uses unknown fields ['name']" in line


def test_run_refuses_bad_templates_with_exit_78(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n' + BAD, encoding="utf-8")
    r = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert r.exit_code == 78, r.output
    assert "must contain {link}" in r.output


def test_good_templates_and_route_languages_pass() -> None:
    s = Settings.model_validate({"sms": {"templates": {"recall.en": "{hotline} {link} {optout}"},
                                         "routes": [{"prefix": "+1", "sender": "console", "language": "en"}]}})
    assert s.sms.templates == {"recall.en": "{hotline} {link} {optout}"}
    with pytest.raises(ValidationError, match="no SMS templates in 'fr'"):
        Settings.model_validate({"sms": {"routes": [{"language": "fr"}]}})


class _Broken:
    name = "broken"

    def reload(self, new: object) -> None:
        raise RuntimeError("cannot rebuild")


class _Refuses:
    name = "refuses"

    def __init__(self) -> None:
        self.reloaded = False

    def check_reload(self, new: object) -> None:
        raise ValueError("a check that broke")

    def reload(self, new: object) -> None:
        self.reloaded = True


def _daemon(tmp_path: Path, components: list[object]):
    from daemon.app import Daemon

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n', encoding="utf-8")
    d = Daemon(load_settings(cfg, env={}), store=types.SimpleNamespace(is_sqlite=True), clock=FakeClock())
    d.ingestor = types.SimpleNamespace(rules=None)
    d.components = components
    return d, cfg


def test_reload_refuses_bad_templates_as_a_whole(tmp_path: Path) -> None:
    from sms.service import SmsComponent

    d, cfg = _daemon(tmp_path, [])
    sms = SmsComponent(d)
    d.components = [sms]
    first, settings = sms.outbox, d.settings
    cfg.write_text(cfg.read_text() + BAD, encoding="utf-8")
    with capture_logs() as logs:
        d.reload()
    assert [e["event"] for e in logs] == ["daemon.reload_failed"]
    assert "sms.templates" in logs[0]["error"] and "must contain {link}" in logs[0]["error"]
    assert d.settings is settings and sms.outbox is first


def test_reload_refused_when_the_sms_setup_cannot_be_built(tmp_path: Path) -> None:
    """Aliyun without credentials: refused at check_reload, before anything changed."""
    from sms.service import SmsComponent

    d, cfg = _daemon(tmp_path, [])
    sms = SmsComponent(d)
    d.components = [sms]
    first, settings = sms.outbox, d.settings
    cfg.write_text(cfg.read_text() + '[sms]\nroutes = [{ prefix = "", sender = "aliyun" }]\n', encoding="utf-8")
    with capture_logs() as logs:
        d.reload()
    assert [e["event"] for e in logs] == ["daemon.reload_failed"]
    assert "access_key_id" in logs[0]["error"]
    assert d.settings is settings and sms.outbox is first


def test_reload_uses_the_outbox_check_reload_built(tmp_path: Path) -> None:
    from sms.service import SmsComponent

    d, cfg = _daemon(tmp_path, [])
    sms = SmsComponent(d)
    d.components = [sms]
    cfg.write_text(cfg.read_text() + '[sms]\ntemplates = { "recall.en" = "NEW {link}" }\n', encoding="utf-8")
    with capture_logs() as logs:
        d.reload()
    assert [e["event"] for e in logs] == ["daemon.reloaded"] and logs[0]["changed"] == ["sms"]
    assert sms.outbox.composer.template("recall", "en") == "NEW {link}"


def test_a_check_that_raises_refuses_the_reload(tmp_path: Path) -> None:
    comp = _Refuses()
    d, cfg = _daemon(tmp_path, [comp])
    settings = d.settings
    cfg.write_text(cfg.read_text() + "[queue]\nlease = '20m'\n", encoding="utf-8")
    with capture_logs() as logs:
        d.reload()
    assert [e["event"] for e in logs] == ["daemon.reload_failed"] and "a check that broke" in logs[0]["error"]
    assert d.settings is settings and not comp.reloaded


def test_a_component_reload_failure_is_not_reported_as_reloaded(tmp_path: Path) -> None:
    d, cfg = _daemon(tmp_path, [_Broken()])
    cfg.write_text(cfg.read_text() + "[queue]\nlease = '20m'\n", encoding="utf-8")
    with capture_logs() as logs:
        d.reload()
    assert [e["event"] for e in logs] == ["daemon.reload_failed"]
    assert logs[0]["component"] == "broken" and "cannot rebuild" in logs[0]["error"]
    assert "previous settings" in logs[0]["kept"] and logs[0]["changed"] == ["queue"]
    assert d.queue.lease.total_seconds() == 1200   # the rest of the new configuration is in effect


def test_composer_still_refuses_bad_overrides() -> None:
    from sms.errors import TemplateError
    from sms.templates import Composer

    with pytest.raises(TemplateError, match="keys are"):
        Composer(overrides={"recal.fr": "{link}"})
