"""CallbackQueue on SQLite and PostgreSQL: order, filters, claims, outcomes, leases, the audit trail.

Callbacks are made the way the daemon makes them: attempts go through the Ingestor, whose
detection opens a callback after three failures in a row.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from callback_queue import schema as t
from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.callbacks import Callback, State
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.errors import InvalidTransition, LeaseLost, NotFound
from callback_queue.ingest import Ingestor
from callback_queue.queue import CallbackQueue
from callback_queue.retry import DialOutcome, RetryPolicy, RetryRule
from callback_queue.store import Store

RULES = DetectRules(threshold=3, min_wait_seconds=0)
RETRY = RetryPolicy(rules={DialOutcome.NO_ANSWER: RetryRule(timedelta(seconds=600), 5),
                           DialOutcome.BUSY: RetryRule(timedelta(seconds=120), 5)},
                    max_attempts=3, min_spacing=timedelta(0))
LEASE = timedelta(minutes=5)


def failures(number: str, first: datetime, n: int = 3, gap: int = 60, tag: str = "") -> list[Attempt]:
    """n failed calls from `number`, `gap` seconds apart, the first at `first`."""
    start = int(first.timestamp())
    return [
        Attempt(system="pbx", call_id=f"{number}{tag}-{i}", caller=number, number=number,
                started_ts=start + i * gap, ended_ts=start + i * gap + 40, outcome=Outcome.FAILED,
                reason="abandon", wait_seconds=40, queue="hotline", origin=Origin.QUEUE_LOG)
        for i in range(n)
    ]


def seed(store: Store, clock: FakeClock, *batches: list[Attempt]) -> list[int]:
    """Ingest the attempts; returns the ids of the callbacks opened, in the order opened."""
    result = Ingestor(store, clock, RULES).ingest([a for b in batches for a in b])
    return result.opened


@pytest.fixture
def queue(store: Store, clock: FakeClock) -> CallbackQueue:
    return CallbackQueue(store, clock, RETRY, lease=LEASE)


def events(store: Store, callback_id: int | None = None) -> list[dict]:
    q = sa.select(t.callback_events).order_by(t.callback_events.c.id)
    if callback_id is not None:
        q = q.where(t.callback_events.c.callback_id == callback_id)
    with store.read() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def event_count(store: Store) -> int:
    with store.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t.callback_events)).scalar_one()


def one_open(store: Store, clock: FakeClock, number: str = "+8613800000001") -> int:
    (cid,) = seed(store, clock, failures(number, clock.now() - timedelta(hours=1)))
    return cid


# -- reading ---------------------------------------------------------------------------------
def test_default_order_more_failures_first_then_longest_waiting(
        store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    now = clock.now()
    # triggered (third failure) at -3h+2m, -2h+2m and -1h+2m; "five" has the most failures
    older = failures("+8613800000010", now - timedelta(hours=3))
    newer = failures("+8613800000020", now - timedelta(hours=2))
    five = failures("+8613800000030", now - timedelta(hours=1), n=5)
    seed(store, clock, newer, five, older)

    listed = queue.list()
    assert [c.number for c in listed] == ["+8613800000030", "+8613800000010", "+8613800000020"]
    assert [c.failures for c in listed] == [5, 3, 3]
    assert all(c.state is State.PENDING for c in listed)
    assert listed[1].triggered_at == now - timedelta(hours=3) + timedelta(seconds=120)

    # claims follow the same order
    assert [c.number for c in queue.claim("alice")] == ["+8613800000030"]
    assert [c.number for c in queue.claim("bob", count=2)] == ["+8613800000010", "+8613800000020"]


def test_list_filters_by_state_and_due(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    now = clock.now()
    a, b, c, d = seed(store, clock, *(failures(f"+861380000010{i}", now - timedelta(hours=4 - i))
                                      for i in range(4)))
    (claimed,) = queue.claim("alice")
    assert claimed.id == a
    queue.cancel(b, "admin", "duplicate")
    queue.claim("alice")  # c
    queue.close(c, "alice", "busy")  # retry_wait, due in 2 minutes

    def ids(**kw: object) -> list[int]:
        return [x.id for x in queue.list(**kw)]  # type: ignore[arg-type]

    # every state: the open ones (the work) first, then the closed, each in the queue's order
    assert ids() == [a, c, d, b]
    assert ids(states=["pending"]) == [d]
    assert ids(states=["dialing"]) == [a]
    assert ids(states=["cancelled"]) == [b]
    assert ids(states=["retry_wait", "pending"]) == [c, d]
    assert ids(due=True) == [d]  # c waits, a is claimed, b is closed
    assert ids(states=["dialing"], due=True) == []
    assert ids(limit=2) == [a, c]
    assert ids(limit=2, offset=2) == [d, b]
    # the API's JSON page (PostgreSQL writes it in SQL) in the same order
    page, more = queue.list_json(viewer="alice", show_all=True, limit=3)
    assert [x["id"] for x in json.loads(f"[{page}]")] == [a, c, d] and more
    assert ids(number="+8613800000102") == [c]

    clock.advance(timedelta(seconds=120))
    assert ids(due=True) == [c, d]
    assert queue.counts() == {"dialing": 1, "cancelled": 1, "retry_wait": 1, "pending": 1}


def test_get_returns_attempts_and_history(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    cid = one_open(store, clock)
    queue.claim("alice")
    detail = queue.get(cid)
    assert detail.callback.id == cid
    assert [a.call_id for a in detail.attempts] == [f"+8613800000001-{i}" for i in range(3)]
    assert [(e.event, e.from_state, e.to_state) for e in detail.events] == [
        ("opened", None, "pending"), ("claimed", "pending", "dialing")]
    with pytest.raises(NotFound):
        queue.get(cid + 1000)


# -- claims ----------------------------------------------------------------------------------
def test_claim_sets_dialing_lease_and_writes_claimed_event(
        store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    cid = one_open(store, clock)
    clock.advance(7)
    (c,) = queue.claim("alice")
    assert c.id == cid
    assert c.state is State.DIALING
    assert c.claimed_by == "alice"
    assert c.lease_until == clock.now() + LEASE
    assert c.updated_at == clock.now()
    # what was returned is what is stored
    assert queue.get(cid).callback == c
    ev = events(store, cid)[-1]
    assert (ev["event"], ev["actor"], ev["from_state"], ev["to_state"]) == ("claimed", "alice", "pending", "dialing")
    assert ev["at"] == clock.now()
    assert json.loads(ev["detail"]) == {"lease_until": (clock.now() + LEASE).isoformat()}
    # a claimed callback is not handed out again
    assert queue.claim("bob") == []


def test_claim_hands_out_at_most_count(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    now = clock.now()
    ids = seed(store, clock, *(failures(f"+861380000020{i}", now - timedelta(hours=5 - i)) for i in range(5)))
    first = queue.claim("alice", count=2)
    assert [c.id for c in first] == ids[:2]
    rest = queue.claim("bob", count=10)
    assert [c.id for c in rest] == ids[2:]
    assert {c.claimed_by for c in rest} == {"bob"}
    assert queue.claim("carol", count=3) == []
    with pytest.raises(ValueError):
        queue.claim("alice", count=0)


def test_nothing_due_claims_nothing(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    assert queue.claim("alice", count=5) == []  # empty queue
    # a callback triggered later than the queue's "now" is not due yet
    future = clock.now() + timedelta(hours=1)
    (cid,) = seed(store, clock, failures("+8613800000301", future))
    before = event_count(store)
    assert queue.claim("alice", count=5) == []
    assert queue.list(due=True) == []
    assert event_count(store) == before
    clock.set(future + timedelta(seconds=120))
    assert [c.id for c in queue.claim("alice")] == [cid]


# -- closing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("outcome", "state", "reason"), [
    ("reached", State.REACHED, None),
    ("declined", State.REACHED, None),
    ("wrong-number", State.CANCELLED, "wrong number"),
])
def test_close_final_outcomes(store: Store, clock: FakeClock, queue: CallbackQueue,
                              outcome: str, state: State, reason: str | None) -> None:
    cid = one_open(store, clock)
    queue.claim("alice")
    clock.advance(90)
    c = queue.close(cid, "alice", outcome, note="spoke to her")
    assert c.state is state
    assert not c.state.is_open
    assert c.outcome == outcome
    assert c.closed_at == clock.now()
    assert c.close_reason == reason
    assert (c.claimed_by, c.lease_until) == (None, None)
    assert c.dial_attempts == 1
    ev = events(store, cid)[-1]
    assert (ev["event"], ev["actor"], ev["from_state"], ev["to_state"]) == ("closed", "alice", "dialing", state.value)
    expected = {"outcome": outcome, "dial_attempts": 1, "note": "spoke to her"}
    if reason:
        expected["reason"] = reason  # the history says why it ended
    assert json.loads(ev["detail"]) == expected
    # closed is closed
    with pytest.raises(InvalidTransition):
        queue.close(cid, "alice", "reached")
    assert queue.claim("alice") == []


@pytest.mark.parametrize(("outcome", "delay"), [("no-answer", 600), ("busy", 120)])
def test_retryable_outcomes_wait_the_configured_delay(store: Store, clock: FakeClock, queue: CallbackQueue,
                                                      outcome: str, delay: int) -> None:
    cid = one_open(store, clock)
    queue.claim("alice")
    c = queue.close(cid, "alice", outcome)
    assert c.state is State.RETRY_WAIT
    assert c.state.is_open
    assert c.due_at == clock.now() + timedelta(seconds=delay)
    assert c.closed_at is None
    assert (c.claimed_by, c.lease_until, c.dial_attempts, c.outcome) == (None, None, 1, outcome)
    ev = events(store, cid)[-1]
    assert (ev["event"], ev["from_state"], ev["to_state"]) == ("closed", "dialing", "retry_wait")
    assert json.loads(ev["detail"])["retry_at"] == c.due_at.isoformat()

    clock.advance(delay - 1)
    assert queue.claim("alice") == []
    clock.advance(1)
    (again,) = queue.claim("bob")
    assert again.id == cid
    assert events(store, cid)[-1]["from_state"] == "retry_wait"


def test_unreachable_after_max_attempts(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    cid = one_open(store, clock)
    for n in (1, 2):
        (c,) = queue.claim("alice")
        c = queue.close(cid, "alice", "no-answer")
        assert (c.state, c.dial_attempts) == (State.RETRY_WAIT, n)
        clock.advance(600)
    queue.claim("alice")
    c = queue.close(cid, "alice", "busy")
    assert c.state is State.UNREACHABLE
    assert c.dial_attempts == 3
    assert c.closed_at == clock.now()
    assert c.close_reason and "3 calls" in c.close_reason
    clock.advance(timedelta(days=1))
    assert queue.claim("alice") == []
    assert [e["to_state"] for e in events(store, cid)] == [
        "pending", "dialing", "retry_wait", "dialing", "retry_wait", "dialing", "unreachable"]


def test_closing_someone_elses_claim_is_lease_lost_unless_forced(
        store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    cid = one_open(store, clock)
    queue.claim("alice")
    before = event_count(store)
    with pytest.raises(LeaseLost, match="alice"):
        queue.close(cid, "bob", "reached")
    with pytest.raises(LeaseLost):
        queue.release(cid, "bob")
    c = queue.get(cid).callback
    assert (c.state, c.claimed_by) == (State.DIALING, "alice")
    assert event_count(store) == before
    c = queue.close(cid, "bob", "reached", force=True)
    assert c.state is State.REACHED
    assert events(store, cid)[-1]["actor"] == "bob"


def test_closing_an_unclaimed_callback_is_invalid(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    cid = one_open(store, clock)
    before = event_count(store)
    with pytest.raises(InvalidTransition, match="pending"):
        queue.close(cid, "alice", "reached")
    with pytest.raises(InvalidTransition):
        queue.close(cid, "alice", "reached", force=True)
    with pytest.raises(InvalidTransition):
        queue.release(cid, "alice")
    with pytest.raises(NotFound):
        queue.close(cid + 1000, "alice", "reached")
    assert queue.get(cid).callback.state is State.PENDING
    assert event_count(store) == before


# -- release, cancel, sweep ------------------------------------------------------------------
def test_release_returns_it_to_the_queue(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    cid = one_open(store, clock)
    queue.claim("alice")
    c = queue.release(cid, "alice", note="lunch")
    assert (c.state, c.claimed_by, c.lease_until, c.dial_attempts) == (State.PENDING, None, None, 0)
    ev = events(store, cid)[-1]
    assert (ev["event"], ev["from_state"], ev["to_state"]) == ("released", "dialing", "pending")
    assert json.loads(ev["detail"]) == {"note": "lunch"}
    assert [x.id for x in queue.claim("bob")] == [cid]

    # after a retry, release goes back to retry_wait (it has been called once)
    queue.close(cid, "bob", "busy")
    clock.advance(120)
    queue.claim("bob")
    assert queue.release(cid, "bob").state is State.RETRY_WAIT


def test_cancel(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    dialing = one_open(store, clock, "+8613800000401")
    pending = one_open(store, clock, "+8613800000402")
    assert [c.id for c in queue.claim("alice")] == [dialing]  # equal rank: the lower id first
    for cid, was in ((pending, "pending"), (dialing, "dialing")):
        c = queue.cancel(cid, "admin", "do not call")
        assert c.state is State.CANCELLED
        assert (c.outcome, c.close_reason, c.closed_at) == ("cancelled", "do not call", clock.now())
        assert (c.claimed_by, c.lease_until) == (None, None)
        ev = events(store, cid)[-1]
        assert (ev["event"], ev["actor"], ev["from_state"], ev["to_state"]) == ("cancelled", "admin", was,
                                                                                 "cancelled")
        assert json.loads(ev["detail"]) == {"reason": "do not call"}
    with pytest.raises(InvalidTransition):
        queue.cancel(pending, "admin", "again")
    with pytest.raises(NotFound):
        queue.cancel(pending + 1000, "admin", "x")
    assert queue.claim("alice", count=5) == []


def test_sweep_returns_expired_leases(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    cid = one_open(store, clock)
    queue.claim("alice")
    clock.advance(LEASE - timedelta(seconds=1))
    assert queue.sweep() == []
    assert queue.get(cid).callback.state is State.DIALING
    clock.advance(timedelta(seconds=2))
    assert queue.sweep() == [cid]
    c = queue.get(cid).callback
    assert (c.state, c.claimed_by, c.lease_until) == (State.PENDING, None, None)
    ev = events(store, cid)[-1]
    assert (ev["event"], ev["actor"], ev["from_state"], ev["to_state"]) == ("lease-expired", "sweeper",
                                                                            "dialing", "pending")
    assert json.loads(ev["detail"]) == {"claimed_by": "alice"}
    assert queue.sweep() == []
    # the late operator has lost the claim; a colleague can take it
    with pytest.raises(InvalidTransition):
        queue.close(cid, "alice", "reached")
    assert [x.claimed_by for x in queue.claim("bob")] == ["bob"]


def test_claim_recovers_expired_leases_itself(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    cid = one_open(store, clock)
    queue.claim("alice")
    clock.advance(LEASE + timedelta(seconds=1))
    (c,) = queue.claim("bob")
    assert (c.id, c.claimed_by) == (cid, "bob")
    with pytest.raises(LeaseLost):
        queue.close(cid, "alice", "reached")
    assert [e["event"] for e in events(store, cid)] == ["opened", "claimed", "lease-expired", "claimed"]


# -- database guarantees ---------------------------------------------------------------------
def _raw_callback(number: str, state: str, start: datetime) -> dict:
    return {"kind": "recall", "number": number, "state": state, "priority": 0, "failures": 3,
            "episode_start": start, "triggered_at": start, "last_failed_at": start, "due_at": start,
            "dial_attempts": 0, "created_at": start, "updated_at": start,
            "closed_at": None if state in ("pending", "dialing") else start}


def test_one_open_callback_per_number_is_enforced_by_the_database(
        store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    number = "+8613800000501"
    one_open(store, clock, number)
    later = clock.now() + timedelta(hours=1)
    with pytest.raises(IntegrityError), store.write() as conn:
        conn.execute(t.callbacks.insert(), _raw_callback(number, "pending", later))
    with pytest.raises(IntegrityError), store.write() as conn:
        conn.execute(t.callbacks.insert(), _raw_callback(number, "dialing", later))
    # closed rows for the same number are fine, as many as there are
    with store.write() as conn:
        conn.execute(t.callbacks.insert(), _raw_callback(number, "reached", later))
        conn.execute(t.callbacks.insert(), _raw_callback(number, "cancelled", later + timedelta(hours=1)))
    assert len(queue.list(number=number)) == 3
    assert len(queue.list(number=number, states=["pending", "scheduled", "dialing", "retry_wait"])) == 1
    # another number may have its own open one
    with store.write() as conn:
        conn.execute(t.callbacks.insert(), _raw_callback("+8613800000502", "pending", later))


def test_every_state_change_appends_exactly_one_event(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    a = one_open(store, clock, "+8613800000601")
    b = one_open(store, clock, "+8613800000602")
    assert event_count(store) == 2  # one "opened" each

    history: list[dict] = events(store)

    def step(expect_cid: int, expect_event: str, fn: object) -> None:
        nonlocal history
        fn()  # type: ignore[operator]
        now = events(store)
        assert len(now) == len(history) + 1, f"{expect_event}: {len(now) - len(history)} events"
        assert now[: len(history)] == history  # nothing earlier was changed or removed
        new = now[-1]
        assert (new["callback_id"], new["event"]) == (expect_cid, expect_event)
        state = queue.get(expect_cid).callback.state.value
        assert new["to_state"] == state
        history = now

    step(a, "claimed", lambda: queue.claim("alice"))
    step(a, "released", lambda: queue.release(a, "alice"))
    step(a, "claimed", lambda: queue.claim("alice"))
    step(a, "closed", lambda: queue.close(a, "alice", "no-answer"))
    step(b, "claimed", lambda: queue.claim("bob"))
    clock.advance(timedelta(seconds=601))  # past b's lease and a's retry delay
    step(b, "lease-expired", queue.sweep)
    step(a, "claimed", lambda: queue.claim("alice"))  # a and b are due: equal rank, a has the lower id
    step(a, "closed", lambda: queue.close(a, "alice", "reached"))
    step(b, "cancelled", lambda: queue.cancel(b, "admin", "asked not to be called"))

    # things that change nothing write nothing
    for attempt in (lambda: queue.claim("carol"), queue.sweep):
        attempt()
        assert events(store) == history
    for bad in (lambda: queue.close(a, "alice", "reached"), lambda: queue.cancel(b, "x", "y")):
        with pytest.raises(InvalidTransition):
            bad()
        assert events(store) == history
    # and the claim/event pairing holds per callback
    for cid in (a, b):
        states = [e["to_state"] for e in events(store, cid)]
        froms = [e["from_state"] for e in events(store, cid)]
        assert froms[1:] == states[:-1], "each event starts where the previous one ended"


def test_callback_from_row_roundtrip(store: Store, clock: FakeClock, queue: CallbackQueue) -> None:
    cid = one_open(store, clock)
    with store.read() as conn:
        row = conn.execute(sa.select(t.callbacks).where(t.callbacks.c.id == cid)).one()
    c = Callback.from_row(row)
    assert c.episode_start.tzinfo is not None and c.episode_start.utcoffset() == timedelta(0)
    assert c.as_json()["number"] == "+8613800000001"
    assert c.as_json(show_number=False)["number"] == "+86138****0001"
