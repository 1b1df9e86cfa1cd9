"""Do-not-contact blocks callbacks too: the detector opens them already cancelled, claims (operators and
dialers) pass them over; follow-ups from the CLI and CSV; `sms preview`; secrets redacted."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner
from sms_support import callback_state, events, write_config

from callback_queue import schema as t
from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.dialing import DialQueue
from callback_queue.ingest import Ingestor
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from daemon.cli import cli
from sms.contacts import DoNotContact

LISTED, OTHER = "+8613800000001", "+8613800000002"


def _failures(number: str, first: datetime) -> list[Attempt]:
    start = int(first.timestamp())
    return [Attempt(system="pbx", call_id=f"{number}-{i}", caller=number, number=number, started_ts=start + i * 60,
                    ended_ts=start + i * 60 + 40, outcome=Outcome.FAILED, reason="abandon", wait_seconds=40,
                    queue="hotline", origin=Origin.QUEUE_LOG) for i in range(3)]


def test_listed_numbers_are_never_called(store: Store, clock: FakeClock) -> None:
    DoNotContact(store, clock).add(LISTED, "sms-reply", "退订")
    ingest = Ingestor(store, clock, DetectRules(threshold=3, min_wait_seconds=0))
    res = ingest.ingest(_failures(LISTED, clock.now() - timedelta(hours=1))
                        + _failures(OTHER, clock.now() - timedelta(hours=1)))
    assert len(res.opened) == 2
    by_number = {}
    with store.read() as conn:
        for r in conn.execute(sa.select(t.callbacks.c.id, t.callbacks.c.number, t.callbacks.c.state)):
            by_number[r.number] = (r.id, r.state)
    assert by_number[LISTED][1] == "cancelled" and by_number[OTHER][1] == "pending"
    assert [e.event for e in events(store, by_number[LISTED][0])] == ["opened", "cancelled"]
    queue = CallbackQueue(store, clock)
    claimed = queue.claim("alice", 5)
    assert [c.number for c in claimed] == [OTHER]


def test_claims_skip_a_number_listed_after_opening(store: Store, clock: FakeClock) -> None:
    ingest = Ingestor(store, clock, DetectRules(threshold=3, min_wait_seconds=0))
    ingest.ingest(_failures(LISTED, clock.now() - timedelta(hours=1)))
    with store.write() as conn:   # listed by another daemon that has not cancelled it yet
        conn.execute(t.do_not_contact.insert().values(number=LISTED, source="operator", created_at=clock.now()))
    queue = CallbackQueue(store, clock)
    assert queue.claim("alice", 5) == []
    assert DialQueue(queue).claim_for_dial("twilio", "w1", 5, lease=timedelta(minutes=5)) == []


def test_followups_cli_add_import_list(store_url: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, store_url)
    run = CliRunner()
    r = run.invoke(cli, ["followups", "add", "--number", "13800138000", "--request-id", "XN-1", "--config",
                         str(cfg)])
    assert r.exit_code == 0, r.output
    assert "for request XN-1: pending" in r.output
    csv = tmp_path / "f.csv"
    csv.write_text("number,request_id,priority\n13900139000,XN-2,1\n13800138000,XN-1,\n13700137000,XN-3,\n"
                   "not-a-number,XN-4,\n13800138000,XN-5,\n", encoding="utf-8")
    r = run.invoke(cli, ["followups", "import", str(csv), "--config", str(cfg)])
    assert r.exit_code == 1                               # some rows were refused, and said why
    assert "2 created, 1 already there, 2 refused" in r.output
    assert "line 5" in r.output and "line 6" in r.output and "already has open followup callback" in r.output
    r = run.invoke(cli, ["followups", "list", "--format", "json", "--config", str(cfg)])
    rows = json.loads(r.output)
    assert sorted(x["request_id"] for x in rows) == ["XN-1", "XN-2", "XN-3"]
    assert {x["number"] for x in rows} == {"+8613800138000", "+8613900139000", "+8613700137000"}
    # the do-not-contact list refuses new follow-ups and cancels open ones
    r = run.invoke(cli, ["dnc", "add", "13900139000", "--reason", "asked", "--config", str(cfg)])
    assert r.exit_code == 0 and "added +86139****9000; cancelled callback " in r.output
    r = run.invoke(cli, ["followups", "add", "--number", "13900139000", "--request-id", "XN-9", "--config",
                         str(cfg)])
    assert r.exit_code == 1 and "do-not-contact" in r.output
    r = run.invoke(cli, ["dnc", "list", "--format", "json", "--config", str(cfg)])
    assert [x["number"] for x in json.loads(r.output)] == ["+8613900139000"]
    assert run.invoke(cli, ["dnc", "remove", "13900139000", "--config", str(cfg)]).exit_code == 0
    store = Store(store_url)
    try:
        xn2 = [x["id"] for x in rows if x["request_id"] == "XN-2"][0]
        assert callback_state(store, xn2) == "cancelled"
    finally:
        store.dispose()


def test_sms_preview_and_segment_limit(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n[http]\npublic_url = "https://cb.example.gov.cn"\n',
                   encoding="utf-8")
    r = CliRunner().invoke(cli, ["sms", "preview", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "== recall.zh-CN: UCS-2" in r.output and "== followup.en: GSM-7" in r.output
    assert "https://cb.example.gov.cn/r/" in r.output and "XN-2026-000123" in r.output
    cfg.write_text(cfg.read_text() + "[sms]\nmax_segments = 1\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["sms", "preview", "--kind", "recall", "--lang", "zh-CN", "--config", str(cfg)])
    assert r.exit_code == 1 and "TOO LONG" in r.output and "at most 1" in r.output
    cfg.write_text(cfg.read_text().replace("max_segments = 1", 'templates = { "recall.en" = "{nope}" }'),
                   encoding="utf-8")
    r = CliRunner().invoke(cli, ["sms", "preview", "--config", str(cfg)])
    assert r.exit_code == 78 and "sms.templates: template 'recall.en' uses unknown fields" in r.output  # settings


def test_secrets_are_redacted_and_read_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "twilio_token"
    secret.write_text("file-token-123\n", encoding="utf-8")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[twilio]\naccount_sid = "AC{"0" * 32}"\nauth_token_file = "{secret}"\n'
                   '[aliyun]\naccess_key_id = "LTAI"\naccess_key_secret = "ali-secret-456"\n', encoding="utf-8")
    r = CliRunner().invoke(cli, ["config", "check", "--format", "json", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "file-token-123" not in r.output and "ali-secret-456" not in r.output
    data = json.loads(r.output)
    assert data["twilio"]["auth_token"] == "(redacted)" and data["aliyun"]["access_key_secret"] == "(redacted)"
    from daemon.settings import load_settings

    s = load_settings(cfg, env={"CALLBACKD_TWILIO__AUTH_TOKEN": "env-token"})
    assert s.twilio.auth_token is not None and s.twilio.auth_token.get_secret_value() == "env-token"
    s = load_settings(cfg, env={})
    assert s.twilio.auth_token is not None and s.twilio.auth_token.get_secret_value() == "file-token-123"
