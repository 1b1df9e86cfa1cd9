"""Two daemons on one PostgreSQL share 1,000 due callbacks, dialing through an AMI server that speaks
the wire protocol; the leader is SIGKILLed mid-run and the other takes over."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.ami_server import AmiTestServer
from test_daemon import CALLBACKD

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.store import Store

N = 1000


def config(tmp: Path, url: str, name: str, port: int) -> Path:
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
default_region = "US"

[[sources.ami]]
name = "pbx"
port = {port}
username = "callbackd"
secret = "callbackd-secret"

[dialer]
kind = "ami"
lease = "4s"
tick = "0.2s"

[dialer.ami]
pbx = "pbx"
mode = "citizen-first"
citizen_channel = "Local/{{number}}@citizens"
agent_exten = "200"
context = "callback_to_agent"
max_concurrent = 10
settle_seconds = 0.1
""")
    return cfg


def seed(url: str) -> None:
    now = datetime.now(UTC)
    start = int((now - timedelta(hours=1)).timestamp())
    atts = []
    for i in range(N):
        number = f"+1202{i:06d}0"  # distinct, each ending in 0: the test PBX answers (the captures' dialplan)
        for k in range(3):
            t = start + k * 60
            atts.append(Attempt("pbx", f"seed-{i}-{k}", number, number, t, t + 30, Outcome.FAILED, "abandon", 30,
                                "q", Origin.QUEUE_LOG))
    store = Store(url)
    Ingestor(store, FakeClock(now), DetectRules(min_wait_seconds=0)).ingest(atts)
    store.dispose()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("pg_database")
    from conftest import _truncate_pg

    _truncate_pg(url)
    return url


def states(url: str) -> collections.Counter[str]:
    eng = sa.create_engine(url)
    with eng.connect() as c:
        rows = c.execute(sa.text("SELECT state, count(*) FROM callbacks GROUP BY state")).all()
        out = collections.Counter(dict(rows))
    eng.dispose()
    return out


def test_two_daemons_dial_each_callback_once_across_a_leader_kill(tmp_path: Path, pg_url: str):
    seed(pg_url)
    assert states(pg_url) == {"pending": N}
    total = N
    with AmiTestServer() as server:
        server.outcome_delay = 0.005
        a_cfg, b_cfg = config(tmp_path, pg_url, "a", server.port), config(tmp_path, pg_url, "b", server.port)
        # The daemons' output goes to files, not pipes: nobody reads a pipe while the test runs, and
        # once its 64 KiB buffer is full (about 140 calls of JSON log lines) every thread that logs
        # blocks in write(2) - the dispatch job, the dialer's delivery thread, the heartbeat - and
        # the daemon looks deadlocked ("maximum number of running instances", "no heartbeat").
        logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("a", "b")}  # noqa: SIM115 - closed below
        a = subprocess.Popen([*CALLBACKD, "--config", str(a_cfg), "run"], stdout=logs["a"],
                             stderr=subprocess.STDOUT)
        b = None
        try:
            assert server.wait_for(lambda: len(server.originates) >= 20, 30), "A never dialed"
            b = subprocess.Popen([*CALLBACKD, "--config", str(b_cfg), "run"], stdout=logs["b"],
                                 stderr=subprocess.STDOUT)
            assert server.wait_for(lambda: len(server.originates) >= total // 3, 60)
            a.send_signal(signal.SIGKILL)   # the leader, mid-run
            a.wait(timeout=30)
            killed_wall = time.time()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                st = states(pg_url)
                if st.get("pending", 0) == 0 and st.get("dialing", 0) == 0:
                    break
                time.sleep(0.5)
            final = states(pg_url)
        finally:
            for p in (a, b):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in (a, b):
                if p is not None:
                    p.wait(timeout=60)
            for f in logs.values():
                f.close()
            err_b = (tmp_path / "b.log").read_text()
        per_number = collections.Counter(o["Channel"] for o in server.originates)
    twice = {k: v for k, v in per_number.items() if v > 1}
    assert twice == {}, f"dialed more than once: {list(twice.items())[:5]}"
    assert final.get("dialing", 0) == 0 and final.get("pending", 0) == 0, final
    # every callback ended: reached (one Originate each), or a call that A had under way when it was
    # killed, which B reconciled with the PBX (no channel left: counted failed, retried later, not re-dialed)
    assert final["reached"] + final.get("retry_wait", 0) == total, final
    assert final.get("retry_wait", 0) <= 10, final          # at most A's max_concurrent were in flight
    # no call without its callback, none lost: every Originate belongs to one of ours
    assert len(server.originates) <= total and len(server.originates) >= final["reached"]
    assert final["reached"] >= total - 10
    acquired = [datetime.fromisoformat(json.loads(x)["timestamp"]).timestamp() for x in err_b.splitlines()
                if x.startswith("{") and '"leader.acquired"' in x]
    assert acquired and acquired[0] > killed_wall and acquired[0] - killed_wall < 3 + 3 + 1, \
        "B did not take over the leader's duties within the lease"
