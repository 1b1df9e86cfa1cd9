"""A new user's walkthrough, second round: `dnc add` says which callback it cancelled and takes --operator, add and
remove of a number already (not) listed both exit 0; `deadletters list` fits a terminal with local times, json and
csv carry the whole line; `sms send-now` prints a summary; `callbacks show --format json` has UTC ISO attempt times."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from rich.cells import cell_len
from sms_support import add_callback, events
from support.cli_runner import in_process_cli, ok

from callback_queue import schema as t
from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.callbacks import State
from callback_queue.clock import FakeClock, SystemClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store

LISTED = "+8613800138001"          # `dnc add 13800138001`
SHOWN = "+86138****8001"


pytestmark = pytest.mark.usefixtures("clean_cli_env")


@pytest.fixture
def run(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """The CLI in-process on the test's store, in Shanghai time."""
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\ntimezone = "Asia/Shanghai"\n'
                   f'[store]\nurl = "{store_url}"\n[http]\npublic_url = "https://cb.example.gov.cn"\n'
                   '[sms]\nquiet_hours = []\n',   # runs at any hour
                   encoding="utf-8")
    yield in_process_cli(cfg, monkeypatch)


_ok = ok


# -- H1: dnc ---------------------------------------------------------------------------------------------------
def test_dnc_add_names_the_cancelled_callback_and_the_operator_its_history(run, store: Store,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    cid = add_callback(store, now, LISTED, state=State.PENDING)
    r = _ok(run("dnc", "add", "13800138001", "--operator", "carol", "--reason", "asked"))
    assert r.stdout.strip() == f"added {SHOWN}; cancelled callback {cid}"
    last = events(store, cid)[-1]
    assert (last.event, last.actor) == ("cancelled", "carol")

    # already listed: exit 0, and it says so
    r = _ok(run("dnc", "add", "13800138001"))
    assert r.stdout.strip() == f"{SHOWN} is already on the list; no open callback"

    # without --operator: $CALLBACKD_OPERATOR, as `callbacks close`
    monkeypatch.setenv("CALLBACKD_OPERATOR", "dora")
    other = add_callback(store, now, "+8613900139002", state=State.RETRY_WAIT)
    r = _ok(run("dnc", "add", "+8613900139002"))
    assert r.stdout.strip() == f"added +86139****9002; cancelled callback {other}"
    assert events(store, other)[-1].actor == "dora"


def test_dnc_remove_of_a_number_not_listed_exits_0_like_add_of_one_listed(run) -> None:
    _ok(run("dnc", "add", "13800138001"))
    assert _ok(run("dnc", "remove", "13800138001")).stdout.strip() == f"removed {SHOWN}"
    r = _ok(run("dnc", "remove", "13800138001"))
    assert r.stdout.strip() == f"{SHOWN} is not on the list"
    assert json.loads(_ok(run("dnc", "list", "--format", "json")).stdout) == []
    assert _ok(run("dnc", "remove", "no-number")).stdout.strip() == "'no-number' is not on the list"


def test_cancelled_callbacks_are_counted_as_callbacks_not_as_a_number() -> None:
    from daemon.cli_sms import _cancelled

    assert _cancelled([]) == "no open callback"
    assert _cancelled([3]) == "cancelled callback 3"
    assert _cancelled([3, 7]) == "cancelled callbacks 3, 7"


# -- H2: deadletters list ------------------------------------------------------------------------------------
LONG_RAW = ("1767225700|c3|hotline|NONE|ABANDON|1|1|x[/bold] \\ 中文\t" + "y" * 300).encode() + b"\xff\x01"
CREATED = datetime(2026, 3, 1, 1, 2, 3, tzinfo=UTC)      # 09:02:03 in Shanghai


def _dead_letters(store: Store) -> None:
    rows = [("queue_log:pbx", "/var/log/asterisk/queue_log:123456789", LONG_RAW,
             "ABANDON field data3 'x' is not a number; " + "a reason long enough to need wrapping " * 3),
            ("cdr:pbx", "/var/log/asterisk/cdr-csv/Master.csv:42", b"short,line", "too few fields [/] \\")]
    with store.write() as conn:
        conn.execute(t.dead_letters.insert(), [
            {"source": s, "position": p, "raw": raw, "reason": why, "digest": f"d{i}", "created_at": CREATED}
            for i, (s, p, raw, why) in enumerate(rows)])


def test_deadletters_table_has_local_created_at_and_a_cut_escaped_raw(run, store: Store) -> None:
    _dead_letters(store)
    out = _ok(run("deadletters", "list")).stdout
    assert "dead letters (2 of 2; times in Asia/Shanghai)" in out
    assert "created at" in out and "2026-03-01 09:02:03" in out
    # raw: escaped, cut at 60 columns with "…"; the rest of the line is not in the table
    assert "|1|1|x[/bold] \\\\ 中文\\tyy… " in out                    # markup shown as is, not read
    assert "y" * 40 not in out and "…" in out
    assert max(cell_len(line) for line in out.splitlines()) < 200     # it was 200 (the width of a pipe)
    # --source filters the rows and the count
    out = _ok(run("deadletters", "list", "--source", "cdr:pbx")).stdout
    assert "dead letters (1 of 1;" in out and "short,line" in out and "queue_log:pbx" not in out
    assert "too few fields [/] \\ " in out                                # data, not markup, as it is


def test_deadletters_table_fits_a_narrow_terminal(run, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import daemon.cli_callbacks

    _dead_letters(store)
    monkeypatch.setattr(daemon.cli_callbacks, "_table_width", lambda: 80)
    out = _ok(run("deadletters", "list")).stdout
    lines = out.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    header = next(line for line in lines if "created at" in line)
    assert all(f" {h} " in header for h in ("id", "source", "position", "reason", "raw"))  # none cut to "…"
    assert sum("2026-03-01 09:02:03" in line for line in lines) == 2                      # whole, never wrapped


def test_deadletters_table_masks_numbers_unless_asked(run, store: Store) -> None:
    with store.write() as conn:
        conn.execute(t.dead_letters.insert(), [{"source": "queue_log:pbx", "position": "q:1", "digest": "n1",
                                                "raw": b"garbage line with 13987654321 and +8613812345678",
                                                "reason": "queue_log line has 1 field", "created_at": CREATED}])
    out = _ok(run("deadletters", "list")).stdout
    assert "13987****21" in out and "+86138****5678" in out
    assert "13987654321" not in out and "8613812345678" not in out
    out = _ok(run("deadletters", "list", "--show-numbers")).stdout
    assert "13987654321" in out and "+8613812345678" in out
    [row] = json.loads(_ok(run("deadletters", "list", "--format", "json")).stdout)   # scripts get the line
    assert row["raw"] == "garbage line with 13987654321 and +8613812345678"


def _unescape(text: str) -> bytes:
    """The inverse of the escaping `raw` documents."""
    out = b""
    for part in re.split(r"(\\(?:\\|n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}))", text):
        if not part.startswith("\\"):
            out += part.encode()
        elif part[1] in "\\nrt":
            out += {"\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t"}[part[1]]
        elif part[1] == "x":
            out += bytes([int(part[2:], 16)])
        else:
            out += chr(int(part[2:], 16)).encode()
    return out


def test_deadletters_json_and_csv_carry_the_whole_line(run, store: Store) -> None:
    _dead_letters(store)
    rows = json.loads(_ok(run("deadletters", "list", "--format", "json")).stdout)
    first = next(r for r in rows if r["source"] == "queue_log:pbx")
    assert base64.b64decode(first["raw_base64"]) == LONG_RAW
    assert first["raw"].endswith("y" * 300 + "\\xff\\x01") and _unescape(first["raw"]) == LONG_RAW
    assert first["position"] == "/var/log/asterisk/queue_log:123456789"
    assert first["created_at"] == "2026-03-01T01:02:03Z"
    table = list(csv.DictReader(io.StringIO(_ok(run("deadletters", "list", "--format", "csv")).stdout)))
    assert [r["raw"] for r in table] == [r["raw"] for r in rows]
    assert [r["created_at"] for r in table] == ["2026-03-01T01:02:03Z"] * 2


@pytest.mark.parametrize("raw", [b"", b"plain", "退订 ok".encode(), b"\\x41 is not A", b"\x00\x1b[2J\x7f",
                                 "\u0085\u200b\u2028\ufeff".encode(), b"\xe4\xb8", b"\xc2\x85 vs \x85"])
def test_escaped_raw_gives_back_its_bytes_on_one_line(raw: bytes) -> None:
    import daemon.cli  # noqa: F401 - the CLI modules load through daemon.cli
    from daemon.cli_callbacks import escape_raw

    text = escape_raw(raw)
    assert _unescape(text) == raw
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\u2028" not in text


# -- H3: sms send-now ----------------------------------------------------------------------------------------
def test_sms_send_now_prints_what_it_did(run, store: Store) -> None:
    cid = add_callback(store, datetime.now(UTC), "+8613700137000")   # unreachable: gets an SMS
    r = _ok(run("sms", "send-now"))
    assert r.stdout.strip() == "SMS outbox: 1 queued, 1 sent"
    with store.read() as conn:
        assert conn.execute(sa.select(t.callbacks.c.state).where(t.callbacks.c.id == cid)).scalar() == "sms_sent"
    assert _ok(run("sms", "send-now")).stdout.strip() == "SMS outbox: nothing to do"
    stats = json.loads(_ok(run("sms", "send-now", "--format", "json")).stdout)
    assert stats == {"queued": 0, "sent": 0, "retried": 0, "failed": 0, "skipped": 0, "reconciled": 0,
                     "settled": 0, "held": 0, "errors": []}


def test_send_now_summary_counts_errors() -> None:
    import daemon.cli  # noqa: F401
    from daemon.cli_sms import _tick_summary
    from sms.outbox import TickStats

    assert _tick_summary(TickStats(queued=2, sent=1, retried=1)) == "2 queued, 1 sent, 1 to be retried"
    assert _tick_summary(TickStats(errors=["timeout"])) == "1 error"


# -- H4: callbacks show --format json ------------------------------------------------------------------------
def test_show_json_attempts_have_utc_iso_times_as_the_api_timeline(run, store: Store) -> None:
    from daemon.http.api import timeline

    number = "+8613900000001"
    start = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    attempts = [Attempt("pbx", f"c{i}", number[3:], number, start + i * 60, start + i * 60 + 20 if i else None,
                        Outcome.FAILED, "abandon", 20, "hotline", Origin.QUEUE_LOG) for i in range(3)]
    Ingestor(store, FakeClock(datetime.now(UTC) - timedelta(minutes=30)),
             DetectRules(min_wait_seconds=0)).ingest(attempts)
    with store.read() as conn:
        cid = int(conn.execute(sa.select(t.callbacks.c.id).where(t.callbacks.c.number == number)).scalar_one())
    shown = json.loads(_ok(run("callbacks", "show", str(cid), "--format", "json")).stdout)["attempts"]
    assert [a["started_ts"] for a in shown] == [start, start + 60, start + 120]         # the epoch fields stay
    for a in shown:
        assert a["started_at"] == datetime.fromtimestamp(a["started_ts"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert a["ended_at"] == (None if a["ended_ts"] is None else
                                 datetime.fromtimestamp(a["ended_ts"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert shown[0]["ended_ts"] is None and shown[1]["ended_at"] is not None
    # the API writes an attempt's time the same way
    api = [i["at"] for i in timeline(CallbackQueue(store, SystemClock()).get(cid), True) if i["kind"] == "attempt"]
    assert api == [a["started_at"] for a in shown]
    assert list(shown[0])[:8] == ["id", "system", "call_id", "number", "started_ts", "started_at", "ended_ts",
                                  "ended_at"]
