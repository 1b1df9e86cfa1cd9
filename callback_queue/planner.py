"""The planner's store side: read open callbacks, plan them into windows, write the plan.

Only changed rows are written. Windows are recomputed from the rules on every
run, so a reload with new windows re-plans open work without losing any of it;
a callback being dialed keeps its place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import schema as t
from .callbacks import OPEN_STATES, State
from .clock import Clock
from .planning import Plan, PlanItem, plan
from .store import Store
from .windows import ScheduleRules

cb = t.callbacks
_OPEN = tuple(s.value for s in OPEN_STATES)


@dataclass(frozen=True, slots=True)
class PlanReport:
    planned: int
    moved: int
    unplaced: int
    new_breaches: list[int]
    plan: Plan


class Planner:
    def __init__(self, store: Store, clock: Clock, rules: ScheduleRules, *, sla: timedelta = timedelta(hours=24),
                 horizon: timedelta = timedelta(days=7), min_spacing: timedelta = timedelta(minutes=5)) -> None:
        self.store = store
        self.clock = clock
        self.rules = rules
        self.sla = sla
        self.horizon = horizon
        self.min_spacing = min_spacing

    def compute(self, now: datetime | None = None) -> Plan:
        """The plan as it would be now, without writing it (for previews)."""
        now = now or self.clock.now()
        with self.store.read() as conn:
            items, _ = self._items(conn, now)
        return plan(items, self.rules.windows(now, now + self.horizon), now)

    def replan(self) -> PlanReport:
        now = self.clock.now()
        windows = self.rules.windows(now, now + self.horizon)
        with self.store.write() as conn:
            items, current = self._items(conn, now)
            result = plan(items, windows, now)
            updates: list[tuple[Any, ...]] = []
            breaches: list[int] = []
            moved = unplaced = 0
            far = now + self.horizon
            for p in result.placements:
                state, w_start, due, sla_due, breached_at = current[p.id]
                if p.window is None:
                    unplaced += 1
                    new = (State.PENDING.value if state == State.PENDING.value else state, None, None, far)
                else:
                    new_state = State.SCHEDULED.value if state == State.PENDING.value else state
                    new = (new_state, p.window.start, p.window.end, p.due_at)
                if (state, w_start, due) != (new[0], new[1], new[3]):
                    if w_start is not None and w_start != new[1]:
                        moved += 1
                    breach_at = breached_at
                    if p.breach and breached_at is None:
                        breach_at = now
                        breaches.append(p.id)
                    updates.append((new[0], new[1], new[2], new[3], sla_due, breach_at, now, p.id, state))
                elif p.breach and breached_at is None:
                    breaches.append(p.id)
                    updates.append((state, w_start, new[2], due, sla_due, now, now, p.id, state))
            if updates:
                _write_plan(conn, updates)
            if breaches:
                byid = {p.id: p for p in result.placements}
                _write_breach_events(conn, now, [(cid, json.dumps({
                    "sla_due_at": current[cid][3].isoformat() if current[cid][3] else None,
                    "planned_at": byid[cid].due_at.isoformat() if byid[cid].due_at else None,
                }, sort_keys=True)) for cid in breaches])
        return PlanReport(len(result.placements) - unplaced, moved, unplaced, breaches, result)

    def _items(self, conn: Any, now: datetime) -> tuple[list[PlanItem], dict[int, tuple[Any, ...]]]:
        rows = conn.execute(sa.select(
            cb.c.id, cb.c.state, cb.c.priority, cb.c.failures, cb.c.triggered_at, cb.c.earliest_at,
            cb.c.last_dial_at, cb.c.sla_due_at, cb.c.sla_breached_at, cb.c.window_start, cb.c.due_at,
        ).where(cb.c.state.in_(_OPEN))).all()
        items: list[PlanItem] = []
        current: dict[int, tuple[Any, ...]] = {}
        for r in rows:
            sla_due = r.sla_due_at or (r.triggered_at + self.sla)
            earliest = r.earliest_at or r.triggered_at
            if r.last_dial_at is not None:
                earliest = max(earliest, r.last_dial_at + self.min_spacing)
            items.append(PlanItem(r.id, r.priority, r.failures, r.triggered_at, earliest, sla_due,
                                  dialing=r.state == State.DIALING.value, window_start=r.window_start))
            current[r.id] = (r.state, r.window_start, r.due_at, sla_due, r.sla_breached_at)
        return items, current


# The plan is written straight to the driver: SQLAlchemy's per-row parameter handling cost more
# than the UPDATE itself. PostgreSQL gets one statement over arrays (unnest) instead of 100,000.
def _write_plan(conn: Any, updates: list[tuple[Any, ...]]) -> None:
    if conn.dialect.name == "postgresql":
        # COPY into a temporary table, then one UPDATE joined to it
        conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE IF NOT EXISTS plan_rows (state text, ws timestamptz, we timestamptz, "
            "due timestamptz, sla timestamptz, breach timestamptz, now timestamptz, id bigint, old text) "
            "ON COMMIT DELETE ROWS")
        cur = conn.connection.driver_connection.cursor()
        with cur.copy("COPY plan_rows (state, ws, we, due, sla, breach, now, id, old) FROM STDIN") as copy:
            for u in updates:
                copy.write_row(u)
        conn.exec_driver_sql(
            "UPDATE callbacks AS c SET state = u.state, window_start = u.ws, window_end = u.we, due_at = u.due, "
            "sla_due_at = u.sla, sla_breached_at = u.breach, updated_at = u.now FROM plan_rows AS u "
            # only if nobody changed its state since it was read (a cancel, a close or a claim committed
            # meanwhile wins; the next replan sees it): PostgreSQL's read above took no row locks
            "WHERE c.id = u.id AND c.state = u.old")
        return
    dt = _datetime_binder(conn)
    conn.exec_driver_sql(
        "UPDATE callbacks SET state = ?, window_start = ?, window_end = ?, due_at = ?, sla_due_at = ?, "
        "sla_breached_at = ?, updated_at = ? WHERE id = ? AND state = ?",
        [(u[0], dt(u[1]), dt(u[2]), dt(u[3]), dt(u[4]), dt(u[5]), dt(u[6]), u[7], u[8]) for u in updates])


def _write_breach_events(conn: Any, now: datetime, rows: list[tuple[int, str]]) -> None:
    if conn.dialect.name == "postgresql":
        cur = conn.connection.driver_connection.cursor()
        with cur.copy("COPY callback_events (callback_id, at, actor, event, detail) FROM STDIN") as copy:
            for cid, detail in rows:
                copy.write_row((cid, now, "planner", "sla-at-risk", detail))
        return
    at = _datetime_binder(conn)(now)
    conn.exec_driver_sql("INSERT INTO callback_events (callback_id, at, actor, event, detail) "
                         "VALUES (?, ?, 'planner', 'sla-at-risk', ?)", [(cid, at, d) for cid, d in rows])


def _datetime_binder(conn: Any) -> Any:
    """How this dialect stores an aware UTC datetime (SQLite: SQLAlchemy's own string format)."""
    if conn.dialect.name != "sqlite":
        return lambda v: v

    def bind(v: datetime | None) -> str | None:
        if v is None:
            return None
        if v.tzinfo is not UTC:
            v = v.astimezone(UTC)
        # "2026-03-02 04:00:00.000000": SQLAlchemy's SQLite DATETIME format, made by C code
        return v.isoformat(" ", "microseconds")[:26]

    return bind
