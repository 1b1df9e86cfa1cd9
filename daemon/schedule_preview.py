"""What the schedule will do: one structure for `callbackd schedule preview`, the API and the console."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from callback_queue.learning import hourly_volume
from callback_queue.windows import DAYS


def build(settings: Any, store: Any, now: datetime, *, days: int = 7, weeks: int = 4,
          start: date | None = None) -> dict[str, Any]:
    """Per day, from `start` (default today) for `days` days: its type, holiday name, 调休 mark, the windows,
    their capacity and the callbacks planned into each, or why it has none; SLA breaches ahead; years the
    holidays package lacks the official schedule of; the weekday x hour inbound volume with the hours the
    windows cover."""
    from callback_queue.clock import FakeClock
    from callback_queue.holiday_calendar import provisional_warning

    from .app import planner

    if settings.schedule is None:
        raise LookupError("no [schedule] in the configuration: callbacks are due as soon as they open")
    p = planner(settings, store, FakeClock(now))
    rules, tz = p.rules, p.rules.tz
    today = now.astimezone(tz).date()
    first = start or today
    last = first + timedelta(days=days - 1)
    lo = datetime.combine(first, time(0), tzinfo=tz).astimezone(UTC)
    hi = datetime.combine(last + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    p.horizon = max(timedelta(days=days), hi - now)
    plan = p.compute(now)
    per_window: dict[Any, int] = defaultdict(int)
    for pl in plan.placements:
        if pl.window is not None:
            per_window[pl.window.start] += 1
    by_day: dict[date, list[Any]] = defaultdict(list)
    for w in rules.windows(lo, hi):
        by_day[w.day].append(w)
    out_days: list[dict[str, Any]] = []
    d = first
    while d <= last:
        kind = rules.day_type(d)
        windows = [{"window": f"{w.start.astimezone(tz):%H:%M}-{_end_label(w.start, w.end, tz)}",
                    "start": w.start.isoformat(), "end": w.end.isoformat(), "capacity": w.capacity,
                    "planned": per_window.get(w.start, 0), "past": w.end <= now} for w in by_day.get(d, [])]
        out_days.append({"date": d.isoformat(), "weekday": DAYS[d.weekday()], "type": kind,
                         "holiday": rules.holiday_name(d) if kind == "holiday" else None,
                         "swapped_workday": rules.swapped_workday(d),
                         "no_windows": None if windows else (rules.why_no_windows(d) or "no windows"),
                         "windows": windows})
        d += timedelta(days=1)
    horizon_end = now + settings.schedule.horizon
    years = sorted(set(rules.provisional_years(first, last))
                   | set(rules.provisional_years(today, horizon_end.astimezone(tz).date())))
    return {
        "timezone": str(tz), "generated_at": now.isoformat(), "from": first.isoformat(), "to": last.isoformat(),
        "days": out_days,
        "provisional_years": years,
        "warnings": [provisional_warning(y, rules.country) for y in years],
        "open_callbacks": len(plan.placements),
        "unplaced": sum(1 for x in plan.placements if x.window is None),
        "sla_breaches": [{"callback_id": b.id, "planned": b.due_at.isoformat() if b.due_at else None}
                         for b in plan.breaches],
        "heatmap": {"weeks": weeks, "volume_per_hour": hourly_volume(store, tz, now - timedelta(weeks=weeks), now),
                    "windows": window_hours(rules, now)},
    }


def window_hours(rules: Any, now: datetime) -> dict[str, list[int]]:
    """weekday -> local hours touched by a window, over the coming week."""
    hours: dict[str, set[int]] = {d: set() for d in DAYS}
    for w in rules.windows(now, now + timedelta(days=7)):
        t = w.start
        while t < w.end:
            local = t.astimezone(rules.tz)
            hours[DAYS[local.weekday()]].add(local.hour)
            t += timedelta(minutes=30)
    return {d: sorted(h) for d, h in hours.items()}


def _end_label(start: datetime, end: datetime, tz: Any) -> str:
    """A window's end as configured: one that ends at the next midnight reads 24:00, not 00:00."""
    local = end.astimezone(tz)
    if (local.hour, local.minute) == (0, 0) and local.date() > start.astimezone(tz).date():
        return "24:00"
    return f"{local:%H:%M}"

