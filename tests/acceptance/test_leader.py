"""Two daemons on one PostgreSQL: one leads (tails the files, plans); when it dies the other takes over."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_daemon import CALLBACKD, cli, wait_for


def config(tmp: Path, url: str, name: str) -> Path:
    cfg = tmp / f"{name}.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "{tmp / name}"
log_format = "json"
leader_lease = "3s"

[store]
url = "{url}"

[http]
port = 0

[detect]
min_wait_seconds = 0

[sources.queue_log]
path = "{tmp / 'queue_log'}"
poll_interval = "0.2s"
""")
    return cfg


def append_failures(path: Path, number: str, tag: str, n: int = 3) -> None:
    t0 = int(time.time()) - 900
    with open(path, "a") as f:
        for i in range(n):
            t = t0 + i * 60
            f.write(f"{t}|{tag}.{i}|q|NONE|ENTERQUEUE||{number}|1\n{t + 20}|{tag}.{i}|q|NONE|ABANDON|1|1|20\n")


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("pg_database")
    from conftest import _truncate_pg

    _truncate_pg(url)
    return url


def leader_events(err: str) -> list[str]:
    return [json.loads(x)["event"] for x in err.splitlines() if x.startswith("{") and '"leader.' in x]


def test_one_leads_and_the_other_takes_over(tmp_path: Path, pg_url: str):
    a_cfg, b_cfg = config(tmp_path, pg_url, "a"), config(tmp_path, pg_url, "b")
    (tmp_path / "queue_log").write_text("")
    a = subprocess.Popen([*CALLBACKD, "--config", str(a_cfg), "run"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    b = subprocess.Popen([*CALLBACKD, "--config", str(b_cfg), "run"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        append_failures(tmp_path / "queue_log", "13812340001", "x")
        first = wait_for(lambda: json.loads(cli(a_cfg, "callbacks", "list", "--format", "json").stdout), 15)
        assert [c["number"] for c in first] == ["+8613812340001"]
        # the leader dies without a word
        a.send_signal(signal.SIGKILL)
        a.communicate(timeout=30)
        killed = time.monotonic()
        killed_wall = time.time()
        append_failures(tmp_path / "queue_log", "13812340002", "y")
        got = wait_for(lambda: len(json.loads(cli(b_cfg, "callbacks", "list", "--format", "json").stdout)) == 2, 30)
        took = time.monotonic() - killed
        assert got, "the second daemon never took over the file"
        assert took < 3 + 3 + 2, f"takeover took {took:.1f} s with a 3 s lease"
        eng = sa.create_engine(pg_url)
        with eng.connect() as c:
            attempts = c.execute(sa.text("SELECT count(*), count(DISTINCT call_id) FROM attempts")).one()
        eng.dispose()
        assert attempts == (6, 6)  # every attempt stored once, across the takeover
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        out_b, err_b = b.communicate(timeout=60)
    from datetime import datetime

    acquired = [datetime.fromisoformat(json.loads(x)["timestamp"]).timestamp() for x in err_b.splitlines()
                if x.startswith("{") and '"leader.acquired"' in x]
    assert len(acquired) == 1 and acquired[0] > killed_wall, "b led while a was alive"
    assert b.returncode == 0
