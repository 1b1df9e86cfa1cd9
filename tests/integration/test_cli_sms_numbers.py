"""`sms list`, `followups list` and `dnc list`: the table masks numbers unless --show-numbers; json and csv carry
them in full (as `callbacks list`), json with UTC times."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sms_support import write_config

from callback_queue import schema as t
from callback_queue.numbers import mask
from daemon.cli import cli

FOLLOWUP, LISTED = "+8613800138000", "+8613900139000"


@pytest.fixture
def cfg(store_url: str, tmp_path: Path) -> Path:
    cfg = write_config(tmp_path, store_url)
    run = CliRunner()
    r = run.invoke(cli, ["followups", "add", "--number", "13800138000", "--request-id", "XN-1", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["dnc", "add", "13900139000", "--reason", "asked", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    eng = sa.create_engine(store_url)
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    with eng.begin() as c:
        cb_id = c.execute(sa.select(t.callbacks.c.id).where(t.callbacks.c.number == FOLLOWUP)).scalar_one()
        c.execute(t.sms_messages.insert().values(callback_id=cb_id, number=FOLLOWUP, sender="console", lang="en",
                                                 body="hello", state="sent", created_at=now, updated_at=now))
    eng.dispose()
    return cfg


@pytest.mark.parametrize(("command", "number"), [
    (["dnc", "list"], LISTED),
    (["sms", "list"], FOLLOWUP),
    (["followups", "list"], FOLLOWUP),
])
def test_tables_mask_numbers_unless_asked(cfg: Path, command: list[str], number: str) -> None:
    run = CliRunner()
    r = run.invoke(cli, [*command, "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert number not in r.output and mask(number) in r.output
    r = run.invoke(cli, [*command, "--show-numbers", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert number in r.output
    r = run.invoke(cli, [*command, "--format", "json", "--config", str(cfg)])
    assert [x["number"] for x in json.loads(r.output)] == [number]
    r = run.invoke(cli, [*command, "--format", "csv", "--config", str(cfg)])
    assert number in r.output and "*" not in r.output


def test_dnc_json_has_utc_times(cfg: Path) -> None:
    r = CliRunner().invoke(cli, ["dnc", "list", "--format", "json", "--config", str(cfg)])
    (row,) = json.loads(r.output)
    assert row["number"] == LISTED and row["source"] == "operator" and row["reason"] == "asked"
    assert row["created_at"].endswith("Z")
    assert datetime.fromisoformat(row["created_at"]).tzinfo is not None
