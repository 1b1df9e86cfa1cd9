"""The real daemon (a subprocess) tails a growing queue_log into a PostgreSQL of the test's own, through a
FaultProxy: its connections are cut mid-run, the link stalls for 8 s, the server is restarted
(`pg_ctl restart -m fast`) and later stopped for 7 s, all while the daemon imports. The daemon recovers
by itself, without a restart: at the end every attempt is stored once, the callbacks equal the
reference model's, and each fault left at most one line per fact at warning level or above (the store
is unavailable / this instance lost its leader lock / jobs hang) and one info line for the recovery -
never a line per job tick, never a traceback.

The shared cluster at 127.0.0.1:5432 is never touched: the server restarted here is a private one
(tests/faults/faultenv.py: initdb into a temporary folder, pg_ctl on a free port).
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import faultenv
import pytest
from faultenv import LogReader, PrivatePostgres, events, loud
from support.crash import Proc, wait_for
from support.dbcheck import TRANSIENT, model_mismatches, read_attempt_ids, read_callbacks, scalar
from support.faultproxy import FaultProxy
from support.model import expected, read_gen_queue_log
from support.traffic import Writer, queue_log_lines

from callback_queue.detection import DetectRules

private_pg = faultenv.private_pg  # the fixture (this folder has no conftest.py: see faultenv.py)
RULES = DetectRules(threshold=3, lookback_seconds=3650 * 86400, min_wait_seconds=5)
#: what an outage of the database may say at warning level or above, once each: the store cannot be used;
#: this instance lost its leader lock (its session died); jobs are stuck on a silent database
OUTAGE_LINES = {"store.unavailable", "leader.lost", "jobs.overrun", "daemon.unhealthy"}
#: as under systemd with WatchdogSec=4s: a heartbeat a second, stale (unhealthy) after 4 s without one
WATCHDOG_USEC = "4000000"


def config(tmp: Path, url: str, qlog: Path) -> Path:
    cfg = tmp / "callbackd.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "{tmp / 'state'}"
timezone = "Asia/Shanghai"
log_format = "json"
sweep_interval = "1s"
leader_lease = "3s"

[store]
url = "{url}"

[detect]
threshold = 3
lookback = "3650d"
min_wait_seconds = 5

[http]
enabled = false

[sms]
enabled = false

[sources.queue_log]
path = "{qlog}"
system = "pbx"
poll_interval = "0.1s"
""")
    return cfg


def test_cuts_a_stall_a_restart_and_an_outage_mid_run_lose_nothing(tmp_path: Path, private_pg: PrivatePostgres,
                                                                   monkeypatch: pytest.MonkeyPatch):
    pg = private_pg
    monkeypatch.setenv("WATCHDOG_USEC", WATCHDOG_USEC)   # (no NOTIFY_SOCKET: nothing is sent anywhere)
    name = f"faults_{uuid.uuid4().hex[:8]}"
    direct = pg.create_database(name)
    rng = random.Random(20261127)
    start = int(time.time()) - 12 * 3600
    lines = queue_log_lines(20261127, 900, start_ts=start, numbers=50, span_seconds=10 * 3600)
    written = read_gen_queue_log(lines, "pbx")
    qlog = tmp_path / "asterisk" / "queue_log"
    qlog.parent.mkdir()
    with FaultProxy("127.0.0.1", pg.port, name="pg") as proxy:
        cfg = config(tmp_path, pg.url(name, port=proxy.port), qlog)
        proc = Proc(cfg, "run", tag="daemon")
        log = LogReader(proc.err)
        writer = Writer(qlog, lines, rng, seconds=24.0)
        try:
            assert proc.wait_started(), proc.stderr()[-3000:]
            writer.start()
            phases: dict[str, tuple[list[dict], list[str]]] = {}

            def stored() -> int:
                return len(read_attempt_ids(direct))

            def progress(before: int, what: str) -> None:
                """The daemon goes on storing what is written after the fault."""
                assert wait_for(lambda: stored() > before, 30), f"no progress after {what}:\n{proc.stderr()[-3000:]}"

            # 1. every connection through the proxy is cut (pool and leader alike)
            assert wait_for(lambda: stored() > 0, 30), proc.stderr()[-3000:]
            log.mark()
            proxy.cut()
            progress(stored(), "the cut")
            time.sleep(1.0)
            phases["cut"] = log.since()

            # 2. a stall: the database answers nothing for 8 s, its sockets stay open: the jobs hang (longer than
            #    the 5 s after which the daemon says so)
            log.mark()
            proxy.stall()
            time.sleep(8.0)
            before = stored()
            proxy.resume()
            progress(before, "the stall")
            time.sleep(1.0)
            phases["stall"] = log.since()

            # 3. PostgreSQL itself restarted (fast: every session terminated), while the writer goes on
            log.mark()
            before = stored()
            pg.restart()
            progress(before, "the restart")
            time.sleep(1.0)
            phases["restart"] = log.since()

            # 4. PostgreSQL down for 7 s (stopped, then started): every job's ticks fail meanwhile, the
            #    heartbeat goes stale
            log.mark()
            before = stored()
            pg.pg_ctl("stop", "-m", "fast")
            time.sleep(7.0)
            pg.start()
            progress(before, "the outage")
            time.sleep(1.0)
            phases["down"] = log.since()

            writer.join(timeout=60)
            assert writer.error is None, writer.error
            want = {a.call_id for a in written}
            caught_up = wait_for(lambda: set(read_attempt_ids(direct)) == want, timeout=60, interval=0.3)
            assert caught_up, f"{len(want - set(read_attempt_ids(direct)))} attempts never stored"
            assert proc.p.poll() is None, "the daemon died"
            assert proxy.connections > 3    # it reconnected by itself, more than once
        finally:
            rc = proc.stop()
    assert rc == 0, proc.stderr()[-3000:]

    for what, (records, other) in phases.items():
        assert other == [], f"{what}: lines that are not JSON (a traceback?): {other[:20]}"
        lines_ = loud(records)
        counted = {e: sum(1 for _, x in lines_ if x == e) for e in {x for _, x in lines_}}
        assert set(counted) <= OUTAGE_LINES and all(n == 1 for n in counted.values()), f"{what}: {lines_}"
        assert len(events(records, "store.recovered")) == (1 if "store.unavailable" in counted else 0), what
        assert len(events(records, "jobs.caught_up")) == (1 if "jobs.overrun" in counted else 0), what
        assert len(events(records, "daemon.healthy")) == (1 if "daemon.unhealthy" in counted else 0), what
        assert events(records, "job.failed") == [], what
    # each fault was noticed and reported: the leader's session died at the cut and at the restart; the
    # stall hung the jobs; while the server was down every job failed at every tick - and said so once
    assert events(phases["cut"][0], "leader.lost") and events(phases["restart"][0], "leader.lost")
    assert len(events(phases["down"][0], "store.unavailable")) == 1, [r["event"] for r in phases["down"][0]]
    assert len(events(phases["down"][0], "daemon.unhealthy")) == 1, [r["event"] for r in phases["down"][0]]
    assert len(events(phases["stall"][0], "jobs.overrun")) == 1, [r["event"] for r in phases["stall"][0]]

    stored_ids = read_attempt_ids(direct)
    assert stored_ids == {a.call_id: (a.outcome.value, a.number) for a in written}
    exp = expected(written, RULES, int(time.time()))
    assert len(exp.owed) >= 5 and len(exp.cancelled) >= 3
    callbacks = read_callbacks(direct)
    assert model_mismatches(exp, callbacks) == []
    assert [c.id for c in callbacks if c.state in TRANSIENT] == []
    assert scalar(direct, "SELECT COUNT(*) FROM dead_letters") == 0
