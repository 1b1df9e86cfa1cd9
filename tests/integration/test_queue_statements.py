"""CallbackQueue builds its list and claim statements once and reuses them: what changes between
calls (now, filters, paging, the operator) is bound, and a reload that switches planning on or off
(SIGHUP sets `queue.planned`) is seen by the very next call."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from console_support import seed

from callback_queue import schema as t
from callback_queue.callbacks import State
from callback_queue.clock import FakeClock
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store


def test_reused_statements_bind_what_changes(store: Store, clock: FakeClock) -> None:
    ids = seed(store, clock, 6)
    queue = CallbackQueue(store, clock)
    first = queue.list(due=True, limit=2)
    assert [c.id for c in first] == [c.id for c in queue.list(due=True, limit=6)][:2]
    assert [c.id for c in queue.list(due=True, limit=2, offset=2)] == [c.id for c in queue.list(due=True)][2:4]
    assert {c.number for c in queue.list(number=first[0].number)} == {first[0].number}
    assert queue.list(states=["reached"]) == [] and len(queue.list(states=["pending"], kind="recall")) == 6
    # "now" is bound on each call: a callback due later shows up once its time has come
    with store.write() as conn:
        conn.execute(sa.update(t.callbacks).where(t.callbacks.c.id == ids[0])
                     .values(due_at=clock.now() + timedelta(hours=1)))
    assert ids[0] not in {c.id for c in queue.list(due=True)}
    clock.advance(timedelta(hours=1))
    assert ids[0] in {c.id for c in queue.list(due=True)}
    # the claim binds operator, count and lease per call
    a = queue.claim("alice", 2)
    b = queue.claim("bob", 1, lease=timedelta(minutes=1))
    assert [c.claimed_by for c in a + b] == ["alice", "alice", "bob"]
    assert b[0].lease_until == clock.now() + timedelta(minutes=1)
    assert len({c.id for c in a + b}) == 3


def test_switching_planning_on_a_live_queue_takes_effect_at_once(store: Store, clock: FakeClock) -> None:
    ids = seed(store, clock, 2)
    queue = CallbackQueue(store, clock)
    assert len(queue.list(due=True)) == 2  # unplanned: anything due
    with store.write() as conn:  # one planned into a window open now; the other left pending
        conn.execute(sa.update(t.callbacks).where(t.callbacks.c.id == ids[1]).values(
            state=State.SCHEDULED.value, window_start=clock.now() - timedelta(minutes=5),
            window_end=clock.now() + timedelta(hours=1)))
    queue.planned = True  # what a reload with [schedule] does
    assert [c.id for c in queue.list(due=True)] == [ids[1]]
    assert [c.id for c in queue.claim("alice", 5)] == [ids[1]]
    queue.planned = False
    assert [c.id for c in queue.list(due=True)] == [ids[0]]
