"""The planner: capacity, priority, retry spacing, SLA. Pure, with explicit times."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from callback_queue.planning import PlanItem, plan
from callback_queue.retry import DialOutcome, GiveUp, Retry, RetryPolicy
from callback_queue.windows import Window

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def win(h: int, cap: int, hours: float = 1, day: int = 0) -> Window:
    start = T0 + timedelta(days=day, hours=h)
    return Window(start, start + timedelta(hours=hours), cap, date(2026, 3, 2) + timedelta(days=day), "workday",
                  f"{h:02d}:00")


def item(i: int, *, prio: int = 0, failures: int = 3, trig: float = 0, earliest: float = 0,
         sla: float = 24, dialing: bool = False, ws: datetime | None = None) -> PlanItem:
    return PlanItem(i, prio, failures, T0 + timedelta(hours=trig), T0 + timedelta(hours=earliest),
                    T0 + timedelta(hours=sla), dialing, ws)


def test_capacity_is_respected_in_order_of_priority_failures_and_waiting():
    windows = [win(12, 2), win(19, 2)]
    items = [item(1, trig=1), item(2, trig=0.5), item(3, failures=5, trig=2), item(4, prio=1, trig=3),
             item(5, trig=4)]
    p = plan(items, windows, T0)
    got = {pl.id: (pl.window.label if pl.window else None) for pl in p.placements}
    assert got == {4: "12:00", 3: "12:00", 2: "19:00", 1: "19:00", 5: None}
    assert p.load == {windows[0].start: 2, windows[1].start: 2}
    [unplaced] = [pl for pl in p.placements if pl.window is None]
    assert unplaced.id == 5 and unplaced.breach


def test_a_retry_waits_for_its_time_and_the_due_time_is_inside_the_window():
    windows = [win(12, 10), win(19, 10)]
    p = plan([item(1, earliest=12.5), item(2, earliest=13)], windows, T0)
    by = {pl.id: pl for pl in p.placements}
    assert by[1].window.label == "12:00" and by[1].due_at == T0 + timedelta(hours=12.5)
    assert by[2].window.label == "19:00" and by[2].due_at == T0 + timedelta(hours=19)


def test_sla_breach_is_flagged_not_hidden():
    windows = [win(12, 1), win(19, 1, day=1)]
    p = plan([item(1, sla=24), item(2, trig=1, sla=25)], windows, T0)
    by = {pl.id: pl for pl in p.placements}
    assert not by[1].breach
    assert by[2].breach and by[2].due_at == T0 + timedelta(days=1, hours=19)
    assert [b.id for b in p.breaches] == [2]


def test_calls_under_way_keep_their_window_and_use_its_room():
    w = win(12, 2)
    p = plan([item(1, dialing=True, ws=w.start), item(2), item(3)], [w, win(19, 5)], T0 + timedelta(hours=12))
    by = {pl.id: pl for pl in p.placements}
    assert 1 not in by
    assert {by[2].window.label, by[3].window.label} == {"12:00", "19:00"}


def test_closed_windows_are_not_used():
    p = plan([item(1)], [win(12, 5), win(19, 5)], T0 + timedelta(hours=13))
    assert p.placements[0].window.label == "19:00"


def test_retry_spacing_per_outcome_and_give_up():
    policy = RetryPolicy(max_attempts=5, min_spacing=timedelta(minutes=5))
    now = T0
    assert policy.decide("busy", attempts=1, counts={"busy": 1}, now=now) == Retry(now + timedelta(minutes=10))
    assert policy.decide("no-answer", attempts=1, counts={"no-answer": 1}, now=now) == \
        Retry(now + timedelta(minutes=30))
    assert policy.decide("congestion", attempts=1, counts={"congestion": 1}, now=now) == \
        Retry(now + timedelta(minutes=5))
    # busy: 10 min x 3 -> the 4th busy ends it
    assert isinstance(policy.decide("busy", attempts=3, counts={"busy": 3}, now=now), Retry)
    assert policy.decide("busy", attempts=4, counts={"busy": 4}, now=now) == GiveUp("unreachable", "busy 4 times")
    # no answer: 30 min x 2
    assert policy.decide("no-answer", attempts=3, counts={"no-answer": 3}, now=now).state == "unreachable"
    # max attempts over all outcomes
    g = policy.decide("busy", attempts=5, counts={"busy": 2, "no-answer": 2, "congestion": 1}, now=now)
    assert g == GiveUp("unreachable", "5 calls without reaching the citizen")
    assert policy.decide(DialOutcome.REACHED, attempts=1, counts={}, now=now).state == "reached"
    assert policy.decide("wrong-number", attempts=1, counts={}, now=now).state == "cancelled"
