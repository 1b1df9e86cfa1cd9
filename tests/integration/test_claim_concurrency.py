"""Invariant 4: 8 concurrent claimers (separate processes) on PostgreSQL and on SQLite —
no callback handed out twice, none lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.store import Store

N_CALLBACKS = 400
N_WORKERS = 8

# Each child opens its store and connects, says it is ready, waits for the starting gun,
# then claims 1..5 at a time until nothing is due, writing every id it got.
CHILD = r"""
import json, os, random, sys, time
from pathlib import Path
from callback_queue.clock import SystemClock
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store

url, operator, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = Store(url)
with store.read() as conn:
    conn.exec_driver_sql("SELECT 1")
queue = CallbackQueue(store, SystemClock())
rng = random.Random(operator)
(folder / f"{operator}.ready").touch()
deadline = time.monotonic() + 30
while not (folder / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no starting gun")
    time.sleep(0.002)
got, calls = [], 0
while True:
    batch = queue.claim(operator, count=rng.randint(1, 5))
    calls += 1
    if not batch:
        break
    got.extend(c.id for c in batch)
    assert all(c.claimed_by == operator for c in batch)
    time.sleep(rng.random() / 500)  # "dialing": lets the others at the lock between claims
store.dispose()
(folder / f"{operator}.json").write_text(json.dumps({"ids": got, "calls": calls}))
"""


def _seed(store: Store) -> set[int]:
    real_now = datetime.now(UTC).replace(microsecond=0)
    first = int((real_now - timedelta(hours=2)).timestamp())
    attempts = [
        Attempt(system="pbx", call_id=f"c{n}-{k}", caller=f"138{n:08d}", number=f"+86138{n:08d}",
                started_ts=first + k * 60 + n, ended_ts=first + k * 60 + n + 30, outcome=Outcome.FAILED,
                reason="abandon", wait_seconds=30, queue="hotline", origin=Origin.QUEUE_LOG)
        for n in range(N_CALLBACKS) for k in range(3)
    ]
    # ingest "shortly after" the calls; every callback is due well before the real now
    clock = FakeClock(real_now - timedelta(hours=1))
    result = Ingestor(store, clock, DetectRules(threshold=3, min_wait_seconds=0)).ingest(attempts)
    assert len(result.opened) == N_CALLBACKS
    return set(result.opened)


def test_concurrent_claimers_never_share_and_never_lose(store: Store, tmp_path: Path) -> None:
    ids = _seed(store)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, store.url, f"op{i}", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for i in range(N_WORKERS)
    ]
    try:
        deadline = time.monotonic() + 30
        while sum(1 for _ in tmp_path.glob("*.ready")) < N_WORKERS:
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, dead[0].communicate()[1].decode()
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    per_worker = {f"op{i}": json.loads((tmp_path / f"op{i}.json").read_text()) for i in range(N_WORKERS)}
    handed_out = Counter(cid for r in per_worker.values() for cid in r["ids"])
    twice = sorted(cid for cid, n in handed_out.items() if n > 1)
    assert twice == [], f"handed out more than once: {twice[:20]}"
    assert set(handed_out) == ids, f"lost: {sorted(ids - set(handed_out))[:20]}"
    # they really overlapped: the work was shared, not taken by whoever started first
    assert sum(1 for r in per_worker.values() if r["ids"]) >= 2, {k: len(r["ids"]) for k, r in per_worker.items()}

    owner = {cid: op for op, r in per_worker.items() for cid in r["ids"]}
    ev = t.callback_events
    with store.read() as conn:
        claimed_events = conn.execute(
            sa.select(ev.c.callback_id, ev.c.actor, ev.c.from_state, ev.c.to_state).where(ev.c.event == "claimed")
        ).all()
        rows = conn.execute(sa.select(t.callbacks.c.id, t.callbacks.c.state, t.callbacks.c.claimed_by)).all()
        other = conn.execute(
            sa.select(sa.func.count()).select_from(ev).where(ev.c.event.not_in(["opened", "claimed"]))
        ).scalar_one()
    per_callback = Counter(e.callback_id for e in claimed_events)
    assert set(per_callback) == ids
    assert set(per_callback.values()) == {1}, "a callback has more than one 'claimed' event"
    assert all((e.actor, e.from_state, e.to_state) == (owner[e.callback_id], "pending", "dialing")
               for e in claimed_events)
    assert other == 0
    assert len(rows) == N_CALLBACKS
    assert {r.state for r in rows} == {"dialing"}
    assert all(r.claimed_by == owner[r.id] for r in rows)
