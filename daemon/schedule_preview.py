"""What the schedule will do: one structure for `callbackd schedule preview`, the API and the console."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from callback_queue.learning import hourly_volume
from callback_queue.windows import DAYS


def build(settings: Any, store: Any, now: datetime, *, days: int = 7, weeks: int = 4) -> dict[str, Any]:
    """Per day the windows, their capacity and the callbacks planned into each; SLA breaches ahead;
    the weekday x hour inbound volume with the hours the windows cover."""
    from callback_queue.clock import FakeClock

    from .app import planner

    if settings.schedule is None:
        raise LookupError("no [schedule] in the configuration: callbacks are due as soon as they open")
    p = planner(settings, store, FakeClock(now))
    p.horizon = timedelta(days=days)
    plan = p.compute(now)
    tz = p.rules.tz
    per_window: dict[Any, int] = defaultdict(int)
    for pl in plan.placements:
        if pl.window is not None:
            per_window[pl.window.start] += 1
    out_days: dict[str, dict[str, Any]] = {}
    for w in plan.windows:
        key = w.day.isoformat()
        day = out_days.setdefault(key, {"date": key, "type": w.day_type, "windows": []})
        day["windows"].append({"window": f"{w.start.astimezone(tz):%H:%M}-{_end_label(w.start, w.end, tz)}",
                               "start": w.start.isoformat(), "end": w.end.isoformat(),
                               "capacity": w.capacity, "planned": per_window.get(w.start, 0)})
    return {
        "timezone": str(tz), "generated_at": now.isoformat(),
        "days": list(out_days.values()),
        "open_callbacks": len(plan.placements),
        "unplaced": sum(1 for x in plan.placements if x.window is None),
        "sla_breaches": [{"callback_id": b.id, "planned": b.due_at.isoformat() if b.due_at else None}
                         for b in plan.breaches],
        "heatmap": {"weeks": weeks, "volume_per_hour": hourly_volume(store, tz, now - timedelta(weeks=weeks), now),
                    "windows": window_hours(p.rules, now)},
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

