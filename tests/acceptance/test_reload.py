"""SIGHUP (and `callbackd reload`) re-plans open callbacks with the new windows, without a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from test_daemon import CALLBACKD, cli, wait_for


def config(tmp: Path, store_url: str, window: str) -> Path:
    cfg = tmp / "callbackd.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "{tmp / 'state'}"
timezone = "UTC"
log_format = "json"

[store]
url = "{store_url}"

[http]
port = 0

[detect]
min_wait_seconds = 0

[sources.queue_log]
path = "{tmp / 'queue_log'}"
poll_interval = "0.2s"

[schedule]
workday = ["{window}"]
restday = ["{window}"]
holiday = ["{window}"]
quiet_hours = []
capacity = {{ fixed = 10 }}
replan_interval = "1h"
""")
    return cfg


def hhmm(dt: datetime) -> str:
    return dt.strftime("%H:%M")


def test_sighup_replans_with_new_windows(tmp_path: Path, store_url: str):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first = f"{hhmm(now + timedelta(hours=2))}-{hhmm(now + timedelta(hours=3))}"
    second = f"{hhmm(now + timedelta(hours=4))}-{hhmm(now + timedelta(hours=5))}"
    cfg = config(tmp_path, store_url, first)
    cli(cfg, "db", "upgrade")
    t0 = int(time.time()) - 600
    lines = []
    for i in range(3):
        t = t0 + i * 60
        lines += [f"{t}|{t}.{i}|q|NONE|ENTERQUEUE||13712345678|1", f"{t + 20}|{t}.{i}|q|NONE|ABANDON|1|1|20"]
    (tmp_path / "queue_log").write_text("\n".join(lines) + "\n")
    p = subprocess.Popen([*CALLBACKD, "--config", str(cfg), "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        def planned(label: str):
            rows = json.loads(cli(cfg, "callbacks", "list", "--format", "json").stdout)
            if rows and rows[0]["window_start"] and rows[0]["window_start"][11:16] == label[:5]:
                return rows
            return None

        # new callbacks are planned by the first replan the daemon runs after opening them
        assert wait_for(lambda: planned(first), 15), "never planned into the first window"
        cfg.write_text(cfg.read_text().replace(first, second))
        p.send_signal(signal.SIGHUP)
        rows = wait_for(lambda: planned(second), 15)
        assert rows, "not re-planned after SIGHUP"
        assert p.poll() is None  # no restart
        assert rows[0]["state"] == "scheduled"
        # and `callbackd reload` does the same through the pid file
        cfg.write_text(cfg.read_text().replace(second, first))
        assert "sent SIGHUP" in cli(cfg, "reload").stdout
        assert wait_for(lambda: planned(first), 15)
        shown = json.loads(cli(cfg, "callbacks", "show", str(rows[0]["id"]), "--format", "json").stdout)
        assert not [e for e in shown["events"] if e["event"] in ("claimed", "dialing")]
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    events = [json.loads(x)["event"] for x in err.splitlines() if x.startswith("{")]
    assert events.count("daemon.reloaded") == 2


def test_sighup_adds_a_source(tmp_path: Path, store_url: str):
    """A CDR source added to the configuration is tailed after SIGHUP, without a restart."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    cfg = config(tmp_path, store_url, f"{hhmm(now + timedelta(hours=2))}-{hhmm(now + timedelta(hours=3))}")
    cli(cfg, "db", "upgrade")
    (tmp_path / "queue_log").write_text("")
    t = int(time.time()) - 300
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
    end = datetime.fromtimestamp(t + 20, UTC).strftime("%Y-%m-%d %H:%M:%S")
    # one caller refused at the queue's door: only the CDR knows (queue_log has no line)
    (tmp_path / "Master.csv").write_text(
        f'"","13700001111","12345","from-pstn","""Citizen"" <13700001111>","PJSIP/trunk-0001","","Queue",'
        f'"hotline","{stamp}","{stamp}","{end}",20,20,"ANSWERED","DOCUMENTATION","{t}.1",""\n')
    p = subprocess.Popen([*CALLBACKD, "--config", str(cfg), "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        time.sleep(2)
        assert "13700001111" not in cli(cfg, "callbacks", "list", "--format", "json").stdout
        cfg.write_text(cfg.read_text() + f'\n[sources.cdr]\npath = "{tmp_path / "Master.csv"}"\n'
                                          f'timezone = "UTC"\npoll_interval = "0.2s"\n')
        p.send_signal(signal.SIGHUP)

        def stored():
            import sqlalchemy as sa

            eng = sa.create_engine(store_url)
            with eng.connect() as c:
                n = c.execute(sa.text("SELECT count(*) FROM attempts WHERE origin = 'cdr'")).scalar()
            eng.dispose()
            return n == 1

        assert wait_for(stored, 15), "the CDR source added by SIGHUP never read its file"
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert '"sources.reloaded"' in err
