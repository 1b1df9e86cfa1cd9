"""What a new user's walkthrough of the CLI found: usage errors without tracebacks, messages that say what to do,
users enabled again, local times in every table, `claim` with nothing due, doctor's wording."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support.cli_runner import in_process_cli, ok

from callback_queue import schema as t
from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.callbacks import State
from callback_queue.clock import FakeClock, SystemClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.store import Store
from callback_queue.users import Users
from daemon.cli import cli

SH = ZoneInfo("Asia/Shanghai")
LOCAL = re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b")


pytestmark = pytest.mark.usefixtures("clean_cli_env")


@pytest.fixture
def run(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """The CLI in-process on the test's store, in Shanghai time."""
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\ntimezone = "Asia/Shanghai"\n'
                   f'[store]\nurl = "{store_url}"\n', encoding="utf-8")
    yield in_process_cli(cfg, monkeypatch)


_ok = ok


def _due(store: Store, number: str = "+8613900000001") -> int:
    """One callback, due now (the CLI claims with the system clock)."""
    start = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    Ingestor(store, FakeClock(datetime.now(UTC) - timedelta(minutes=30)), DetectRules(min_wait_seconds=0)).ingest(
        [Attempt("pbx", f"c{i}", number[3:], number, start + i * 60, start + i * 60 + 20, Outcome.FAILED,
                 "abandon", 20, "hotline", Origin.QUEUE_LOG) for i in range(3)])
    with store.read() as conn:
        return int(conn.execute(sa.select(t.callbacks.c.id).where(t.callbacks.c.number == number)).scalar_one())


# -- D1: report with its days the wrong way round --------------------------------------------------
def test_report_since_after_until_is_a_usage_error_naming_both_days(run, store: Store) -> None:
    r = run("report", "--since", "2026-12-01", "--until", "2026-11-01")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "--since 2026-12-01 is after --until 2026-11-01" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    # a --since later than today (the default --until) says where the other day came from
    r = run("report", "--since", "2999-01-01")
    assert r.exit_code == 2 and "--since 2999-01-01 is after --until" in r.stderr and "(default: today)" in r.stderr


# -- D3, D8: users enabled again; no token for a disabled user; local times in the table ----------
def test_users_enable_and_no_token_while_disabled(run, store: Store) -> None:
    users = Users(store, SystemClock())
    first = _ok(run("users", "add", "alice", "--role", "operator")).stdout.strip()
    _ok(run("users", "disable", "alice"))
    assert users.by_token(first) is None

    refused = run("users", "token", "alice")
    assert refused.exit_code == 1 and refused.stdout == ""      # no token that would only get 401
    assert "user 'alice' is disabled" in refused.stderr and "callbackd users enable alice" in refused.stderr

    enabled = _ok(run("users", "enable", "alice"))
    assert enabled.stdout.startswith("user alice enabled;") and "users token alice" in enabled.stdout
    assert users.get("alice").disabled_at is None
    assert users.by_token(first) is None                         # the old token stays revoked
    token = _ok(run("users", "token", "alice")).stdout.strip()
    assert users.by_token(token).name == "alice"  # type: ignore[union-attr]
    assert _ok(run("users", "enable", "alice")).stdout.strip() == "user alice is not disabled"
    missing = run("users", "enable", "nobody")
    assert missing.exit_code == 1 and "no user 'nobody'" in missing.stderr


def test_users_list_table_shows_local_times_and_json_stays_utc(run, store: Store) -> None:
    _ok(run("users", "add", "bob", "--role", "admin"))
    _ok(run("users", "disable", "bob"))
    u = Users(store, SystemClock()).get("bob")
    assert u.disabled_at is not None
    table = _ok(run("users", "list")).stdout
    assert "times in Asia/Shanghai" in table
    assert u.created_at.astimezone(SH).strftime("%Y-%m-%d %H:%M:%S") in table
    assert u.disabled_at.astimezone(SH).strftime("%Y-%m-%d %H:%M:%S") in table
    assert "+00:00" not in table and len(LOCAL.findall(table)) == 2
    (row,) = json.loads(_ok(run("users", "list", "--format", "json")).stdout)
    assert row["created_at"] == u.created_at.isoformat() and row["created_at"].endswith("+00:00")


# -- D4: claim with nothing due -----------------------------------------------------------------
def test_claim_with_nothing_due_prints_only_the_message(run, store: Store) -> None:
    table = _ok(run("callbacks", "claim", "--operator", "bob"))
    assert table.stdout == ""                       # no empty "claimed by bob" table
    assert table.stderr.strip() == "nothing is due"
    assert json.loads(_ok(run("callbacks", "claim", "--operator", "bob", "--format", "json")).stdout) == []
    csv = _ok(run("callbacks", "claim", "--operator", "bob", "--format", "csv")).stdout
    assert csv.splitlines()[0].startswith("id,state,number") and len(csv.splitlines()) == 1
    assert "exit 0 even when nothing was due" in " ".join(_ok(run("callbacks", "claim", "--help")).stdout.split())
    # with something due, the table is there
    _due(store)
    assert "claimed by bob" in _ok(run("callbacks", "claim", "--operator", "bob")).stdout


# -- D5: errors that say what to do --------------------------------------------------------------
def test_someone_elses_claim_names_force_and_unknown_states_list_the_known(run, store: Store) -> None:
    cid = _due(store)
    _ok(run("callbacks", "claim", "--operator", "alice"))
    for verb, extra in (("close", ("--outcome", "reached")), ("release", ())):
        r = run("callbacks", verb, str(cid), "--operator", "bob", *extra)
        assert r.exit_code == 1
        assert f"callback {cid} is claimed by alice, not bob; add --force to {verb} it anyway" in r.stderr
    _ok(run("callbacks", "close", str(cid), "--outcome", "reached", "--operator", "bob", "--force"))

    bad = run("callbacks", "list", "--state", "bogus")
    assert bad.exit_code == 2
    text = " ".join(bad.stderr.split())
    assert "unknown state 'bogus'; known: " in text
    assert all(s.value in text for s in State) and "open" in text.split("known: ")[1]


# -- D9: show's history in local time, without " -> " for events that change no state -------------
def test_show_history_has_no_arrow_without_states_and_local_detail_times(run, store: Store) -> None:
    cid = _due(store)
    (claimed,) = json.loads(_ok(run("callbacks", "claim", "--operator", "alice", "--format", "json")).stdout)
    lease = datetime.fromisoformat(claimed["lease_until"].replace("Z", "+00:00"))
    retry_at = datetime(2026, 11, 27, 18, 31, 11, tzinfo=UTC)
    with store.write() as conn:
        conn.execute(t.callback_events.insert().values(
            callback_id=cid, at=datetime.now(UTC), actor="sms", event="sms_retry", from_state=None, to_state=None,
            detail=json.dumps({"retry_at": retry_at.isoformat(), "error": "timeout"})))
    out = _ok(run("callbacks", "show", str(cid))).stdout
    history = out[out.index("history"):]
    sms_row = next(line for line in history.splitlines() if "sms_retry" in line)
    assert "->" not in sms_row
    assert "2026-11-28 02:31:11" in sms_row and retry_at.isoformat() not in sms_row
    claimed_row = next(line for line in history.splitlines() if "claimed" in line)
    assert "pending -> dialing" in claimed_row
    assert lease.astimezone(SH).strftime("%Y-%m-%d %H:%M:%S") in claimed_row and "+00:00" not in claimed_row
    # json stays UTC ISO, as stored
    events = json.loads(_ok(run("callbacks", "show", str(cid), "--format", "json")).stdout)["events"]
    assert events[-1]["detail"]["retry_at"] == retry_at.isoformat()
    assert events[-2]["detail"]["lease_until"].endswith("+00:00")


# -- D6: doctor on an empty database -------------------------------------------------------------
def test_doctor_says_schema_empty_without_python_lists(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[store]\nurl = "sqlite:///{tmp_path / "e.db"}"\n'
                   '[http]\nport = 0\n')
    r = CliRunner().invoke(cli, ["doctor", "--config", str(cfg)])
    line = next(x for x in r.output.splitlines() if x.startswith("✗ database:"))
    assert re.search(r": schema empty \(needs \d{4}(, \d{4})*\)$", line), line
    assert "[" not in line and "'" not in line
    assert "→ run `callbackd db upgrade`" in r.output
