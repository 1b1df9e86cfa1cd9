"""The SLA flag says what the plan is now: a re-plan that brings a callback back within its SLA clears
`sla_breached_at` with an "sla-ok" event (the gauge callbackd_planner_sla_breaches falls back), and a later
slip flags it again."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from structlog.testing import capture_logs
from test_planner import SH, open_callbacks, rules

from callback_queue import schema as t
from callback_queue.clock import FakeClock
from callback_queue.planner import Planner
from callback_queue.store import Store
from callback_queue.windows import Capacity


def _flagged(store: Store) -> int:
    with store.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t.callbacks)
                            .where(t.callbacks.c.sla_breached_at.is_not(None))).scalar_one()


def _events(store: Store, event: str) -> list[tuple[int, str]]:
    with store.read() as conn:
        return [tuple(r) for r in conn.execute(sa.select(t.callback_events.c.callback_id, t.callback_events.c.detail)
                                               .where(t.callback_events.c.event == event)
                                               .order_by(t.callback_events.c.id))]


def test_a_replan_within_the_sla_clears_the_flag_and_a_slip_sets_it_again(store: Store) -> None:
    clock = FakeClock(datetime(2026, 3, 3, 9, 0, tzinfo=SH).astimezone(UTC))
    open_callbacks(store, clock, [f"+86138000001{i:02d}" for i in range(6)], clock.now() - timedelta(hours=20))
    tight = Planner(store, clock, rules(), sla=timedelta(hours=24))
    first = tight.replan()
    assert (len(first.new_breaches), first.breaches_now, first.cleared) == (4, 4, [])
    assert _flagged(store) == 4
    again = tight.replan()
    assert (again.new_breaches, again.breaches_now, again.cleared) == ([], 4, [])  # still past: no new events

    roomy = Planner(store, clock, rules(capacity=Capacity(fixed=10)), sla=timedelta(hours=24))
    back = roomy.replan()  # everyone fits the 12:00 window, within the SLA
    assert (back.new_breaches, back.breaches_now, sorted(back.cleared)) == ([], 0, sorted(first.new_breaches))
    assert _flagged(store) == 0
    ok = _events(store, "sla-ok")
    assert sorted(cid for cid, _ in ok) == sorted(first.new_breaches)
    assert all(json.loads(d)["planned_at"] and json.loads(d)["sla_due_at"] for _, d in ok)
    assert roomy.replan().cleared == []  # cleared once

    slip = tight.replan()  # capacity gone again: flagged again, with a new sla-at-risk event
    assert sorted(slip.new_breaches) == sorted(first.new_breaches) and _flagged(store) == 4
    assert len(_events(store, "sla-at-risk")) == 8


def test_the_plan_log_names_what_it_counts(store: Store) -> None:
    from daemon.dispatch import Scheduling

    clock = FakeClock(datetime(2026, 3, 3, 9, 0, tzinfo=SH).astimezone(UTC))
    open_callbacks(store, clock, [f"+86138000002{i:02d}" for i in range(6)], clock.now() - timedelta(hours=20))
    sched = Scheduling.__new__(Scheduling)
    from daemon.logs import get_logger

    sched.log = get_logger("callbackd.schedule")
    sched.planner = Planner(store, clock, rules(), sla=timedelta(hours=24))
    with capture_logs() as logs:
        sched._replan_once()
        sched.planner = Planner(store, clock, rules(capacity=Capacity(fixed=10)), sla=timedelta(hours=24))
        sched._replan_once()
    plans = [e for e in logs if e["event"] == "planner.replanned"]
    assert [(e["new_sla_breaches"], e["sla_breaches_now"], e["sla_ok"]) for e in plans] == [(4, 4, 0), (0, 0, 4)]
    assert len([e for e in logs if e["event"] == "planner.sla_ok"]) == 4
