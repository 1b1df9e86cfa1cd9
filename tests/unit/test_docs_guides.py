"""What the guides tell operators and admins exists: the API routes and commands docs/operators.md names, the
setting docs/production.md turns /metrics public with, the opt-out replies docs/admin.md lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.cli import cli
from daemon.http.api import OPS
from daemon.settings import ConsoleSettings
from sms.contacts import is_optout
from sms.templates import Composer

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_api_routes_in_the_operator_guide_exist() -> None:
    text = (DOCS / "operators.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(GET|POST|DELETE) (/api/[^`?\s]*)`", text))
    assert len(named) >= 7
    routes = {(op.method, op.path.replace("{callback_id:int}", "{id}")) for op in OPS}
    assert named <= routes, named - routes
    assert "`GET /openapi.json`" in text


@pytest.mark.parametrize("command", [["users", "add"], ["users", "token"], ["users", "disable"], ["users", "enable"]])
def test_the_user_commands_in_the_operator_guide_exist(command: list[str]) -> None:
    assert " ".join(command) in (DOCS / "operators.md").read_text(encoding="utf-8")
    assert CliRunner().invoke(cli, [*command, "--help"]).exit_code == 0


def test_metrics_public_is_the_setting_the_production_guide_names() -> None:
    assert "`[console] metrics_public = true`" in (DOCS / "production.md").read_text(encoding="utf-8")
    assert ConsoleSettings.model_fields["metrics_public"].default is False


def test_the_opt_out_replies_in_the_admin_guide_work() -> None:
    text = (DOCS / "admin.md").read_text(encoding="utf-8")
    for word in ("STOP", "退订", "TD", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "取消订阅"):
        assert word in text
        assert is_optout(word) and is_optout(word.lower()) and is_optout(f" {word}! ")
    assert is_optout("请帮我退订") and not is_optout("谢谢")
    # the default Chinese text asks for the word the guide quotes
    body = Composer().render("recall", "zh-CN", link="https://x.example/r/abc").body
    assert body.endswith("回复TD退订") and "回复TD退订" in text
