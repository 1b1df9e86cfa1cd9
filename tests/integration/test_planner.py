"""The planner on a real store: windows assigned, claims only inside them, retries, SLA, re-planning."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.callbacks import State
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.learning import learn_windows
from callback_queue.planner import Planner
from callback_queue.queue import CallbackQueue
from callback_queue.retry import RetryPolicy
from callback_queue.store import Store
from callback_queue.windows import Capacity, ScheduleRules, TimeRange

SH = ZoneInfo("Asia/Shanghai")


def rules(**kw) -> ScheduleRules:
    base = dict(tz=SH, workday=(TimeRange.parse("12:00-13:00"), TimeRange.parse("19:00-20:00")),
                restday=(TimeRange.parse("10:00-11:00"),), quiet=(TimeRange.parse("21:00-08:30"),),
                capacity=Capacity(fixed=2))
    base.update(kw)
    return ScheduleRules(**base)


def open_callbacks(store: Store, clock: FakeClock, numbers: list[str], at: datetime) -> None:
    start = int(at.timestamp())
    atts = [Attempt("pbx", f"{n}-{i}", n, n, start + i * 60 + k, start + i * 60 + k + 30, Outcome.FAILED, "abandon",
                    30, "q", Origin.QUEUE_LOG) for k, n in enumerate(numbers) for i in range(3)]
    Ingestor(store, clock, DetectRules(min_wait_seconds=0)).ingest(atts)


def test_plan_assigns_windows_and_claims_happen_only_inside_them(store: Store):
    # Tuesday 2026-03-03, 09:00 in Shanghai
    clock = FakeClock(datetime(2026, 3, 3, 9, 0, tzinfo=SH).astimezone(UTC))
    open_callbacks(store, clock, ["+8613800000001", "+8613800000002", "+8613800000003"],
                   clock.now() - timedelta(minutes=30))
    planner = Planner(store, clock, rules(), sla=timedelta(hours=24))
    report = planner.replan()
    assert (report.planned, report.unplaced, report.new_breaches) == (3, 0, [])
    # replanning again changes nothing and writes nothing
    before = _snapshot(store)
    planner.replan()
    assert _snapshot(store) == before
    q = CallbackQueue(store, clock, planned=True)
    rows = {c.number: c for c in q.list()}
    assert {c.state for c in rows.values()} == {State.SCHEDULED}
    assert sorted(c.window_start.astimezone(SH).strftime("%H:%M") for c in rows.values()) == ["12:00", "12:00",
                                                                                              "19:00"]
    assert q.claim("alice") == []            # 09:00: no window is open
    clock.set(datetime(2026, 3, 3, 12, 5, tzinfo=SH).astimezone(UTC))
    got = q.claim("alice", 5)
    assert len(got) == 2                     # only the two planned into the 12:00 window
    clock.set(datetime(2026, 3, 3, 13, 30, tzinfo=SH).astimezone(UTC))
    assert q.claim("bob") == []              # between windows (the sweep returned the expired claims)
    assert {c.state for c in q.list()} == {State.SCHEDULED}     # planned callbacks keep their plan
    planner.replan()                         # ... and the planner puts them into the next window
    assert all(c.window_start.astimezone(SH).strftime("%H:%M") in ("19:00", "12:00") for c in q.list())


def test_a_busy_retry_lands_in_a_later_window(store: Store):
    clock = FakeClock(datetime(2026, 3, 3, 12, 0, tzinfo=SH).astimezone(UTC))
    open_callbacks(store, clock, ["+8613800000009"], clock.now() - timedelta(hours=1))
    planner = Planner(store, clock, rules(), min_spacing=timedelta(minutes=5))
    planner.replan()
    q = CallbackQueue(store, clock, RetryPolicy(), planned=True)
    [c] = q.claim("alice")
    clock.advance(timedelta(minutes=55))     # 12:55
    c = q.close(c.id, "alice", "busy")
    assert c.state is State.RETRY_WAIT and c.due_at == clock.now() + timedelta(minutes=10)
    planner.replan()
    c = q.get(c.id).callback
    # 13:05 is outside the 12:00 window: the next window with room is 19:00
    assert c.window_start.astimezone(SH).strftime("%H:%M") == "19:00"
    assert c.state is State.RETRY_WAIT
    clock.set(datetime(2026, 3, 3, 19, 1, tzinfo=SH).astimezone(UTC))
    assert [x.id for x in q.claim("alice")] == [c.id]


def test_sla_breach_is_flagged_once_with_an_event(store: Store):
    clock = FakeClock(datetime(2026, 3, 3, 9, 0, tzinfo=SH).astimezone(UTC))
    numbers = [f"+86138000001{i:02d}" for i in range(6)]
    open_callbacks(store, clock, numbers, clock.now() - timedelta(hours=20))
    planner = Planner(store, clock, rules(), sla=timedelta(hours=24))
    report = planner.replan()
    # triggered at ~13:00 yesterday, so the SLA ends at ~13:00 today; capacity 2 per window: the
    # 12:00 window holds 2 in time, the other 4 go to 19:00 today and tomorrow: 4 breaches
    assert len(report.new_breaches) == 4
    assert planner.replan().new_breaches == []      # flagged once
    with store.read() as conn:
        evs = conn.execute(sa.select(t.callback_events.c.callback_id, t.callback_events.c.detail)
                           .where(t.callback_events.c.event == "sla-at-risk")).all()
        flagged = conn.execute(sa.select(sa.func.count()).select_from(t.callbacks)
                               .where(t.callbacks.c.sla_breached_at.is_not(None))).scalar()
    assert sorted(e.callback_id for e in evs) == sorted(report.new_breaches) and flagged == 4
    assert all(json.loads(e.detail)["sla_due_at"] for e in evs)


def test_new_windows_replan_open_work_without_touching_calls_under_way(store: Store):
    clock = FakeClock(datetime(2026, 3, 3, 12, 10, tzinfo=SH).astimezone(UTC))
    open_callbacks(store, clock, ["+8613900000001", "+8613900000002", "+8613900000003"],
                   clock.now() - timedelta(hours=1))
    Planner(store, clock, rules()).replan()
    q = CallbackQueue(store, clock, planned=True)
    [dialing] = q.claim("alice")
    # the admin moves the evening window to 18:00-19:00 and adds capacity
    new = rules(workday=(TimeRange.parse("12:00-13:00"), TimeRange.parse("18:00-19:00")), capacity=Capacity(fixed=5))
    report = Planner(store, clock, new).replan()
    cbs = {c.id: c for c in q.list()}
    assert cbs[dialing.id].state is State.DIALING and cbs[dialing.id].claimed_by == "alice"
    others = [c for c in cbs.values() if c.id != dialing.id]
    assert all(c.window_start.astimezone(SH).strftime("%H:%M") == "12:00" for c in others)  # room now
    assert report.moved >= 1
    with store.read() as conn:
        claims = conn.execute(sa.select(sa.func.count()).select_from(t.callback_events)
                              .where(t.callback_events.c.event == "claimed")).scalar()
    assert claims == 1


def test_learned_windows_pick_the_trough_hours(store: Store, shared: Path, tmp_path: Path):
    log = tmp_path / "q.log"
    subprocess.run([sys.executable, str(shared / "bench" / "gen_queue_log.py"), "--calls-per-day", "1100",
                    "--days", "28", "--start", "2026-02-02", "--seed", "7", "-o", str(log)],
                   check=True, capture_output=True)
    from daemon.app import normalizer, queue_log_parser
    from daemon.settings import QueueLogSource, Settings, SourcesSettings
    from daemon.sources.pipeline import import_file

    s = Settings(sources=SourcesSettings(queue_log=QueueLogSource(path=log)))
    clock = FakeClock(datetime(2026, 3, 2, 0, 0, tzinfo=SH).astimezone(UTC))
    import_file(log, queue_log_parser(s, normalizer(s)), Ingestor(store, clock, DetectRules()))
    base = rules(capacity=Capacity(agents=1, handle_time=timedelta(minutes=6)))   # 10 per hour
    learned = learn_windows(store, clock, base, weeks=4, allowed=(TimeRange.parse("08:30-21:00"),), min_hours=4)
    # the generator's load inside 08:30-21:00 is lowest in the evening (18-20 h), then at lunch (12-13 h)
    for day in ("mon", "wed", "sat"):
        hours = learned.chosen[day]
        assert len(hours) == 4, (day, hours)
        assert {18, 19, 20} <= set(hours) <= {12, 13, 17, 18, 19, 20}, (day, hours)
        ranked = sorted(range(9, 21), key=lambda h: learned.volume[day][h])
        assert set(hours) == set(ranked[:4])   # exactly the four quietest allowed hours
        assert 8 not in hours and 21 not in hours   # outside the allowed hours
    assert any("expected" in line for line in learned.explanation)
    # the learned rules produce real windows
    ws = learned.rules.windows(clock.now(), clock.now() + timedelta(days=1))
    assert ws and all(w.start.astimezone(SH).hour in learned.chosen["mon"] + learned.chosen["tue"] for w in ws)


def _snapshot(store: Store):
    with store.read() as conn:
        return [tuple(r) for r in conn.execute(sa.select(t.callbacks).order_by(t.callbacks.c.id))]
