"""How the planner writes its plan: only changed rows, events only for rows it really updated, UTC
whatever the session's time zone, and the indexes the plan's UPDATE has to maintain."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

import callback_queue.planner as planner_mod
from callback_queue import schema as t
from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.planner import Planner
from callback_queue.store import Store
from callback_queue.windows import Capacity, ScheduleRules, TimeRange
from tests.conftest import _truncate_pg

SH = ZoneInfo("Asia/Shanghai")
RULES = ScheduleRules(tz=SH, workday=(TimeRange.parse("12:00-13:00"), TimeRange.parse("19:00-20:00")),
                      restday=(TimeRange.parse("10:00-11:00"),), quiet=(TimeRange.parse("21:00-08:30"),),
                      capacity=Capacity(fixed=2))
# Tuesday 2026-03-03, 09:00 in Shanghai
NOW = datetime(2026, 3, 3, 9, 0, tzinfo=SH).astimezone(UTC)
NUMBERS = [f"+86138000002{i:02d}" for i in range(6)]


def _failures(number: str, start: int, k: int) -> list[Attempt]:
    return [Attempt("pbx", f"{number}-{i}", number, number, start + i * 60 + k, start + i * 60 + k + 30,
                    Outcome.FAILED, "abandon", 30, "q", Origin.QUEUE_LOG) for i in range(3)]


def _open(store: Store, clock: FakeClock, hours_ago: float) -> Ingestor:
    ingestor = Ingestor(store, clock, DetectRules(min_wait_seconds=0))
    start = int((clock.now() - timedelta(hours=hours_ago)).timestamp())
    ingestor.ingest([a for k, n in enumerate(NUMBERS) for a in _failures(n, start, k)])
    return ingestor


def _rows(store: Store) -> dict[str, tuple]:
    cb = t.callbacks
    with store.read() as conn:
        return {r.number: tuple(r) for r in conn.execute(
            sa.select(cb.c.number, cb.c.state, cb.c.window_start, cb.c.window_end, cb.c.due_at, cb.c.sla_due_at,
                      cb.c.sla_breached_at, cb.c.updated_at))}


def _risk_events(store: Store) -> list[tuple[int, dict]]:
    ev = t.callback_events
    with store.read() as conn:
        return [(r.callback_id, json.loads(r.detail)) for r in conn.execute(
            sa.select(ev.c.callback_id, ev.c.detail).where(ev.c.event == "sla-at-risk").order_by(ev.c.id))]


def test_a_replan_writes_only_what_changed(store: Store):
    clock = FakeClock(NOW)
    _open(store, clock, hours_ago=20)
    planner = Planner(store, clock, RULES, sla=timedelta(hours=24))
    first = planner.replan()
    assert (first.planned, first.unplaced, len(first.new_breaches)) == (6, 0, 4)
    before = _rows(store)
    assert {r[1] for r in before.values()} == {"scheduled"}
    assert all(r[2] is not None and r[3] is not None for r in before.values())
    clock.advance(timedelta(minutes=7))     # nothing moves: every window still starts after now
    again = planner.replan()
    assert (again.moved, again.new_breaches) == (0, [])
    after = _rows(store)
    assert after == before                  # updated_at included: not one row rewritten
    assert len(_risk_events(store)) == 4


def test_sla_events_carry_utc_times_whatever_the_session_time_zone(pg_database: str):
    _truncate_pg(pg_database)
    # every connection of this store starts in Shanghai time: timestamptz values come back as +08:00
    url = sa.engine.make_url(pg_database).update_query_dict({"options": "-c TimeZone=Asia/Shanghai"})
    store = Store(url.render_as_string(hide_password=False))
    try:
        with store.read() as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "Asia/Shanghai"
        clock = FakeClock(NOW)
        _open(store, clock, hours_ago=20)
        report = Planner(store, clock, RULES, sla=timedelta(hours=24)).replan()
        events = _risk_events(store)
        assert sorted(cid for cid, _ in events) == sorted(report.new_breaches) and len(events) == 4
        for _, detail in events:
            assert detail["sla_due_at"].endswith("+00:00") and detail["planned_at"].endswith("+00:00")
            assert datetime.fromisoformat(detail["planned_at"]) > datetime.fromisoformat(detail["sla_due_at"])
        # a retry due inside the 12:00 window keeps its own time as due time: read from the database, in UTC
        retry_at = datetime(2026, 3, 3, 12, 25, tzinfo=SH)
        with store.write() as conn:
            cid = conn.execute(sa.select(t.callbacks.c.id).where(t.callbacks.c.number == NUMBERS[0])).scalar_one()
            conn.execute(sa.update(t.callbacks).where(t.callbacks.c.id == cid).values(earliest_at=retry_at))
        preview = Planner(store, clock, RULES, sla=timedelta(hours=24)).compute()
        [p] = [p for p in preview.placements if p.id == cid]
        assert p.due_at == retry_at and p.due_at.utcoffset() == timedelta(0)
        assert p.due_at.isoformat() == "2026-03-03T04:25:00+00:00"
    finally:
        store.dispose()


def test_a_cancel_committed_while_planning_gets_no_sla_event(pg_database: str, monkeypatch: pytest.MonkeyPatch):
    """PostgreSQL's read takes no row locks: a caller who gets through while the planner computes is
    cancelled, the plan's write skips that row, and no sla-at-risk event is recorded for it either."""
    _truncate_pg(pg_database)
    store = Store(pg_database)
    try:
        clock = FakeClock(NOW)
        ingestor = _open(store, clock, hours_ago=20)
        last = NUMBERS[-1]                  # triggered last: planned past its SLA
        start = int((clock.now() - timedelta(hours=1)).timestamp())
        got_through = Attempt("pbx", "ok", last, last, start, start + 60, Outcome.CONNECTED, "connect", 10, "q",
                              Origin.QUEUE_LOG)
        real_plan = planner_mod.plan

        def plan_while_the_caller_gets_through(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = real_plan(*args, **kwargs)
            assert ingestor.ingest([got_through]).cancelled    # committed by another connection meanwhile
            return result

        monkeypatch.setattr(planner_mod, "plan", plan_while_the_caller_gets_through)
        report = Planner(store, clock, RULES, sla=timedelta(hours=24)).replan()
        rows = _rows(store)
        assert rows[last][1] == "cancelled" and rows[last][6] is None     # not flagged by the planner
        assert len(report.new_breaches) == 3
        assert sorted(cid for cid, _ in _risk_events(store)) == sorted(report.new_breaches)
        assert all(rows[n][1] == "scheduled" for n in NUMBERS[:-1])
    finally:
        store.dispose()


def test_the_plan_write_maintains_no_index_it_does_not_need(store: Store):
    """The planner's UPDATE rewrites every index entry of a row (PostgreSQL cannot use HOT: state and due_at are
    indexed). dial_ref is indexed only where set, window_start not at all; a lookup by dial_ref still uses it."""
    with store.read() as conn:
        if conn.dialect.name == "sqlite":
            defs = dict(conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'callbacks'").all())
            conn.exec_driver_sql("ANALYZE")
            used = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT id FROM callbacks WHERE dial_ref = ?", ("ref-1",)))
        else:
            defs = dict(conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'callbacks'").all())
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            used = " ".join(r[0] for r in conn.exec_driver_sql(
                "EXPLAIN SELECT id FROM callbacks WHERE dial_ref = %(ref)s", {"ref": "ref-1"}))
    assert not any("window_start" in name for name in defs)
    assert "dial_ref is not null" in " ".join(defs["ix_callbacks_dial_ref"].lower().split())
    assert "ix_callbacks_dial_ref" in used
