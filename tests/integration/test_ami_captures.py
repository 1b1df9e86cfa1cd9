"""Every captured step replayed by the test AMI server through the AMI source, against its queue_log.

For each step of shared/asterisk/captures/steps, on SQLite and PostgreSQL:
- the recorded bytes exactly as captured (no timestamps: times are when read, here long after the
  capture) give the same calls, outcomes, reasons and waits;
- the AMI source alone with the recorded times (`Timestamp:` headers, as `timestampevents=yes`
  adds them; live, the read time is within a second of them) stores the same attempts as
  importing the step's queue_log: same calls, outcome, reason, wait, number; start and end within
  a second;
- both sources together (that AMI run, then the queue_log) leave one row per call, and the same
  callbacks as the queue_log alone.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from support.ami_env import (
    CAPTURES,
    STEPS,
    ami_settings,
    attempts,
    callbacks,
    drain,
    import_queue_log,
    running_source,
    wipe,
)
from support.ami_server import AmiTestServer

from callback_queue.clock import FakeClock
from callback_queue.store import Store

AFTER_CAPTURE = datetime(2026, 11, 27, 9, 44, tzinfo=UTC)


def _key(rows: list[dict]) -> list[tuple]:
    return sorted((r["call_id"], r["number"], r["outcome"], r["reason"], r["wait_seconds"], r["queue"]) for r in rows)


@pytest.mark.parametrize("step", STEPS)
def test_step_replayed_over_ami_matches_queue_log(step: str, store: Store) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    raw = CAPTURES / "steps" / f"{step}.ami.raw"
    qlog = CAPTURES / "steps" / f"{step}.queue_log"
    with AmiTestServer() as server:
        s = ami_settings(server.port, queue_log=qlog)
        # 1. the queue_log alone: the reference
        import_queue_log(s, store, clock, qlog)
        want = attempts(store)
        want_callbacks = callbacks(store)
        wipe(store)

        # 2. the bytes exactly as recorded: times are the moment of reading
        with running_source(s, store, clock) as src:
            assert server.wait_logged_in()
            server.replay_file(raw)
            drain(src)
        assert _key(attempts(store)) == _key(want)
        wipe(store)

        # 3. AMI alone, with recorded times (as live: read when they happen)
        with running_source(s, store, clock) as src:
            assert server.wait_logged_in()
            sent = server.replay_file(raw, timestamps=True)
            drain(src)
        got = attempts(store)
        assert sent > 10
        assert _key(got) == _key(want)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g["origin"] == "ami" and g["system"] == "pbx"
            assert abs(g["started_ts"] - w["started_ts"]) <= 1, (g, w)
            assert abs(g["ended_ts"] - w["ended_ts"]) <= 1, (g, w)

        # 4. both sources: no call counted twice, the callbacks the queue_log alone gives
        import_queue_log(s, store, clock, qlog)
        both = attempts(store)
        assert len(both) == len(want)
        assert len({r["call_id"] for r in both}) == len(both)
        assert _key(both) == _key(want)
        assert callbacks(store) == want_callbacks


def test_mixed_story_has_the_calls_of_the_brief(store: Store) -> None:
    """Step 22 over AMI: A times out 3x, B abandons 2x, C 4 calls one connected; one callback for A."""
    clock = FakeClock(AFTER_CAPTURE)
    with AmiTestServer() as server:
        s = ami_settings(server.port)
        with running_source(s, store, clock) as src:
            server.wait_logged_in()
            server.replay_file(CAPTURES / "steps" / "22_mixed_story.ami.raw", timestamps=True)
            drain(src)
    rows = attempts(store)
    by: dict[str, list[str]] = {}
    for r in rows:
        by.setdefault(r["number"], []).append(r["reason"])
    assert by["+15550101"] == ["timeout", "timeout", "timeout"]
    assert by["+15550202"] == ["abandon", "abandon"]
    assert by["+15550303"] == ["timeout", "connect", "timeout", "abandon"]
    assert callbacks(store) == {"+15550101": ("pending", 3)}
