"""PostgreSQL plans of the API's hot statements: "list 50 due" and "claim next" walk
ix_callbacks_due_order in the queue's order (due_at checked inside the index, no sort), and the
lease sweep every claim runs reads ix_callbacks_lease_until, not every row being dialed.

Sorting is priced out (enable_sort = off) so that a plan which needs one shows it: if the order,
the due condition or an index changed so that they no longer match, these tests fail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from callback_queue.callbacks import State
from callback_queue.clock import FakeClock
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store

pytestmark = pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)

# 3,000 callbacks: most closed, 300 open; a third of the open ones due only later, some being dialed
LOAD = """
INSERT INTO callbacks (kind, number, state, priority, failures, episode_start, triggered_at, last_failed_at,
                       due_at, dial_attempts, claimed_by, lease_until, closed_at, created_at, updated_at)
SELECT 'recall', '+86139' || lpad(i::text, 8, '0'),
       CASE WHEN i % 10 > 0 THEN 'reached' WHEN i % 30 = 0 THEN 'dialing' WHEN i % 20 = 0 THEN 'retry_wait'
            ELSE 'pending' END,
       (i % 7 = 0)::int, 3 + i % 5, t, t, t,
       CASE WHEN i % 10 = 0 AND i % 3 = 1 THEN :now + interval '2 hours' ELSE t END,
       CASE WHEN i % 20 = 0 THEN 1 ELSE 0 END,
       CASE WHEN i % 30 = 0 THEN 'op' END, CASE WHEN i % 30 = 0 THEN :now + interval '10 minutes' END,
       CASE WHEN i % 10 > 0 THEN t END, t, t
FROM (SELECT i, :now - (i % 1440) * interval '1 minute' AS t FROM generate_series(1, 3000) AS i) s
"""


@pytest.fixture
def loaded(store: Store, clock: FakeClock) -> Iterator[Store]:
    with store.write() as conn:
        conn.execute(sa.text(LOAD), {"now": clock.now()})
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE callbacks")
    yield store


def _capture(store: Store) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _spy(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        seen.append((statement, params))

    return seen


def _plan(store: Store, statement: str, params: Any) -> dict[str, Any]:
    with store.engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("SET LOCAL enable_sort = off")
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
        raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params).scalar_one()
    doc = raw if isinstance(raw, list) else json.loads(raw)
    return doc[0]["Plan"]  # type: ignore[no-any-return]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _scans(plan: dict[str, Any], index: str) -> list[dict[str, Any]]:
    return [n for n in _nodes(plan) if n.get("Index Name") == index]


def test_list_due_page_walks_the_due_order_index(loaded: Store, clock: FakeClock) -> None:
    queue = CallbackQueue(loaded, clock)
    seen = _capture(loaded)
    page = queue.list(due=True, limit=51)
    assert len(page) == 51
    (statement, params), = [(s, p) for s, p in seen if "UNION ALL" in s]
    plan = _plan(loaded, statement, params)
    walk = _scans(plan, "ix_callbacks_due_order")
    assert len(walk) == 1 and "due_at" in walk[0]["Index Cond"], walk
    # the lease branch reads the lease index; the two ordered branches are merged, never sorted
    assert _scans(plan, "ix_callbacks_lease_until")
    assert not [n for n in _nodes(plan) if n["Node Type"] == "Sort" and n.get("Plans")
                and _scans(n, "ix_callbacks_due_order")], json.dumps(plan)[:2000]
    # and the page is the queue's order: more failures first, then longest waiting
    keys = [(-c.priority, -c.failures, c.triggered_at, c.id) for c in page]
    assert keys == sorted(keys) and all(c.due_at <= clock.now() for c in page)


def test_claim_is_one_statement_on_the_index_and_the_sweep_reads_the_lease_index(
        loaded: Store, clock: FakeClock) -> None:
    queue = CallbackQueue(loaded, clock)
    seen = _capture(loaded)
    got = queue.claim("alice", 3)
    assert len(got) == 3
    mine = [(s, p) for s, p in seen if "callbacks" in s]
    # the sweep, then the claim (pick, update and its events in one statement): no BEGIN/COMMIT in between
    assert len(mine) == 2, [s[:80] for s, _ in mine]
    (sweep, sweep_params), (claim, claim_params) = mine
    assert "lease-expired" in sweep and "FOR UPDATE" in sweep
    assert "SKIP LOCKED" in claim and "INSERT INTO callback_events" in claim
    walk = _scans(_plan(loaded, claim, claim_params), "ix_callbacks_due_order")
    assert len(walk) == 1 and "due_at" in walk[0]["Index Cond"]
    assert _scans(_plan(loaded, sweep, sweep_params), "ix_callbacks_lease_until")
    # the claim's events were written by that statement
    with loaded.read() as conn:
        rows = conn.execute(sa.text("SELECT callback_id, actor, event, from_state, to_state FROM callback_events "
                                    "ORDER BY id")).all()
    assert [(r.callback_id, r.actor, r.event, r.to_state) for r in rows] == [
        (c.id, "alice", "claimed", "dialing") for c in got]


def test_planned_queues_check_the_window_inside_the_index(loaded: Store, clock: FakeClock) -> None:
    with loaded.write() as conn:  # plan half the open ones into a window open now, the others later
        conn.execute(sa.text("UPDATE callbacks SET state = 'scheduled', window_start = :now - interval '1 hour', "
                             "window_end = :now + (CASE WHEN id % 2 = 0 THEN 1 ELSE -1 END) * interval '1 hour' "
                             "WHERE state = 'pending'"), {"now": clock.now()})
    queue = CallbackQueue(loaded, clock, planned=True)
    seen = _capture(loaded)
    page = queue.list(due=True, limit=20)
    assert page and all(c.window_end is not None and c.window_end > clock.now() for c in page)
    (statement, params), = [(s, p) for s, p in seen if "UNION ALL" in s]
    walk = _scans(_plan(loaded, statement, params), "ix_callbacks_due_order")
    assert len(walk) == 1 and "window_end" in walk[0]["Index Cond"], walk
    clock.advance(timedelta(hours=2))  # every window closed: only claims whose lease ran out are due
    assert {c.state for c in queue.list(due=True, limit=200)} == {State.DIALING}
    assert queue.claim("bob") == []  # it swept those back; none is in a window open now
    assert queue.list(due=True, limit=200) == []
