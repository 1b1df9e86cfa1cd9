"""The leader's lease on PostgreSQL when its link freezes: it steps down before another instance can lead.

Two `Leadership`s share one database; A's lock connection goes through a FaultProxy. The proxy stalls
(nothing forwarded either way, every socket open: what a SIGSTOPped proxy or a frozen server looks like to
TCP), the server ends A's idle session after the lease and B takes the lock. A must have said
`leader.lost` by then, from its own check (nobody else reads its flag meanwhile): its SELECT 1 is bounded
by what is left of the lease. The assertions are about order, never speed: the only bound on time is a
generous one that fails only if A never steps down while the link is frozen.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs
from support.faultproxy import FaultProxy

from callback_queue.store import Store
from daemon.leader import Leadership

LEASE = timedelta(seconds=3)
#: how long the test waits for something it expects (a loaded machine); far above the lease
GENEROUS = 60.0


@pytest.fixture
def pg(pg_database: str) -> str:
    return pg_database


@pytest.fixture
def key() -> int:
    return random.randrange(1, 2**31)  # a lock of this test's own: tests on the same database do not meet


def _via(url: str, port: int) -> str:
    return sa.engine.make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def _leader_job(leader: Leadership, stop: threading.Event, every: float) -> threading.Thread:
    """What the daemon's "leader" job does: check every lease/3, one check at a time."""

    def run() -> None:
        while not stop.is_set():
            leader.check()
            stop.wait(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def stores(pg: str) -> Iterator[tuple[FaultProxy, Store, Store]]:
    port = sa.engine.make_url(pg).port or 5432
    with FaultProxy("127.0.0.1", port, name="leader-pg") as proxy:
        a, b = Store(_via(pg, proxy.port)), Store(pg)
        try:
            yield proxy, a, b
        finally:
            proxy.resume()
            a.dispose()
            b.dispose()


def test_a_leader_behind_a_frozen_link_steps_down_before_another_takes_over(stores, key: int) -> None:
    proxy, store_a, store_b = stores
    a = Leadership(store_a, lease=LEASE, key=key, name="A")
    b = Leadership(store_b, lease=LEASE, key=key, name="B")
    stop = threading.Event()
    jobs: list[threading.Thread] = []
    try:
        with capture_logs() as logs:
            assert a.check() is True
            assert b.check() is False
            proxy.stall()
            stalled_at = time.monotonic()
            every = LEASE.total_seconds() / 3
            jobs = [_leader_job(a, stop, every), _leader_job(b, stop, every)]
            deadline = time.monotonic() + GENEROUS
            while not any(e["event"] == "leader.acquired" and e["instance"] == "B" for e in list(logs)):
                assert time.monotonic() < deadline, "B never took the lease: the server kept A's frozen session"
                time.sleep(0.05)
            taken = [(e["event"], e["instance"]) for e in list(logs) if e["event"].startswith("leader.")]
            # A stepped down by itself while the link was still frozen, and before B led
            assert ("leader.lost", "A") in taken, taken
            assert taken.index(("leader.lost", "A")) < taken.index(("leader.acquired", "B")), taken
            assert a._leading is False and b.is_leader is True
            assert time.monotonic() - stalled_at < GENEROUS
            stop.set()
            for j in jobs:
                j.join(GENEROUS)
                assert not j.is_alive(), "a leader check hung on the frozen link"
        lost = next(e for e in logs if e["event"] == "leader.lost")
        assert lost["log_level"] == "error" and lost["error"]  # with the reason
        assert [e["instance"] for e in logs if e["event"] == "leader.standby"] == ["B"]  # logged once

        # the link comes back: A stays a follower while B leads, and takes over once B lets go
        proxy.resume()
        assert a.check() is False and a.is_leader is False
        b.release()
        deadline = time.monotonic() + GENEROUS
        while not a.check():
            assert time.monotonic() < deadline, "A never re-acquired the free lease"
            time.sleep(0.2)
        assert b.check() is False
    finally:
        stop.set()
        for j in jobs:
            j.join(GENEROUS)
        a.release()
        b.release()


def test_a_leader_whose_lease_is_not_confirmed_is_no_longer_leader_without_a_check(pg: str, key: int) -> None:
    """A check that never returns (or a leader job that does not run) cannot keep the flag up: reading it
    after the lease steps down, logs leader.lost with the reason, and the next check drops the session; it
    tries to acquire again a lease later."""
    now = [1000.0]
    store = Store(pg)
    a = Leadership(store, lease=LEASE, key=key, name="A", monotonic=lambda: now[0])
    b = Leadership(Store(pg), lease=LEASE, key=key, name="B")
    try:
        with capture_logs() as logs:
            assert a.check() is True
            now[0] += a.hold - 0.01
            assert a.is_leader is True
            now[0] += 0.02
            assert a.is_leader is False
            assert a.is_leader is False
        assert [e["event"] for e in logs] == ["leader.acquired", "leader.lost"]
        assert "not confirmed" in logs[1]["error"]
        # the session A still had (the server has not ended it) is dropped at its next check: the lock is free
        assert a.check() is False
        assert b.check() is True
        b.release()
        assert a.check() is False  # A tries again only a lease after it stepped down
        now[0] += LEASE.total_seconds()
        assert a.check() is True
        a.release()
        assert b.check() is True
    finally:
        a.release()
        b.release()
        b.store.dispose()
        store.dispose()
