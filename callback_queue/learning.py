"""Learned windows: call back in the hours the hotline is quietest.

From the attempts of the last N weeks: inbound volume per weekday × hour (in
the hotline's time zone). For each weekday, the quietest whole hours inside
the allowed calling hours are picked, quietest first, until their capacity
covers the callbacks expected that weekday. Holidays keep the configured
holiday windows. The result says why it chose what it chose.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from . import schema as t
from .clock import Clock
from .store import Store
from .windows import DAYS, ScheduleRules, TimeRange


@dataclass(frozen=True)
class Learned:
    rules: ScheduleRules
    volume: dict[str, list[float]]          # weekday -> 24 hourly averages (calls per hour)
    demand: dict[str, float]                # weekday -> callbacks expected
    chosen: dict[str, list[int]]            # weekday -> hours picked
    explanation: list[str]


def hourly_volume(store: Store, tz: Any, since: datetime, until: datetime) -> dict[str, list[float]]:
    """Average inbound calls per weekday × local hour between since and until."""
    a = t.attempts
    bucket = (a.c.started_ts / 3600).label("h")
    counts: dict[tuple[int, int], int] = defaultdict(int)
    with store.read() as conn:
        for h, n in conn.execute(
            sa.select(sa.cast(bucket, sa.BigInteger), sa.func.count())
            .where(a.c.started_ts >= int(since.timestamp()), a.c.started_ts < int(until.timestamp()))
            .group_by(sa.cast(bucket, sa.BigInteger))
        ):
            local = datetime.fromtimestamp(int(h) * 3600, UTC).astimezone(tz)
            counts[(local.weekday(), local.hour)] += n
    days_seen: dict[int, int] = defaultdict(int)
    d = since.astimezone(tz).date()
    while d < until.astimezone(tz).date():
        days_seen[d.weekday()] += 1
        d += timedelta(days=1)
    return {DAYS[wd]: [counts[(wd, h)] / max(1, days_seen[wd]) for h in range(24)] for wd in range(7)}


def callbacks_per_weekday(store: Store, tz: Any, since: datetime, until: datetime) -> dict[str, float]:
    cb = t.callbacks
    per: dict[int, int] = defaultdict(int)
    with store.read() as conn:
        for (trig,) in conn.execute(sa.select(cb.c.triggered_at).where(
                cb.c.triggered_at >= since, cb.c.triggered_at < until)):
            if isinstance(trig, str):
                trig = datetime.fromisoformat(trig)
            per[trig.astimezone(tz).weekday()] += 1
    weeks = max(1.0, (until - since).days / 7)
    return {DAYS[wd]: per[wd] / weeks for wd in range(7)}


def choose_hours(volume: list[float], allowed: tuple[TimeRange, ...], per_hour: int, demand: float,
                 min_hours: int) -> list[int]:
    hours = [h for h in range(24) if _allowed(h, allowed)]
    picked: list[int] = []
    covered = 0
    for h in sorted(hours, key=lambda h: (volume[h], h)):
        if covered >= demand and len(picked) >= min_hours:
            break
        picked.append(h)
        covered += per_hour
    return sorted(picked)


def _allowed(hour: int, allowed: tuple[TimeRange, ...]) -> bool:
    start, end = hour * 60, hour * 60 + 60
    for r in allowed:
        a = r.start.hour * 60 + r.start.minute
        b = r.end.hour * 60 + r.end.minute or 24 * 60
        if a <= start and end <= b:
            return True
    return False


def _ranges(hours: list[int]) -> tuple[TimeRange, ...]:
    out: list[TimeRange] = []
    for h in hours:
        end = time((h + 1) % 24)
        if out and out[-1].end == time(h):
            out[-1] = TimeRange(out[-1].start, end)
        else:
            out.append(TimeRange(time(h), end))
    return tuple(out)


def learn_windows(store: Store, clock: Clock, base: ScheduleRules, *, weeks: int = 4,
                  allowed: tuple[TimeRange, ...] = (TimeRange(time(8, 30), time(21, 0)),),
                  min_hours: int = 1) -> Learned:
    until = clock.now()
    since = until - timedelta(weeks=weeks)
    volume = hourly_volume(store, base.tz, since, until)
    demand = callbacks_per_weekday(store, base.tz, since, until)
    per_hour = base.capacity.of(timedelta(hours=1))
    chosen: dict[str, list[int]] = {}
    allowed_hours = [h for h in range(24) if _allowed(h, allowed)]
    lines = [f"learned from {weeks} weeks of calls ({since.astimezone(base.tz):%Y-%m-%d} to "
             f"{until.astimezone(base.tz):%Y-%m-%d}, {base.tz}); "
             f"capacity {per_hour} callbacks per hour; allowed {', '.join(map(str, allowed))}"]
    for day in DAYS:
        hours = choose_hours(volume[day], allowed, per_hour, demand[day], min_hours)
        chosen[day] = hours
        detail = ", ".join(f"{h:02d}:00 ({volume[day][h]:.1f}/h)" for h in hours)
        busiest = max(allowed_hours, key=lambda h: (volume[day][h], -h), default=None)
        lines.append(f"{day}: {detail} — {len(hours) * per_hour} callbacks of room for {demand[day]:.1f} expected"
                     + (f"; busiest allowed hour {busiest:02d}:00 has {volume[day][busiest]:.1f}/h"
                        if busiest is not None else "; no whole hour is allowed"))
    weekdays = {day: _ranges(hours) for day, hours in chosen.items()}
    rules = replace(base, workday=weekdays["mon"], restday=weekdays["sun"], weekdays=weekdays)
    return Learned(rules, volume, demand, chosen, lines)
