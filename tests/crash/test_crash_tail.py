"""SIGKILL the daemon at random points while a writer appends to the queue_log it tails.

The writer appends whole and half lines at random, and rotates the file once (rename, new file),
as Asterisk and logrotate do. The daemon is killed and restarted; at the end it runs cleanly until
it has caught up, stops on SIGTERM with exit code 0, and the database equals the model: every
attempt stored once, exactly the callbacks the model owes, the self-resolved ones cancelled.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from callback_queue.detection import DetectRules
from tests.support.crash import Proc, seeded, wait_for, write_config
from tests.support.dbcheck import TRANSIENT, model_mismatches, read_attempt_ids, read_callbacks, scalar
from tests.support.model import expected, read_gen_queue_log
from tests.support.traffic import Writer, queue_log_lines

RULES = DetectRules(threshold=3, lookback_seconds=3650 * 86400, min_wait_seconds=5)


def test_sigkill_while_tailing_loses_nothing_and_doubles_nothing(tmp_path: Path, store_url: str):
    rng, seed, n = seeded("crash/tail")
    start = int(time.time()) - 12 * 3600
    lines = queue_log_lines(seed, 1500, start_ts=start, numbers=60, span_seconds=10 * 3600)
    written = read_gen_queue_log(lines, "pbx")
    qlog = tmp_path / "asterisk" / "queue_log"
    qlog.parent.mkdir()
    cfg = write_config(tmp_path, store_url, f"""
[sources.queue_log]
path = "{qlog}"
system = "pbx"
poll_interval = "0.1s"
""")
    gate = threading.Event()  # rotate only once the daemon has a cursor on the first file
    writer = Writer(qlog, lines, rng, seconds=max(3.0, 2.0 * n), rotate_gate=gate)
    writer.start()
    kills = 0
    i = 0
    while i < n or not gate.is_set():  # on a slow machine a kill can land before the daemon has started
        assert i < n + 40, "the daemon stored nothing in 40 runs"
        proc = Proc(cfg, "run", tag=f"run{i}")
        rc = proc.kill_after(rng.uniform(0.8, 3.0))
        assert rc is None, f"the daemon exited on its own ({rc}): {proc.stderr()[-2000:]}"
        kills += 1
        stored = read_attempt_ids(store_url)
        by_id = {a.call_id: a for a in written}
        assert set(stored) <= set(by_id)
        now = int(time.time())
        problems = model_mismatches(expected([by_id[c] for c in stored], RULES, now), read_callbacks(store_url))
        assert problems == [], f"after kill {i}: {problems[:5]}"
        if stored:
            gate.set()
        i += 1
    writer.join(timeout=120)
    assert writer.error is None, writer.error
    assert not writer.is_alive()

    final = Proc(cfg, "run", tag="final")
    want = {a.call_id for a in written}
    try:
        assert final.wait_started(), final.stderr()[-3000:]
        caught_up = wait_for(lambda: set(read_attempt_ids(store_url)) == want, timeout=60, interval=0.3)
        assert caught_up, f"{len(want - set(read_attempt_ids(store_url)))} attempts never stored"
    finally:
        rc = final.stop()
    assert rc == 0, final.stderr()[-3000:]
    print(f"crash/tail: {kills} kills, {len(lines)} lines, rotation included")

    stored = read_attempt_ids(store_url)
    assert stored == {a.call_id: (a.outcome.value, a.number) for a in written}
    exp = expected(written, RULES, int(time.time()))
    assert len(exp.owed) >= 5 and len(exp.cancelled) >= 5
    callbacks = read_callbacks(store_url)
    assert model_mismatches(exp, callbacks) == []
    assert [c.id for c in callbacks if c.state in TRANSIENT] == []
    assert scalar(store_url, "SELECT COUNT(*) FROM dead_letters") == 0


def test_seed_125121623_replays_clean(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch):
    """The seed that found the retraction-boundary bug (a callback cancelled as 'reclassified' hid the
    caller's later streaks; see test_model.py::test_a_retracted_callback_does_not_hide_the_callers_next_streak)."""
    monkeypatch.setenv("CALLBACKD_CRASH_SEED", "125121623")
    monkeypatch.setenv("CALLBACKD_CRASH_ITERATIONS", "4")
    test_sigkill_while_tailing_loses_nothing_and_doubles_nothing(tmp_path, store_url)
