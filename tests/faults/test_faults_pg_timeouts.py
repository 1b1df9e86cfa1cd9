"""The real daemon (a subprocess) with short `[store] statement_timeout` and `link_timeout` (1 s each),
tailing a growing queue_log into a private PostgreSQL through a FaultProxy:

1. the link stalls (nothing forwarded, sockets open, every packet still acknowledged: what a frozen
   server looks like to TCP) until the daemon says `store.unavailable`, and a while longer;
2. another session holds an exclusive lock on `callbacks`: the sweep (every second) and the heartbeat
   wait behind it, the server cancels them after statement_timeout: `store.unavailable` again, naming
   the statement timeout.

Each time the jobs fail and say so while the fault lasts, instead of hanging until it ends, and recover
by themselves after it: one `store.unavailable`, one `store.recovered`, no traceback, and at the end every
attempt stored once and the callbacks equal the reference model's. test_faults_pg.py runs the same
faults with the default bounds (longer than its stall): the jobs hang there, and say `jobs.overrun`.

The leader's lock lives on a connection of its own (daemon/leader.py), bounded by the lease instead: through
the stall it may step down (`leader.lost`) and take the lease again after it (`leader.acquired`), resuming the
files from the committed cursors before any leader duty runs.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import datetime
from pathlib import Path

import faultenv
import sqlalchemy as sa
from faultenv import LogReader, PrivatePostgres, events, loud
from support.crash import Proc, wait_for
from support.dbcheck import TRANSIENT, model_mismatches, read_attempt_ids, read_callbacks, scalar
from support.faultproxy import FaultProxy
from support.model import expected, read_gen_queue_log
from support.traffic import Writer, queue_log_lines
from test_faults_pg import OUTAGE_LINES, RULES
from test_faults_pg import config as base_config

private_pg = faultenv.private_pg  # the fixture (this folder has no conftest.py: see faultenv.py)
BOUNDS = '[store]\nstatement_timeout = "1s"\nlink_timeout = "1s"\n'
#: how long a fault may take to be reported: far above the ~4 s it takes (the 2 s answer deadline, then a
#: 2 s connect_timeout), far below "until the fault ends"
REPORTED_WITHIN = 30.0
#: how long a fault goes on after it was reported (several job ticks fail meanwhile: still one line)
MORE = 3.0


def config(tmp: Path, url: str, qlog: Path) -> Path:
    cfg = base_config(tmp, url, qlog)
    cfg.write_text(cfg.read_text().replace("[store]\n", BOUNDS))
    return cfg


def _at(record: dict) -> float:
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


def test_a_stall_and_a_lock_wait_end_in_store_unavailable_and_recover(tmp_path: Path, private_pg: PrivatePostgres):
    pg = private_pg
    name = f"timeouts_{uuid.uuid4().hex[:8]}"
    direct = pg.create_database(name)
    rng = random.Random(20261128)
    start = int(time.time()) - 12 * 3600
    lines = queue_log_lines(20261128, 600, start_ts=start, numbers=40, span_seconds=10 * 3600)
    written = read_gen_queue_log(lines, "pbx")
    qlog = tmp_path / "asterisk" / "queue_log"
    qlog.parent.mkdir()
    phases: dict[str, tuple[list[dict], list[str]]] = {}
    reported: dict[str, float] = {}
    with FaultProxy("127.0.0.1", pg.port, name="pg") as proxy:
        proc = Proc(config(tmp_path, pg.url(name, port=proxy.port), qlog), "run", tag="daemon")
        log = LogReader(proc.err)
        writer = Writer(qlog, lines, rng, seconds=40.0)
        try:
            assert proc.wait_started(), proc.stderr()[-3000:]
            writer.start()

            def stored() -> int:
                return len(read_attempt_ids(direct))

            def reported_while_on(what: str, since: float) -> dict:
                """The store.unavailable line of this fault, written while it goes on (it is not over yet)."""
                found = wait_for(lambda: events(log.since()[0], "store.unavailable"), REPORTED_WITHIN, interval=0.2)
                assert found, f"{what}: no store.unavailable within {REPORTED_WITHIN} s:\n{proc.stderr()[-3000:]}"
                reported[what] = _at(found[0]) - since
                return found[0]

            def recovered(what: str) -> None:
                before = stored()
                assert wait_for(lambda: stored() > before or stored() == len(want), 30), \
                    f"no progress after {what}:\n{proc.stderr()[-3000:]}"
                assert wait_for(lambda: events(log.since()[0], "store.recovered"), 30), proc.stderr()[-3000:]
                time.sleep(1.0)
                phases[what] = log.since()

            want = {a.call_id for a in written}
            assert wait_for(lambda: stored() > 0, 30), proc.stderr()[-3000:]

            # 1. the link stalls: silent, not closed
            log.mark()
            t0 = time.time()
            proxy.stall()
            line = reported_while_on("stall", t0)
            assert "timeout" in line["error"] or "no answer" in line["error"], line
            time.sleep(MORE)
            proxy.resume()
            recovered("stall")

            # 2. a statement waits behind another session's lock
            log.mark()
            holder = sa.create_engine(direct, poolclass=sa.pool.NullPool)
            with holder.connect() as conn:
                conn.begin()
                conn.exec_driver_sql("LOCK TABLE callbacks IN ACCESS EXCLUSIVE MODE")
                t0 = time.time()
                line = reported_while_on("lock", t0)
                assert "statement timeout" in line["error"], line
                time.sleep(MORE)
                conn.rollback()
            holder.dispose()
            recovered("lock")

            writer.join(timeout=60)
            assert writer.error is None, writer.error
            caught_up = wait_for(lambda: set(read_attempt_ids(direct)) == want, timeout=60, interval=0.3)
            assert caught_up, f"{len(want - set(read_attempt_ids(direct)))} attempts never stored"
            assert proc.p.poll() is None, "the daemon died"
        finally:
            rc = proc.stop()
    assert rc == 0, proc.stderr()[-3000:]
    print("\nreported after (daemon's log time - fault start): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in reported.items()))
    for what, (records, _) in phases.items():
        told = [r for r in records if r.get("level") != "info" or r["event"].startswith(("store.", "jobs.", "leader."))]
        print(f"{what}: " + ", ".join(f"{r['event']}({r.get('job') or r.get('error', '')[:60]})" for r in told))

    for what, (records, other) in phases.items():
        assert other == [], f"{what}: lines that are not JSON (a traceback?): {other[:20]}"
        lines_ = loud(records)
        counted = {e: sum(1 for _, x in lines_ if x == e) for e in {x for _, x in lines_}}
        assert set(counted) <= OUTAGE_LINES and all(n == 1 for n in counted.values()), f"{what}: {lines_}"
        assert len(events(records, "store.unavailable")) == 1 and len(events(records, "store.recovered")) == 1, what
        assert len(events(records, "daemon.healthy")) == (1 if "daemon.unhealthy" in counted else 0), what
        assert events(records, "job.failed") == [], what

    stored_ids = read_attempt_ids(direct)
    assert stored_ids == {a.call_id: (a.outcome.value, a.number) for a in written}
    exp = expected(written, RULES, int(time.time()))
    callbacks = read_callbacks(direct)
    assert model_mismatches(exp, callbacks) == []
    assert [c.id for c in callbacks if c.state in TRANSIENT] == []
    assert scalar(direct, "SELECT COUNT(*) FROM dead_letters") == 0
