"""The planner's store side: read open callbacks, plan them into windows, write the plan.

Only changed rows are written. Windows are recomputed from the rules on every
run, so a reload with new windows re-plans open work without losing any of it;
a callback being dialed keeps its place.

`sla_breached_at` says a callback is *currently* planned past its SLA: set (with an
"sla-at-risk" event) when a plan first puts it past its SLA due time, cleared (with
an "sla-ok" event) when a later plan brings it back within it (new windows, more
capacity, other work closed), set again if it slips once more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .callbacks import OPEN_STATES, State
from .clock import Clock
from .planning import Plan, PlanItem, plan
from .store import Store
from .windows import ScheduleRules

_OPEN = tuple(s.value for s in OPEN_STATES)


@dataclass(frozen=True, slots=True)
class PlanReport:
    planned: int
    moved: int
    unplaced: int
    #: callbacks this plan put past their SLA that were within it before ("sla-at-risk" events)
    new_breaches: list[int]
    plan: Plan
    #: callbacks this plan brought back within their SLA ("sla-ok" events)
    cleared: list[int] = field(default_factory=list)
    #: callbacks planned past their SLA now, new ones included
    breaches_now: int = 0


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
            moved = unplaced = 0
            far = now + self.horizon
            pending, scheduled = State.PENDING.value, State.SCHEDULED.value
            breach_detail, plan_detail = _BreachDetail(), _PlanDetail()
            breaches_now = 0
            for p in result.placements:
                state, w_start, due, sla_due, breached_at = current[p.id]
                w = p.window
                if w is None:
                    unplaced += 1
                    new_state, ws, we, new_due = state, None, None, far
                else:
                    new_state = scheduled if state == pending else state
                    ws, we, new_due = w.start, w.end, p.due_at
                detail = ok_detail = None
                breaches_now += p.breach
                if p.breach and breached_at is None:
                    breached_at = now
                    detail = breach_detail(sla_due, p.due_at)
                elif not p.breach and breached_at is not None:
                    breached_at = None          # back within its SLA: the flag says what the plan is now
                    ok_detail = breach_detail(sla_due, p.due_at)
                elif new_state == state and ws == w_start and new_due == due:
                    continue            # unchanged: not written (a replan of the same plan writes nothing)
                if w_start is not None and w_start != ws:
                    moved += 1
                # a state change (pending -> scheduled) is an event of its own, with the window it was given
                scheduled_detail = plan_detail(ws, we, new_due) if new_state != state else None
                updates.append((p.id, state, new_state, ws, we, new_due, sla_due, breached_at, detail,
                                scheduled_detail, ok_detail))
            breaches, cleared = _write_plan(conn, updates, now) if updates else ([], [])
        return PlanReport(len(result.placements) - unplaced, moved, unplaced, breaches, result, cleared, breaches_now)

    def _items(self, conn: Any, now: datetime) -> tuple[list[PlanItem], dict[int, tuple[Any, ...]]]:
        items: list[PlanItem] = []
        current: dict[int, tuple[Any, ...]] = {}
        sla, spacing, dialing = self.sla, self.min_spacing, State.DIALING.value
        for (cid, state, priority, failures, triggered, earliest_at, last_dial, sla_due, breached, w_start,
             due) in _read_open(conn):
            if sla_due is None:
                sla_due = triggered + sla
            earliest = earliest_at or triggered
            if last_dial is not None and last_dial + spacing > earliest:
                earliest = last_dial + spacing
            items.append(PlanItem(cid, priority, failures, triggered, earliest, sla_due,
                                  state == dialing, w_start))
            current[cid] = (state, w_start, due, sla_due, breached)
        return items, current


_READ = ("SELECT id, state, priority, failures, triggered_at, earliest_at, last_dial_at, sla_due_at, sla_breached_at, "
         "window_start, due_at FROM callbacks WHERE state IN (" + ", ".join(f"'{s}'" for s in sorted(_OPEN)) + ")")


# The planner reads and writes straight through the driver: SQLAlchemy's per-row result and parameter
# handling cost more than the statements themselves (bench/plan.py, 100,000 open callbacks).
def _read_open(conn: Any) -> list[tuple[Any, ...]]:
    """The open callbacks as plain tuples; times as aware UTC datetimes on both dialects."""
    if conn.dialect.name == "postgresql":
        # timestamptz values come back in the session's time zone: make that UTC for this transaction
        conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
        with conn.connection.driver_connection.cursor(binary=True) as cur:
            return cur.execute(_READ).fetchall()
    cur = conn.connection.driver_connection.cursor()
    rows = cur.execute(_READ).fetchall()
    cur.close()
    # SQLAlchemy's SQLite DATETIME text ("2026-03-02 04:00:00.000000"), always UTC in this schema; many rows
    # share a time (window starts and ends, the planner's `now`), so each distinct text is parsed once
    parsed: dict[str | None, datetime | None] = {None: None}

    def parse(text: str | None) -> datetime | None:
        try:
            return parsed[text]
        except KeyError:
            v = parsed[text] = datetime.fromisoformat(text).replace(tzinfo=UTC)  # type: ignore[arg-type]
            return v

    return [(r[0], r[1], r[2], r[3], parse(r[4]), parse(r[5]), parse(r[6]), parse(r[7]), parse(r[8]), parse(r[9]),
             parse(r[10])) for r in rows]


class _BreachDetail:
    """json.dumps({"planned_at": ..., "sla_due_at": ...}, sort_keys=True) in UTC, for many rows at a time:
    planned times are mostly window starts, each formatted once (the first plan may flag 100,000 rows)."""

    def __init__(self) -> None:
        self._planned: dict[datetime | None, str] = {None: "null"}

    def __call__(self, sla_due: datetime | None, planned: datetime | None) -> str:
        pa = self._planned.get(planned)
        if pa is None:
            pa = self._planned[planned] = f'"{_iso_utc(planned)}"'    # type: ignore[arg-type]
        sd = f'"{_iso_utc(sla_due)}"' if sla_due is not None else "null"
        return f'{{"planned_at": {pa}, "sla_due_at": {sd}}}'


class _PlanDetail:
    """json.dumps({"due_at": ..., "window_end": ..., "window_start": ...}, sort_keys=True) in UTC, the detail of
    a "scheduled" event, for many rows at a time: each distinct time and window formatted once (the first plan
    schedules every pending callback, 100,000 in bench/plan.py; most are due at their window's start)."""

    def __init__(self) -> None:
        self._times: dict[datetime | None, str] = {None: "null"}
        self._windows: dict[tuple[datetime | None, datetime | None], str] = {}

    def _time(self, v: datetime | None) -> str:
        text = self._times.get(v)
        if text is None:
            text = self._times[v] = f'"{_iso_utc(v)}"'     # type: ignore[arg-type]
        return text

    def __call__(self, window_start: datetime | None, window_end: datetime | None, due: datetime | None) -> str:
        window = self._windows.get((window_start, window_end))
        if window is None:
            window = self._windows[(window_start, window_end)] = (
                f'"window_end": {self._time(window_end)}, "window_start": {self._time(window_start)}}}')
        return f'{{"due_at": {self._time(due)}, {window}'


def _iso_utc(v: datetime) -> str:
    return (v if v.tzinfo is UTC else v.astimezone(UTC)).isoformat()


# rows of `updates`: (id, state read, new state, window_start, window_end, due_at, sla_due_at, sla_breached_at,
# the detail of a new sla-at-risk event or None, the detail of a "scheduled" event (the state changes) or None,
# the detail of an sla-ok event (the flag cleared) or None)
_PLAN_TYPES = ["int8", "text", "text", *["timestamptz"] * 5, "text", "text", "text"]


def _write_plan(conn: Any, updates: list[tuple[Any, ...]], now: datetime) -> tuple[list[int], list[int]]:
    """Write the changed rows and their events: "scheduled" for a row whose state changes (pending ->
    scheduled, from and to states and the window), "sla-at-risk" for a row newly flagged, "sla-ok" for a row
    whose flag is cleared (a row may get a scheduled event and one of the others); returns the ids given an
    sla-at-risk event and those given an sla-ok event.

    A row is written only if its state is still the one read: a cancel, a close or a claim committed
    meanwhile wins (PostgreSQL's read took no row locks; SQLite's write transaction held the lock
    throughout), and the next replan sees it. Only rows really updated get events.
    """
    updates.sort()      # by id: the UPDATE then walks the table and its primary key in order
    if conn.dialect.name == "postgresql":
        # binary COPY into a temporary table (the text format formats every datetime in Python), then
        # one statement: the UPDATE joined to it, and the events of the rows it actually updated
        conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE IF NOT EXISTS plan_rows (id bigint, old text, state text, ws timestamptz, "
            "we timestamptz, due timestamptz, sla timestamptz, breach timestamptz, detail text, sched text, "
            "ok text) ON COMMIT DELETE ROWS")
        with conn.connection.driver_connection.cursor() as cur:
            with cur.copy("COPY plan_rows (id, old, state, ws, we, due, sla, breach, detail, sched, ok) FROM STDIN "
                          "(FORMAT BINARY)") as copy:
                copy.set_types(_PLAN_TYPES)
                for u in updates:
                    copy.write_row(u)
            # the events in one INSERT, "scheduled" before "sla-at-risk" (a callback with both reads in order)
            cur.execute(
                "WITH done AS (UPDATE callbacks AS c SET state = u.state, window_start = u.ws, window_end = u.we, "
                "due_at = u.due, sla_due_at = u.sla, sla_breached_at = u.breach, updated_at = %(now)s "
                "FROM plan_rows AS u WHERE c.id = u.id AND c.state = u.old "
                "RETURNING c.id, u.old, u.state, u.detail, u.sched, u.ok), "
                "events AS (INSERT INTO callback_events (callback_id, at, actor, event, from_state, to_state, detail) "
                "SELECT id, %(now)s, 'planner', 'scheduled', old, state, sched FROM done WHERE sched IS NOT NULL "
                "UNION ALL "
                "SELECT id, %(now)s, 'planner', 'sla-at-risk', NULL, NULL, detail FROM done WHERE detail IS NOT NULL "
                "UNION ALL "
                "SELECT id, %(now)s, 'planner', 'sla-ok', NULL, NULL, ok FROM done WHERE ok IS NOT NULL) "
                "SELECT id, detail IS NOT NULL FROM done WHERE detail IS NOT NULL OR ok IS NOT NULL",
                {"now": now})
            rows = cur.fetchall()
            return sorted(r[0] for r in rows if r[1]), sorted(r[0] for r in rows if not r[1])
    dt = _datetime_binder(conn)
    at = dt(now)
    conn.exec_driver_sql(
        "UPDATE callbacks SET state = ?, window_start = ?, window_end = ?, due_at = ?, sla_due_at = ?, "
        "sla_breached_at = ?, updated_at = ? WHERE id = ? AND state = ?",
        [(u[2], dt(u[3]), dt(u[4]), dt(u[5]), dt(u[6]), dt(u[7]), at, u[0], u[1]) for u in updates])
    # SQLite's write transaction held the lock since the read: every row read was updated
    scheduled = [(u[0], at, u[1], u[2], u[9]) for u in updates if u[9] is not None]
    if scheduled:
        conn.exec_driver_sql("INSERT INTO callback_events (callback_id, at, actor, event, from_state, to_state, "
                             "detail) VALUES (?, ?, 'planner', 'scheduled', ?, ?, ?)", scheduled)
    events = [(u[0], at, u[8]) for u in updates if u[8] is not None]
    if events:
        conn.exec_driver_sql("INSERT INTO callback_events (callback_id, at, actor, event, detail) "
                             "VALUES (?, ?, 'planner', 'sla-at-risk', ?)", events)
    ok = [(u[0], at, u[10]) for u in updates if u[10] is not None]
    if ok:
        conn.exec_driver_sql("INSERT INTO callback_events (callback_id, at, actor, event, detail) "
                             "VALUES (?, ?, 'planner', 'sla-ok', ?)", ok)
    return [e[0] for e in events], [e[0] for e in ok]


def _datetime_binder(conn: Any) -> Any:
    """How this dialect stores an aware UTC datetime (SQLite: SQLAlchemy's own string format, each distinct
    time formatted once: a plan's rows share their window's start and end)."""
    if conn.dialect.name != "sqlite":
        return lambda v: v
    texts: dict[datetime | None, str | None] = {None: None}

    def bind(v: datetime | None) -> str | None:
        try:
            return texts[v]
        except KeyError:
            assert v is not None
            utc = v if v.tzinfo is UTC else v.astimezone(UTC)
            # "2026-03-02 04:00:00.000000": SQLAlchemy's SQLite DATETIME format, made by C code
            text = texts[v] = utc.isoformat(" ", "microseconds")[:26]
            return text

    return bind
