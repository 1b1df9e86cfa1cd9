"""On PostgreSQL the API's list and claim answer with JSON the database writes (callback_queue.callback_json);
it must be the document the Python path writes (Callback.as_json through Starlette's JSONResponse) byte for
byte, over the same rows: every state, NULLs, non-ASCII and control characters, masked and shown numbers,
times with and without microseconds, in a session whose time zone is not UTC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from console_support import app, bearer, services
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from callback_queue import schema as t
from callback_queue.callback_json import items_json
from callback_queue.callbacks import OPEN_STATES, Callback, State
from callback_queue.clock import FakeClock
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from callback_queue.users import Users
from tests.conftest import _truncate_pg

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
ODD = 'say "no" \\ 不要再打了 😀\n\t\x01\x1f\x7f\u2028 é/<>&'


def _row(i: int, state: State, **values: Any) -> dict[str, Any]:
    t0 = NOW - timedelta(days=3, minutes=i)
    row: dict[str, Any] = {
        "kind": "recall", "number": f"+86138{i:08d}", "state": state.value, "priority": i % 3 - 1,
        "failures": 3 + i % 4, "episode_start": t0, "triggered_at": t0 + timedelta(seconds=i),
        "last_failed_at": t0 + timedelta(minutes=2), "due_at": NOW - timedelta(minutes=i),
        "dial_attempts": i % 2, "created_at": t0, "updated_at": NOW - timedelta(seconds=i)}
    row.update({c.name: None for c in t.callbacks.c if c.name not in row and c.name != "id"})  # one insert's keys
    row.update(values)
    return row


def _rows() -> list[dict[str, Any]]:
    every = [_row(i, s) for i, s in enumerate(State)]  # every state, every optional column NULL
    full = dict(  # every column set: odd text, microseconds (some with trailing zeros), odd counts
        kind="followup", claimed_by="otto", lease_until=NOW + timedelta(minutes=15, microseconds=1),
        outcome="no-answer", close_reason=ODD, closed_at=NOW.replace(microsecond=120000),
        sla_due_at=NOW + timedelta(hours=4, microseconds=999999), sla_breached_at=NOW,
        window_start=NOW - timedelta(hours=1), window_end=NOW + timedelta(hours=1, microseconds=500),
        earliest_at=NOW - timedelta(microseconds=10), dialer="operator", dial_ref="ActionID-ü-1",
        dial_started_at=NOW - timedelta(seconds=30, microseconds=7),
        last_dial_at=datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),
        request_id="REQ-✓-7")
    counts = [json.dumps({"busy": 2, "no-answer": 1}, sort_keys=True), json.dumps({"忙": 1, 'a"\\b': 12}),
              "", "{}", '{"z":1,"a":2}']
    extra = [
        _row(20, State.DIALING, **full, outcome_counts=counts[0]),  # otto's claim: otto sees the number
        _row(21, State.DIALING, **{**full, "claimed_by": "olga"}, outcome_counts=counts[1]),
        _row(22, State.RETRY_WAIT, number="+12345", outcome_counts=counts[2], close_reason=""),
        _row(23, State.SCHEDULED, number="+123456", outcome_counts=counts[3], claimed_by="otto"),
        _row(24, State.REACHED, number="", outcome_counts=counts[4], close_reason=ODD),
        _row(25, State.PENDING, number="+4420794600001234", priority=5, failures=9),
        _row(26, State.EVALUATED, number="+86138" + "0" * 8, episode_start=NOW.replace(microsecond=1)),
    ]
    return every + extra


@pytest.fixture
def pg(pg_database: str) -> Iterator[Store]:
    """PostgreSQL in a session time zone with daylight saving, far from UTC: times must still come out in UTC."""
    _truncate_pg(pg_database)
    store = Store(sa.engine.make_url(pg_database).update_query_dict(
        {"options": "-c TimeZone=America/Santiago"}).render_as_string(hide_password=False))
    with store.write() as conn:
        conn.execute(t.callbacks.insert(), _rows())
    yield store
    store.dispose()


def _python(queue: CallbackQueue, viewer: str, show_all: bool, limit: int, **filters: Any) -> tuple[str, bool]:
    got = queue.list(limit=limit + 1, **filters)
    return items_json(got[:limit], lambda c: show_all or (c.state is State.DIALING and c.claimed_by == viewer)), \
        len(got) > limit


@pytest.mark.parametrize("viewer,show_all", [("otto", False), ("olga", False), ("ada", True)])
def test_list_json_from_postgresql_is_the_python_document(pg: Store, viewer: str, show_all: bool) -> None:
    queue = CallbackQueue(pg, FakeClock(NOW))
    every = [s.value for s in State]
    for filters in ({"states": every, "limit": 100}, {"states": every, "limit": 5, "offset": 3},
                    {"due": True, "limit": 4}, {"due": True, "limit": 50}, {"kind": "followup", "limit": 10},
                    {"number": "+12345", "limit": 1}, {"states": ["cancelled"], "limit": 10}):
        sql = queue.list_json(viewer=viewer, show_all=show_all, **filters)
        python = _python(queue, viewer, show_all, **filters)
        assert sql == python, filters
    # the document covers what it should: every state, all rows, masked and shown numbers, odd text intact
    items, more = queue.list_json(viewer=viewer, show_all=show_all, states=every, limit=100)
    doc = json.loads(f"[{items}]")
    assert not more and len(doc) == len(_rows()) and {d["state"] for d in doc} == set(every)
    assert ODD in {d["close_reason"] for d in doc} and {"", None} <= {d["outcome_counts"] for d in doc
                                                                     if not isinstance(d["outcome_counts"], dict)}
    shown = {d["number"] for d in doc if "*" not in d["number"] and d["number"] != "-"}
    assert ("+8613800000020" in shown) is (viewer == "otto" or show_all)
    assert ("+8613800000021" in shown) is (viewer == "olga" or show_all)
    assert ("+4420794600001234" in shown) is show_all
    assert ("+44207*******1234" in {d["number"] for d in doc}) is not show_all


def test_list_json_when_nothing_matches(pg: Store) -> None:
    queue = CallbackQueue(pg, FakeClock(NOW))
    assert queue.list_json(viewer="otto", show_all=False, states=["expired"], kind="followup", limit=50) == ("", False)


def test_claim_json_from_postgresql_is_the_python_document(pg: Store) -> None:
    clock = FakeClock(NOW)
    queue = CallbackQueue(pg, clock)
    due = [c.id for c in queue.list(due=True)]
    assert len(due) >= 4
    got = queue.claim_json("otto", 3)
    # the same rows read back and written by the Python path, in the queue's order
    claimed = [c for c in queue.list(states=[State.DIALING.value]) if c.claimed_by == "otto" and c.id in due]
    claimed.sort(key=lambda c: due.index(c.id))
    assert [c.id for c in claimed] == due[:3]
    assert got == items_json(claimed, lambda c: True)
    assert queue.claim_json("otto", 1) == items_json([c for c in queue.list(states=["dialing"])
                                                      if c.claimed_by == "otto" and c.id == due[3]], lambda c: True)
    rest = len(due) - 4
    queue.claim_json("olga", 100)
    assert rest == len([c for c in queue.list(states=["dialing"]) if c.claimed_by == "olga" and c.id in due])
    assert queue.claim_json("olga", 5) == ""


def test_api_answers_are_what_jsonresponse_writes(pg: Store) -> None:
    """Through the HTTP API: the list's and claim's bodies and headers against JSONResponse of the dicts."""
    clock = FakeClock(NOW)
    u = Users(pg, clock)
    toks = {"otto": u.add("otto", "operator")[1], "ada": u.add("ada", "admin")[1]}
    svc = services(pg, clock)
    queue = svc.queue
    with TestClient(app(svc)) as client:
        for name, admin in (("otto", False), ("ada", True)):
            for params in ({"due": "true", "limit": 3}, {"due": "true", "limit": 3, "offset": 3},
                           {"state": [s.value for s in State], "limit": 50}):
                r = client.get("/api/callbacks", params=params, headers=bearer(toks[name]))
                limit, offset = int(params["limit"]), int(params.get("offset", 0))  # type: ignore[call-overload]
                got: list[Callback] = queue.list(due="due" in params, limit=limit + 1, offset=offset,
                                                 states=None if "due" in params else [s.value for s in State])
                more = len(got) > limit
                want = JSONResponse({
                    "items": [c.as_json(show_number=admin or (c.state is State.DIALING and c.claimed_by == name))
                              for c in got[:limit]],
                    "limit": limit, "offset": offset, "next_offset": offset + limit if more else None})
                assert r.status_code == 200 and r.content == want.body, params
                assert r.headers["content-type"] == want.headers["content-type"]
        r = client.post("/api/callbacks/claim", json={"count": 2}, headers=bearer(toks["otto"]))
        held = sorted((c for c in queue.list(states=[s.value for s in OPEN_STATES])
                       if c.claimed_by == "otto" and c.lease_until == NOW + queue.lease),
                      key=lambda c: (-c.priority, -c.failures, c.triggered_at, c.id))
        assert len(held) == 2
        assert r.status_code == 200 and r.content == JSONResponse({"items": [c.as_json() for c in held]}).body


def test_the_due_lists_planning_setting_stays_in_its_transaction(pg: Store) -> None:
    """The due list runs with a generic plan (SET LOCAL): the pooled connection goes back as it came."""
    queue = CallbackQueue(pg, FakeClock(NOW))
    pg.engine.dispose()  # one connection from here on, the one the list used
    for _ in range(7):  # past psycopg's prepare threshold: the prepared statement's plan is the generic one
        assert queue.list_json(viewer="otto", show_all=False, due=True, limit=3)[1]
    with pg.autocommit() as conn:
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"
        assert pg.engine.pool.checkedout() == 1 and pg.engine.pool.checkedin() == 0  # type: ignore[attr-defined]
