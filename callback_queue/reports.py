"""Reports: what happened to the callers the daemon flagged, by local day or ISO week.

One module serves `callbackd report`, GET /api/reports and the console's reports page.
A report follows a cohort: the callbacks *triggered* in each period, and what
became of each of them since (called back, within the SLA, reached, SMS sent and
delivered, rated, satisfied, resolved). The figures come from the callbacks and
their append-only events, which every feature writes (invariant 6):

- called back: the callback has a `closed` event (one per call placed, whatever its outcome);
- within SLA: its first call ended no later than `sla_due_at` (set by the planner), or,
  when the planner set none, `triggered_at + sla`;
- reached: it entered state `reached` (an event moved it there);
- SMS sent / delivered: its row in sms_messages was accepted by the provider (`sent_at` set) /
  reached state `delivered`;
- rated / satisfied / resolved: it has an evaluation (the latest counts); "satisfied" and
  "basically satisfied" count as satisfied, as the 12345 practice counts 满意率, and only
  "resolved" (not "partly") counts as resolved.

The 12345 hotline's three rates follow: 响应率 response = within SLA / flagged,
满意率 satisfaction = satisfied / rated, 解决率 resolution = resolved / rated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from . import schema as t
from .store import Store

FIELDS = ("flagged", "followups", "called_back", "within_sla", "reached", "sms_sent", "sms_delivered", "rated",
          "satisfied", "resolved")
LABELS = {"flagged": "callers flagged", "followups": "follow-ups filed", "called_back": "called back",
          "within_sla": "called back within SLA", "reached": "reached", "sms_sent": "SMS sent",
          "sms_delivered": "SMS delivered", "rated": "rated", "satisfied": "satisfied", "resolved": "resolved"}
_SATISFIED = frozenset({"satisfied", "basic"})
_RESOLVED = frozenset({"resolved"})


def rating_of(resolved: str | None, satisfaction: str | None) -> tuple[bool, bool]:
    """(satisfied, resolved) for one evaluation (sms/ratings.py: resolved | partly | not,
    satisfied | basic | unsatisfied)."""
    return satisfaction in _SATISFIED, resolved in _RESOLVED


@dataclass
class Row:
    period: str
    start: date
    flagged: int = 0
    followups: int = 0
    called_back: int = 0
    within_sla: int = 0
    reached: int = 0
    sms_sent: int = 0
    sms_delivered: int = 0
    rated: int = 0
    satisfied: int = 0
    resolved: int = 0

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = self.start.isoformat()
        return d


@dataclass
class Report:
    since: date
    until: date
    by: str
    timezone: str
    rows: list[Row]
    total: Row = field(init=False)

    def __post_init__(self) -> None:
        self.total = Row("total", self.since)
        for r in self.rows:
            for f in FIELDS:
                setattr(self.total, f, getattr(self.total, f) + getattr(r, f))

    def rates(self) -> dict[str, float | None]:
        tot = self.total
        cohort = tot.flagged + tot.followups

        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        return {"response": ratio(tot.within_sla, cohort), "reached": ratio(tot.reached, cohort),
                "satisfaction": ratio(tot.satisfied, tot.rated), "resolution": ratio(tot.resolved, tot.rated)}

    def as_json(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat(), "by": self.by,
                "timezone": self.timezone, "fields": list(FIELDS), "rows": [r.as_json() for r in self.rows],
                "total": self.total.as_json(), "rates": self.rates()}

    def csv(self) -> str:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["period", "start", *FIELDS])
        for r in [*self.rows, self.total]:
            w.writerow([r.period, r.start.isoformat(), *(getattr(r, f) for f in FIELDS)])
        return buf.getvalue()


def period_of(d: date, by: str) -> tuple[str, date]:
    if by == "week":
        start = d - timedelta(days=d.weekday())
        iso = start.isocalendar()
        return f"{iso.year}-W{iso.week:02d}", start
    return d.isoformat(), d


def local_bounds(since: date, until: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start of `since`, end of `until`) in UTC for local days."""
    lo = datetime.combine(since, time(), tz).astimezone(UTC)
    hi = datetime.combine(until + timedelta(days=1), time(), tz).astimezone(UTC)
    return lo, hi


def build(store: Store, tz: ZoneInfo, since: date, until: date, *, by: str = "day",
          sla: timedelta = timedelta(hours=24)) -> Report:
    if by not in ("day", "week"):
        raise ValueError("by must be 'day' or 'week'")
    if until < since:
        raise ValueError(f"until ({until}) is before since ({since})")
    lo, hi = local_bounds(since, until, tz)
    cb, ev, sms, evals = t.callbacks, t.callback_events, t.sms_messages, t.evaluations
    in_range = sa.and_(cb.c.triggered_at >= lo, cb.c.triggered_at < hi)
    with store.read() as conn:
        cohort = conn.execute(sa.select(cb.c.id, cb.c.kind, cb.c.triggered_at, cb.c.sla_due_at)
                              .where(in_range)).all()
        calls = dict(conn.execute(
            sa.select(ev.c.callback_id, sa.func.min(ev.c.at)).join(cb, cb.c.id == ev.c.callback_id)
            .where(in_range, ev.c.event == "closed").group_by(ev.c.callback_id)).all())
        reached = set(conn.execute(
            sa.select(ev.c.callback_id).join(cb, cb.c.id == ev.c.callback_id)
            .where(in_range, ev.c.to_state == "reached").distinct()).scalars())
        texts = {cid: (sent_at, state) for cid, sent_at, state in conn.execute(
            sa.select(sms.c.callback_id, sms.c.sent_at, sms.c.state).join(cb, cb.c.id == sms.c.callback_id)
            .where(in_range))}
        ratings: dict[int, tuple[bool, bool]] = {}
        for cid, resolved, satisfaction in conn.execute(
                sa.select(evals.c.callback_id, evals.c.resolved, evals.c.satisfaction)
                .join(cb, cb.c.id == evals.c.callback_id).where(in_range).order_by(evals.c.created_at, evals.c.id)):
            ratings[cid] = rating_of(resolved, satisfaction)  # the latest wins
    rows: dict[str, Row] = {}
    d = since
    while d <= until:
        name, start = period_of(d, by)
        rows.setdefault(name, Row(name, start))
        d += timedelta(days=1)
    for cid, kind, triggered_at, sla_due_at in cohort:
        row = rows[period_of(triggered_at.astimezone(tz).date(), by)[0]]
        if kind == "followup":
            row.followups += 1
        else:
            row.flagged += 1
        called = calls.get(cid)
        if called is not None:
            row.called_back += 1
            if called <= (sla_due_at or triggered_at + sla):
                row.within_sla += 1
        row.reached += cid in reached
        sent_at, sms_state = texts.get(cid, (None, None))
        row.sms_sent += sent_at is not None
        row.sms_delivered += sms_state == "delivered"
        if cid in ratings:
            row.rated += 1
            satisfied, resolved = ratings[cid]
            row.satisfied += satisfied
            row.resolved += resolved
    return Report(since, until, by, str(tz), list(rows.values()))


def default_range(today: date, days: int = 30) -> tuple[date, date]:
    return today - timedelta(days=days - 1), today


# -- inbound volume and SLA status (the admin page) -------------------------------------------
def inbound_heatmap(store: Store, tz: ZoneInfo, now: datetime, weeks: int = 4) -> dict[str, Any]:
    """Inbound attempts per local weekday (Monday = 0) x hour over the last `weeks` weeks.

    Counted per UTC hour in SQL (a range scan on attempts.started_ts) and folded into local
    weekday/hour here, so the database returns at most 24 x 7 x weeks rows.
    """
    a = t.attempts
    start = int((now - timedelta(weeks=weeks)).timestamp())
    hour = (a.c.started_ts // 3600).label("h")
    with store.read() as conn:
        rows = conn.execute(
            sa.select(hour, sa.func.count(), sa.func.sum(sa.case((a.c.outcome == "failed", 1), else_=0)))
            .where(a.c.started_ts >= start).group_by(hour)
        ).all()
    total = [[0] * 24 for _ in range(7)]
    failed = [[0] * 24 for _ in range(7)]
    for h, n, f in rows:
        local = datetime.fromtimestamp(int(h) * 3600, tz)
        total[local.weekday()][local.hour] += int(n)
        failed[local.weekday()][local.hour] += int(f or 0)
    return {"weeks": weeks, "timezone": str(tz), "total": total, "failed": failed,
            "max": max((max(r) for r in total), default=0)}


def sla_status(store: Store, now: datetime, sla: timedelta = timedelta(hours=24)) -> dict[str, int]:
    """Open callbacks by SLA standing: overdue, due within 2 hours, flagged by the planner, fine."""
    cb = t.callbacks
    open_states = ("pending", "scheduled", "dialing", "retry_wait")
    with store.read() as conn:
        rows = conn.execute(sa.select(cb.c.triggered_at, cb.c.sla_due_at, cb.c.sla_breached_at)
                            .where(cb.c.state.in_(open_states))).all()
    out = {"open": len(rows), "overdue": 0, "due_within_2h": 0, "planner_breaches": 0, "on_track": 0}
    for triggered_at, sla_due_at, breached_at in rows:
        due = sla_due_at or triggered_at + sla
        if breached_at is not None:
            out["planner_breaches"] += 1
        if due < now:
            out["overdue"] += 1
        elif due < now + timedelta(hours=2):
            out["due_within_2h"] += 1
        else:
            out["on_track"] += 1
    return out


def per_window(store: Store) -> list[dict[str, Any]]:
    """Open callbacks per planned window (callbacks.window_start, set by the planner)."""
    cb = t.callbacks
    with store.read() as conn:
        rows = conn.execute(
            sa.select(cb.c.window_start, sa.func.count())
            .where(cb.c.state.in_(("pending", "scheduled", "retry_wait")), cb.c.window_start.is_not(None))
            .group_by(cb.c.window_start).order_by(cb.c.window_start)
        ).all()
    return [{"window_start": w.isoformat().replace("+00:00", "Z"), "callbacks": n} for w, n in rows]
