"""plan() against a plain reference implementation of the same rules, on random inputs.

plan() is written for speed (index-based windows, multi-pass stable sorts); the reference below is
the straightforward version it replaced. Both must give the same placements, due times, breaches
and window load for any mix of priorities, ties, retry times, calls under way and full windows.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest

from callback_queue.planning import Placement, PlanItem, plan
from callback_queue.windows import Window

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def reference(items: list[PlanItem], windows: list[Window], now: datetime) -> tuple[list[Placement], dict]:
    ordered = [w for w in sorted(windows, key=lambda w: w.start) if w.end > now]
    room = {w.start: w.capacity for w in ordered}
    load = dict.fromkeys(room, 0)
    for it in items:
        if it.dialing and it.window_start in room:
            room[it.window_start] -= 1
            load[it.window_start] += 1
    out = []
    for it in sorted((it for it in items if not it.dialing),
                     key=lambda it: (-it.priority, -it.failures, it.triggered_at, it.id)):
        earliest = max(it.earliest, now)
        chosen = next((w for w in ordered if w.end > earliest and room[w.start] > 0), None)
        if chosen is None:
            out.append(Placement(it.id, None, None, True))
            continue
        room[chosen.start] -= 1
        load[chosen.start] += 1
        due = max(chosen.start, earliest)
        out.append(Placement(it.id, chosen, due, due > it.sla_due_at))
    return out, load


def scenario(rng: random.Random) -> tuple[list[PlanItem], list[Window], datetime]:
    windows = []
    for k in range(rng.randint(0, 8)):
        start = T0 + timedelta(hours=6 * k + rng.randint(0, 3))
        windows.append(Window(start, start + timedelta(minutes=rng.choice((30, 60, 90))), rng.randint(0, 6),
                              date(2026, 3, 2), "workday", f"w{k}"))
    rng.shuffle(windows)
    now = T0 + timedelta(hours=rng.choice((0, 5, 13)))
    items = []
    for i in range(rng.randint(0, 60)):
        trig = T0 - timedelta(hours=rng.randint(0, 4))          # few distinct values: ties on every key
        earliest = T0 + timedelta(hours=rng.randint(0, 40), minutes=rng.choice((0, 30)))
        dialing = rng.random() < 0.15
        ws = rng.choice(windows).start if dialing and windows and rng.random() < 0.8 else None
        items.append(PlanItem(rng.randint(1, 10_000) * 100 + i, rng.randint(0, 2), rng.randint(3, 5), trig,
                              earliest, trig + timedelta(hours=rng.choice((12, 24, 48))), dialing, ws))
    rng.shuffle(items)
    return items, windows, now


@pytest.mark.parametrize("seed", range(300))
def test_plan_matches_the_reference(seed: int):
    items, windows, now = scenario(random.Random(seed))
    got = plan(items, windows, now)
    want, load = reference(items, windows, now)
    assert got.placements == want
    assert got.load == load
    assert got.windows == [w for w in sorted(windows, key=lambda w: w.start) if w.end > now]


def test_the_scenarios_cover_ties_full_windows_breaches_and_calls_under_way():
    # the random scenarios above are only worth something if they reach every branch
    seen = set()
    for seed in range(300):
        items, windows, now = scenario(random.Random(seed))
        p = plan(items, windows, now)
        seen.add("unplaced" if any(x.window is None for x in p.placements) else "all placed")
        seen.add("breach" if any(x.breach and x.window for x in p.placements) else "")
        seen.add("dialing in a window" if any(it.dialing and it.window_start for it in items) else "")
        seen.add("retry later than the window start" if any(x.window and x.due_at > x.window.start
                                                            for x in p.placements) else "")
        keys = [(it.priority, it.failures, it.triggered_at) for it in items if not it.dialing]
        seen.add("ties" if len(keys) != len(set(keys)) else "")
    assert {"unplaced", "all placed", "breach", "dialing in a window", "retry later than the window start",
            "ties"} <= seen


def test_the_planners_event_detail_is_the_json_it_stands_in_for():
    import json
    from zoneinfo import ZoneInfo

    from callback_queue.planner import _BreachDetail

    detail = _BreachDetail()
    sh = ZoneInfo("Asia/Shanghai")
    cases = [(T0, T0 + timedelta(hours=3)), (T0 + timedelta(microseconds=120), None),
             (datetime(2026, 3, 3, 12, 0, tzinfo=sh), datetime(2026, 3, 3, 19, 0, 0, 5, tzinfo=sh)),
             (T0, T0 + timedelta(hours=3))]       # again: the cached planned time
    for sla_due, planned in cases:
        want = json.dumps({"sla_due_at": sla_due.astimezone(UTC).isoformat(),
                           "planned_at": planned.astimezone(UTC).isoformat() if planned else None}, sort_keys=True)
        assert detail(sla_due, planned) == want
