"""SIGKILL the daemon at random points while its SMS fallback sends through the console sender.

Callbacks closed as unreachable get one SMS each (invariant 5). The console sender appends one JSON
line per message to a file that outlives the process (the provider's view); after the kills and a
clean final run, every callback has exactly one line there, one sms_messages row, and none is left
in a transient state.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import sqlalchemy as sa

from tests.support.crash import Proc, seeded, wait_for, write_config
from tests.support.dbcheck import TRANSIENT, read_callbacks, scalar
from tests.support.unreachable import Feeder

BATCH = 6  # unreachable callbacks added every 0.1 s while the daemon is being killed


def _stuck(store_url: str) -> list[object]:
    eng = sa.create_engine(store_url)
    try:
        with eng.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(
                "SELECT c.id, c.state, m.state, m.tries, m.error, m.next_try_at, m.provider_id FROM callbacks c "
                "LEFT JOIN sms_messages m ON m.callback_id = c.id WHERE c.state = 'unreachable'"))]
    finally:
        eng.dispose()


def _sent(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_sigkill_while_sending_sms_sends_each_one_once(tmp_path: Path, store_url: str):
    rng, seed, n = seeded("crash/sms")
    feeder = Feeder(store_url, random.Random(rng.random()),
                    lambda r: f"+861{r.choice('3456789')}{r.randrange(10**9):09d}", batch=BATCH, pause=0.1)
    feeder.start()
    outbox = tmp_path / "sms-outbox.jsonl"
    cfg = write_config(tmp_path, store_url, f"""
[sms]
quiet_hours = []   # runs at any hour
poll_interval = "0.05s"
send_lease = "2s"   # a row a killed worker left 'sending' is reconciled after this (default 5m)
console_path = "{outbox}"
""")
    kills = 0
    progress: list[int] = []  # messages in the provider's view after each kill
    for i in range(n):
        proc = Proc(cfg, "run", tag=f"run{i}")
        rc = proc.kill_after(rng.uniform(0.8, 3.0))
        assert rc is None, f"the daemon exited on its own ({rc}): {proc.stderr()[-2000:]}"
        kills += 1
        progress.append(len(_sent(outbox)))
        per_number: dict[object, int] = {}
        for m in _sent(outbox):
            per_number[m["to"]] = per_number.get(m["to"], 0) + 1
        assert [k for k, v in per_number.items() if v > 1] == [], f"after kill {i}: an SMS sent twice"

    feeder.halt.set()
    feeder.join(timeout=30)
    assert feeder.error is None, feeder.error
    callbacks = feeder.callbacks
    assert sum(1 for p in progress if p) > 0 and len(callbacks) > BATCH

    final = Proc(cfg, "run", tag="final")
    try:
        assert final.wait_started(), final.stderr()[-3000:]
        done = wait_for(lambda: len(_sent(outbox)) >= len(callbacks) and scalar(
            store_url, "SELECT COUNT(*) FROM callbacks WHERE state = 'unreachable'") == 0, timeout=90, interval=0.3)
        assert done, (f"{len(_sent(outbox))} of {len(callbacks)} sent; still unreachable, with their SMS rows: "
                      f"{_stuck(store_url)}")
    finally:
        rc = final.stop()
    assert rc == 0, final.stderr()[-3000:]
    print(f"crash/sms: {kills} kills, {len(callbacks)} callbacks; sent after each kill: {progress}")

    sent = _sent(outbox)
    assert sorted(m["to"] for m in sent) == sorted(callbacks.values()), "an SMS lost or sent twice"
    eng = sa.create_engine(store_url)
    try:
        with eng.connect() as c:
            rows = c.execute(sa.text("SELECT callback_id, state FROM sms_messages")).all()
    finally:
        eng.dispose()
    assert sorted(r.callback_id for r in rows) == sorted(callbacks), "one sms_messages row per callback"
    assert {r.state for r in rows} <= {"sent", "delivered"}, {r.state for r in rows}
    states = {c.id: c.state for c in read_callbacks(store_url)}
    assert {states[cid] for cid in callbacks} == {"sms_sent"}
    assert [cid for cid, s in states.items() if s in TRANSIENT] == []
