"""A callback's history matches its states once the planner is involved, on SQLite and PostgreSQL.

The planner's pending -> scheduled is an event of its own ("scheduled", with the window); a claim
records the state it really took the callback from (every claim path); a claim that ends without a
call (released, lease expired, a dial given back) goes back to where a planned callback belongs:
scheduled, with its plan kept. Found by a new-user walkthrough: `callbacks show` read
opened "-> pending", claimed "pending -> dialing" for a callback listed as scheduled.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

import callback_queue.planner as planner_mod
from callback_queue import schema as t
from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.callbacks import State
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.dialing import DialQueue
from callback_queue.ingest import Ingestor
from callback_queue.planner import Planner
from callback_queue.queue import CallbackQueue
from callback_queue.retry import RetryPolicy
from callback_queue.store import Store
from callback_queue.windows import Capacity, ScheduleRules, TimeRange
from tests.conftest import _truncate_pg

SH = ZoneInfo("Asia/Shanghai")
RULES = ScheduleRules(tz=SH, workday=(TimeRange.parse("12:00-13:00"), TimeRange.parse("19:00-20:00")),
                      restday=(TimeRange.parse("10:00-11:00"),), quiet=(TimeRange.parse("21:00-08:30"),),
                      capacity=Capacity(fixed=2))
# Tuesday 2026-03-03 in Shanghai: planned at 09:00, the 12:00-13:00 window is open at 12:05
NOW = datetime(2026, 3, 3, 9, 0, tzinfo=SH).astimezone(UTC)
IN_WINDOW = datetime(2026, 3, 3, 12, 5, tzinfo=SH).astimezone(UTC)
NOON = datetime(2026, 3, 3, 12, 0, tzinfo=SH).astimezone(UTC)
LEASE = timedelta(minutes=15)


def _open(store: Store, clock: FakeClock, numbers: list[str], hours_ago: float = 1) -> list[int]:
    start = int((clock.now() - timedelta(hours=hours_ago)).timestamp())
    attempts = [Attempt("pbx", f"{n}-{i}", n, n, start + i * 60 + k, start + i * 60 + k + 30, Outcome.FAILED,
                        "abandon", 30, "q", Origin.QUEUE_LOG) for k, n in enumerate(numbers) for i in range(3)]
    opened = Ingestor(store, clock, DetectRules(min_wait_seconds=0)).ingest(attempts).opened
    assert len(opened) == len(numbers)
    return opened


def _history(store: Store, cid: int) -> list[tuple[str, str, str | None, str | None]]:
    ev = t.callback_events
    with store.read() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            sa.select(ev.c.event, ev.c.actor, ev.c.from_state, ev.c.to_state)
            .where(ev.c.callback_id == cid).order_by(ev.c.at, ev.c.id))]


def _events(store: Store, event: str) -> list[tuple[int, dict]]:
    ev = t.callback_events
    with store.read() as conn:
        return [(r.callback_id, json.loads(r.detail)) for r in conn.execute(
            sa.select(ev.c.callback_id, ev.c.detail).where(ev.c.event == event).order_by(ev.c.id))]


def _chained(store: Store, queue: CallbackQueue, cid: int) -> None:
    """Each event starts where the previous one ended, and the last one ends in the stored state."""
    history = _history(store, cid)
    changes = [h for h in history if h[3] is not None]     # sla-at-risk changes no state
    assert [h[2] for h in changes[1:]] == [h[3] for h in changes[:-1]], history
    assert changes[-1][3] == queue.get(cid).callback.state.value, history


def _claim(queue: CallbackQueue, how: str, cid: int) -> None:
    if how == "claim":
        assert [c.id for c in queue.claim("alice")] == [cid]
    elif how == "claim_json":       # PostgreSQL: the claim statement that writes the JSON itself
        assert [c["id"] for c in json.loads(f"[{queue.claim_json('alice')}]")] == [cid]
    else:
        assert queue.claim_one(cid, "alice").state is State.DIALING


@pytest.mark.parametrize("how", ["claim", "claim_json", "claim_one"])
def test_plan_claim_release_and_lease_expiry_keep_the_history_true(store: Store, how: str) -> None:
    clock = FakeClock(NOW)
    [cid] = _open(store, clock, ["+8613800000301"])
    Planner(store, clock, RULES, sla=timedelta(hours=24)).replan()
    queue = CallbackQueue(store, clock, lease=LEASE, planned=True)
    planned = queue.get(cid).callback
    assert (planned.state, planned.window_start, planned.due_at) == (State.SCHEDULED, NOON, NOON)
    [(_, detail)] = _events(store, "scheduled")
    assert detail == {"window_start": "2026-03-03T04:00:00+00:00", "window_end": "2026-03-03T05:00:00+00:00",
                      "due_at": "2026-03-03T04:00:00+00:00"}

    clock.set(IN_WINDOW)
    _claim(queue, how, cid)
    released = queue.release(cid, "alice")
    assert (released.state, released.window_start, released.window_end, released.due_at) == (
        State.SCHEDULED, planned.window_start, planned.window_end, planned.due_at)    # the plan is kept
    assert _history(store, cid) == [
        ("opened", "detector", None, "pending"),
        ("scheduled", "planner", "pending", "scheduled"),
        ("claimed", "alice", "scheduled", "dialing"),
        ("released", "alice", "dialing", "scheduled"),
    ]
    # claimed again, the lease runs out: the sweep puts it back into its window too
    _claim(queue, how, cid)
    clock.advance(LEASE + timedelta(seconds=1))
    assert queue.sweep() == [cid]
    swept = queue.get(cid).callback
    assert (swept.state, swept.window_start, swept.claimed_by) == (State.SCHEDULED, NOON, None)
    assert _history(store, cid)[-2:] == [("claimed", "alice", "scheduled", "dialing"),
                                         ("lease-expired", "sweeper", "dialing", "scheduled")]
    _chained(store, queue, cid)


def test_an_unplanned_callback_still_goes_pending_dialing_pending(store: Store) -> None:
    clock = FakeClock(NOW)
    [cid] = _open(store, clock, ["+8613800000302"])
    queue = CallbackQueue(store, clock, lease=LEASE)
    queue.claim("alice")
    assert queue.release(cid, "alice").state is State.PENDING
    queue.claim_one(cid, "bob")
    clock.advance(LEASE + timedelta(seconds=1))
    assert queue.sweep() == [cid]
    assert queue.get(cid).callback.state is State.PENDING
    assert _history(store, cid) == [
        ("opened", "detector", None, "pending"),
        ("claimed", "alice", "pending", "dialing"),
        ("released", "alice", "dialing", "pending"),
        ("claimed", "bob", "pending", "dialing"),
        ("lease-expired", "sweeper", "dialing", "pending"),
    ]


def test_a_dialer_claims_from_the_real_state_and_gives_back_into_the_plan(store: Store) -> None:
    clock = FakeClock(NOW)
    [cid] = _open(store, clock, ["+8613800000303"])
    Planner(store, clock, RULES, sla=timedelta(hours=24)).replan()
    queue = CallbackQueue(store, clock, RetryPolicy(min_spacing=timedelta(0)), lease=LEASE, planned=True)
    dq = DialQueue(queue)
    clock.set(IN_WINDOW)
    [req] = dq.claim_for_dial("ami", "worker-1", 1, lease=LEASE)
    dq.give_back(cid, req.dial_ref, "dialer:ami", "no free agent")
    back = queue.get(cid).callback
    assert (back.state, back.window_start) == (State.SCHEDULED, NOON)
    assert _history(store, cid)[1:] == [
        ("scheduled", "planner", "pending", "scheduled"),
        ("dialing", "worker-1", "scheduled", "dialing"),
        ("released", "dialer:ami", "dialing", "scheduled"),
    ]


def test_a_planned_retry_is_claimed_from_and_released_to_retry_wait(store: Store) -> None:
    clock = FakeClock(NOW)
    [cid] = _open(store, clock, ["+8613800000304"])
    planner = Planner(store, clock, RULES, sla=timedelta(hours=24), min_spacing=timedelta(0))
    planner.replan()
    queue = CallbackQueue(store, clock, RetryPolicy(min_spacing=timedelta(0)), lease=LEASE, planned=True)
    clock.set(IN_WINDOW)
    queue.claim("alice")
    assert queue.close(cid, "alice", "busy").state is State.RETRY_WAIT     # due again in 10 minutes
    planner.replan()                                                        # into the same window: no event
    assert queue.get(cid).callback.window_start == NOON
    clock.advance(timedelta(minutes=10))
    queue.claim("bob")
    assert queue.release(cid, "bob").state is State.RETRY_WAIT
    assert [(e, f, s) for e, _, f, s in _history(store, cid)] == [
        ("opened", None, "pending"),
        ("scheduled", "pending", "scheduled"),
        ("claimed", "scheduled", "dialing"),
        ("closed", "dialing", "retry_wait"),
        ("claimed", "retry_wait", "dialing"),
        ("released", "dialing", "retry_wait"),
    ]
    _chained(store, queue, cid)


def test_no_scheduled_event_for_an_unchanged_plan_or_a_moved_window(store: Store) -> None:
    clock = FakeClock(NOW)
    ids = _open(store, clock, ["+8613800000305", "+8613800000306", "+8613800000307"])
    first = Planner(store, clock, RULES, sla=timedelta(hours=24)).replan()
    assert first.planned == 3
    scheduled = _events(store, "scheduled")
    assert sorted(cid for cid, _ in scheduled) == sorted(ids)
    queue = CallbackQueue(store, clock, planned=True)
    for cid, detail in scheduled:    # each event says which window, as stored
        c = queue.get(cid).callback
        assert {k: datetime.fromisoformat(v) for k, v in detail.items()} == {
            "window_start": c.window_start, "window_end": c.window_end, "due_at": c.due_at}
        assert all(v.endswith("+00:00") for v in detail.values())

    clock.advance(timedelta(minutes=7))
    Planner(store, clock, RULES, sla=timedelta(hours=24)).replan()          # the same plan
    # the evening window moves to 18:00: the one planned at 19:00 moves with it, still scheduled
    moved_rules = ScheduleRules(tz=SH, workday=(TimeRange.parse("12:00-13:00"), TimeRange.parse("18:00-19:00")),
                                restday=RULES.restday, quiet=RULES.quiet, capacity=RULES.capacity)
    report = Planner(store, clock, moved_rules, sla=timedelta(hours=24)).replan()
    assert report.moved == 1
    assert sorted(c.window_start.astimezone(SH).strftime("%H:%M") for c in queue.list()) == [
        "12:00", "12:00", "18:00"]
    assert _events(store, "scheduled") == scheduled                         # not one more
    for cid in ids:
        _chained(store, queue, cid)


def test_newly_scheduled_and_at_risk_gets_both_events_in_order(store: Store) -> None:
    clock = FakeClock(NOW)
    ids = _open(store, clock, [f"+86138000004{i:02d}" for i in range(6)], hours_ago=20)
    report = Planner(store, clock, RULES, sla=timedelta(hours=24)).replan()
    assert (report.planned, len(report.new_breaches)) == (6, 4)
    for cid in ids:
        expected = [("opened", "detector", None, "pending"), ("scheduled", "planner", "pending", "scheduled")]
        if cid in report.new_breaches:
            expected.append(("sla-at-risk", "planner", None, None))
        assert _history(store, cid) == expected
    assert sorted(cid for cid, _ in _events(store, "sla-at-risk")) == sorted(report.new_breaches)


def test_a_claim_committed_while_planning_gets_no_scheduled_event(pg_database: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's plan read takes no row locks: an operator claims a pending callback while the planner
    computes; the plan's write skips that row, and writes no "scheduled" event for it."""
    _truncate_pg(pg_database)
    store = Store(pg_database)
    try:
        clock = FakeClock(NOW)
        ids = _open(store, clock, ["+8613800000501", "+8613800000502"])
        queue = CallbackQueue(store, clock, lease=LEASE)        # no windows: anything due can be claimed
        real_plan = planner_mod.plan
        taken: list[int] = []

        def plan_while_an_operator_claims(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = real_plan(*args, **kwargs)
            taken.extend(c.id for c in queue.claim("alice"))   # committed by another connection meanwhile
            return result

        monkeypatch.setattr(planner_mod, "plan", plan_while_an_operator_claims)
        Planner(store, clock, RULES, sla=timedelta(hours=24)).replan()
        [claimed] = taken
        [other] = [cid for cid in ids if cid != claimed]
        assert _history(store, claimed) == [("opened", "detector", None, "pending"),
                                            ("claimed", "alice", "pending", "dialing")]
        assert _history(store, other)[-1] == ("scheduled", "planner", "pending", "scheduled")
        assert [cid for cid, _ in _events(store, "scheduled")] == [other]
    finally:
        store.dispose()

