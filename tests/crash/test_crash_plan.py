"""SIGKILL the daemon at random points while it plans: a [schedule] section, a replan every 0.3 s and
new callbacks arriving from the tailed queue_log (each opened callback is planned at once).

Afterwards the model holds (planning never opens, closes or duplicates a callback), and once the
daemon has run cleanly to the end every owed callback is planned into a window; none is left in a
transient state.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from callback_queue.detection import DetectRules
from tests.support.crash import Proc, seeded, wait_for, write_config
from tests.support.dbcheck import TRANSIENT, model_mismatches, read_attempt_ids, read_callbacks, scalar
from tests.support.model import expected, read_gen_queue_log
from tests.support.traffic import Writer, queue_log_lines

RULES = DetectRules(threshold=3, lookback_seconds=3650 * 86400, min_wait_seconds=5)
PLANNED = ("pending", "scheduled")


def test_sigkill_while_planning_keeps_the_model_and_plans_everything(tmp_path: Path, store_url: str):
    rng, seed, n = seeded("crash/plan")
    start = int(time.time()) - 12 * 3600
    lines = queue_log_lines(seed, 1500, start_ts=start, numbers=60, span_seconds=10 * 3600)
    written = read_gen_queue_log(lines, "pbx")
    qlog = tmp_path / "asterisk" / "queue_log"
    qlog.parent.mkdir()
    cfg = write_config(tmp_path, store_url, f"""
[sources.queue_log]
path = "{qlog}"
system = "pbx"
poll_interval = "0.1s"

[schedule]
workday = ["00:00-24:00"]
restday = ["00:00-24:00"]
holiday = ["00:00-24:00"]
quiet_hours = []
capacity = {{ agents = 4, handle_time = "1m" }}
sla = "24h"
replan_interval = "0.3s"
""")
    gate = threading.Event()  # rotate only once the daemon has a cursor on the first file
    writer = Writer(qlog, lines, rng, seconds=max(3.0, 2.0 * n), rotate_gate=gate)
    writer.start()
    by_id = {a.call_id: a for a in written}
    i = 0
    while i < n or not gate.is_set():  # on a slow machine a kill can land before the daemon has started
        assert i < n + 40, "the daemon stored nothing in 40 runs"
        proc = Proc(cfg, "run", tag=f"run{i}")
        rc = proc.kill_after(rng.uniform(0.8, 3.0))
        assert rc is None, f"the daemon exited on its own ({rc}): {proc.stderr()[-2000:]}"
        stored = read_attempt_ids(store_url)
        problems = model_mismatches(expected([by_id[c] for c in stored], RULES, int(time.time())),
                                    read_callbacks(store_url), owed_states=PLANNED)
        assert problems == [], f"after kill {i}: {problems[:5]}"
        if stored:
            gate.set()
        i += 1
    writer.join(timeout=120)
    assert writer.error is None, writer.error

    final = Proc(cfg, "run", tag="final")
    want = set(by_id)

    def settled() -> bool:
        if set(read_attempt_ids(store_url)) != want:
            return False
        return scalar(store_url, "SELECT COUNT(*) FROM callbacks WHERE state = 'pending'") == 0

    try:
        assert final.wait_started(), final.stderr()[-3000:]
        pending = "SELECT COUNT(*) FROM callbacks WHERE state = 'pending'"
        assert wait_for(settled, timeout=60, interval=0.3), f"{scalar(store_url, pending)} never planned"
    finally:
        rc = final.stop()
    assert rc == 0, final.stderr()[-3000:]
    print(f"crash/plan: {n} kills, {len(lines)} lines")

    exp = expected(written, RULES, int(time.time()))
    assert len(exp.owed) >= 5
    callbacks = read_callbacks(store_url)
    assert model_mismatches(exp, callbacks, owed_states=("scheduled",)) == []
    assert [c.id for c in callbacks if c.state in TRANSIENT] == []
    unplanned = scalar(store_url, "SELECT COUNT(*) FROM callbacks WHERE state = 'scheduled' AND "
                                  "(window_start IS NULL OR window_end IS NULL OR due_at IS NULL)")
    assert unplanned == 0


def test_a_cancel_committed_while_the_planner_computes_is_not_undone(pg_database: str):
    """Found by the PostgreSQL crash run (after kill 25: 'scheduled' with outcome 'self-resolved').

    Planner.replan reads the open callbacks, computes, then writes `state = <what it read>` by id
    with no guard. On PostgreSQL (READ COMMITTED, no row locks taken by the read) a cancel, close
    or claim committed in between is overwritten: the caller who got through is scheduled again
    (invariant 3), a claimed 'dialing' row goes back to the queue (invariant 4), with no event
    (invariant 6). SQLite is immune (BEGIN IMMEDIATE serializes the whole replan).
    """
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    import callback_queue.planner as planner_mod
    from callback_queue.attempts import Attempt, Origin, Outcome
    from callback_queue.clock import FakeClock
    from callback_queue.ingest import Ingestor
    from callback_queue.planner import Planner
    from callback_queue.store import Store
    from callback_queue.windows import Capacity, ScheduleRules, TimeRange
    from tests.conftest import _truncate_pg

    _truncate_pg(pg_database)
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    t0 = int(now.timestamp()) - 3600
    number = "+8613800000009"
    store = Store(pg_database)
    try:
        clock = FakeClock(now)
        ingestor = Ingestor(store, clock, RULES)
        ingestor.ingest([Attempt("pbx", f"f{i}", number, number, t0 + 100 * i, t0 + 100 * i + 30, Outcome.FAILED,
                                 "abandon", 30, "q", Origin.QUEUE_LOG) for i in range(3)])
        got_through = Attempt("pbx", "ok", number, number, t0 + 600, t0 + 700, Outcome.CONNECTED, "connect", 10,
                              "q", Origin.QUEUE_LOG)
        real_plan = planner_mod.plan

        def plan_while_the_caller_gets_through(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = real_plan(*args, **kwargs)
            ingestor.ingest([got_through])  # another thread of the daemon commits the cancel meanwhile
            return result

        all_day = (TimeRange.parse("00:00-24:00"),)
        rules = ScheduleRules(tz=ZoneInfo("Asia/Shanghai"), workday=all_day, restday=all_day, holiday=all_day,
                              quiet=(), capacity=Capacity(fixed=10))
        planner_mod.plan = plan_while_the_caller_gets_through
        try:
            Planner(store, clock, rules, sla=timedelta(hours=24)).replan()
        finally:
            planner_mod.plan = real_plan
        [cb] = read_callbacks(pg_database)
        assert (cb.state, cb.outcome) == ("cancelled", "self-resolved")
    finally:
        store.dispose()
